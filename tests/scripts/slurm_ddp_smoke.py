"""Tiny DDP training run for the SLURM integration test (stands in for ``speechxfer fit``).

Run by ``srun`` (one process per task). Accepts the trainer arguments the sbatch template appends
(``--trainer.num_nodes=N --trainer.devices=D --trainer.accelerator=A``) plus ``--trainer.max_steps``.
Lightning must pick ``SLURMEnvironment`` and not launch processes itself. Writes:

- ``<out_dir>/checkpoints/*.ckpt`` (``ModelCheckpoint``, rank 0),
- ``<out_dir>/rank_<global_rank>.json``: SLURM and Lightning view of rank / world size, the
  cluster environment class, and a checksum of the final weights (equal on all ranks iff DDP
  synchronised gradients, since each rank trains on a different data shard).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class TinyRegression(pl.LightningModule):
    """Linear regression y = x @ w on (B, 4) inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch  # (B, 4), (B, 1)
        loss = nn.functional.mse_loss(self.layer(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def regression_data(n: int = 64) -> TensorDataset:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=generator)
    return TensorDataset(x, x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--trainer.num_nodes", dest="num_nodes", type=int, default=1)
    parser.add_argument("--trainer.devices", dest="devices", type=int, default=1)
    parser.add_argument("--trainer.accelerator", dest="accelerator", default="cpu")
    parser.add_argument("--trainer.max_steps", dest="max_steps", type=int, default=4)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    pl.seed_everything(0)
    model = TinyRegression()
    trainer = pl.Trainer(
        accelerator=args.accelerator,
        devices=args.devices,
        num_nodes=args.num_nodes,
        strategy="ddp",
        max_steps=args.max_steps,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out_dir,
        callbacks=[ModelCheckpoint(dirpath=out_dir / "checkpoints", save_last=True)],
    )
    trainer.fit(model, DataLoader(regression_data(), batch_size=4, shuffle=True))
    weights = torch.cat([p.detach().flatten() for p in model.parameters()])
    record = {
        "slurm_procid": int(os.environ["SLURM_PROCID"]),
        "slurm_ntasks": int(os.environ["SLURM_NTASKS"]),
        "global_rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "cluster_environment": type(trainer.strategy.cluster_environment).__name__,
        "global_step": trainer.global_step,
        "weights": weights.tolist(),
    }
    (out_dir / f"rank_{trainer.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
