"""Training callbacks: gradual unfreezing (DDP/resume safe), W&B extras, audio throughput, run summary,
checkpoints (last + best), non-finite guard, bad-input report, SLURM requeue."""

from callbacks.bad_input import BadInputReport
from callbacks.checkpointing import BestCheckpoint, LastCheckpoint
from callbacks.grad_sync import GradSync
from callbacks.nonfinite import NonFiniteGuard
from callbacks.resume import RandomState, ResumeAtEpochEnd
from callbacks.run_summary import RunSummary
from callbacks.slurm_requeue import SlurmRequeue
from callbacks.throughput import AudioThroughput
from callbacks.unfreeze import GradualUnfreezing
from callbacks.wandb_extras import WandbLayerWeights, WandbValidationSamples

__all__ = ["AudioThroughput", "BadInputReport", "BestCheckpoint", "GradSync", "GradualUnfreezing", "LastCheckpoint",
           "NonFiniteGuard", "RandomState", "ResumeAtEpochEnd", "RunSummary", "SlurmRequeue", "WandbLayerWeights",
           "WandbValidationSamples"]
