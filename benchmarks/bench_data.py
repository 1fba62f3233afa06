"""Data-pipeline benchmark (plain script, not a test; < 3 min on 2 cores).

    python benchmarks/bench_data.py [--workdir DIR] [--quick]

1. Loader throughput, audio-seconds per wall-second for ONE DataLoader worker (a real worker
   process, ``num_workers=1``; torch runs one intra-op thread per worker), through the whole
   ``ASRDataModule`` path (sampler -> decode -> resample -> tokenise -> pad):
   FLAC 16 kHz in LibriSpeech layout (goal >= 1000x) and MP3 48 kHz -> 16 kHz in Common Voice
   layout (goal >= 400x).  Best of 3 timed epochs after a warm-up epoch.
2. Padded-frame fraction of batches, duration bucketing vs random batching, on simulated
   LibriSpeech-like durations (goal <= 5 %).
3. Memory of the manifest + sampler for a simulated 280k-utterance LibriSpeech index
   (goal <= 150 MB), END TO END: ``LibriSpeechCorpus.cuts()`` (cache hit) -> ``ASRDataModule``
   (tokenizer built from the training text, label checks) -> training sampler drawing 400 batches
   (its 20k-cut bucket buffer full), as the peak RSS growth of a fresh process. The index is a
   fabricated cached manifest: a 1-file corpus is scanned, then its cached jsonl.gz is replaced by
   280k utterances (the cache key covers the source files, so the corpus serves the big manifest).
   The old eager path (``CutSet.from_file(...).to_eager()``) is measured on 28k utterances and
   scaled x10 for comparison.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datamodules.batch import SAMPLE_RATE  # noqa: E402
from tests.corpus_factory import CV_COLUMNS, sentence, tone_speech, write_tsv  # noqa: E402

MAX_DURATION = 200.0  # seconds per batch, a typical single-GPU setting


# -- 1. loader throughput ------------------------------------------------------------------------

def write_librispeech(root: Path, n: int, words: tuple[int, int]) -> Path:
    rng = random.Random(0)
    chapter = root / "LibriSpeech" / "train-clean-100" / "100" / "200"
    chapter.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        text = sentence(rng, words)
        sf.write(chapter / f"100-200-{i:04d}.flac", tone_speech(text, seed=i), 16000)
        lines.append(f"100-200-{i:04d} {text.upper()}")
    (chapter / "100-200.trans.txt").write_text("\n".join(lines) + "\n")
    return root


def write_commonvoice(root: Path, n: int, words: tuple[int, int]) -> Path:
    rng = random.Random(1)
    clips = root / "en" / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        text = sentence(rng, words)
        name = f"common_voice_en_{i:05d}.mp3"
        sf.write(clips / name, tone_speech(text, 48000, shift=0.5, seed=i), 48000)
        rows.append([f"client{i % 3}", name, text.capitalize() + ".", "2", "0", "", "", "", "", "en", ""])
    write_tsv(root / "en" / "train.tsv", rows)
    assert len(rows[0]) == len(CV_COLUMNS)
    return root


def loader_throughput(corpus, cache_dir: Path, epochs: int) -> tuple[float, float, float]:
    """(audio s per epoch, best loader wall s, best decode-only wall s) for one worker process.

    Loader epochs and decode-only passes alternate, so both see the same machine load.
    """
    from datamodules import ASRDataModule

    dm = ASRDataModule(train=corpus, max_duration=MAX_DURATION, num_buckets=10, num_workers=1,
                       cache_dir=str(cache_dir), pin_memory=False)
    loader = dm.train_dataloader(rank=0, world_size=1)
    cuts = list(dm.train_cuts())
    audio_s = sum(c.duration for c in cuts)
    loader_s, decode_s = [], []
    for epoch in range(epochs + 1):  # epoch 0 warms the worker, the page cache and the resampler
        dm.train_sampler.set_epoch(epoch)
        start = time.perf_counter()
        total = sum(int(b["lengths"].sum()) for b in loader)
        assert abs(total / SAMPLE_RATE - audio_s) < 1.0, "loader lost audio"
        if epoch:
            loader_s.append(time.perf_counter() - start)
            decode_s.append(decode_only(cuts))
    del loader
    return audio_s, min(loader_s), min(decode_s)


def decode_only(cuts) -> float:
    """Wall seconds to just decode (+ resample to 16 kHz) every file once, one thread, no pipeline."""
    import torch

    torch.set_num_threads(1)  # as in a DataLoader worker
    start = time.perf_counter()
    for cut in cuts:
        wave, sr = sf.read(cut.recording.sources[0].source, dtype="float32")
        if sr != SAMPLE_RATE:
            _resampler(sr)(torch.from_numpy(wave)[None])
    return time.perf_counter() - start


@functools.lru_cache(maxsize=None)
def _resampler(sr: int):
    """lhotse's resampler (the one ``cut.resample`` uses), kernel built once per rate."""
    from lhotse.augmentation.resample import Resample

    return Resample(sr, SAMPLE_RATE)


