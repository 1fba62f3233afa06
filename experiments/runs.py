"""Where a run lives on disk, and the loggers/checkpoints every run gets by default.

A run directory is ``<runs_dir>/<experiment>/<version>/`` holding ``config.yaml`` (resolved config),
``metrics.csv`` (CSVLogger), ``checkpoints/`` (``last.ckpt`` + best), ``wandb/``, ``wandb_id`` and
``summary.json``.

Resuming keeps the run's history: ``metrics.csv`` is appended to (Lightning's CSVLogger deletes it),
and the W&B run id is stored in ``wandb_id`` and reused with ``resume="allow"``, so one training is
one W&B run across any number of resumes and SLURM requeues. ``runs/<experiment>/latest`` is only
repointed at a run once it has written a checkpoint (``link_latest`` after a save).

The version must be the same on every DDP rank: Lightning's DDP launcher re-executes the command
for ranks > 0 with the parent's environment, so rank 0 publishes its choice in
``SPEECHXFER_RUN_DIR``; under SLURM every task derives it from ``SLURM_JOB_ID``.
"""

from __future__ import annotations

import csv
import logging
import netrc
import os
import secrets
import time
from pathlib import Path

from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from callbacks.checkpointing import BestCheckpoint, LastCheckpoint
from datamodules.atomic import write_text_atomic

log = logging.getLogger(__name__)
RUN_DIR_ENV = "SPEECHXFER_RUN_DIR"
WANDB_ID_FILE = "wandb_id"


def resolve_run_dir(runs_dir: str, experiment: str, run_name: str | None, resume_last: bool) -> Path:
    """Pick ``<runs_dir>/<experiment>/<version>`` consistently across ranks and resumes."""
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    base = Path(runs_dir) / experiment
    if run_name:
        version = run_name
    elif os.environ.get("WANDB_RUN_ID"):  # a W&B sweep agent names each run
        version = f"wandb-{os.environ['WANDB_RUN_ID']}"
    elif os.environ.get("SLURM_JOB_ID"):
        version = f"slurm-{os.environ['SLURM_JOB_ID']}"
    elif resume_last and (latest := latest_resumable_run(base)) is not None:
        version = latest.name
    else:
        version = time.strftime("%Y%m%d-%H%M%S")
    run_dir = base / version
    os.environ[RUN_DIR_ENV] = str(run_dir)  # inherited by the ranks Lightning launches
    return run_dir


