"""The two checkpoints every run keeps: ``last.ckpt`` (always the final state) and the best one.

``LastCheckpoint``: Lightning's ``ModelCheckpoint(save_last=True, every_n_train_steps=N)`` refreshes
``last.ckpt`` every N steps but not when training ends (it only saves at train end if it never saved
at all), so a run of 240 steps with N=100 left ``last.ckpt`` at step 200. This one also saves at
train end whenever the final step is not the one last saved. (A run that fails -- a non-finite loss,
an exception -- never reaches train end: its ``last.ckpt`` stays the last good state.)

``BestCheckpoint``: keeps the single best checkpoint by ``monitor`` (lowest), breaking ties with
``tie_breakers`` in order (default: the same domain's CER, then loss; for a CER monitor, the loss). While every validation
reads WER 1.00 (early training, a hard target), the checkpoint then still follows the falling CER
instead of staying at the first validation. Missing or NaN values count as +inf. It is the one owner
of "the best checkpoint": ``best_step`` is the global step it was saved at (``ResultsTable`` reports
the validation of that step).
"""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import Tensor


class LastCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint(save_last=True, save_top_k=0, ...)`` that also saves the final state at train end."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(save_last=True, save_top_k=0, **kwargs)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._last_global_step_saved != trainer.global_step and not trainer.fast_dev_run:
            self.save_now(trainer)

    def save_now(self, trainer: pl.Trainer) -> None:
        """Write ``last.ckpt`` with the current state (collective under DDP)."""
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def default_tie_breakers(monitor: str) -> list[str]:
    """``val/<domain>/wer`` -> ``[val/<domain>/cer, val/<domain>/loss]``; ``.../cer`` (languages written
    without spaces) -> ``[.../loss]``; other metrics: none."""
    prefix, _, name = monitor.rpartition("/")
    return {"wer": [f"{prefix}/cer", f"{prefix}/loss"], "cer": [f"{prefix}/loss"]}.get(name, [])


class BestCheckpoint(ModelCheckpoint):
    """Best (lowest) ``monitor`` with lexicographic tie-breaking; ``save_top_k=1``, mode ``min``.

    Args:
        monitor: metric to minimise, e.g. ``val/target/wer``.
        tie_breakers: metrics compared in order when ``monitor`` ties (default ``default_tie_breakers``).
        **kwargs: the other ``ModelCheckpoint`` arguments (``dirpath``, ``filename``, ...).
    """

    def __init__(self, monitor: str, tie_breakers: list[str] | None = None, **kwargs: Any) -> None:
        super().__init__(monitor=monitor, mode="min", save_top_k=1, **kwargs)
        self.tie_breakers = default_tie_breakers(monitor) if tie_breakers is None else list(tie_breakers)
        self.best_key: list[float] | None = None
        self.best_step: int | None = None  # global step of the validation the best checkpoint was saved at

    def _key(self, candidates: dict[str, Any]) -> list[float]:
        key = []
        for name in [self.monitor, *self.tie_breakers]:
            value = candidates.get(name)
            value = float(value.item() if isinstance(value, Tensor) else value) if value is not None else math.inf
            key.append(math.inf if math.isnan(value) else value)
        return key

    def check_monitor_top_k(self, trainer: pl.Trainer, current: Tensor | None = None) -> bool:
        if current is None:
            return False
        key = self._key(self._monitor_candidates(trainer))
        better = self.best_key is None or not self.best_k_models or key < self.best_key
        better = trainer.strategy.reduce_boolean_decision(bool(better))
        if better:
            self.best_key, self.best_step = key, int(trainer.global_step)
        return better

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "best_key": self.best_key, "best_step": self.best_step,
                "tie_breakers": self.tie_breakers}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if state_dict.get("tie_breakers") == self.tie_breakers:
            self.best_key, self.best_step = state_dict.get("best_key"), state_dict.get("best_step")
