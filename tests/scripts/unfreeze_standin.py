"""A tiny LightningModule following the layer-group / param-group contract of ARCHITECTURE.md.

Used by the unfreezing tests and ``tests/scripts/ddp_unfreeze.py`` so they do not depend on the CTC
core: three Linear "backbone" layers + a head, AdamW with one param group per layer group, and a step
scheduler computing each group's lr from ``base_lr``/``active_since_step``/``warmup_steps``.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class GroupKeyScheduler(torch.optim.lr_scheduler.LRScheduler):
    """lr = base_lr × linear warmup from ``active_since_step``; 0 while ``active_since_step`` is None."""

    def _lrs(self) -> list[float]:
        step = self.last_epoch
        out = []
        for g in self.optimizer.param_groups:
            since = g["active_since_step"]
            if since is None or step < since:
                out.append(0.0)
            elif g["warmup_steps"] > 0:
                out.append(g["base_lr"] * min(1.0, (step - since + 1) / g["warmup_steps"]))
            else:
                out.append(g["base_lr"])
        return out

    def get_lr(self) -> list[float]:
        return self._lrs()

    def refresh(self) -> None:
        """Recompute the current step's lrs after param-group keys changed (no step advance)."""
        for g, lr in zip(self.optimizer.param_groups, self._lrs()):
            g["lr"] = lr
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]


class StandInModule(pl.LightningModule):
    """(B, D) -> (B, 1) MLP; ``layer_groups()`` = layer0, layer1, layer2, head (bottom -> top)."""

    def __init__(self, dim: int = 8, lr: float = 0.05, warmup_steps: int = 0) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(3))
        self.head = nn.Linear(dim, 1)
        self.lr, self.warmup_steps = lr, warmup_steps

    def layer_groups(self) -> list[tuple[str, list[nn.Parameter]]]:
        groups = [(f"layer{i}", list(layer.parameters())) for i, layer in enumerate(self.layers)]
        return groups + [("head", list(self.head.parameters()))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = torch.tanh(layer(x))
        return self.head(x)

    def training_step(self, batch, batch_idx):
        x, y = (batch["x"], batch["y"]) if isinstance(batch, dict) else batch
        loss = nn.functional.mse_loss(self(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        groups = [
            {"params": ps, "name": name, "lr": 0.0, "base_lr": self.lr, "warmup_steps": self.warmup_steps,
             "active_since_step": 0 if any(p.requires_grad for p in ps) else None}
            for name, ps in self.layer_groups()
        ]
        optimizer = torch.optim.AdamW(groups, lr=self.lr, weight_decay=0.01)
        scheduler = GroupKeyScheduler(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def regression_loader(n: int = 32, dim: int = 8, batch_size: int = 8, seed: int = 0,
                      audio_samples: int | None = None) -> DataLoader:
    """Deterministic (x, y) regression batches; different ``seed`` -> different data.

    With ``audio_samples``, batches are dicts ``{"x", "y", "lengths"}`` where every row claims
    ``audio_samples`` samples of audio (for throughput accounting).
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    y = torch.sin(x.sum(dim=1, keepdim=True))
    if audio_samples is None:
        return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)
    rows = [{"x": x[i], "y": y[i], "lengths": torch.tensor(audio_samples)} for i in range(n)]
    return DataLoader(rows, batch_size=batch_size, shuffle=False)
