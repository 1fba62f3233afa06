"""Tri-stage LR (warm-up 10 % / hold 40 % / exponential decay 50 %): values at chosen steps, resume."""

from __future__ import annotations

import pytest
import torch

from lightning_modules import CTCModule
from lightning_modules.optim import TransferLRScheduler, build_param_groups, tri_stage_factor
from tests.conftest import char_tokenizer, make_tiny_backbone


def optimizer(active_since: list[int | None] | None = None, warmup: int = 0) -> torch.optim.Optimizer:
    params = [[torch.nn.Parameter(torch.zeros(2))], [torch.nn.Parameter(torch.zeros(2))]]
    groups = build_param_groups(list(zip(["layer.0", "head"], params)), [1e-4, 1e-3], warmup_steps=warmup)
    for group, since in zip(groups, active_since or [0, 0]):
        group["active_since_step"] = since
    return torch.optim.AdamW(groups)


def lrs_over(scheduler: TransferLRScheduler, steps: int) -> list[list[float]]:
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in scheduler.optimizer.param_groups])
        scheduler.optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize(("step", "factor"), [
    (0, 0.1), (4, 0.5), (9, 1.0),          # warm-up: (s + 1) / 10
    (10, 1.0), (30, 1.0), (49, 1.0),       # hold
    (50, 1.0), (75, 0.05 ** 0.5), (100, 0.05), (130, 0.05),  # exponential decay to min_lr_ratio
])
def test_tri_stage_values_at_chosen_steps(step, factor):
    sched = TransferLRScheduler(optimizer(), total_steps=100, decay="tri_stage", min_lr_ratio=0.05)
    lrs = lrs_over(sched, step + 1)[step]
    assert lrs == pytest.approx([1e-4 * factor, 1e-3 * factor], rel=1e-9)
    assert tri_stage_factor(step, 100, (0.1, 0.4, 0.5), 0.05) == pytest.approx(factor)


def test_tri_stage_phases_are_configurable():
    assert tri_stage_factor(19, 100, (0.2, 0.0, 0.8), 0.01) == pytest.approx(1.0)
    assert tri_stage_factor(60, 100, (0.2, 0.0, 0.8), 0.01) == pytest.approx(0.01 ** 0.5)
    with pytest.raises(ValueError, match="summing to 1"):
        TransferLRScheduler(optimizer(), 100, "tri_stage", 0.05, phases=(0.1, 0.4, 0.4))
    with pytest.raises(ValueError, match="final_lr_scale"):
        TransferLRScheduler(optimizer(), 100, "tri_stage", 0.0)
    with pytest.raises(ValueError, match="final_lr_scale"):
        CTCModule(make_tiny_backbone(), char_tokenizer().to_dict(), decay="tri_stage")


def test_tri_stage_composes_with_per_group_warmup_of_late_unfrozen_groups():
    sched = TransferLRScheduler(optimizer([None, 0], warmup=4), 100, "tri_stage", 0.05)
    lrs = lrs_over(sched, 60)
    assert lrs[20][0] == 0.0 and lrs[20][1] == pytest.approx(1e-3)
    group = sched.optimizer.param_groups[0]
    group["active_since_step"] = sched.last_epoch  # what GradualUnfreezing does at step 60
    sched.refresh()
    assert group["lr"] == pytest.approx(1e-4 * 0.25 * 0.05 ** 0.2)  # warm-up 1/4 x decay 10 steps into 50


def test_tri_stage_resumes_from_the_state_dicts():
    first = TransferLRScheduler(optimizer(), 100, "tri_stage", 0.05, phases=(0.2, 0.3, 0.5))
    lrs_over(first, 37)
    resumed_opt = optimizer()
    resumed_opt.load_state_dict(first.optimizer.state_dict())
    resumed = TransferLRScheduler(resumed_opt, 7, "linear", 0.0)  # wrong settings: the state restores them
    resumed.load_state_dict(first.state_dict())
    assert resumed.phases == (0.2, 0.3, 0.5) and resumed.decay == "tri_stage"
    assert lrs_over(resumed, 40) == lrs_over(first, 40)
