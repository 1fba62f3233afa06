"""``summary.json``: what a run was and how well it did, kept current while it trains.

Written to ``trainer.default_root_dir`` (the run directory) by global rank 0 after every validation
(so a killed run still has one), at fit end, and when fit raises. The best values, the largest
trainable-parameter count and the wall time travel in the checkpoint (callback state), so a resumed
run continues them. ``method`` is the module's class name; ``data`` and ``labelled_target_minutes``
come from the ``SpeechDataModule`` (null when fitting on plain dataloaders). Schema (JSON)::

    {"status": "running" | "finished" | "requeued" | "failed" | "interrupted" | "pruned",
     "method": "FineTuneCTC", "module_class": "lightning_modules.finetune.FineTuneCTC",
     "backbone": {"class": "...", "name": "...", "identity": "..."} | null,
     "data": {"source": "LibriSpeech train-clean-100", "target": "CommonVoice en/train (unlabelled)"} | null,
     "labelled_target_minutes": 10.0 | null,
     "trainable_params": 1234, "max_trainable_params": 1234, "total_params": 5678,
     "wall_time_s": 12.3, "global_step": 200, "epoch": 3,
     "best": {"val/target/wer": {"value": 0.31, "step": 180}, ...},
     "headline_metric": "val/target/wer",   # .../cer for languages written without spaces (datamodules/locales.py)
     "monitor_mode": "min", "updated": "2025-01-01T12:00:00",
     "data_report": <datamodule.bad_input_report()>, "nonfinite": {...}}   # from other callbacks

Callbacks add entries by defining ``summary_entries(trainer) -> dict`` (``BadInputReport``: every
bad-input count; ``NonFiniteGuard``: skipped steps). ``"finished"`` is written after the final
checkpoint (``LastCheckpoint`` saves at train end, before fit end); a fit that ``SlurmRequeue`` stopped
is ``"requeued"``; a fit that raised is ``"failed"`` with the error.

``speechxfer test`` adds ``"test": {<test/* metric>: value}`` (e.g. the few-shot ``test/fewshot/k5/wer``) and the callbacks' entries (e.g. the
test-time adaptation cost, ``"tta"``) to the run dir's ``summary.json``, keeping a fit summary that is
already there; a test-only run dir gets ``{"status": "tested", "method", "module_class", "backbone", "data",
"test", ...}``.

At fit end the same dict is stored in the W&B run summary under ``speechxfer`` (when a
``WandbLogger`` is attached), so ``speechxfer compare`` reads W&B runs the same way.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import torch
from pytorch_lightning import Callback, LightningModule, Trainer
from pytorch_lightning.loggers import WandbLogger

from datamodules.atomic import write_json_atomic
from callbacks.slurm_requeue import SlurmRequeue
from datamodules.base import speech_datamodule
from datamodules.locales import monitored_metric

SUMMARY_FILE = "summary.json"
BEST_METRIC = re.compile(r"^val/[^/]+/(wer|cer)$")


def count_params(module: torch.nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (only those with ``requires_grad`` when ``trainable_only``)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def describe_backbone(pl_module: LightningModule) -> dict[str, Any] | None:
    """Class, name and cache ``identity`` of ``pl_module.backbone``; None without a backbone."""
    backbone = getattr(pl_module, "backbone", None)
    if backbone is None:
        return None
    cls = type(backbone)
    return {
        "class": f"{cls.__module__}.{cls.__qualname__}",
        "name": getattr(backbone, "name", cls.__name__),
        "identity": getattr(backbone, "identity", None),
    }


class RunSummary(Callback):
    """Keeps ``<default_root_dir>/summary.json`` (see module docstring) up to date.

    Args:
        filename: file name inside the run directory.
        metric_pattern: regex of the validation metrics whose best (lowest) value is tracked.
    """

    def __init__(self, filename: str = SUMMARY_FILE, metric_pattern: str = BEST_METRIC.pattern) -> None:
        self.filename = filename
        self.metric_pattern = re.compile(metric_pattern)
        self.best: dict[str, dict[str, float | int]] = {}
        self.max_trainable_params = 0
        self.previous_wall_time_s = 0.0  # earlier sessions of a resumed run
        self._start: float | None = None
        self._static: dict[str, Any] = {}

    # --- Lightning hooks -------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":  # from here on a failure is recorded (a resumed run must not keep saying "finished")
            self._start = time.monotonic()

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.monotonic()
        self._track_trainable(pl_module)
        self._static = self._describe(trainer, pl_module)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        self._track_trainable(pl_module)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or self._start is None:
            return
        self._update_best(trainer)
        self._write(trainer, pl_module, "running")

    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._track_trainable(pl_module)
        requeued = any(isinstance(cb, SlurmRequeue) and cb.stopped_for_requeue for cb in trainer.callbacks)
        payload = self._write(trainer, pl_module, "requeued" if requeued else "finished")
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.experiment.summary["speechxfer"] = json.loads(json.dumps(payload, default=str))

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero or trainer.default_root_dir is None:
            return
        path = Path(trainer.default_root_dir) / self.filename
        payload = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {
            "status": "tested", **self._describe(trainer, pl_module)}
        payload["test"] = {name: float(value) for name, value in sorted(trainer.callback_metrics.items())
                           if name.split("/")[0].split("_")[0] == "test" and value.numel() == 1}
        payload.update(self._entries(trainer), updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
        write_json_atomic(path, payload)

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if self._start is not None:
            status = "failed"
            if isinstance(exception, KeyboardInterrupt):
                status = "interrupted"
            elif type(exception).__name__ == "TrialPruned":  # optuna sweeps stop bad trials early
                status = "pruned"
            self._write(trainer, pl_module, status, error=f"{type(exception).__name__}: {exception}")

    # --- checkpointed state ----------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "max_trainable_params": self.max_trainable_params,
            "wall_time_s": self.wall_time_s(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = dict(state_dict.get("best", {}))
        self.max_trainable_params = int(state_dict.get("max_trainable_params", 0))
        self.previous_wall_time_s = float(state_dict.get("wall_time_s", 0.0))

    # --- helpers ---------------------------------------------------------------------------
    def wall_time_s(self) -> float:
        """Seconds of fitting so far, earlier sessions of a resumed run included."""
        session = 0.0 if self._start is None else time.monotonic() - self._start
        return self.previous_wall_time_s + session

    @staticmethod
    def _describe(trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        """What the run is: method, backbone, data (the summary's static part)."""
        datamodule = speech_datamodule(trainer)
        return {
            "method": type(pl_module).__name__,
            "module_class": f"{type(pl_module).__module__}.{type(pl_module).__qualname__}",
            "backbone": describe_backbone(pl_module),
            "data": datamodule.describe() if datamodule is not None else None,
            "labelled_target_minutes": datamodule.labelled_target_minutes if datamodule is not None else None,
            "headline_metric": monitored_metric(datamodule) if datamodule is not None else None,
            "total_params": count_params(pl_module),
        }

    def _entries(self, trainer: Trainer) -> dict[str, Any]:
        """Other callbacks' ``summary_entries(trainer)`` (optional protocol), merged."""
        extra: dict[str, Any] = {}
        for callback in trainer.callbacks:
            entries = getattr(callback, "summary_entries", None)  # optional callback protocol
            if callable(entries) and callback is not self:
                extra.update(entries(trainer))
        return extra

    def _track_trainable(self, pl_module: LightningModule) -> None:
        self.max_trainable_params = max(self.max_trainable_params, count_params(pl_module, trainable_only=True))

    def _update_best(self, trainer: Trainer) -> None:
        for name, value in trainer.callback_metrics.items():
            if not self.metric_pattern.match(name):
                continue
            value = float(value)
            if value == value and (name not in self.best or value < self.best[name]["value"]):
                self.best[name] = {"value": value, "step": int(trainer.global_step)}

    def summary(self, trainer: Trainer, pl_module: LightningModule, status: str) -> dict[str, Any]:
        """The summary dict (see module docstring)."""
        extra = self._entries(trainer)
        return {
            "status": status,
            **self._static,
            "trainable_params": count_params(pl_module, trainable_only=True),
            "max_trainable_params": self.max_trainable_params,
            "wall_time_s": round(self.wall_time_s(), 3),
            "global_step": int(trainer.global_step),
            "epoch": int(trainer.current_epoch),
            "best": dict(sorted(self.best.items())),
            "monitor_mode": "min",
            "updated": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **extra,
        }

    def _write(self, trainer: Trainer, pl_module: LightningModule, status: str, **extra: Any) -> dict[str, Any]:
        payload = {**self.summary(trainer, pl_module, status), **extra}
        if trainer.is_global_zero:
            write_json_atomic(Path(trainer.default_root_dir) / self.filename, payload)
        return payload
