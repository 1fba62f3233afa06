"""Param groups with discriminative learning rates and the closed-form per-group lr schedule.

Every layer group becomes ONE AdamW param group carrying

    name               layer-group name ("head", "featurizer", backbone group names)
    base_lr            peak lr of this group
    active_since_step  global step at which the group started training, None while frozen
    warmup_steps       linear warm-up length, counted from ``active_since_step``

and the scheduler computes, at global step ``s`` (= ``last_epoch``, stepped every optimizer step)

    lr = base_lr · warmup(s − active_since_step) · decay(s / total_steps)      (0 while frozen)

with ``warmup(k) = min(1, (k + 1) / warmup_steps)`` and ``decay`` linear / cosine / constant from
1 down to ``min_lr_ratio``, or ``tri_stage`` (the wav2vec 2.0 fine-tuning schedule, fairseq
``lr_scheduler: tri_stage`` with ``phase_ratio: [0.1, 0.4, 0.5]``): over the first ``phases[0]``
of the run a linear warm-up ``(s + 1) / (phases[0] · total)``, then ``phases[1]`` at the peak, then
an exponential decay ``min_lr_ratio ** (k / (phases[2] · total))`` to ``min_lr_ratio`` (fairseq's
``final_lr_scale``, 0.05 in its configs). Because the schedule is a pure function of those keys and
``last_epoch``, the optimizer + scheduler state dicts restore it exactly on resume, and an
unfreezing callback only has to set ``requires_grad`` and ``active_since_step`` (then call
``scheduler.refresh()`` to apply the new lrs within the current step). ``total_steps`` is part of
the scheduler state, so a resumed run keeps the schedule length it started with; it comes from
``total_optimizer_steps(trainer)``, which also knows epoch-bounded runs over our unsized samplers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from datamodules.base import speech_datamodule

DECAYS = ("linear", "cosine", "constant", "tri_stage")
TRI_STAGE = (0.1, 0.4, 0.5)  # warm-up / hold / decay fractions of the run (fairseq phase_ratio)


def base_learning_rates(num_groups: int, num_backbone: int, lr: float, backbone_lr: float | None = None,
                        layer_decay: float | None = None) -> list[float]:
    """Peak lr per group, groups ordered bottom → top with the ``num_backbone`` backbone groups first.

    Backbone group at depth ``d`` from the top backbone group (top = 0) gets
    ``(backbone_lr or lr) · layer_decay ** d``; every non-backbone group gets ``lr``.
    """
    top = lr if backbone_lr is None else backbone_lr
    decay = 1.0 if layer_decay is None else layer_decay
    backbone = [top * decay ** (num_backbone - 1 - i) for i in range(num_backbone)]
    return backbone + [lr] * (num_groups - num_backbone)


def build_param_groups(layer_groups: Sequence[tuple[str, Sequence[nn.Parameter]]], base_lrs: Sequence[float],
                       warmup_steps: int = 0, weight_decay: float = 0.0) -> list[dict]:
    """One param-group dict per layer group; groups with no trainable parameter start frozen."""
    if len(layer_groups) != len(base_lrs):
        raise ValueError(f"{len(layer_groups)} layer groups but {len(base_lrs)} learning rates")
    groups = []
    for (name, params), base_lr in zip(layer_groups, base_lrs):
        params = list(params)
        active = 0 if any(p.requires_grad for p in params) else None
        groups.append({"params": params, "name": name, "lr": base_lr, "base_lr": base_lr,
                       "active_since_step": active, "warmup_steps": int(warmup_steps),
                       "weight_decay": weight_decay})
    return groups


def total_optimizer_steps(trainer: Any) -> float:
    """Optimizer steps the whole fit will take: the length LR decay and the DANN lambda schedule span.

    Lightning's ``estimated_stepping_batches`` needs ``len(train_dataloader)``, which our duration
    samplers do not have (dynamic batches): for an epoch-bounded run (``max_epochs`` set) it returns
    ``max_steps`` -- -1 when unset, else a cap the epochs may never reach. The epoch length then comes
    from the datamodule's ``train_batches_per_epoch()`` (a dry pass of the sampler, metadata only) and
    the total is ``ceil(batches / accumulate_grad_batches) * max_epochs``, capped by ``max_steps``.
    Returns ``inf`` when neither is known (the schedules then hold their peak value).
    """
    estimate = trainer.estimated_stepping_batches  # also sets up the train loader (num_training_batches)
    datamodule = speech_datamodule(trainer)
    if trainer.max_epochs in (None, -1) or math.isfinite(trainer.num_training_batches) or datamodule is None:
        return float(estimate) if estimate > 0 else math.inf
    per_epoch = math.ceil(datamodule.train_batches_per_epoch() / trainer.accumulate_grad_batches)
    total = per_epoch * max(trainer.max_epochs, 1)
    return float(min(total, trainer.max_steps) if trainer.max_steps > 0 else total)


def warmup_factor(steps_active: int, warmup_steps: int) -> float:
    """Linear warm-up: (k + 1) / warmup_steps for the k-th step of training, capped at 1."""
    if steps_active < 0:
        return 0.0
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (steps_active + 1) / warmup_steps)


def check_tri_stage(phases: Sequence[float], min_lr_ratio: float) -> tuple[float, float, float]:
    """Validated (warm-up, hold, decay) fractions; the exponential decay needs ``min_lr_ratio > 0``."""
    phases = tuple(float(p) for p in phases)
    if len(phases) != 3 or any(p < 0 for p in phases) or abs(sum(phases) - 1.0) > 1e-6:
        raise ValueError(f"tri_stage phases must be 3 fractions >= 0 summing to 1, got {phases}")
    if not 0.0 < min_lr_ratio <= 1.0:
        raise ValueError(f"decay='tri_stage' decays exponentially to min_lr_ratio, which must be in (0, 1] "
                         f"(fairseq's final_lr_scale: 0.05), got {min_lr_ratio}")
    return phases


def tri_stage_factor(step: int, total_steps: float, phases: Sequence[float] = TRI_STAGE,
                     min_lr_ratio: float = 0.05) -> float:
    """Warm-up / hold / exponential decay multiplier at ``step`` of ``total_steps`` (module docstring)."""
    warm, hold = phases[0] * total_steps, phases[1] * total_steps
    if step < warm:
        return min(1.0, (step + 1) / warm)
    if step < warm + hold or phases[2] <= 0:
        return 1.0
    return min_lr_ratio ** min((step - warm - hold) / (phases[2] * total_steps), 1.0)


def decay_factor(step: int, total_steps: float, decay: str = "linear", min_lr_ratio: float = 0.0,
                 phases: Sequence[float] = TRI_STAGE) -> float:
    """Multiplier in [min_lr_ratio, 1] at ``step`` of ``total_steps`` (constant if total is not finite)."""
    if decay not in DECAYS:
        raise ValueError(f"decay must be one of {DECAYS}, got {decay!r}")
    if decay == "constant" or not math.isfinite(total_steps) or total_steps <= 0:
        return 1.0
    if decay == "tri_stage":
        return tri_stage_factor(step, total_steps, phases, min_lr_ratio)
    p = min(max(step / total_steps, 0.0), 1.0)
    shape = 1.0 - p if decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * p))
    return min_lr_ratio + (1.0 - min_lr_ratio) * shape


def group_lr(group: dict, step: int, total_steps: float, decay: str = "linear",
             min_lr_ratio: float = 0.0, phases: Sequence[float] = TRI_STAGE) -> float:
    """The lr a param group should have at global ``step`` (0 while ``active_since_step`` is None)."""
    since = group.get("active_since_step")
    if since is None:
        return 0.0
    return (group["base_lr"] * warmup_factor(step - since, group.get("warmup_steps", 0))
            * decay_factor(step, total_steps, decay, min_lr_ratio, phases))


class TransferLRScheduler(LRScheduler):
    """Per-group warm-up × global decay, computed from the param-group keys (see module doc).

    Use with ``interval="step"``: ``last_epoch`` then equals the trainer's global step. ``phases``:
    the tri-stage fractions (used by ``decay="tri_stage"`` only; part of the state dict).
    """

    def __init__(self, optimizer: Optimizer, total_steps: float, decay: str = "linear",
                 min_lr_ratio: float = 0.0, last_epoch: int = -1, phases: Sequence[float] = TRI_STAGE) -> None:
        if decay not in DECAYS:
            raise ValueError(f"decay must be one of {DECAYS}, got {decay!r}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
        self.phases = check_tri_stage(phases, min_lr_ratio) if decay == "tri_stage" else tuple(phases)
        for g in optimizer.param_groups:
            missing = {"base_lr", "active_since_step"} - set(g)
            if missing:
                raise ValueError(f"param group {g.get('name', '?')!r} lacks keys {sorted(missing)}")
        self.total_steps = total_steps
        self.decay = decay
        self.min_lr_ratio = min_lr_ratio
        super().__init__(optimizer, last_epoch)

    def lr_at(self, group: dict, step: int) -> float:
        return group_lr(group, step, self.total_steps, self.decay, self.min_lr_ratio, self.phases)

    def get_lr(self) -> list[float]:
        return [self.lr_at(g, self.last_epoch) for g in self.optimizer.param_groups]

    def refresh(self) -> None:
        """Re-apply the current step's lrs after param-group keys changed (e.g. a group was unfrozen)."""
        self._last_lr = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, self._last_lr):
            group["lr"] = lr
