"""Exact resume: loop position at epoch ends, and random-number state.

Lightning restores weights, optimizer, schedulers, loops and callback state, but (a) mis-places a
checkpoint taken after the last batch of a length-less (duration-bucketed) epoch, and (b) does not
save random-number generators, so dropout/SpecAugment masks after a resume differ from an
uninterrupted run. ``ResumeAtEpochEnd`` fixes (a), ``RandomState`` fixes (b).
"""

from __future__ import annotations

import logging
import random

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.callbacks import Callback

log = logging.getLogger(__name__)


class ResumeAtEpochEnd(Callback):
    """Resume a ``last.ckpt`` written after the LAST batch of an epoch as the start of the next epoch.

    The datamodules' train loaders have no length (duration-bucketed batches): Lightning learns that a
    batch was its epoch's last from the prefetcher and checkpoints ``is_last_batch=True`` together with
    "epoch ``e`` in progress". On restart Lightning then closes epoch ``e`` itself and runs epoch
    ``e + 1`` as if it were the restarted one: ``on_train_epoch_start`` is skipped (epoch-unit
    unfreezing comes an epoch late) and the batch counters keep epoch ``e``'s count, so every
    checkpoint of epoch ``e + 1`` records the wrong position and the next resume replays the wrong
    batches (or fails). The datamodule's sampler resumes such a checkpoint at the start of epoch ``e + 1``
    (``DurationBucketingSampler.fast_forward``); this callback makes Lightning's loop state say the same:
    epoch ``e`` finished, epoch ``e + 1`` ready, no batch of it seen. (Epoch ``e``'s end hooks, which the
    killed process never reached, are not replayed; Lightning skips its end-of-epoch validation on
    restart in any case.) Only checkpoints saved on a train batch end, mid-epoch, by a datamodule that
    restores its own sampler position (``train_sampler`` state) are touched.
    """

    def __init__(self) -> None:
        self._align_logging_step = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        """First batch after a restore: the loggers' step (``_batches_that_stepped``) = the global step.

        Lightning adds 1 to the restored logging step on restart, assuming the checkpoint was saved
        before that step's increment (true on a train-batch end, not for the final ``last.ckpt`` saved
        at train end): metrics of a run resumed from such a checkpoint were logged one step late. With one
        optimizer both count optimizer steps, so they must be equal.
        """
        if self._align_logging_step and len(trainer.optimizers) == 1:
            trainer.fit_loop.epoch_loop._batches_that_stepped = trainer.global_step
        self._align_logging_step = False

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self._align_logging_step = True
        datamodule = trainer.datamodule
        state = checkpoint.get(type(datamodule).__qualname__) if datamodule is not None else None
        loops = checkpoint.get("loops", {}).get("fit_loop", {})
        batches, epochs = loops.get("epoch_loop.batch_progress"), loops.get("epoch_progress")
        if not (isinstance(state, dict) and state.get("train_sampler")) or not batches or not epochs:
            return
        saved_on_batch_end = batches["total"]["completed"] == batches["total"]["processed"] - 1
        in_epoch = epochs["total"]["started"] == epochs["total"]["processed"] + 1
        if not (batches.get("is_last_batch") and saved_on_batch_end and in_epoch):
            return
        batches["total"]["completed"] = batches["total"]["processed"]
        batches["current"] = {key: 0 for key in batches["current"]}
        batches["is_last_batch"] = False
        for progress in (epochs["total"], epochs["current"]):  # epoch e done, epoch e + 1 ready, not started
            progress["processed"] = progress["completed"] = progress["started"]
            progress["ready"] = progress["started"] + 1
        # ``_batches_that_stepped`` (the loggers' step) is left as saved: Lightning adds the missing 1 itself when
        # it restarts a loop that is not on its last batch (TrainingEpochLoop.reset); adding it here too made
        # every metric after such a resume logged one step late.
        log.info("resuming after the last batch of epoch %s: continuing at the start of the next epoch",
                 checkpoint.get("epoch"))


class RandomState(Callback):
    """Save every rank's torch/CUDA/NumPy/Python RNG state; restore it before the first resumed batch.

    Restoring at the first ``on_train_batch_start`` (not at load time) skips whatever Lightning
    draws between restore and training; our dataloaders draw worker seeds from their own generator,
    so the global stream continues exactly where the checkpoint left it.
    """

    def __init__(self) -> None:
        self._pending: dict | None = None

    @staticmethod
    def _capture() -> dict:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)  # weights_only-safe
        state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def state_dict(self) -> dict:
        own = self._capture()
        if dist.is_available() and dist.is_initialized():
            states: list = [None] * dist.get_world_size()
            dist.all_gather_object(states, own)  # checkpoints are dumped on every rank, written by rank 0
            return {"per_rank": states}
        return {"per_rank": [own]}

    def load_state_dict(self, state_dict: dict) -> None:
        self._pending = state_dict

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args) -> None:
        if self._pending is None:
            return
        states = self._pending["per_rank"]
        if len(states) != trainer.world_size:
            log.warning("RNG state saved with %d ranks, resuming with %d: using rank 0's", len(states), trainer.world_size)
        state = states[trainer.global_rank] if len(states) == trainer.world_size else states[0]
        torch.set_rng_state(state["torch"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        random.setstate(state["python"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        self._pending = None