# -- 2. padding ----------------------------------------------------------------------------------

def fake_cuts(durations):
    from lhotse import CutSet, Recording
    from lhotse.cut import MonoCut

    cuts = []
    for i, d in enumerate(durations):
        rec = Recording(id=f"r{i}", sources=[], sampling_rate=16000, num_samples=int(d * 16000), duration=d)
        cuts.append(MonoCut(id=f"c{i}", start=0.0, duration=d, channel=0, recording=rec))
    return CutSet.from_cuts(cuts)


def padded_fraction(batches) -> float:
    total = padding = 0.0
    for batch in batches:
        longest = max(c.duration for c in batch)
        total += longest * len(batch)
        padding += sum(longest - c.duration for c in batch)
    return padding / total


def librispeech_like_durations(n: int, rng: random.Random) -> list[float]:
    """~75 % of utterances 12-17 s, the rest spread over 1-12 s (LibriSpeech train shape)."""
    return [rng.uniform(12.0, 17.0) if rng.random() < 0.75 else rng.uniform(1.0, 12.0) for _ in range(n)]


def padding_study(n: int) -> tuple[float, float, float]:
    from lhotse.dataset import SimpleCutSampler

    from datamodules.sampling import DurationBucketingSampler

    rng = random.Random(0)
    ls = fake_cuts(librispeech_like_durations(n, rng))
    cv = fake_cuts([rng.lognormvariate(1.5, 0.35) for _ in range(n)])  # Common Voice: ~4-6 s clips
    bucketed_ls = padded_fraction(DurationBucketingSampler(ls, MAX_DURATION, num_buckets=30, shuffle=True))
    bucketed_cv = padded_fraction(DurationBucketingSampler(cv, MAX_DURATION, num_buckets=30, shuffle=True))
    random_ls = padded_fraction(SimpleCutSampler(ls, max_duration=MAX_DURATION, shuffle=True))
    return bucketed_ls, bucketed_cv, random_ls


# -- 3. manifest memory --------------------------------------------------------------------------

