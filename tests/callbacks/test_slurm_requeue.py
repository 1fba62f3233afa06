"""SlurmRequeue: a real SIGUSR1 mid-training saves last.ckpt at the next step and stops for a requeue."""

import os
import signal

import pytorch_lightning as pl
import torch
from pytorch_lightning.demos.boring_classes import BoringModel

from callbacks import SlurmRequeue


class SignalAtStep(pl.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR1)


def test_sigusr1_checkpoints_and_stops_for_requeue(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    previous = signal.getsignal(signal.SIGUSR1)
    requeue = SlurmRequeue()
    trainer = pl.Trainer(
        default_root_dir=tmp_path, max_steps=50, callbacks=[requeue, SignalAtStep(5)], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )
    trainer.fit(BoringModel())

    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 6 == trainer.global_step  # the step in flight finished, then it stopped
    assert requeue.stopped_for_requeue  # the CLI exits for the sbatch script to requeue (after srun returned)
    assert signal.getsignal(signal.SIGUSR1) == previous  # handler restored at teardown


def test_no_signal_no_checkpoint(tmp_path):
    requeue = SlurmRequeue()
    trainer = pl.Trainer(
        default_root_dir=tmp_path, max_steps=3, callbacks=[requeue], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )
    trainer.fit(BoringModel())
    assert trainer.global_step == 3 and not requeue.stopped_for_requeue
    assert not (tmp_path / "checkpoints").exists()
