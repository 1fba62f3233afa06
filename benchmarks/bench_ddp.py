"""DDP on CPU: 2 ranks vs 1 rank through the real CLI — identical final metrics and the throughput ratio.

    python benchmarks/bench_ddp.py [--quick] [--epochs 2] [--rounds 3] [--threads-per-rank 1]

Every run is ``python -m experiments fit`` on the same generated tone-speech corpus and model
(``CTCModule(ScratchEncoder)``, dropout 0, fixed seed).

Equality (one pair of runs, ONE duration bucket):

- 1 rank, ``accumulate_grad_batches=2``: every optimizer step sees global batches ``2k`` and ``2k+1``;
- 2 ranks (``strategy=ddp``, gloo): rank ``r`` gets global batch ``2k + r`` (``DurationBucketingSampler``
  shards the same global batch sequence), DDP averages the two gradients.

The two runs take the same optimizer steps on the same data, so the final parameters and validation
WER/CER/loss must match (checked). Precondition, checked before training: every epoch has an even
number of global batches and the two ranks' batches are exactly the even / odd batches of the
single-rank sequence. One bucket, because with several lhotse draws the two batches of a 2-rank step
from the same duration bucket (ranks then finish their steps together), so the global sequence
depends on the world size; its ``sync_buckets=False`` would avoid that but in lhotse 1.33 silently
drops cuts.

Throughput (``--rounds`` alternating pairs, the training config's 4 duration buckets): 1 rank vs 2 ranks
over the same epochs, as the median of the per-step ``train/samples_per_sec`` (utterances per second
over all ranks, ``callbacks.AudioThroughput``; a median, since a shared host's bursts hit single steps),
each rank with ``--threads-per-rank`` torch threads. Goal: 2 ranks / 1 rank >= 1.6 on 2 idle cores. For
reference, the same figure for two independent 1-rank runs at once (summed): what two cores give this
workload without any synchronisation.
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_common import REPO, make_tone_corpus, ratio_line, source_data_config, write_yaml  # noqa: E402

DIST_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GLOBAL_RANK", "RANK",
            "SPEECHXFER_RUN_DIR")


def config(root: Path, epochs: int, max_duration: float, quick: bool, num_buckets: int) -> dict:
    hidden, layers = (48, 1) if quick else (128, 2)
    return {
        "experiment": "bench_ddp", "seed_everything": 0,
        "trainer": {"accelerator": "cpu", "max_epochs": epochs, "check_val_every_n_epoch": epochs,
                    "log_every_n_steps": 1, "num_sanity_val_steps": 0, "enable_progress_bar": False,
                    "enable_model_summary": False, "gradient_clip_val": 5.0, "use_distributed_sampler": False},
        "data": source_data_config(root, max_duration=max_duration, num_buckets=num_buckets),
        "model": {"class_path": "lightning_modules.CTCModule", "init_args": {
            "backbone": {"class_path": "lightning_modules.backbones.ScratchEncoder", "init_args": {
                "n_mels": 80, "conv_channels": 16, "hidden": hidden, "num_layers": layers, "kind": "bilstm",
                "subsampling": 4, "dropout": 0.0}},
            "dropout": 0.0, "lr": 0.002, "warmup_steps": 4, "decay": "cosine"}},
    }


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


def step_rates(run_dir: Path) -> list[float]:
    """Logged per-step utterances/s of a run, without the first interval (it includes warm-up)."""
    rates = read_metrics(run_dir)[1]
    return rates[1:] if len(rates) > 1 else rates


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
    parser.add_argument("--rounds", type=int, default=None, help="1-rank/2-rank run pairs (default 3, quick 1)")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    epochs = args.epochs or (1 if args.quick else 2)
    args.rounds = args.rounds or (1 if args.quick else 3)
    tmp = tempfile.TemporaryDirectory(prefix="bench_ddp_")
    work = args.workdir or Path(tmp.name)
    root = make_tone_corpus(work / "corpus", train=16 if args.quick else 192, dev=4 if args.quick else 16, test=2,
                            words=(2, 4) if args.quick else (3, 6))
    max_duration, counts = pick_max_duration(root, 5.0 if args.quick else 10.0, epochs)
    print(f"max_duration {max_duration:g} s: global batches per epoch {counts} (even; shards checked)", flush=True)
    equal_cfg = write_yaml(work / "bench_ddp_equal.yaml", config(root, epochs, max_duration, args.quick, 1))
    speed_cfg = write_yaml(work / "bench_ddp_speed.yaml", config(root, epochs, max_duration, args.quick, 4))
    threads = args.threads_per_rank

    one, _ = fit(equal_cfg, work, "equal_ranks1", devices=1, accumulate=2, threads=threads)
    two, _ = fit(equal_cfg, work, "equal_ranks2", devices=2, accumulate=1, threads=threads)
    (m1, _), (m2, _) = read_metrics(one), read_metrics(two)
    keys = sorted(set(m1) & set(m2))
    metric_diff = max((abs(m1[k] - m2[k]) for k in keys), default=float("nan"))
    same = {k.split("/")[-1]: (round(m1[k], 6), round(m2[k], 6)) for k in keys}
    print(ratio_line("DDP CPU: final val metrics max abs diff (2 vs 1 rank)", metric_diff, 1e-4, unit="",
                     detail=f"{same}; max abs param diff {max_param_diff(one, two):.2e}"), flush=True)

    rates: dict[str, list[float]] = {"1 rank": [], "2 ranks": [], "2 x 1 rank at once": []}
    for r in range(args.rounds):  # alternate, so a burst on the shared host hits every side alike
        rates["1 rank"] += step_rates(fit(speed_cfg, work, f"speed_ranks1_{r}", 1, 1, threads)[0])
        rates["2 ranks"] += step_rates(fit(speed_cfg, work, f"speed_ranks2_{r}", 2, 1, threads)[0])
        if not args.quick:  # two independent 1-rank runs at once: what 2 cores give this workload
            with ThreadPoolExecutor(2) as pool:
                pair = list(pool.map(lambda k: fit(speed_cfg, work, f"speed_pair{k}_{r}", 1, 1, threads)[0], (0, 1)))
            rates["2 x 1 rank at once"] += [a + b for a, b in zip(*map(step_rates, pair))]
        print(f"round {r}: " + ", ".join(f"{k} {statistics.median(v):.1f} utt/s" for k, v in rates.items() if v),
              flush=True)
    sps = {k: statistics.median(v) for k, v in rates.items() if v}
    detail = (f"median per-step {sps['2 ranks']:.1f} vs {sps['1 rank']:.1f} utt/s, {args.rounds} round(s), "
              f"{threads} thread(s)/rank, {epochs} epoch(s), 4 duration buckets")
    print(ratio_line("DDP CPU: 2 ranks / 1 rank samples/s", sps["2 ranks"] / sps["1 rank"], 1.6,
                     lower_is_better=False, detail=detail, quick=args.quick))
    if "2 x 1 rank at once" in sps:
        ceiling = sps["2 x 1 rank at once"]
        print(ratio_line("DDP CPU: 2 independent 1-rank runs / 1 rank (ceiling)", ceiling / sps["1 rank"], None,
                         detail=f"{ceiling:.1f} utt/s summed: two cores without synchronisation"))
    tmp.cleanup()


if __name__ == "__main__":
    main()
