"""Average the gradients DDP does not know about (parameters unfrozen after DDP wrapped the model).

``DistributedDataParallel`` registers, once at construction, the parameters that require grad; only
those are all-reduced during backward. :class:`GradSync` remembers that set and averages the gradients
of any *other* trainable parameter with one flat ``all_reduce`` per dtype, matching DDP's semantics
(sum / world size; a rank without a gradient contributes zeros; a parameter with no gradient on any rank
keeps ``grad=None`` so the optimizer still skips it).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from pytorch_lightning.utilities.rank_zero import rank_zero_warn
from torch import nn
from torch.nn.parallel import DistributedDataParallel


class GradSync:
    """All-reduce (mean) grads of trainable parameters that ``ddp`` did not register at wrap time."""

    def __init__(self, ddp: DistributedDataParallel) -> None:
        ignored = getattr(ddp, "parameters_to_ignore", set())
        self.registered = {
            id(p) for name, p in ddp.module.named_parameters() if p.requires_grad and name not in ignored
        }
        self.process_group = getattr(ddp, "process_group", None)

    @classmethod
    def for_strategy(cls, strategy) -> GradSync | None:
        """A :class:`GradSync` when the strategy wrapped the model in DDP, else None (nothing to sync)."""
        model = getattr(strategy, "model", None)
        if isinstance(model, DistributedDataParallel):
            return cls(model)
        if getattr(strategy, "world_size", 1) > 1:
            rank_zero_warn(
                f"GradualUnfreezing: gradient sync for late-unfrozen parameters supports DDP only; "
                f"{type(strategy).__name__} is on its own"
            )
        return None

    def unregistered(self, params: list[nn.Parameter]) -> list[nn.Parameter]:
        """The trainable ``params`` DDP does not all-reduce, deduplicated, order preserved."""
        seen: set[int] = set()
        out = []
        for p in params:
            if p.requires_grad and id(p) not in self.registered and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
        return out

    @torch.no_grad()
    def sync(self, params: list[nn.Parameter]) -> int:
        """Average the grads of the unregistered ``params`` across ranks; returns how many were synced.

        ``params`` must be listed in the same order on every rank (they are: the schedule is identical).
        """
        todo = self.unregistered(params)
        if not todo:
            return 0
        world = dist.get_world_size(self.process_group)
        device = todo[0].device
        has_grad = torch.tensor([p.grad is not None for p in todo], dtype=torch.float32, device=device)
        dist.all_reduce(has_grad, group=self.process_group)
        by_dtype: dict[torch.dtype, list[nn.Parameter]] = {}
        for p in todo:
            by_dtype.setdefault(p.dtype, []).append(p)
        for dtype, group in by_dtype.items():
            flat = torch.cat([
                (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group
            ])
            dist.all_reduce(flat, group=self.process_group)
            flat.div_(world)
            for p, chunk in zip(group, flat.split([p.numel() for p in group])):
                if p.grad is not None:
                    p.grad.copy_(chunk.view_as(p))
                else:
                    p.grad = chunk.view_as(p).clone()
        for p, flag in zip(todo, has_grad.tolist()):
            if flag == 0:
                p.grad = None
        return len(todo)