def write_manifest(path: Path, n: int) -> None:
    """A LibriSpeech-960-sized index as lhotse jsonl.gz (what the corpora cache holds).

    Transcripts run at LibriSpeech's ~2.7 words (~15 characters) per second.
    """
    rng = random.Random(0)
    words = "THE CAT SAT ON A MAT WITH BIG RED DOG THAT RAN FAR FROM OLD MAN IN HOT SUN".split()
    with gzip.open(path, "wt", compresslevel=1) as f:
        for i, dur in enumerate(librispeech_like_durations(n, rng)):
            spk, chapter = 1000 + i // 120, 100 + i // 40
            uid = f"{spk}-{chapter}-{i:06d}"
            text = " ".join(words[(i + k) % len(words)] for k in range(max(1, int(2.7 * dur))))
            f.write(json.dumps({
                "id": uid, "start": 0.0, "duration": round(dur, 3), "channel": 0, "type": "MonoCut",
                "supervisions": [{"id": uid, "recording_id": uid, "start": 0.0, "duration": round(dur, 3),
                                  "channel": 0, "text": text, "language": "en", "speaker": str(spk),
                                  "custom": {"corpus": "librispeech", "subset": "train-960", "chapter": str(chapter)}}],
                "recording": {"id": uid, "sources": [{"type": "file", "channels": [0],
                              "source": f"/data/LibriSpeech/train-960/{spk}/{chapter}/{uid}.flac"}],
                              "sampling_rate": 16000, "num_samples": int(dur * 16000), "duration": round(dur, 3),
                              "channel_ids": [0]},
            }) + "\n")


def rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MB, from /proc."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def fabricate_cached_corpus(root: Path, cache: Path, n: int) -> None:
    """A ``LibriSpeechCorpus`` whose cached manifest holds ``n`` fabricated utterances (no audio)."""
    from datamodules import LibriSpeechCorpus

    chapter = root / "LibriSpeech" / "train-960" / "1000" / "100"
    chapter.mkdir(parents=True, exist_ok=True)
    sf.write(chapter / "1000-100-000000.flac", tone_speech("the cat", seed=0), 16000)
    (chapter / "1000-100.trans.txt").write_text("1000-100-000000 THE CAT\n")
    LibriSpeechCorpus(root, ["train-960"]).cuts(cache)  # scans the one file, caches its manifest
    (manifest,) = cache.glob("librispeech-train-960-*.jsonl.gz")
    write_manifest(manifest, n)  # same cache key, 280k utterances


def memory_child(root: str, cache: str, mode: str, batches: int) -> None:
    """Run in a fresh process: print the peak RSS growth (MB) of loading + sampling the corpus index."""
    from lhotse import CutSet

    from datamodules import ASRDataModule, LibriSpeechCorpus
    from datamodules.manifest_cache import manifest_path

    base, _ = rss_mb()
    start = time.perf_counter()
    corpus = LibriSpeechCorpus(root, ["train-960"])
    if mode == "lazy":
        dm = ASRDataModule(train=corpus, max_duration=MAX_DURATION, num_buckets=30, num_workers=0,
                           cache_dir=cache, pin_memory=False)
        dm.train_dataloader(rank=0, world_size=1)  # tokenizer (2 text passes), label checks (1 pass), sampler
        for _, _ in zip(range(batches), dm.train_sampler):  # fills the bucket buffer (20k cuts), keeps streaming
            pass
        n = len(dm.train_cuts())
    else:  # what ManifestCache.load did before: the whole index as Python objects
        cuts = CutSet.from_file(manifest_path(corpus.cuts(cache))).to_eager()
        n = len(cuts)
    _, peak = rss_mb()
    print(json.dumps({"delta_mb": peak - base, "cuts": n, "seconds": time.perf_counter() - start}))


