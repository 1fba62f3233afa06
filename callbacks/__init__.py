"""Training callbacks (the CLI adds the default ones, see ``experiments.cli.default_callbacks``).

    GradualUnfreezing        staged unfreezing of layer groups, DDP- and resume-safe (unfreeze.py)
    GradSync                 all-reduces grads of parameters unfrozen after DDP wrapped the model (grad_sync.py;
                             a helper GradualUnfreezing uses, not a Lightning callback)
    ResumeAtEpochEnd         an epoch-end checkpoint resumes at the next epoch's start; resumed runs log at
                             the right step (resume.py)
    RandomState              per-rank RNG state in checkpoints: exact resume (resume.py)
    SlurmRequeue             checkpoint + clean stop on SIGUSR1 at a step boundary, for a requeue (slurm_requeue.py)
    AudioThroughput          train/audio_sec_per_sec and samples/s, global over ranks (throughput.py)
    RunSummary               <run dir>/summary.json, kept current (run_summary.py)
    TestTimeAdaptation       SUTA per utterance in validate/test, cost logged (tta.py; the CLI's --tta.* group)
    WandbValidationSamples   validation transcripts with audio as a W&B table (wandb_extras.py)
    WandbLayerWeights        featurizer layer weights as a W&B bar chart (wandb_extras.py)
    LastCheckpoint           last.ckpt every N steps and at train end (checkpointing.py)
    BestCheckpoint           best checkpoint by WER, ties broken by CER then loss (checkpointing.py)
    NonFiniteGuard           a non-finite loss/gradient stops the run naming the batch, or skips and counts (nonfinite.py)
    BadInputReport           load-time bad-input skips per epoch, every count in summary.json (bad_input.py)
    WandbAdaptationCurve     few-shot test WER vs k shots as a W&B line plot (wandb_extras.py)
    ResultsTable             before/after WER/CER table at fit end, results.md in the run dir (results_table.py)
    IntraOpThreads           torch intra-op threads for the run (threads.py)
"""

from callbacks.bad_input import BadInputReport
from callbacks.checkpointing import BestCheckpoint, LastCheckpoint
from callbacks.grad_sync import GradSync
from callbacks.nonfinite import NonFiniteGuard
from callbacks.results_table import ResultsTable
from callbacks.resume import RandomState, ResumeAtEpochEnd
from callbacks.run_summary import RunSummary
from callbacks.slurm_requeue import SlurmRequeue
from callbacks.threads import IntraOpThreads
from callbacks.throughput import AudioThroughput
from callbacks.tta import TestTimeAdaptation
from callbacks.unfreeze import GradualUnfreezing
from callbacks.wandb_extras import WandbAdaptationCurve, WandbLayerWeights, WandbValidationSamples

__all__ = [
    "AudioThroughput", "BadInputReport", "BestCheckpoint", "GradSync", "GradualUnfreezing", "IntraOpThreads",
    "LastCheckpoint", "NonFiniteGuard", "RandomState", "ResultsTable", "ResumeAtEpochEnd", "RunSummary", "SlurmRequeue",
    "TestTimeAdaptation", "WandbAdaptationCurve", "WandbLayerWeights", "WandbValidationSamples",
]
