"""Training callbacks: gradual unfreezing (DDP/resume safe), W&B extras, audio throughput, run summary, results table."""

from callbacks.grad_sync import GradSync
from callbacks.results_table import ResultsTable
from callbacks.resume import RandomState, ResumeAtEpochEnd
from callbacks.run_summary import RunSummary
from callbacks.slurm_requeue import SlurmRequeue
from callbacks.threads import IntraOpThreads
from callbacks.throughput import AudioThroughput
from callbacks.unfreeze import GradualUnfreezing
from callbacks.wandb_extras import WandbLayerWeights, WandbValidationSamples

__all__ = ["AudioThroughput", "GradSync", "GradualUnfreezing", "IntraOpThreads", "RandomState", "ResultsTable", "ResumeAtEpochEnd", "RunSummary", "SlurmRequeue", "WandbLayerWeights", "WandbValidationSamples"]
