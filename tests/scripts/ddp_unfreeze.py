"""Real 2-process CPU DDP run of GradualUnfreezing (+ AudioThroughput); ranks dump what they saw.

    python tests/scripts/ddp_unfreeze.py --out DIR [--no-sync]

Each rank trains on *different* data (seeded by rank). The schedule unfreezes ``top:1`` at step 2
and ``all`` at step 4; each rank writes ``DIR/rank{r}_step{s}.pt`` ({name: tensor}) at steps 2, 4, 6.
``--no-sync`` disables the gradient sync (stock BaseFinetuning behaviour) to show the replicas then
diverge. Throughput: rank r's rows claim ``RANK_AUDIO_SAMPLES[r]`` samples of audio, a manual clock
advances 0.25 s per batch, and rank 0 writes the logged metrics to ``DIR/metrics.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from pytorch_lightning.loggers import Logger  # noqa: E402
from pytorch_lightning.utilities.rank_zero import rank_zero_only  # noqa: E402
from unfreeze_standin import StandInModule, regression_loader  # noqa: E402

from callbacks import AudioThroughput, GradualUnfreezing  # noqa: E402

SNAPSHOT_STEPS = (2, 4, 6)
SCHEDULE = {0: ["head"], 2: ["top:1"], 4: ["all"]}
RANK_AUDIO_SAMPLES = (8000, 16000)  # 0.5 s per row on rank 0, 1 s on rank 1
BATCH_SIZE, SECONDS_PER_BATCH, LOG_EVERY = 8, 0.25, 2


class SnapshotParams(pl.Callback):
    """Save this rank's parameters after the optimizer steps listed in ``steps``."""

    def __init__(self, out: Path, steps: tuple[int, ...]) -> None:
        self.out, self.steps = out, steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step in self.steps:
            state = {n: p.detach().clone() for n, p in pl_module.named_parameters()}
            torch.save(state, self.out / f"rank{trainer.global_rank}_step{trainer.global_step}.pt")


class ManualClock(pl.Callback):
    """Deterministic clock for AudioThroughput: advances ``SECONDS_PER_BATCH`` per training batch."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def on_train_batch_end(self, *args):
        self.now += SECONDS_PER_BATCH


class JsonlLogger(Logger):
    """Appends every ``log_metrics`` call (rank 0) as one JSON line."""

    name, version = "jsonl", 0

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path

    @rank_zero_only
    def log_metrics(self, metrics, step=None):
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **{k: float(v) for k, v in metrics.items()}}) + "\n")

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--no-sync", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    rank = int(os.environ.get("LOCAL_RANK", 0))
    clock, throughput = ManualClock(), AudioThroughput()
    throughput.clock = clock
    callbacks = [GradualUnfreezing(SCHEDULE, unit="step", ddp_sync=not args.no_sync),
                 SnapshotParams(args.out, SNAPSHOT_STEPS), clock, throughput]
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_steps=max(SNAPSHOT_STEPS), callbacks=callbacks,
        use_distributed_sampler=False, logger=JsonlLogger(args.out / "metrics.jsonl"), log_every_n_steps=LOG_EVERY,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    loader = regression_loader(n=64, batch_size=BATCH_SIZE, seed=100 + rank, audio_samples=RANK_AUDIO_SAMPLES[rank])
    trainer.fit(StandInModule(), loader)


if __name__ == "__main__":
    main()
