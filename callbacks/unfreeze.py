"""ULMFiT-style gradual unfreezing that stays correct under DDP and on resume.

Contract (ARCHITECTURE.md): ``pl_module.layer_groups() -> [(name, [Parameter, ...]), ...]`` ordered
bottom -> top with ``"head"`` last, and one optimizer param group per layer group (present from step 0)
carrying ``"name"``, ``"lr"``, ``"base_lr"``, ``"active_since_step"`` (int, or None = frozen -> lr 0)
and ``"warmup_steps"``. The module's step scheduler computes every group's lr from those keys.

Schedule values name the layer groups that become trainable at a stage (stages accumulate; nothing
is ever re-frozen):

- a layer-group name, e.g. ``"head"``;
- ``"top:k"``: the top ``k`` backbone groups and every group above the backbone (featurizer, head, ...);
  ``"top:0"`` is "everything above the backbone". Backbone groups are
  ``pl_module.backbone_layer_groups()`` when the module has it (the CTC core does), else the groups
  below the first one named ``"featurizer"`` or ``"head"``;
- ``"all"``: every layer group.

Parameters the module froze itself before this callback ran (e.g. a permanently frozen conv feature
encoder) are "pinned" and never unfrozen. Parameters outside ``layer_groups()`` are not touched.

Why not Lightning's ``BaseFinetuning``:

- **DDP**: ``DistributedDataParallel`` builds its gradient reducer from the parameters that require
  grad *when it wraps the model*. A parameter unfrozen later gets a local gradient on every rank but is
  never all-reduced, so the replicas silently diverge. This callback records the parameters DDP
  registered (``on_fit_start``, after the strategy wrapped the model) and, in
  ``on_before_optimizer_step`` (after gradient accumulation, before clipping and ``optimizer.step``),
  averages the gradients of the trainable parameters DDP does not know about: one flat buffer per dtype,
  one ``all_reduce`` each, divided by the world size exactly as DDP does. Limitation: with fp16 AMP the
  grad scaler's inf check runs before this hook, so use bf16 (or fp32) together with late unfreezing.
- **Resume**: the stage reached lives in this callback's ``state_dict``; the per-group lr state lives in
  the optimizer's param groups. Lightning calls ``setup`` -> callback ``load_state_dict`` -> DDP wrap +
  ``configure_optimizers`` -> ``on_fit_start`` -> optimizer state restore (``Trainer._run``), so the
  restored trainable set is applied in ``load_state_dict`` -- before DDP wraps the model -- and the
  optimizer restore brings back ``active_since_step``/``base_lr``/``warmup_steps`` untouched.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.rank_zero import rank_zero_info, rank_zero_warn

from callbacks.grad_sync import GradSync

log = logging.getLogger(__name__)

ABOVE_BACKBONE = ("featurizer", "head")


def resolve_groups(spec: list[str], group_names: list[str], n_backbone: int | None = None) -> list[str]:
    """Expand a stage spec (names, ``"top:k"``, ``"all"``) into layer-group names, bottom -> top.

    ``n_backbone``: how many of the (bottom -> top) ``group_names`` belong to the backbone; default:
    those below the first group named "featurizer" or "head".
    """
    if n_backbone is None:
        n_backbone = next((i for i, n in enumerate(group_names) if n in ABOVE_BACKBONE), len(group_names))
    chosen: set[str] = set()
    for item in spec:
        if item == "all":
            chosen.update(group_names)
        elif item.startswith("top:"):
            k = _parse_top(item)
            if k > n_backbone:
                raise ValueError(
                    f"GradualUnfreezing: {item!r} asks for {k} backbone groups but there are only "
                    f"{n_backbone}: {group_names[:n_backbone]} (use 'all')"
                )
            chosen.update(group_names[n_backbone - k :])
        elif item in group_names:
            chosen.add(item)
        else:
            raise ValueError(
                f"GradualUnfreezing: unknown layer group {item!r}; the module has {group_names} "
                "(or use 'top:k' / 'all')"
            )
    return [n for n in group_names if n in chosen]


def _parse_top(item: str) -> int:
    try:
        k = int(item.split(":", 1)[1])
    except ValueError:
        k = -1
    if k < 0:
        raise ValueError(f"GradualUnfreezing: bad spec {item!r}; expected 'top:<k>' with k >= 0")
    return k


class GradualUnfreezing(Callback):
    """Unfreeze layer groups on a schedule (ULMFiT); DDP- and resume-safe.

    Args:
        schedule: stage start (epoch or optimizer step, see ``unit``) -> group specs made trainable then,
            e.g. ``{0: ["head"], 2: ["top:2"], 4: ["all"]}``. Must contain key 0 (what trains first).
        unit: ``"epoch"`` (applied at the start of that epoch) or ``"step"`` (applied before the first
            batch of that optimizer step).
        lr: ``base_lr`` for groups unfrozen after step 0 (None: keep the module's discriminative lr).
        warmup_steps: per-group warmup for groups unfrozen after step 0 (None: keep the module's).
        ddp_sync: all-reduce gradients of parameters unfrozen after DDP wrapped the model. ``False``
            reproduces the stock ``BaseFinetuning`` bug (replicas diverge); only for tests/demos.
    """

    def __init__(
        self,
        schedule: dict[int, list[str]],
        unit: Literal["epoch", "step"] = "epoch",
        lr: float | None = None,
        warmup_steps: int | None = None,
        ddp_sync: bool = True,
    ) -> None:
        if unit not in ("epoch", "step"):
            raise ValueError(f"GradualUnfreezing: unit must be 'epoch' or 'step', got {unit!r}")
        self.schedule = {int(k): list(v) for k, v in schedule.items()}
        if 0 not in self.schedule:
            raise ValueError(f"GradualUnfreezing: schedule needs key 0 (groups trained first), got {schedule}")
        if any(k < 0 for k in self.schedule):
            raise ValueError(f"GradualUnfreezing: schedule keys must be >= 0, got {sorted(self.schedule)}")
        self.unit = unit
        self.lr = lr
        self.warmup_steps = warmup_steps
        self.ddp_sync = ddp_sync
        self.applied: list[int] = []  # schedule keys already applied (checkpointed)
        self._module: pl.LightningModule | None = None
        self._pinned: set[int] = set()  # ids of params the module froze itself
        self._grad_sync: GradSync | None = None

    # ------------------------------------------------------------------ stage bookkeeping
    def active_groups(self, pl_module: pl.LightningModule) -> list[str]:
        """Names of the layer groups trainable after the applied stages, bottom -> top."""
        specs = [s for k in self.applied for s in self.schedule[k]]
        return resolve_groups(specs, *_names_and_depth(pl_module))

    def _apply_requires_grad(self, pl_module: pl.LightningModule) -> None:
        groups = pl_module.layer_groups()
        active = set(self.active_groups(pl_module))
        for name, params in groups:
            for p in params:
                p.requires_grad_(name in active and id(p) not in self._pinned)

    # ------------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            self._module = None
            return
        for spec in self.schedule.values():  # validate every stage up front: fail before training
            resolve_groups(spec, *_names_and_depth(pl_module))
        if self._module is not pl_module:
            self._pinned = {id(p) for _, ps in pl_module.layer_groups() for p in ps if not p.requires_grad}
        self._module = pl_module
        position = trainer.current_epoch if self.unit == "epoch" else trainer.global_step  # 0 unless re-fit
        self.applied = [k for k in sorted(self.schedule) if k <= position]
        self._apply_requires_grad(pl_module)
        if not any(p.requires_grad for _, ps in pl_module.layer_groups() for p in ps):
            raise ValueError(
                f"GradualUnfreezing: nothing is trainable at the first stage {self.active_groups(pl_module)}: "
                "the module froze those parameters itself before fit (frozen parameters are never unfrozen)"
            )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the stage reached; re-apply ``requires_grad`` now, before DDP wraps the model."""
        saved = {int(k): list(v) for k, v in state_dict["schedule"].items()}
        if saved != self.schedule or state_dict["unit"] != self.unit:
            rank_zero_warn(
                f"GradualUnfreezing: resuming with schedule {self.schedule} ({self.unit}) but the checkpoint "
                f"was trained with {saved} ({state_dict['unit']}); applied stages {state_dict['applied']} kept"
            )
        self.applied = sorted(int(k) for k in state_dict["applied"] if int(k) in self.schedule)
        if self._module is not None:
            if self._grad_sync is not None:
                rank_zero_warn("GradualUnfreezing: state restored after the strategy wrapped the model")
            self._apply_requires_grad(self._module)

    def state_dict(self) -> dict[str, Any]:
        return {"applied": list(self.applied), "schedule": dict(self.schedule), "unit": self.unit}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._grad_sync = GradSync.for_strategy(trainer.strategy) if self.ddp_sync else None
        self._sync_param_groups(trainer, pl_module, step=trainer.global_step)
        # after the callback state of a resumed run was restored (load_state_dict), so this names the real stage
        if trainer.ckpt_path:
            rank_zero_info(f"GradualUnfreezing: resumed from {trainer.ckpt_path} with {self.unit} stage(s) "
                           f"{self.applied} applied: training {self.active_groups(pl_module)}")
        else:
            rank_zero_info(f"GradualUnfreezing: training {self.active_groups(pl_module)} from the start")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.unit == "epoch":
            self._advance(trainer, pl_module, trainer.current_epoch)

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.unit == "step":
            self._advance(trainer, pl_module, trainer.global_step)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self._grad_sync is not None:
            self._grad_sync.sync([p for _, ps in pl_module.layer_groups() for p in ps if p.requires_grad])

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._grad_sync = None

    # ------------------------------------------------------------------ transitions
    def _advance(self, trainer: pl.Trainer, pl_module: pl.LightningModule, position: int) -> None:
        due = [k for k in sorted(self.schedule) if k <= position and k not in self.applied]
        if not due:
            return
        before = set(self.active_groups(pl_module))
        self.applied = sorted(self.applied + due)
        self._apply_requires_grad(pl_module)
        new = [n for n in self.active_groups(pl_module) if n not in before]
        self._sync_param_groups(trainer, pl_module, step=trainer.global_step, newly_unfrozen=set(new))
        n_params = sum(p.numel() for _, ps in pl_module.layer_groups() for p in ps if p.requires_grad)
        rank_zero_info(
            f"GradualUnfreezing: {self.unit} {position} (global step {trainer.global_step}): unfroze {new}; "
            f"{n_params} trainable parameters"
        )

    def _sync_param_groups(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        step: int,
        newly_unfrozen: set[str] | None = None,
    ) -> None:
        """Make optimizer param groups agree with the trainable set, then let the scheduler recompute lrs.

        Newly active groups get ``active_since_step = step`` (and the optional ``lr``/``warmup_steps``
        overrides when unfrozen after step 0); groups with no trainable parameter are marked frozen.
        """
        groups = dict(pl_module.layer_groups())
        changed = False
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                params = groups.get(group.get("name"))
                if params is None:
                    continue
                trainable = any(p.requires_grad for p in params)
                if trainable and (group.get("active_since_step") is None or group["name"] in (newly_unfrozen or ())):
                    group["active_since_step"] = step
                    if step > 0 and self.lr is not None:
                        group["base_lr"] = self.lr
                    if step > 0 and self.warmup_steps is not None:
                        group["warmup_steps"] = self.warmup_steps
                    changed = True
                elif not trainable and group.get("active_since_step") is not None:
                    group["active_since_step"], group["lr"] = None, 0.0
                    changed = True
        if changed:
            _refresh_lrs(trainer)


def _names_and_depth(pl_module: pl.LightningModule) -> tuple[list[str], int | None]:
    """Layer-group names (bottom -> top) and the number of backbone groups if the module says."""
    names = [n for n, _ in pl_module.layer_groups()]
    backbone = getattr(pl_module, "backbone_layer_groups", None)
    return names, (len(backbone()) if callable(backbone) else None)


def _refresh_lrs(trainer: pl.Trainer) -> None:
    """Recompute the current step's lrs after param-group keys changed.

    The project scheduler (``lightning_modules/optim.py``) exposes ``refresh()``; without it the new
    keys take effect at the next scheduler step (the newly unfrozen group then trains one step at lr 0).
    """
    for config in trainer.lr_scheduler_configs:
        refresh = getattr(config.scheduler, "refresh", None)
        if callable(refresh):
            refresh()
        else:
            log.debug("GradualUnfreezing: %s has no refresh(); lrs update at its next step",
                      type(config.scheduler).__name__)
