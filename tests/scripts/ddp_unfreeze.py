"""Real 2-process CPU DDP run of GradualUnfreezing; every rank dumps its parameters for comparison.

    python tests/scripts/ddp_unfreeze.py --out DIR [--no-sync]

Each rank trains on *different* data (seeded by rank). The schedule unfreezes ``top:1`` at step 2
and ``all`` at step 4; each rank writes ``DIR/rank{r}_step{s}.pt`` ({name: tensor}) at steps 2, 4, 6
plus ``DIR/rank{r}_meta.pt`` (trainable names, synced-by-callback count). ``--no-sync`` disables the
gradient sync (stock BaseFinetuning behaviour) to show the replicas then diverge.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from unfreeze_standin import StandInModule, regression_loader  # noqa: E402

from callbacks import GradualUnfreezing  # noqa: E402

SNAPSHOT_STEPS = (2, 4, 6)


class SnapshotParams(pl.Callback):
    """Save this rank's parameters after the optimizer steps listed in ``steps``."""

    def __init__(self, out: Path, steps: tuple[int, ...]) -> None:
        self.out, self.steps = out, steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step in self.steps:
            state = {n: p.detach().clone() for n, p in pl_module.named_parameters()}
            torch.save(state, self.out / f"rank{trainer.global_rank}_step{trainer.global_step}.pt")

    def on_fit_end(self, trainer, pl_module):
        meta = {"trainable": sorted(n for n, p in pl_module.named_parameters() if p.requires_grad)}
        torch.save(meta, self.out / f"rank{trainer.global_rank}_meta.pt")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--no-sync", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    model = StandInModule()
    unfreeze = GradualUnfreezing({0: ["head"], 2: ["top:1"], 4: ["all"]}, unit="step", ddp_sync=not args.no_sync)
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", max_steps=max(SNAPSHOT_STEPS),
        callbacks=[unfreeze, SnapshotParams(args.out, SNAPSHOT_STEPS)], use_distributed_sampler=False,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    rank = int(__import__("os").environ.get("LOCAL_RANK", 0))
    trainer.fit(model, regression_loader(n=64, seed=100 + rank))


if __name__ == "__main__":
    main()
