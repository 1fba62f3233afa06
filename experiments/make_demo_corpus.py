"""Build the shipped demo corpus: a clean "source" domain and a shifted "target" domain.

    python experiments/make_demo_corpus.py --out experiments/demo_corpus [--per-split 120 15 15]

* source: LibriSpeech layout, 16 kHz mono FLAC, espeak-ng voices/variants as speakers
  ``<out>/LibriSpeech/{train-clean-100,dev-clean,test-clean}/<spk>/<chap>/<spk>-<chap>-<utt>.flac``
  + ``<spk>-<chap>.trans.txt`` (UPPERCASE, no punctuation) + ``LibriSpeech/SPEAKERS.TXT``;
* target: Common Voice layout, 48 kHz (some 32 kHz) mono MP3, flite voices + noise at 10-18 dB SNR,
  some through a telephone band (300-3400 Hz):
  ``<out>/commonvoice/en/clips/*.mp3`` + ``{train,dev,test,validated}.tsv`` (the 11 real CV columns).

Prompts are Harvard sentences (public domain) read from the repo copy ``prompts.txt``: the first
``dev`` go to dev, the next ``test`` to test (both domains read the same held-out sentences), then
``train`` for source train and ``train`` more for target train. Speakers/clients are disjoint across
splits, as in the real corpora. Everything is seeded: reruns give the same files and transcripts
(audio bytes may differ between tool versions). Synthesis is sequential (one subprocess at a time).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import logging
import random
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

log = logging.getLogger("make_demo_corpus")

DEFAULT_PROMPTS = Path(__file__).resolve().parent / "demo_corpus" / "prompts.txt"
SPLITS = ("train", "dev", "test")
LIBRISPEECH_SUBSETS = {"train": "train-clean-100", "dev": "dev-clean", "test": "test-clean"}
CV_COLUMNS = [
    "client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender",
    "accents", "variant", "locale", "segment",
]
TRIM = ["silence", "1", "0.02", "0.1%", "reverse", "silence", "1", "0.02", "0.1%", "reverse"]


class MissingToolError(RuntimeError):
    """A command-line tool the build needs is not installed."""


@dataclass(frozen=True)
class EspeakSpeaker:
    """A source-domain "speaker": an espeak-ng voice+variant with pitch (0-99) and speed (wpm)."""

    speaker_id: int
    chapter_id: int
    voice: str
    pitch: int
    speed: int
    sex: str


@dataclass(frozen=True)
class FliteClient:
    """A target-domain "client": flite voice, tempo, pitch shift, noise and channel."""

    number: int
    voice: str
    stretch: float
    pitch_cents: int
    noise: str  # sox synth noise type
    snr_db: float
    telephone: bool
    sample_rate: int
    gender: str
    accent: str

    @property
    def client_id(self) -> str:
        """128 hex characters, like a real Common Voice client id."""
        return hashlib.sha512(f"speechxfer-demo-client-{self.number}".encode()).hexdigest()


def _espeak(sid: int, chap: int, voice: str, pitch: int, speed: int) -> EspeakSpeaker:
    return EspeakSpeaker(sid, chap, voice, pitch, speed, "F" if "+f" in voice else "M")


SOURCE_SPEAKERS: dict[str, list[EspeakSpeaker]] = {
    "train": [
        _espeak(1001, 5001, "en-us+m3", 50, 165),
        _espeak(1002, 5002, "en-gb+f2", 60, 150),
        _espeak(1003, 5003, "en-us+m1", 40, 175),
        _espeak(1004, 5004, "en-gb-scotland+f4", 55, 160),
        _espeak(1005, 5005, "en-us-nyc+m7", 45, 170),
        _espeak(1006, 5006, "en-029+f3", 65, 155),
    ],
    "dev": [_espeak(2001, 6001, "en-gb-x-rp+m5", 50, 160), _espeak(2002, 6002, "en-us+f1", 58, 170)],
    "test": [_espeak(3001, 7001, "en-us+m2", 42, 158), _espeak(3002, 7002, "en-gb+f5", 62, 165)],
}

_US, _SCOT, _F, _M = "United States English", "Scottish English", "female_feminine", "male_masculine"
TARGET_CLIENTS: dict[str, list[FliteClient]] = {
    "train": [
        FliteClient(0, "slt", 1.00, 0, "pinknoise", 15, False, 48000, _F, _US),
        FliteClient(1, "rms", 0.90, 0, "brownnoise", 12, True, 48000, _M, _US),
        FliteClient(2, "awb", 1.10, 0, "whitenoise", 18, False, 48000, _M, _SCOT),
        FliteClient(3, "kal16", 1.00, 200, "pinknoise", 10, False, 32000, _M, _US),
        FliteClient(4, "slt", 0.95, 250, "whitenoise", 14, True, 48000, _F, _US),
        FliteClient(5, "kal", 1.05, -100, "brownnoise", 16, False, 48000, _M, _US),
    ],
    "dev": [
        FliteClient(6, "slt", 1.05, -200, "pinknoise", 13, False, 48000, _F, _US),
        FliteClient(7, "awb", 0.95, 150, "whitenoise", 12, True, 48000, _M, _SCOT),
    ],
    "test": [
        FliteClient(8, "rms", 1.10, 150, "pinknoise", 17, False, 32000, _M, _US),
        FliteClient(9, "kal16", 0.95, -150, "brownnoise", 11, True, 48000, _M, _US),
    ],
}


# ----------------------------------------------------------------------------- tools
def check_tools() -> dict[str, str]:
    """Paths of espeak-ng, flite, sox and an MP3 encoder (lame, else ffmpeg); raises MissingToolError."""
    found = {name: shutil.which(name) for name in ("espeak-ng", "flite", "sox", "lame", "ffmpeg")}
    missing = [n for n in ("espeak-ng", "flite", "sox") if not found[n]]
    if not (found["lame"] or found["ffmpeg"]):
        missing.append("lame (or ffmpeg)")
    if missing:
        raise MissingToolError(
            f"make_demo_corpus needs {', '.join(missing)} on PATH "
            "(Debian/Ubuntu: apt-get install espeak-ng flite sox lame)"
        )
    return {n: p for n, p in found.items() if p}


def run(cmd: list[str], stdin: str | None = None) -> None:
    """Run a tool; a failure raises RuntimeError with the command line and its stderr."""
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr.strip()}")


# ----------------------------------------------------------------------------- text
def load_prompts(path: Path) -> list[str]:
    """Non-empty stripped lines of ``path``."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip()]


