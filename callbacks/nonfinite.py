"""Never train on a non-finite loss or gradient: stop the run naming the batch, or skip the step and count it.

NaN/inf reaches the gradients from non-finite audio that slipped past the data checks, from a loss that
overflowed, or from a diverging model. Lightning applies such gradients without a word: the weights
become NaN, every later step is garbage and the run still "finishes". ``NonFiniteGuard`` checks the
gradients in ``on_before_optimizer_step`` (after backward and after DDP / ``GradualUnfreezing``
synchronised them, before clipping and ``optimizer.step``) and the loss at batch end:

- ``policy="stop"`` (default): raise :class:`NonFiniteError` naming the global step, the utterance ids of
  the batch(es) of that step and the first offending parameters; no optimizer step is applied, so the
  weights -- and every checkpoint, which the CLI's ``AtomicCheckpointIO`` only writes with finite
  weights -- stay finite, and ``summary.json`` says ``failed``.
- ``policy="skip"``: drop the step's gradients (the optimizer skips parameters without a gradient), log
  a warning with the batch ids, count it (``train/nonfinite_skipped_steps``, ``summary.json``).

The check is one fused norm over the gradients and one host sync per optimizer step. Under DDP the
ranks decide together (gradients are all-reduced, the decision too).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

log = logging.getLogger(__name__)
POLICIES = ("stop", "skip")


class NonFiniteError(RuntimeError):
    """Training stopped on a non-finite loss or gradient (the message names step, batch ids, parameters)."""


def batch_ids(batch: Any) -> list[str]:
    """Utterance ids of a batch dict (or of both halves of a DANN ``{"source", "target"}`` batch, or of the
    support and query of every episode of a meta-batch: a list of episode dicts)."""
    if isinstance(batch, dict) and "ids" in batch:
        return list(batch["ids"])
    if isinstance(batch, dict):
        return [i for key in sorted(batch) for i in batch_ids(batch[key])]
    if isinstance(batch, list):
        return [i for item in batch for i in batch_ids(item)]
    return []


def non_finite_grads(named_params: list[tuple[str, torch.nn.Parameter]], limit: int = 3) -> list[str]:
    """Names of (at most ``limit``) parameters whose gradient holds NaN/inf; one fused norm when all are finite."""
    with_grad = [(n, p.grad) for n, p in named_params if p.grad is not None]
    if not with_grad:
        return []
    norms = torch._foreach_norm([g for _, g in with_grad])
    if bool(torch.isfinite(torch.stack([n.float() for n in norms])).all()):
        return []
    return [name for (name, _), norm in zip(with_grad, norms) if not math.isfinite(float(norm))][:limit]


class NonFiniteGuard(Callback):
    """Stop (default) or skip-and-count optimizer steps whose loss or gradients are not finite.

    Args:
        policy: ``"stop"`` raises :class:`NonFiniteError`; ``"skip"`` drops the step's gradients and counts it.
    """

    def __init__(self, policy: Literal["stop", "skip"] = "stop") -> None:
        if policy not in POLICIES:
            raise ValueError(f"NonFiniteGuard: policy must be one of {POLICIES}, got {policy!r}")
        self.policy = policy
        self.skipped_steps = 0
        self.first_skip: str | None = None
        self._ids: list[str] = []  # utterances of the batches accumulated into the coming optimizer step
        self._stepped = False

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._stepped:
            self._ids, self._stepped = [], False
        self._ids += batch_ids(batch)

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        bad = non_finite_grads(list(pl_module.named_parameters()))
        if not trainer.strategy.reduce_boolean_decision(bool(bad), all=False):
            self._stepped = True
            return
        what = f"non-finite gradient ({', '.join(bad) or 'on another rank'})"
        self._handle(trainer, what)
        for group in optimizer.param_groups:  # skip: the optimizer skips parameters without a gradient
            for p in group["params"]:
                p.grad = None
        self._stepped = True

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss.detach()).all()) and self.policy == "stop":
            self._handle(trainer, f"non-finite loss ({float(loss.detach().float().mean())})", ids=batch_ids(batch))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.policy == "skip":
            pl_module.log("train/nonfinite_skipped_steps", float(self.skipped_steps), sync_dist=False)

    def _handle(self, trainer: pl.Trainer, what: str, ids: list[str] | None = None) -> None:
        ids = self._ids if ids is None else ids
        shown = ", ".join(ids[:8]) + (f" (+{len(ids) - 8} more)" if len(ids) > 8 else "")
        message = (f"{what} at global step {trainer.global_step} (epoch {trainer.current_epoch}); "
                   f"batch utterances: {shown or 'unknown'}")
        if self.policy == "stop":
            raise NonFiniteError(message + "\nthe step was not applied and no checkpoint was written with it; "
                                 "check these utterances' audio and labels, lower the lr, or set "
                                 "NonFiniteGuard(policy='skip') to skip and count such steps")
        self.skipped_steps += 1
        self.first_skip = self.first_skip or message
        log.warning("NonFiniteGuard: skipped the optimizer step: %s", message)

    def summary_entries(self, trainer: pl.Trainer) -> dict[str, Any]:
        """``summary.json`` entries (read by ``RunSummary``)."""
        return {"nonfinite": {"policy": self.policy, "skipped_steps": self.skipped_steps, "first": self.first_skip}}

    def state_dict(self) -> dict[str, Any]:
        return {"skipped_steps": self.skipped_steps, "first_skip": self.first_skip}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))
        self.first_skip = state_dict.get("first_skip")
