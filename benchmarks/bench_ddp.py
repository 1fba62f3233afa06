"""DDP on CPU: 2 ranks vs 1 rank through the real CLI — throughput ratio and identical final metrics.

    python benchmarks/bench_ddp.py [--quick] [--epochs 2] [--threads-per-rank 1]

Runs ``python -m experiments fit`` twice on the same generated tone-speech corpus and config
(``CTCModule(ScratchEncoder)``, dropout 0, fixed seed):

- 1 rank, ``accumulate_grad_batches=2``: every optimizer step sees global batches ``2k`` and ``2k+1``;
- 2 ranks (``strategy=ddp``, gloo): rank ``r`` gets global batch ``2k + r`` (``DurationBucketingSampler``
  shards the same global batch sequence; one duration bucket, see ``one_bucket``), DDP averages the
  two gradients.

The two runs therefore take the same optimizer steps on the same data, so the final validation
WER/CER/loss must match (checked; float summation order is the only difference). Precondition,
checked before training: every epoch has an even number of global batches, and the two ranks'
batches are exactly the even / odd batches of the single-rank sequence. Throughput is
``train/samples_per_sec`` (utterances per second over all ranks, ``callbacks.AudioThroughput``), each
rank with ``--threads-per-rank`` torch threads. Goal: 2 ranks / 1 rank >= 1.6 on 2 idle cores.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_common import REPO, make_tone_corpus, ratio_line, source_data_config, write_yaml  # noqa: E402

DIST_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GLOBAL_RANK", "RANK",
            "SPEECHXFER_RUN_DIR")


def config(root: Path, epochs: int, max_duration: float, quick: bool) -> dict:
    hidden, layers = (48, 1) if quick else (128, 2)
    return {
        "experiment": "bench_ddp", "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "max_epochs": epochs, "check_val_every_n_epoch": epochs,
                    "log_every_n_steps": 1, "num_sanity_val_steps": 0, "enable_progress_bar": False,
                    "enable_model_summary": False, "gradient_clip_val": 5.0, "use_distributed_sampler": False},
        "data": one_bucket(source_data_config(root, max_duration=max_duration)),
        "model": {"class_path": "lightning_modules.CTCModule", "init_args": {
            "backbone": {"class_path": "lightning_modules.backbones.ScratchEncoder", "init_args": {
                "n_mels": 80, "conv_channels": 16, "hidden": hidden, "num_layers": layers, "kind": "bilstm",
                "subsampling": 4, "dropout": 0.0}},
            "dropout": 0.0, "lr": 0.002, "warmup_steps": 4, "decay": "cosine"}},
    }


def one_bucket(data: dict) -> dict:
    """``num_buckets: 1``: with several buckets lhotse draws the two batches of a 2-rank step from the
    same bucket, so the global batch sequence would depend on the world size. (Its
    ``sync_buckets=False`` would avoid that, but in lhotse 1.33 it silently drops cuts.)"""
    data["init_args"]["num_buckets"] = 1
    return data


def check_sharding(root: Path, max_duration: float, epochs: int) -> list[int]:
    """Global batches per epoch; raises unless 2-rank shards are the even/odd single-rank batches."""
    from datamodules import LibriSpeechCorpus
    from datamodules.sampling import DurationBucketingSampler

    cuts = LibriSpeechCorpus(root, ["train-clean-100"]).cuts(root / ".cache")
    counts = []
    for epoch in range(epochs):
        def batches(rank: int, world: int) -> list[list[str]]:
            s = DurationBucketingSampler(cuts, max_duration, num_buckets=1, shuffle=True, seed=0, rank=rank,
                                         world_size=world)
            s.set_epoch(epoch)
            return [[c.id for c in b] for b in s]

        single, r0, r1 = batches(0, 1), batches(0, 2), batches(1, 2)
        if len(single) % 2 or r0 != single[0::2] or r1 != single[1::2]:
            raise RuntimeError(f"epoch {epoch}: {len(single)} global batches; 2-rank shards are not the even/odd "
                               "batches of the single-rank run, choose another --max-duration")
        counts.append(len(single))
    return counts


def pick_max_duration(root: Path, start: float, epochs: int) -> tuple[float, list[int]]:
    for step in range(40):
        candidate = start + 0.25 * step
        try:
            return candidate, check_sharding(root, candidate, epochs)
        except RuntimeError:
            continue
    raise RuntimeError("no max_duration near the default gives an even, exactly sharded batch sequence")


def fit(cfg: Path, work: Path, name: str, devices: int, accumulate: int, threads: int) -> tuple[Path, float]:
    """Run the CLI; returns (run dir, wall seconds)."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    env.update(OMP_NUM_THREADS=str(threads), WANDB_MODE="disabled", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "experiments", "fit", "--config", str(cfg), "--runs_dir", str(work / "runs"),
           "--run_name", name, "--wandb", "false", "--trainer.devices", str(devices),
           "--trainer.accumulate_grad_batches", str(accumulate)]
    if devices > 1:
        cmd += ["--trainer.strategy", "ddp"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"{name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return work / "runs" / "bench_ddp" / name, wall


def read_metrics(run_dir: Path) -> tuple[dict[str, float], list[float]]:
    """(last logged value of every val/* metric, all logged train/samples_per_sec values)."""
    path = run_dir / "metrics.csv" if (run_dir / "metrics.csv").is_file() else run_dir / "csv" / "metrics.csv"
    final, rates = {}, []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if value and key.startswith("val/"):
                    final[key] = float(value)
            if row.get("train/samples_per_sec"):
                rates.append(float(row["train/samples_per_sec"]))
    return final, rates


def max_param_diff(a: Path, b: Path) -> float:
    import torch

    sa = torch.load(a / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    sb = torch.load(b / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa if sa[k].is_floating_point())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model and corpus (smoke run)")
    parser.add_argument("--epochs", type=int, default=None, help="default 2 (quick 1)")
    parser.add_argument("--threads-per-rank", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    epochs = args.epochs or (1 if args.quick else 2)
    tmp = tempfile.TemporaryDirectory(prefix="bench_ddp_")
    work = args.workdir or Path(tmp.name)
    root = make_tone_corpus(work / "corpus", train=16 if args.quick else 192, dev=4 if args.quick else 16, test=2,
                            words=(2, 4) if args.quick else (3, 6))
    max_duration, counts = pick_max_duration(root, 5.0 if args.quick else 10.0, epochs)
    print(f"max_duration {max_duration:g} s: global batches per epoch {counts} (even; shards checked)", flush=True)
    cfg = write_yaml(work / "bench_ddp.yaml", config(root, epochs, max_duration, args.quick))

    one, wall1 = fit(cfg, work, "ranks1", devices=1, accumulate=2, threads=args.threads_per_rank)
    two, wall2 = fit(cfg, work, "ranks2", devices=2, accumulate=1, threads=args.threads_per_rank)
    m1, rates1 = read_metrics(one)
    m2, rates2 = read_metrics(two)
    skip = 1 if min(len(rates1), len(rates2)) > 1 else 0  # the first interval includes warm-up
    sps1, sps2 = statistics.mean(rates1[skip:]), statistics.mean(rates2[skip:])
    print(f"1 rank:  {sps1:.1f} utt/s, final {m1}, process wall {wall1:.1f} s", flush=True)
    print(f"2 ranks: {sps2:.1f} utt/s, final {m2}, process wall {wall2:.1f} s", flush=True)
    keys = sorted(set(m1) & set(m2))
    metric_diff = max((abs(m1[k] - m2[k]) for k in keys), default=float("nan"))
    param_diff = max_param_diff(one, two)
    detail = (f"{sps2:.1f} vs {sps1:.1f} utt/s, {args.threads_per_rank} thread(s)/rank, "
              f"{sum(counts) // 2} optimizer steps; process wall {wall2:.1f} s vs {wall1:.1f} s")
    print(ratio_line("DDP CPU: 2 ranks / 1 rank samples/s", sps2 / sps1, 1.6, lower_is_better=False, detail=detail,
                     quick=args.quick))
    same = {k.split("/")[-1]: (round(m1[k], 6), round(m2[k], 6)) for k in keys}
    print(ratio_line("DDP CPU: final val metrics max abs diff (2 vs 1 rank)", metric_diff, 1e-4, unit="",
                     detail=f"{same}; max abs param diff {param_diff:.2e}"))
    tmp.cleanup()


if __name__ == "__main__":
    main()
