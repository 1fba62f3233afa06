"""Checkpoint-and-stop on SLURM's pre-timeout signal, at a step boundary, on every rank together.

``sbatch --signal=SIGUSR1@90`` warns a job 90 s before its time limit. Lightning 2.6's own
handler saves the checkpoint *inside* the signal handler, which waits on a DDP barrier while
other ranks may be inside a collective: the job can hang and never requeue (Lightning issue
#21406). This callback only sets a flag in the handler; after each training batch the ranks
agree on the flag (one scalar all-reduce), all save ``last.ckpt`` collectively and training stops
cleanly (end-of-fit hooks run; ``summary.json`` says ``"requeued"``). Every rank then exits with
``experiments.slurm_signal.REQUEUE_EXIT_CODE``, and the sbatch script (``experiments/slurm/template.sbatch``)
calls ``scontrol requeue`` only after ``srun`` returned that code -- after all ranks exited, never while
they still run (requeueing a running job kills its ranks mid-step: worker tracebacks, exit 1, lost
end-of-fit hooks). The requeued job restarts the same script, whose ``--ckpt_path last_if_any``
resumes from that checkpoint in the same run directory (``runs/<experiment>/slurm-<job id>``).

A signal that arrives before ``setup`` (while Python imports torch) is caught by the entry point's
``PendingSignal`` handler (``experiments/slurm_signal.py``); ``setup`` takes it over and acts on it at
the first step. Lightning does not install its own handler when one is already present; the
previous handler is restored in ``teardown``.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from callbacks.checkpointing import LastCheckpoint

log = logging.getLogger(__name__)


class SlurmRequeue(Callback):
    """On ``signal_name``, save ``<dirpath>/last.ckpt`` at the next step boundary and stop for a requeue.

    Args:
        signal_name: the signal ``sbatch --signal`` sends (default SIGUSR1).
        dirpath: checkpoint folder (default ``<default_root_dir>/checkpoints``, where ``--ckpt_path last`` looks).

    ``stopped_for_requeue`` is True once it stopped a fit; the CLI then exits with ``REQUEUE_EXIT_CODE``.
    """

    def __init__(self, signal_name: str = "SIGUSR1", dirpath: str | None = None) -> None:
        self.signum = signal.Signals[signal_name]
        self.dirpath = dirpath
        self.requested = False
        self.stopped_for_requeue = False
        self._previous_handler = None

    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self.requested = True  # nothing else: this runs between arbitrary bytecodes, maybe mid-collective

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._previous_handler = signal.signal(self.signum, self._on_signal)
            if getattr(self._previous_handler, "received", False):  # experiments.slurm_signal.PendingSignal
                log.warning("%s arrived before training started: checkpoint + requeue at the first step",
                            self.signum.name)
                self.requested = True

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self._previous_handler is not None:
            signal.signal(self.signum, self._previous_handler)
            self._previous_handler = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args) -> None:
        flag = torch.tensor(float(self.requested), device=pl_module.device)
        if trainer.strategy.reduce(flag, reduce_op="max").item() == 0:
            return
        path = Path(self.dirpath or Path(trainer.default_root_dir) / "checkpoints") / "last.ckpt"
        last = next((cb for cb in trainer.checkpoint_callbacks
                     if isinstance(cb, LastCheckpoint) and Path(cb.dirpath or "") == path.parent), None)
        if last is not None:
            last.save_now(trainer)  # the same last.ckpt; it then needs no second save at train end
        else:
            trainer.save_checkpoint(path)  # collective; written atomically on rank 0
        log.warning("%s received: saved %s at step %d; stopping so the job can be requeued",
                    self.signum.name, path, trainer.global_step)
        trainer.should_stop = True
        self.stopped_for_requeue = True
        self.requested = False