def is_launching_process() -> bool:
    """True in the process that starts a run (not a DDP rank > 0 Lightning or SLURM started)."""
    return os.environ.get("SLURM_PROCID", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0" \
        and os.environ.get("NODE_RANK", "0") == "0"


def link_latest(run_dir: Path) -> None:
    """Point ``<runs_dir>/<experiment>/latest`` at ``run_dir`` (atomically replaced); no-op if it already does."""
    latest = run_dir.parent / "latest"
    if latest.is_symlink() and os.readlink(latest) == run_dir.name:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir.parent / f".latest-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name, target_is_directory=True)
    os.replace(tmp, latest)


class ResumeError(ValueError):
    """``--ckpt_path last`` without a checkpoint to resume from."""


def resume_checkpoint(run_dir: Path, ckpt_path: str | None) -> str | None:
    """The ``ckpt_path`` to give ``Trainer.fit`` for the CLI's ``--ckpt_path``.

    ``last``: ``<run_dir>/checkpoints/last.ckpt``, which must exist (:class:`ResumeError` otherwise);
    ``last_if_any``: that file if it exists, else ``None`` (start fresh: "resume if possible", what a
    SLURM job's first leg needs); anything else is returned unchanged.
    """
    last = run_dir / "checkpoints" / "last.ckpt"
    if ckpt_path == "last_if_any":
        return str(last) if last.is_file() else None
    if ckpt_path == "last":
        if not last.is_file():
            raise ResumeError(
                f"--ckpt_path last: no checkpoint to resume from ({last} does not exist; no earlier run of this "
                f"experiment has a checkpoints/last.ckpt under {run_dir.parent}). Start without --ckpt_path, "
                "or use --ckpt_path last_if_any to resume when there is a checkpoint and start fresh otherwise.")
        return str(last)
    return ckpt_path


def latest_resumable_run(experiment_dir: Path) -> Path | None:
    """Newest run of an experiment that has ``checkpoints/last.ckpt`` (for ``--ckpt_path last``)."""
    runs = [p.parent.parent for p in experiment_dir.glob("*/checkpoints/last.ckpt") if p.parent.parent.name != "latest"]
    return max(runs, key=lambda p: (p / "checkpoints" / "last.ckpt").stat().st_mtime, default=None)


def wandb_offline() -> bool:
    """True unless W&B credentials exist and WANDB_MODE does not say offline/disabled."""
    if os.environ.get("WANDB_MODE", "").lower() in {"offline", "dryrun", "disabled"}:
        return True
    if os.environ.get("WANDB_API_KEY"):
        return False
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is None
    except (FileNotFoundError, netrc.NetrcParseError):
        return True


class _HistoryWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is kept and appended to."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = next(csv.reader(f), [])  # new rows follow the file's header


class HistoryCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` keeps the rows of earlier sessions of a resumed run."""

    @property
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _HistoryWriter(log_dir=self.log_dir)
        return self._experiment


def wandb_run_id(run_dir: Path) -> str | None:
    """The W&B run id of this run, from ``<run_dir>/wandb_id``; created there by the launching process.

    A W&B sweep agent's ``WANDB_RUN_ID`` wins. Ranks > 0 get ``None`` (they never open a W&B run).
    """
    if os.environ.get("WANDB_RUN_ID"):
        return os.environ["WANDB_RUN_ID"]
    path = run_dir / WANDB_ID_FILE
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    if not is_launching_process():
        return None
    run_id = secrets.token_hex(4)  # 8 chars of [0-9a-f], as W&B's own ids are short lowercase
    write_text_atomic(path, run_id + "\n")
    return run_id


def default_loggers(
    run_dir: Path, experiment: str, tags: list[str], use_wandb: bool, wandb_project: str
) -> list[Logger]:
    """CSV (metrics.csv in the run dir, history kept on resume) always; W&B unless disabled, offline without a key.

    The W&B run id is stored in the run dir and reused (``resume="allow"``): one W&B run per training.
    """
    loggers: list[Logger] = [HistoryCSVLogger(save_dir=str(run_dir), name="", version="")]
    if use_wandb and os.environ.get("WANDB_MODE", "").lower() != "disabled":
        offline = wandb_offline()
        if offline:
            log.info("W&B: no API key or WANDB_MODE=offline -> offline run in %s/wandb", run_dir)
        wandb_logger = WandbLogger(
            project=wandb_project,
            group=experiment,
            name=f"{experiment}/{run_dir.name}",
            tags=tags,
            save_dir=str(run_dir),
            offline=offline,
            id=wandb_run_id(run_dir),
            resume="allow",
            # no history/summary panel at exit: the run's own results table stays the last thing printed
            # (the "wandb sync" hint for offline runs is kept)
            settings={"quiet": True},
        )
        loggers.insert(0, wandb_logger)
    return loggers


def checkpoint_callbacks(run_dir: Path, monitor: str | None, every_n_steps: int) -> list[Callback]:
    """Best-by-``monitor`` checkpoint (ties broken by CER, then loss) plus ``last.ckpt``, refreshed every
    ``every_n_steps`` steps and at train end."""
    ckpt_dir = run_dir / "checkpoints"
    last = LastCheckpoint(dirpath=ckpt_dir, every_n_train_steps=every_n_steps)
    if monitor is None:
        return [last]
    best = BestCheckpoint(monitor, dirpath=ckpt_dir, filename="best-{step}", auto_insert_metric_name=False)
    return [best, last]
