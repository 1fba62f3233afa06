"""From-scratch recipe study: the framework (``speechxfer fit``) vs a plain PyTorch loop, same data and steps.

    python experiments/make_speech_corpus.py --out data/synth_words --kind words   # 800 isolated-word clips
    python benchmarks/recipe_study.py --root data/synth_words                      # plain, old, new (~6 min)
    python benchmarks/recipe_study.py --root data/synth_words --only old old+gru old+layernorm new-gru

Every run trains on ``train-clean-100`` for ``--steps`` optimizer steps from seed 0 and reports greedy
WER/CER on ``test-clean`` (held-out voices) at the last step, one thread each. ``plain`` is
``benchmarks/plain_ctc_loop.py`` (no framework code); every other run is ``python -m experiments fit``
with the ScratchEncoder CTC model of ``experiments/scratch_demo.yaml`` on this corpus: ``new`` is that
recipe as configured (ScratchEncoder/CTCModule defaults, batches of at most 32 utterances), ``old`` the
recipe quickstart.yaml had before (2x BiLSTM-160 on the unnormalised default-init frontend, unpadded
convs, batches of 40 s, lr 2e-3 with 30 warm-up steps and cosine decay, gradient clip 5), and
``<base>+<factor>`` / ``<base>-<factor>`` change ONE factor of it (``VARIANTS``). Prints a table and the
exact command of every run; ``benchmarks/study_notes.md`` has the results and what they mean.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

BB = "model.init_args.backbone.init_args."
OLD = {  # quickstart.yaml before the fix, with every default it relied on spelled out
    BB + "kind": "bilstm", BB + "hidden": 160, BB + "num_layers": 2, BB + "dropout": 0.1, BB + "center": False,
    BB + "conv_padding": False, BB + "proj_norm": False, BB + "normalize": "utterance",
    "model.init_args.lr": 0.002, "model.init_args.warmup_steps": 30, "model.init_args.decay": "cosine",
    "data.init_args.max_duration": 40.0, "data.init_args.max_cuts": None, "trainer.gradient_clip_val": 5.0,
}
FACTORS = {  # one factor each; applied on top of "old" (+) or taken back from "new" (-)
    "gru": {BB + "kind": "bigru"},
    "gru256": {BB + "kind": "bigru", BB + "hidden": 256},
    "lstm256": {BB + "hidden": 256},
    "layernorm": {BB + "proj_norm": True},
    "frames": {BB + "center": True, BB + "conv_padding": True},
    "norm_none": {BB + "normalize": "none"},
    "norm_mean": {BB + "normalize": "mean"},
    "sub2": {BB + "subsampling": 2},
    "lr1e-3_constant": {"model.init_args.lr": 0.001, "model.init_args.warmup_steps": 0,
                        "model.init_args.decay": "constant"},
    "constant": {"model.init_args.decay": "constant"},
    "cuts32": {"data.init_args.max_cuts": 32, "data.init_args.max_duration": 1000.0},
    "dropout0": {BB + "dropout": 0.0, "model.init_args.dropout": 0.0},
    "noclip": {"trainer.gradient_clip_val": None},
}
NEW_FACTORS = {  # "new-<name>": the new recipe with one factor set back
    "gru": {BB + "kind": "bilstm"},
    "layernorm": {BB + "proj_norm": False},
    "frames": {BB + "center": False, BB + "conv_padding": False},
    "cuts32": {"data.init_args.max_cuts": None, "data.init_args.max_duration": 40.0},
    "norm": {BB + "normalize": "none"},
    "lr2e-3": {"model.init_args.lr": 0.002},
    "linear": {"model.init_args.decay": "linear"},
}
VARIANTS = {"old": OLD, "new": {}, **{f"old+{k}": {**OLD, **v} for k, v in FACTORS.items()},
            **{f"new-{k}": v for k, v in NEW_FACTORS.items()}}


def data_config(root: Path) -> dict:
    corpus = lambda subset: {"class_path": "datamodules.LibriSpeechCorpus",  # noqa: E731
                             "init_args": {"root": str(root.resolve()), "subsets": [subset]}}
    return {"class_path": "datamodules.ASRDataModule",
            "init_args": {"domain": "source", "train": corpus("train-clean-100"), "val": {"source": corpus("test-clean")},
                          "num_workers": 1, "seed": 0}}


def framework_run(name: str, overrides: dict, root: Path, out: Path, steps: int, seed: int) -> tuple[list[str], Path]:
    """The ``speechxfer fit`` command of one variant: scratch_demo.yaml's model on ``root``, validated at the end."""
    data = out / "data.yaml"
    data.write_text(yaml.safe_dump(data_config(root)))
    args = ["fit", "--config", str(REPO / "experiments" / "scratch_demo.yaml"), "--data", str(data),
            "--experiment", "recipe", "--run_name", f"{name}-seed{seed}", "--runs_dir", str(out / "runs"),
            "--wandb", "false", "--seed_everything", str(seed),
            "--trainer.max_epochs", "-1", "--trainer.max_steps", str(steps),
            "--trainer.check_val_every_n_epoch", "null", "--trainer.val_check_interval", str(steps),
            "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false"]
    for key, value in overrides.items():
        args += [f"--{key}", "null" if value is None else str(value)]
    return [sys.executable, "-m", "experiments", *args], out / "runs" / "recipe" / f"{name}-seed{seed}" / "metrics.csv"


