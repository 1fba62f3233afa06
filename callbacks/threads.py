"""``IntraOpThreads``: the number of CPU threads torch uses inside one op, set per run from its config.

    callbacks:
      - class_path: callbacks.IntraOpThreads
        init_args: {num_threads: 1}

Small recurrent CPU models (the demo configs) get little from a second intra-op thread and lose a lot
when that thread's core is busy: the main job (experiments/quickstart.yaml) took 50 CPU-s with one thread
and 240 CPU-s with two on a 2-core VM where another training held one core (``benchmarks/bench_main_job.py``).
The DataLoader workers are separate processes and keep decoding audio on the other cores. Set from
``setup`` (before any validation or training); ``OMP_NUM_THREADS`` does the same for a whole process.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback


class IntraOpThreads(Callback):
    """``torch.set_num_threads(num_threads)`` when the trainer sets up (fit, validate, test, predict)."""

    def __init__(self, num_threads: int) -> None:
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        self.num_threads = num_threads

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        torch.set_num_threads(self.num_threads)
