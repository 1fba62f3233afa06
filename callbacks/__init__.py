"""Training callbacks: gradual unfreezing (DDP/resume safe), W&B extras, audio throughput, run summary."""

from callbacks.grad_sync import GradSync
from callbacks.resume import RandomState, ResumeAtEpochEnd
from callbacks.run_summary import RunSummary
from callbacks.slurm_requeue import SlurmRequeue
from callbacks.throughput import AudioThroughput
from callbacks.unfreeze import GradualUnfreezing
from callbacks.wandb_extras import WandbLayerWeights, WandbValidationSamples

__all__ = ["AudioThroughput", "GradSync", "GradualUnfreezing", "RandomState", "ResumeAtEpochEnd", "RunSummary", "SlurmRequeue", "WandbLayerWeights", "WandbValidationSamples"]