def last_val(metrics_csv: Path) -> tuple[float, float]:
    wer = cer = float("nan")
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            wer = float(row["val/source/wer"]) if row.get("val/source/wer") else wer
            cer = float(row["val/source/cer"]) if row.get("val/source/cer") else cer
    return wer, cer


def run(cmd: list[str], log: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline",
           "WANDB_SILENT": "true"}
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=REPO / "data" / "synth_words")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "recipe_study")
    parser.add_argument("--steps", type=int, default=475)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--only", nargs="+", default=["plain", "old", "new"],
                        help=f"runs: plain, {', '.join(VARIANTS)}")
    args = parser.parse_args(argv)
    unknown = set(args.only) - {"plain", *VARIANTS}
    if unknown:
        parser.error(f"unknown runs {sorted(unknown)}")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.only:
        for seed in args.seeds:
            log = args.out / f"{name}-seed{seed}.log"
            if name == "plain":
                cmd = [sys.executable, str(REPO / "benchmarks" / "plain_ctc_loop.py"), "--root", str(args.root),
                       "--steps", str(args.steps), "--eval-every", str(args.steps), "--seed", str(seed)]
                wall = run(cmd, log)
                wer, cer = map(float, re.findall(r"WER ([\d.]+) CER ([\d.]+)", log.read_text())[-1])
            else:
                cmd, metrics = framework_run(name, VARIANTS[name], args.root, args.out, args.steps, seed)
                wall = run(cmd, log)
                wer, cer = last_val(metrics)
            rows.append((name, seed, wer, cer, wall, " ".join(cmd[1:])))
            print(f"{name:>20} seed {seed}: test WER {100 * wer:5.1f} %  CER {100 * cer:5.1f} %  ({wall:.0f} s)",
                  flush=True)
    print("\n| run | test WER % (per seed) | test CER % (per seed) | mean WER / CER % |\n|---|---|---|---|")
    for name in args.only:
        mine = [r for r in rows if r[0] == name]
        wers, cers = [100 * r[2] for r in mine], [100 * r[3] for r in mine]
        print(f"| {name} | {' / '.join(f'{w:.1f}' for w in wers)} | {' / '.join(f'{c:.1f}' for c in cers)} | "
              f"{sum(wers) / len(wers):.1f} / {sum(cers) / len(cers):.1f} |")
    print("\ncommands (python ...):")
    for name, seed, *_, cmd in rows:
        print(f"  {name} (seed {seed}): {cmd}")


if __name__ == "__main__":
    main()