def measure_memory(root: Path, cache: Path, mode: str, batches: int = 400) -> dict:
    out = subprocess.run([sys.executable, __file__, "--memory-child", str(root), str(cache), mode, str(batches)],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- report --------------------------------------------------------------------------------------

def row(name: str, value: float, goal: float, unit: str, higher_is_better: bool, reference: bool = False) -> str:
    ratio = value / goal if higher_is_better else goal / max(value, 1e-9)
    status = "(ref)" if reference else "ok" if ratio >= 1.0 else "MISSED"
    op = ">=" if higher_is_better else "<="
    return f"| {name:<46} | {value:>10.1f} {unit:<4} | {op} {goal:>7.1f} {unit:<4} | {ratio:>6.2f}x | {status:<6} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=None, help="where to write the generated data (default: temp)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    parser.add_argument("--memory-child", nargs=4, metavar=("ROOT", "CACHE", "MODE", "BATCHES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        root, cache, mode, batches = args.memory_child
        memory_child(root, cache, mode, int(batches))
        return

    import logging

    logging.basicConfig(level=logging.WARNING)
    from datamodules import CommonVoiceCorpus, LibriSpeechCorpus

    scale = 0.25 if args.quick else 1.0
    tmp = tempfile.TemporaryDirectory(prefix="bench_data_")
    work = args.workdir or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows = []

    print("generating audio ...", flush=True)
    ls_root = write_librispeech(work / "ls", int(60 * scale), (30, 40))   # ~10-14 s utterances
    cv_root = write_commonvoice(work / "cv", int(100 * scale), (10, 16))  # ~4-6 s clips at 48 kHz
    ls_audio, ls_wall, ls_raw = loader_throughput(LibriSpeechCorpus(ls_root, ["train-clean-100"]), work / "cache", 3)
    cv_audio, cv_wall, cv_raw = loader_throughput(CommonVoiceCorpus(cv_root, "en", "train"), work / "cache", 3)
    rows.append(row("loader FLAC 16k, audio s / wall s / worker", ls_audio / ls_wall, 1000, "x", True))
    rows.append(row("  decode-only ceiling on this machine (FLAC)", ls_audio / ls_raw, 1000, "x", True, reference=True))
    rows.append(row("loader MP3 48k->16k, audio s / wall s / worker", cv_audio / cv_wall, 400, "x", True))
    rows.append(row("  decode+resample ceiling, this machine (MP3)", cv_audio / cv_raw, 400, "x", True, reference=True))
    print(f"  {ls_audio:.0f} s of FLAC, {cv_audio:.0f} s of MP3 per epoch", flush=True)

    print("padding study ...", flush=True)
    bucket_ls, bucket_cv, random_ls = padding_study(int(20000 * scale))
    rows.append(row("padded frames, bucketing (LibriSpeech-like)", 100 * bucket_ls, 5.0, "%", False))
    rows.append(row("padded frames, bucketing (Common Voice-like)", 100 * bucket_cv, 5.0, "%", False))
    rows.append(row("padded frames, random batching (LibriSpeech)", 100 * random_ls, 5.0, "%", False, reference=True))

    print("manifest memory ...", flush=True)
    n = int(280_000 * scale)
    fabricate_cached_corpus(work / "index", work / "index-cache", n)
    fabricate_cached_corpus(work / "index-small", work / "index-small-cache", n // 10)
    lazy = measure_memory(work / "index", work / "index-cache", "lazy")
    eager = measure_memory(work / "index-small", work / "index-small-cache", "eager")
    assert lazy["cuts"] == n and eager["cuts"] == n // 10
    rows.append(row(f"corpus.cuts()+datamodule+sampler, {n // 1000}k utts", lazy["delta_mb"], 150, "MB", False))
    rows.append(row(f"old eager CutSet, {n // 1000}k utts ({n // 10000}k x 10)", 10 * eager["delta_mb"], 150, "MB",
                    False, reference=True))
    print(f"  end-to-end datamodule setup + 400 sampled batches over {n} utterances: {lazy['seconds']:.0f} s", flush=True)

    print()
    print(f"| {'measure':<46} | {'value':>15} | {'goal':>15} | {'ratio':>7} | status |")
    print(f"|{'-' * 48}|{'-' * 17}|{'-' * 17}|{'-' * 9}|--------|")
    print("\n".join(rows))
    print(f"\nload average during the run: {Path('/proc/loadavg').read_text().split()[:3]} on 2 cores")
    print(f"ratio = value/goal (throughput) or goal/value (padding, memory); >= 1 meets the goal. "
          f"Total {time.perf_counter() - t0:.0f} s.")
    tmp.cleanup()


if __name__ == "__main__":
    main()