def select_prompts(sentences: list[str], n: int, max_chars: int = 38, seed: int = 0) -> list[str]:
    """How ``prompts.txt`` was made: ``n`` short Harvard sentences (letters, ``' , .`` only), shuffled."""
    ok = [s for s in sentences if len(s) <= max_chars and re.fullmatch(r"[A-Za-z',. ]+", s)]
    if len(ok) < n:
        raise ValueError(f"only {len(ok)} sentences of <= {max_chars} chars, {n} requested")
    random.Random(seed).shuffle(ok)
    return ok[:n]


def assign_prompts(prompts: list[str], train: int, dev: int, test: int) -> dict[tuple[str, str], list[str]]:
    """{(domain, split): sentences}; dev/test sentences are shared by both domains, train ones are not."""
    need = dev + test + 2 * train
    if len(prompts) < need:
        raise ValueError(f"{need} prompts needed for --per-split {train} {dev} {test}, got {len(prompts)}")
    dev_s, test_s = prompts[:dev], prompts[dev : dev + test]
    src_train = prompts[dev + test : dev + test + train]
    tgt_train = prompts[dev + test + train : need]
    return {
        ("source", "train"): src_train, ("source", "dev"): dev_s, ("source", "test"): test_s,
        ("target", "train"): tgt_train, ("target", "dev"): dev_s, ("target", "test"): test_s,
    }


def librispeech_text(sentence: str) -> str:
    """LibriSpeech transcript style: UPPERCASE letters, apostrophes and single spaces."""
    return " ".join(re.sub(r"[^A-Z' ]", " ", sentence.upper()).split())


# ----------------------------------------------------------------------------- audio
def synth_source(text: str, spk: EspeakSpeaker, flac: Path, tmp: Path, pad: float = 0.1) -> None:
    """espeak-ng -> silence-trimmed, ``pad`` s of silence each side, -3 dBFS normalised 16 kHz mono FLAC."""
    raw = tmp / "espeak.wav"
    run(["espeak-ng", "-v", spk.voice, "-p", str(spk.pitch), "-s", str(spk.speed), "-w", str(raw), "--stdin"], text)
    run(["sox", "-D", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(flac), *TRIM,
         "pad", f"{pad:g}", f"{pad:g}", "norm", "-3"])


def noise_bed(kind: str, sample_rate: int, tmp: Path, seconds: int = 30) -> np.ndarray:
    """(N,) float32 sox-synthesised noise (repeatable mode), cached in ``tmp``."""
    path = tmp / f"noise-{kind}-{sample_rate}.wav"
    if not path.exists():
        run(["sox", "-R", "-n", "-r", str(sample_rate), "-c", "1", "-b", "16", str(path),
             "synth", str(seconds), kind, "norm", "-6"])
    return sf.read(path, dtype="float32")[0]


