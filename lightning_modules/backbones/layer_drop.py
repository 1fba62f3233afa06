"""LayerDrop (Fan et al., 2019) that needs no ``find_unused_parameters`` under DDP.

Two problems with the textbook version (``if torch.rand(()) < p: skip``) under
``DistributedDataParallel``: (1) a skipped layer's parameters get no gradient, so DDP's reducer waits
for them forever unless ``find_unused_parameters=True`` (which walks the autograd graph every step);
(2) each rank draws its own decisions, so one rank's batch trains a layer that another rank skipped
and the averaged gradient mixes sub-networks.

``LayerDrop`` fixes both:

- **same decisions on every rank, no communication**: decisions come from a private generator
  seeded with ``(seed, draw index)``; every rank runs the same number of training forwards (the
  datamodules' training batches are even over ranks), so every rank skips the same layers in the
  same step. The draw index is checkpointed (``get_extra_state``), so a resumed run continues the
  sequence.
- **every parameter gets a gradient**: a skipped layer adds ``0 · Σ p[0]`` over its trainable
  parameters to the hidden state, so each of them receives an all-zero gradient and DDP's
  reducer completes with the default ``find_unused_parameters=False``. As with fairseq's legacy DDP
  (which zero-fills missing gradients), AdamW then still applies momentum and weight decay to a
  skipped layer that step -- identically on 1 or N ranks.

WavLM's first layer computes the relative position bias for the others and is never dropped.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class LayerDrop(nn.Module):
    """Per-forward layer skip decisions, identical on every rank (see module docstring).

    Args:
        prob: probability to skip each droppable layer in a training forward.
        seed: generator seed; the decisions of draw ``k`` are a function of ``(seed, k)``.
    """

    def __init__(self, prob: float, seed: int = 0) -> None:
        super().__init__()
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"layer_drop must be in [0, 1], got {prob}")
        self.prob, self.seed = float(prob), int(seed)
        self.draws = 0  # training forwards so far (checkpointed)

    def decide(self, num_layers: int, keep: tuple[int, ...] = ()) -> list[bool]:
        """``num_layers`` skip decisions for this forward (all False in eval); ``keep``: never skipped."""
        if not self.training or self.prob <= 0:
            return [False] * num_layers
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.draws)
        self.draws += 1
        drops = (torch.rand(num_layers, generator=generator) < self.prob).tolist()
        return [d and i not in keep for i, d in enumerate(drops)]

    @staticmethod
    def touch(x: Tensor, layer: nn.Module) -> Tensor:
        """``x`` plus an exact zero that depends on every trainable parameter of the skipped ``layer``."""
        params = [p for p in layer.parameters() if p.requires_grad]
        if not params or not torch.is_grad_enabled():
            return x
        zero = torch.stack([p.reshape(-1)[0] for p in params]).sum() * 0.0
        return x + zero.to(x.dtype)

    def get_extra_state(self) -> dict[str, Any]:
        return {"draws": self.draws, "seed": self.seed}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.draws = int(state["draws"])

    def extra_repr(self) -> str:
        return f"prob={self.prob}, seed={self.seed}"
