"""Decoding cost: seconds of decoding per second of audio, greedy vs beam search (+ lexicon, + LM).

    python benchmarks/bench_decode.py [--quick] [--ckpt CKPT] [--steps N] [--repeats 3] [--threads 1]

On the demo corpus (``experiments/demo_corpus``, synthesised speech):

1. the model: ``--ckpt``, else the quickstart model trained here (``speechxfer fit --config
   experiments/quickstart.yaml``, its 240 steps; ``--steps`` changes that, ``--quick``: 2 steps);
2. a lexicon and a 3-gram LM of the demo SOURCE training transcripts (``experiments.lm.build_lm``, as
   ``speechxfer lm --ckpt CKPT --data experiments/data/demo_source.yaml`` writes them);
3. the log-probs of the demo validation sets (source + target dev) are computed once
   (``experiments.decode_sweep.compute_log_probs``); every decoder then decodes the same log-probs,
   one utterance at a time (as ``speechxfer transcribe`` and validation call it per batch row), one
   torch thread, ``--repeats`` times; the fastest pass counts.

Per decoder it prints decode seconds per audio second, the ratio to greedy decoding measured in the same
run, the ratio to the acoustic model's own time (audio loading + forward pass), and the WER/CER (for
orientation: a CPU-minute model of 4.5 min of speech is still near the CTC blank plateau, see README). The frames' blank share and mean top probability say how peaked the
log-probs are: beam search cost grows with beam size x tokens per frame kept within ``beam_threshold``.
Ratios are RESULT lines without a goal (``info``): the issue asks for the cost to be reported.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_common import REPO, ratio_line, set_threads  # noqa: E402

DATA = REPO / "experiments" / "data" / "demo_source.yaml"


def train_quickstart(runs: Path, steps: int | None) -> Path:
    """Train the quickstart model on the demo corpus; returns its last.ckpt."""
    args = [sys.executable, "-m", "experiments", "fit", "--config", str(REPO / "experiments" / "quickstart.yaml"),
            "--runs_dir", str(runs), "--run_name", "bench", "--wandb", "false"]
    if steps is not None:
        args += ["--trainer.max_steps", str(steps), "--trainer.max_epochs", "-1"]
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"training the quickstart model failed:\n{proc.stderr[-3000:]}")
    return runs / "quickstart" / "bench" / "checkpoints" / "last.ckpt"


def decoder_configs(lexicon: str, lm: str, quick: bool) -> dict[str, object]:
    from lightning_modules.decoding import DecoderConfig

    beams = (1, 8) if quick else (1, 10, 50)
    configs = {"greedy": DecoderConfig(kind="greedy")}
    configs.update({f"beam {b}": DecoderConfig(beam_size=b) for b in beams})
    big = beams[-1]
    for b in beams[1:]:
        configs[f"beam {b} + lexicon"] = DecoderConfig(beam_size=b, lexicon=lexicon)
        configs[f"beam {b} + lexicon + LM"] = DecoderConfig(beam_size=b, lexicon=lexicon, lm=lm)
    configs[f"beam {big} + LM, open vocabulary"] = DecoderConfig(beam_size=big, lexicon=lexicon, lexicon_only=False,
                                                                 lm=lm)
    return configs


def time_decoder(decoder, utterances: list, repeats: int) -> tuple[float, list[str]]:
    """Fastest of ``repeats`` passes over ``utterances`` ((T, V) log-probs), and the transcripts."""
    import torch

    best, texts = float("inf"), []
    for _ in range(repeats):
        start = time.perf_counter()
        texts = [decoder(lp[None], torch.tensor([lp.shape[0]]))[0] for lp in utterances]
        best = min(best, time.perf_counter() - start)
    return best, texts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 training steps, fewer decoders, 1 repeat (smoke)")
    parser.add_argument("--ckpt", type=Path, help="a checkpoint of a model with the demo corpus' vocabulary")
    parser.add_argument("--steps", type=int, help="training steps of the quickstart model (default: its config)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    import torch
    from torchmetrics.functional.text import char_error_rate, word_error_rate

    from experiments.decode_sweep import compute_log_probs, validation_loaders
    from experiments.lm import build_lm, load_datamodule, training_texts
    from lightning_modules import build_decoder, load_model

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        ckpt = args.ckpt or train_quickstart(work / "runs", 2 if args.quick else args.steps)
        trained_s = time.perf_counter() - start
        model = load_model(ckpt)
        datamodule = load_datamodule(DATA)
        sentences = [s for s in (model.tokenizer.normalize(t) for t in training_texts(datamodule)) if s]
        info = build_lm(sentences, model.tokenizer, 3, work / "lm", [str(DATA)])
        loaders = validation_loaders(datamodule)
        start = time.perf_counter()
        cache = compute_log_probs(model, loaders, torch.device("cpu"), datamodule.sample_rate)
        model_s = time.perf_counter() - start
        utterances = [lp for entry in cache.values() for lp in entry["log_probs"]]
        references = [t for entry in cache.values() for t in entry["texts"]]
        frames_per_second = sum(len(lp) for lp in utterances) / sum(e["seconds"] for e in cache.values())
        if args.quick:
            utterances, references = utterances[:6], references[:6]
        frames = torch.cat(utterances)
        seconds = len(frames) / frames_per_second  # audio seconds of the decoded utterances
        blank_share = float((frames.argmax(-1) == model.tokenizer.blank_id).float().mean())
        print(f"model: {ckpt if args.ckpt else f'quickstart trained here ({trained_s:.0f} s)'}; "
              f"LM: 3-gram of {info['sentences']} demo source training sentences, "
              f"lexicon {info['lexicon_words']} words")
        repeats = 1 if args.quick else args.repeats
        print(f"audio: {len(utterances)} demo validation utterances, {seconds:.1f} s, {len(frames)} frames "
              f"(blank argmax {100 * blank_share:.0f} % of frames, mean top prob "
              f"{float(frames.exp().max(-1).values.mean()):.2f}); {args.threads} thread(s), best of {repeats}")
        model_rtf = model_s / sum(e["seconds"] for e in cache.values())
        print(f"acoustic model (audio loading + forward, {args.threads} thread(s)): {model_rtf:.4f} s per audio s")
        print("\n| decoder | decode s per audio s | x greedy | x model | WER % | CER % |\n|---|---|---|---|---|---|")
        rows = {}
        for name, config in decoder_configs(str(work / "lm" / "lexicon.txt"), str(work / "lm" / "lm.arpa"),
                                            args.quick).items():
            decoder = build_decoder(config, model.tokenizer)
            wall, texts = time_decoder(decoder, utterances, repeats)
            rows[name] = wall / seconds
            print(f"| {name} | {wall / seconds:.5f} | {rows[name] / rows['greedy']:.1f} | "
                  f"{rows[name] / model_rtf:.3f} | "
                  f"{100 * float(word_error_rate(texts, references)):.1f} | "
                  f"{100 * float(char_error_rate(texts, references)):.1f} |", flush=True)
        print()
        for name, rtf in rows.items():
            if name != "greedy":
                print(ratio_line(f"decode time {name} / greedy", rtf / rows["greedy"], None,
                                 detail=f"{rtf:.5f} vs {rows['greedy']:.5f} s per audio s", quick=args.quick))


if __name__ == "__main__":
    main()
