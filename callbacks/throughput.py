"""Training throughput in audio seconds per wall-clock second, summed over all ranks.

Why not Lightning's ``ThroughputMonitor``: it counts integer "items" and reports items/s (no
division by the sample rate), runs on rank 0 only and multiplies rank 0's figures by the world
size (assumes identical batches on every rank, which bucketing by duration breaks), and only reports
once a 100-update window is full. Here every rank counts its own audio and one ``all_reduce`` per
logging interval gives the true global figure.
"""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from datamodules.base import speech_datamodule
from datamodules.batch import SAMPLE_RATE


def batch_audio(batch: Any) -> tuple[torch.Tensor, int]:
    """(total valid audio samples as a 0-d tensor, number of utterances) of a batch.

    Plain batches use ``batch["lengths"]`` (B,); domain-adaptation batches ``{"source": b, "target": b}``
    count both sub-batches; meta-learning batches (lists of episodes ``{"support": b | None, "query": b,
    ...}``) count every support and query batch.
    """
    if isinstance(batch, dict) and "lengths" in batch:
        lengths = batch["lengths"]
        return lengths.sum(), int(lengths.numel())
    parts_of = []
    if isinstance(batch, list):  # a meta-batch of episodes
        parts_of = batch
    elif isinstance(batch, dict) and "query" in batch:  # an episode
        parts_of = [b for b in (batch.get("support"), batch["query"]) if b is not None]
    elif isinstance(batch, dict) and batch and all(isinstance(b, dict) for b in batch.values()):
        parts_of = list(batch.values())
    if parts_of:
        parts = [batch_audio(b) for b in parts_of]
        return torch.stack([s for s, _ in parts]).sum(), sum(n for _, n in parts)
    found = list(batch) if isinstance(batch, dict) else type(batch).__name__
    raise ValueError(f"AudioThroughput: batch has no 'lengths' (got {found})")


class AudioThroughput(Callback):
    """Log ``train/audio_sec_per_sec`` and ``train/samples_per_sec`` (utterances/s), global over ranks.

    Every ``trainer.log_every_n_steps`` optimizer steps, the audio (sum of ``batch["lengths"]`` /
    sample rate) and utterances seen by all ranks since the previous log are divided by the
    wall-clock time of that interval (mean over ranks). Validation time is excluded. The rate of
    ``batch["audio"]`` is the datamodule's ``sample_rate`` (``SAMPLE_RATE`` without a datamodule).
    """

    clock = staticmethod(time.perf_counter)  # tests replace it with a fake clock

    def __init__(self) -> None:
        self._totals: torch.Tensor | None = None  # (audio samples, utterances) since the last log
        self._t0 = 0.0
        self._paused_at: float | None = None
        self._last_step = -1
        self._rate = SAMPLE_RATE

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = speech_datamodule(trainer)
        self._rate = datamodule.sample_rate if datamodule is not None else SAMPLE_RATE
        self._totals = torch.zeros(2, dtype=torch.float64, device=pl_module.device)
        self._t0 = self._now(pl_module)
        self._last_step = trainer.global_step

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        samples, utterances = batch_audio(batch)
        self._totals[0] += samples.to(self._totals.device, torch.float64)
        self._totals[1] += utterances
        step = trainer.global_step
        stepped, self._last_step = step != self._last_step, step  # False while accumulating gradients
        if stepped and step % trainer.log_every_n_steps == 0:
            pl_module.log_dict(self._compute(trainer, pl_module), on_step=True, on_epoch=False)

    def _compute(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        now = self._now(pl_module)
        elapsed = torch.tensor([now - self._t0], dtype=torch.float64, device=self._totals.device)
        summed = trainer.strategy.reduce(torch.cat([self._totals, elapsed]), reduce_op="sum")
        audio_samples, utterances, elapsed_sum = summed.tolist()
        seconds = max(elapsed_sum / trainer.world_size, 1e-9)
        self._totals.zero_()
        self._t0 = now
        return {
            "train/audio_sec_per_sec": audio_samples / self._rate / seconds,
            "train/samples_per_sec": utterances / seconds,
        }

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._totals is None or trainer.sanity_checking:
            return
        self._paused_at = self._now(pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._paused_at is not None:
            self._t0 += self._now(pl_module) - self._paused_at
            self._paused_at = None

    def _now(self, pl_module: pl.LightningModule) -> float:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)  # else the clock runs ahead of queued kernels
        return self.clock()
