"""SLURM's pre-timeout signal, caught from the first line of ``speechxfer`` (stdlib only: imports in milliseconds).

``sbatch --signal=SIGUSR1@90`` may signal a job leg at any moment, also during the seconds the
process spends importing torch and Lightning. Python's default action for SIGUSR1 is to *terminate*
(the job then ends FAILED 138:0), so the entry point (``experiments/__main__.py``,
``experiments.entry:main``) installs :class:`PendingSignal` before importing anything heavy whenever
it runs inside a SLURM batch job. It only records the signal; ``callbacks.SlurmRequeue`` takes the
signal over in ``setup`` and inherits a recorded one (checkpoint + requeue at the first step boundary).

Requeueing: ``SlurmRequeue`` saves ``last.ckpt`` and stops training cleanly on every rank. Rank 0 then
writes the file named by ``$SPEECHXFER_REQUEUE_FLAG`` (the sbatch template sets it) and every rank exits
0; the template runs ``scontrol requeue`` only after ``srun`` returned and the flag exists, i.e. after
every rank exited (never while ranks still run; a non-zero exit would make ``srun --kill-on-bad-exit``
kill the ranks still finishing). Without ``SPEECHXFER_REQUEUE_FLAG`` (a script of your own) the
ranks exit with :data:`REQUEUE_EXIT_CODE` instead.
"""

from __future__ import annotations

import os
import signal

REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL (sysexits.h): "temporary failure, retry later"
REQUEUE_FLAG_ENV = "SPEECHXFER_REQUEUE_FLAG"
INTERACTIVE_JOB_NAMES = ("bash", "interactive")  # Lightning ignores SLURM for these, so do we


class PendingSignal:
    """A signal handler that only records that the signal arrived (``received``)."""

    def __init__(self, signum: int) -> None:
        self.signum, self.received = signum, False

    def __call__(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self.received = True


def in_slurm_batch_job() -> bool:
    """True inside an sbatch job (not an interactive ``srun --pty bash``)."""
    return bool(os.environ.get("SLURM_JOB_ID")) and os.environ.get("SLURM_JOB_NAME") not in INTERACTIVE_JOB_NAMES


def install_early_handler(signum: int = signal.SIGUSR1) -> PendingSignal | None:
    """Under SLURM, record ``signum`` instead of dying of it until a real handler takes over."""
    if not in_slurm_batch_job() or signal.getsignal(signum) not in (signal.SIG_DFL, None):
        return None
    handler = PendingSignal(signum)
    signal.signal(signum, handler)
    return handler


def finish_for_requeue(is_global_zero: bool) -> int:
    """Exit status of a process whose fit stopped for a requeue; rank 0 writes the requeue flag file."""
    flag = os.environ.get(REQUEUE_FLAG_ENV)
    if not flag:
        return REQUEUE_EXIT_CODE
    if is_global_zero:
        with open(flag, "w") as f:
            f.write(os.environ.get("SLURM_JOB_ID", "") + "\n")
    return 0