def add_noise(speech: np.ndarray, bed: np.ndarray, snr_db: float, rng: random.Random) -> np.ndarray:
    """(T,) speech + a random (seeded) slice of ``bed`` scaled to ``snr_db``; peak-limited to 0.89."""
    if len(bed) <= len(speech):
        raise ValueError(f"noise bed ({len(bed)} samples) shorter than utterance ({len(speech)})")
    start = rng.randrange(len(bed) - len(speech))
    noise = bed[start : start + len(speech)]
    rms = lambda x: float(np.sqrt(np.mean(np.square(x, dtype=np.float64))) + 1e-12)  # noqa: E731
    mixed = speech + noise * (rms(speech) / (rms(noise) * 10 ** (snr_db / 20)))
    return (mixed * (0.89 / max(float(np.abs(mixed).max()), 1e-9))).astype(np.float32)


def encode_mp3(wav: Path, mp3: Path, sample_rate: int, bitrate_kbps: int) -> None:
    """Mono CBR MP3 at ``sample_rate`` with lame (ffmpeg's libmp3lame if lame is absent)."""
    if shutil.which("lame"):
        run(["lame", "--quiet", "--noreplaygain", "-m", "m", "-b", str(bitrate_kbps),
             "--resample", f"{sample_rate / 1000:g}", str(wav), str(mp3)])
    else:
        run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(wav), "-ac", "1",
             "-ar", str(sample_rate), "-codec:a", "libmp3lame", "-b:a", f"{bitrate_kbps}k", str(mp3)])


def synth_target(text: str, client: FliteClient, mp3: Path, tmp: Path, rng: random.Random, bitrate: int) -> None:
    """flite -> trim, pitch shift, resample -> + noise at the client's SNR -> [telephone band] -> MP3."""
    raw, clean, mixed, final = (tmp / f"{n}.wav" for n in ("flite", "clean", "mixed", "final"))
    run(["flite", "-voice", client.voice, "--setf", f"duration_stretch={client.stretch}", "-t", text, "-o", str(raw)])
    pitch = ["pitch", str(client.pitch_cents)] if client.pitch_cents else []
    run(["sox", "-D", str(raw), "-r", str(client.sample_rate), "-c", "1", "-b", "16", str(clean), *TRIM, *pitch,
         "pad", "0.15", "0.15", "norm", "-6"])
    speech = sf.read(clean, dtype="float32")[0]
    bed = noise_bed(client.noise, client.sample_rate, tmp)
    sf.write(mixed, add_noise(speech, bed, client.snr_db, rng), client.sample_rate, subtype="PCM_16")
    if client.telephone:
        run(["sox", "-D", str(mixed), str(final), "sinc", "300-3400", "norm", "-1"])
        mixed = final
    encode_mp3(mixed, mp3, client.sample_rate, bitrate)


# ----------------------------------------------------------------------------- layouts
def build_source(root: Path, texts: dict[str, list[str]], tmp: Path) -> dict[str, int]:
    """Write ``root/LibriSpeech`` (audio, trans.txt, SPEAKERS.TXT); returns utterances per subset."""
    minutes: dict[int, float] = {}
    counts = {}
    for split, sentences in texts.items():
        speakers, subset = SOURCE_SPEAKERS[split], LIBRISPEECH_SUBSETS[split]
        lines: dict[EspeakSpeaker, list[str]] = {s: [] for s in speakers}
        for i, sentence in enumerate(sentences):
            spk = speakers[i % len(speakers)]
            chapter_dir = root / "LibriSpeech" / subset / str(spk.speaker_id) / str(spk.chapter_id)
            chapter_dir.mkdir(parents=True, exist_ok=True)
            uid = f"{spk.speaker_id}-{spk.chapter_id}-{len(lines[spk]):04d}"
            flac = chapter_dir / f"{uid}.flac"
            synth_source(sentence, spk, flac, tmp)
            minutes[spk.speaker_id] = minutes.get(spk.speaker_id, 0.0) + sf.info(flac).duration / 60
            lines[spk].append(f"{uid} {librispeech_text(sentence)}")
        for spk, spk_lines in lines.items():
            if spk_lines:
                chapter_dir = root / "LibriSpeech" / subset / str(spk.speaker_id) / str(spk.chapter_id)
                trans = chapter_dir / f"{spk.speaker_id}-{spk.chapter_id}.trans.txt"
                trans.write_text("\n".join(spk_lines) + "\n", encoding="utf-8")
        counts[subset] = len(sentences)
        log.info("source %s: %d utterances", subset, len(sentences))
    speakers = {LIBRISPEECH_SUBSETS[split]: spks for split, spks in SOURCE_SPEAKERS.items()}
    write_speakers_txt(root / "LibriSpeech" / "SPEAKERS.TXT", minutes, speakers)
    return counts


