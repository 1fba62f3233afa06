"""Where a run lives on disk, and the loggers/checkpoints every run gets by default.

A run directory is ``<runs_dir>/<experiment>/<version>/`` holding ``config.yaml`` (resolved config),
``metrics.csv`` (CSVLogger), ``checkpoints/`` (``last.ckpt`` + best), ``wandb/`` and ``summary.json``.

The version must be the same on every DDP rank: Lightning's DDP launcher re-executes the command
for ranks > 0 with the parent's environment, so rank 0 publishes its choice in
``SPEECHXFER_RUN_DIR``; under SLURM every task derives it from ``SLURM_JOB_ID``.
"""

from __future__ import annotations

import logging
import netrc
import os
import time
from pathlib import Path

from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger, Logger, WandbLogger

log = logging.getLogger(__name__)
RUN_DIR_ENV = "SPEECHXFER_RUN_DIR"


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
    if os.environ.get("SLURM_PROCID", "0") == "0":
        link_latest(run_dir)
    return run_dir


def link_latest(run_dir: Path) -> None:
    """Point ``<runs_dir>/<experiment>/latest`` at ``run_dir`` (atomically replaced)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    latest = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name, target_is_directory=True)
    os.replace(tmp, latest)


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


def default_loggers(
    run_dir: Path, experiment: str, tags: list[str], use_wandb: bool, wandb_project: str
) -> list[Logger]:
    """CSVLogger always (metrics.csv in the run dir); WandbLogger unless disabled, offline without a key."""
    loggers: list[Logger] = [CSVLogger(save_dir=str(run_dir), name="", version="")]
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
        )
        loggers.insert(0, wandb_logger)
    return loggers


def checkpoint_callbacks(run_dir: Path, monitor: str | None, every_n_steps: int) -> list[Callback]:
    """Best-by-``monitor`` checkpoint plus ``last.ckpt`` refreshed every ``every_n_steps`` steps."""
    ckpt_dir = run_dir / "checkpoints"
    last = ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0, every_n_train_steps=every_n_steps)
    if monitor is None:
        return [last]
    best = ModelCheckpoint(
        dirpath=ckpt_dir,
        monitor=monitor,
        mode="min",
        save_top_k=1,
        filename="best-{step}",
        auto_insert_metric_name=False,
    )
    return [best, last]
