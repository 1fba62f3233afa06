"""Load-time bad input, summarised: a log line and a metric per epoch, and every count in ``summary.json``.

Scan-time and label-check skips are logged once when the manifests are built; audio that fails to
decode (or decodes to NaN/inf) is only found while training, one utterance at a time, often in a
DataLoader worker. The datamodule's loaders sum those skips (``ASRDataModule.load_skips``); this
callback turns them into one warning per epoch with the new counts (summed over DDP ranks), the
metric ``data/load_skipped`` (cumulative), and the ``data_report`` entry of ``summary.json``
(``datamodule.bad_input_report()``: scan, checks, load, training-text policy).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import pytorch_lightning as pl
import torch.distributed as dist
from pytorch_lightning.callbacks import Callback

from datamodules.base import speech_datamodule

log = logging.getLogger(__name__)


def all_ranks(counts: Counter) -> Counter:
    """``counts`` summed over the DDP ranks (itself in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return counts
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, dict(counts))
    return sum((Counter(g) for g in gathered), Counter())


class BadInputReport(Callback):
    """Per-epoch summary of load-time skips; ``summary_entries()`` feeds ``summary.json``."""

    def __init__(self) -> None:
        self._reported: Counter = Counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = speech_datamodule(trainer)
        if datamodule is None:
            return
        total = all_ranks(datamodule.load_skip_counts())
        new = total - self._reported
        if new and trainer.is_global_zero:
            log.warning("epoch %d: skipped %d utterance(s) whose audio failed at load time (%s); total so far %d",
                        trainer.current_epoch, sum(new.values()),
                        ", ".join(f"{r}={n}" for r, n in sorted(new.items())), sum(total.values()))
        self._reported = total
        pl_module.log("data/load_skipped", float(sum(total.values())), sync_dist=False)

    def summary_entries(self, trainer: pl.Trainer) -> dict[str, Any]:
        datamodule = speech_datamodule(trainer)
        return {"data_report": datamodule.bad_input_report()} if datamodule is not None else {}