def write_speakers_txt(path: Path, minutes: dict[int, float], speakers: dict[str, list[EspeakSpeaker]],
                       title: str = "speechxfer demo corpus") -> None:
    """LibriSpeech's SPEAKERS.TXT format; NAME holds the espeak-ng voice settings.

    ``speakers``: {subset: speakers}; a speaker is listed once, under the first subset naming it.
    """
    rows = [f"; {title}: synthetic speakers (espeak-ng voice, pitch, speed)",
            ";ID  |SEX| SUBSET           |MINUTES| NAME"]
    listed: set[int] = set()
    for subset, subset_speakers in speakers.items():
        for s in subset_speakers:
            if s.speaker_id in minutes and s.speaker_id not in listed:
                listed.add(s.speaker_id)
                name = f"espeak-ng {s.voice} -p {s.pitch} -s {s.speed}"
                rows.append(f"{s.speaker_id:<5}| {s.sex} | {subset:<17}| {minutes[s.speaker_id]:5.2f} | {name}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def build_target(root: Path, texts: dict[str, list[str]], tmp: Path, seed: int, bitrate: int) -> dict[str, int]:
    """Write ``root/commonvoice/en`` (clips/*.mp3 + split TSVs + validated.tsv); returns clips per split."""
    base = root / "commonvoice" / "en"
    (base / "clips").mkdir(parents=True, exist_ok=True)
    validated, counts, clip_no = [], {}, 0
    for split, sentences in texts.items():
        rows = []
        for i, sentence in enumerate(sentences):
            client = TARGET_CLIENTS[split][i % len(TARGET_CLIENTS[split])]
            name = f"common_voice_en_{40000000 + clip_no}.mp3"
            clip_no += 1
            synth_target(sentence, client, base / "clips" / name, tmp, random.Random(f"{seed}-{name}"), bitrate)
            rows.append([client.client_id, name, sentence, "2", "0", "", client.gender, client.accent, "", "en", ""])
        write_tsv(base / f"{split}.tsv", rows)
        validated += rows
        counts[split] = len(rows)
        log.info("target %s: %d clips", split, len(rows))
    write_tsv(base / "validated.tsv", validated)
    return counts


def write_tsv(path: Path, rows: list[list[str]]) -> None:
    """Common Voice TSV: header + rows, tab separated, no quoting (fields must not hold tabs/quotes)."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, lineterminator="\n", quotechar=None)
        writer.writerow(CV_COLUMNS)
        writer.writerows(rows)


def build_corpus(
    out: Path,
    per_split: tuple[int, int, int] = (120, 15, 15),
    prompts_path: Path = DEFAULT_PROMPTS,
    seed: int = 0,
    mp3_bitrate: int = 40,
) -> dict[str, dict[str, int]]:
    """Build both domains under ``out`` (replacing ``out/LibriSpeech`` and ``out/commonvoice``).

    ``per_split`` is (train, dev, test) utterances per domain. Returns
    ``{"source": {subset: n}, "target": {split: n}}``.
    """
    check_tools()
    out = Path(out)
    prompts = load_prompts(prompts_path)
    assigned = assign_prompts(prompts, *per_split)
    out.mkdir(parents=True, exist_ok=True)
    if (out / "prompts.txt").resolve() != Path(prompts_path).resolve():
        shutil.copyfile(prompts_path, out / "prompts.txt")
    for owned in ("LibriSpeech", "commonvoice"):
        shutil.rmtree(out / owned, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="demo_corpus_") as tmp:
        source = build_source(out, {s: assigned[("source", s)] for s in SPLITS}, Path(tmp))
        target = build_target(out, {s: assigned[("target", s)] for s in SPLITS}, Path(tmp), seed, mp3_bitrate)
    return {"source": source, "target": target}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="corpus root (e.g. experiments/demo_corpus)")
    parser.add_argument("--per-split", type=int, nargs=3, default=(120, 15, 15), metavar=("TRAIN", "DEV", "TEST"),
                        help="utterances per split, for each domain (default: 120 15 15)")
    parser.add_argument("--prompts", type=Path, default=DEFAULT_PROMPTS, help="one sentence per line")
    parser.add_argument("--seed", type=int, default=0, help="noise offsets")
    parser.add_argument("--mp3-bitrate", type=int, default=40, help="kbit/s (CBR) of target clips")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    counts = build_corpus(args.out, tuple(args.per_split), args.prompts, args.seed, args.mp3_bitrate)
    log.info("done: %s", counts)


if __name__ == "__main__":
    main()
