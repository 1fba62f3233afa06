"""MetaCTC on an EpisodicDataModule, 1 process or a REAL 2-process CPU DDP (gloo); ranks dump what they did.

    python tests/scripts/ddp_meta.py --corpus DIR --out DIR --devices 1|2

Both runs see the same global meta-batches (4 tasks per outer step; under DDP each rank adapts 2 of
them) for 3 outer steps, then validate on 2 meta-val tasks (one per rank). The outer optimizer is SGD: its
update is linear in the meta-gradient (Adam would turn float noise of the exactly-zero gradient of an
attention key bias into full-size steps of either sign, hiding what the test compares). Each rank writes
``DIR/rank{r}.pt``: ``{"params": {name: tensor}, "tasks": [[task, ...] per step], "metrics": {...}}``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT)]

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402

from datamodules import LibriSpeechCorpus  # noqa: E402
from datamodules.episodic import EpisodicDataModule  # noqa: E402
from lightning_modules.meta import MetaCTC  # noqa: E402
from tests.conftest import make_tiny_backbone  # noqa: E402

STEPS = 3


class Dump(pl.Callback):
    """Tasks of every step's episodes on this rank; parameters and logged metrics at the end."""

    def __init__(self, out: Path) -> None:
        self.out, self.tasks = out, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.tasks.append([e["task"] for e in batch])

    def on_fit_end(self, trainer, pl_module):
        state = {"params": {n: p.detach().clone() for n, p in pl_module.named_parameters()}, "tasks": self.tasks,
                 "metrics": {k: float(v) for k, v in trainer.callback_metrics.items()}}
        torch.save(state, self.out / f"rank{trainer.global_rank}.pt")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--devices", type=int, choices=(1, 2), required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    data = EpisodicDataModule(LibriSpeechCorpus(args.corpus, ["train-clean-100"]), meta_val=2, meta_test=0, shots=2,
                              queries=2, tasks_per_step=4, steps_per_epoch=STEPS, eval_shots=2, eval_queries=2,
                              num_workers=0, cache_dir=str(args.out / "cache"))
    module = MetaCTC(make_tiny_backbone(0), data.tokenizer.to_dict(), inner_groups=["top:1"], learn_inner_lr=True,
                     inner_steps=2, lr=0.05, dropout=0.0, outer_optimizer="sgd")
    trainer = pl.Trainer(accelerator="cpu", devices=args.devices, strategy="ddp" if args.devices > 1 else "auto",
                         max_epochs=1, use_distributed_sampler=False, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[Dump(args.out)])
    trainer.fit(module, datamodule=data)


if __name__ == "__main__":
    main()
