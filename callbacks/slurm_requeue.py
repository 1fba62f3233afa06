"""Checkpoint-and-requeue on SLURM's pre-timeout signal, at a step boundary, on every rank together.

``sbatch --signal=SIGUSR1@90`` warns a job 90 s before its time limit. Lightning 2.6's own
handler saves the checkpoint *inside* the signal handler, which waits on a DDP barrier while
other ranks may be inside a collective: the job can hang and never requeue (Lightning issue
#21406). This callback only sets a flag in the handler; after each training batch the ranks
agree on the flag (one scalar all-reduce), all save ``last.ckpt`` collectively, rank 0 calls
``scontrol requeue $SLURM_JOB_ID`` and training stops cleanly. The requeued job restarts the
same script, whose ``--ckpt_path last`` resumes from that checkpoint in the same run directory
(``runs/<experiment>/slurm-<job id>``).

Lightning does not install its handler when one is already present, so registering ours in
``setup`` replaces it; the previous handler is restored in ``teardown``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

log = logging.getLogger(__name__)


class SlurmRequeue(Callback):
    """On ``signal_name``, save ``<dirpath>/last.ckpt`` at the next step boundary, requeue, stop.

    Args:
        signal_name: the signal ``sbatch --signal`` sends (default SIGUSR1).
        dirpath: checkpoint folder (default ``<default_root_dir>/checkpoints``, where ``--ckpt_path last`` looks).
        requeue_command: run by rank 0 after saving; ``{job_id}`` is substituted. Empty: don't requeue.
    """

    def __init__(
        self,
        signal_name: str = "SIGUSR1",
        dirpath: str | None = None,
        requeue_command: str = "scontrol requeue {job_id}",
    ) -> None:
        self.signum = signal.Signals[signal_name]
        self.dirpath = dirpath
        self.requeue_command = requeue_command
        self.requested = False
        self._previous_handler = None

    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self.requested = True  # nothing else: this runs between arbitrary bytecodes, maybe mid-collective

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._previous_handler = signal.signal(self.signum, self._on_signal)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self._previous_handler is not None:
            signal.signal(self.signum, self._previous_handler)
            self._previous_handler = None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args) -> None:
        flag = torch.tensor(float(self.requested), device=pl_module.device)
        if trainer.strategy.reduce(flag, reduce_op="max").item() == 0:
            return
        path = Path(self.dirpath or Path(trainer.default_root_dir) / "checkpoints") / "last.ckpt"
        trainer.save_checkpoint(path)  # collective; Lightning writes it atomically on rank 0
        log.warning("%s received: saved %s at step %d", self.signum.name, path, trainer.global_step)
        job_id = os.environ.get("SLURM_JOB_ID")
        if trainer.is_global_zero and job_id and self.requeue_command:
            command = self.requeue_command.format(job_id=job_id).split()
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            log.warning("requeue (%s): exit %d %s", " ".join(command), result.returncode, result.stderr.strip())
        trainer.should_stop = True
        self.requested = False
