"""GradualUnfreezing under a REAL 2-process CPU DDP (gloo), run as a subprocess.

DDP's launcher re-executes ``sys.argv``, so DDP never runs inside the pytest process: the test runs
``tests/scripts/ddp_unfreeze.py`` (each rank trains on different data; stages at steps 2 and 4) and
compares the parameters every rank saved.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

SCRIPTS = Path(__file__).parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))
from ddp_unfreeze import (  # noqa: E402
    BATCH_SIZE, LOG_EVERY, RANK_AUDIO_SAMPLES, SCHEDULE, SECONDS_PER_BATCH, SNAPSHOT_STEPS, SnapshotParams,
)
from unfreeze_standin import StandInModule, regression_loader  # noqa: E402

from callbacks import GradualUnfreezing  # noqa: E402

pytestmark = pytest.mark.slow
DIST_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GLOBAL_RANK", "RANK")


def launch(out: Path, *flags: str) -> subprocess.Popen:
    """Start the 2-rank script (DDP re-executes it for rank 1)."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    cmd = [sys.executable, str(SCRIPTS / "ddp_unfreeze.py"), "--out", str(out), *flags]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # own process group: both ranks can be killed together


def kill(proc: subprocess.Popen) -> None:
    """Kill whatever is left of a launched run: the launcher and the rank it spawned (one process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # all exited
    proc.wait()


def collect(proc: subprocess.Popen, out: Path) -> dict[tuple[int, int], dict[str, torch.Tensor]]:
    """Wait for a launched run; returns {(rank, step): {param name: tensor}} (metrics stay in ``out``)."""
    try:
        output, _ = proc.communicate(timeout=300)
    finally:
        kill(proc)
    assert proc.returncode == 0, output[-5000:]
    return {(r, s): torch.load(out / f"rank{r}_step{s}.pt") for r in (0, 1) for s in SNAPSHOT_STEPS}


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """Both DDP runs (with and without the sync), started together to save wall time."""
    dirs = {"sync": tmp_path_factory.mktemp("ddp_sync"), "nosync": tmp_path_factory.mktemp("ddp_nosync")}
    procs = {"sync": launch(dirs["sync"]), "nosync": launch(dirs["nosync"], "--no-sync")}
    try:
        return {name: (collect(procs[name], dirs[name]), dirs[name]) for name in procs}
    finally:
        for proc in procs.values():
            kill(proc)


@pytest.fixture(scope="module")
def synced(ddp_runs):
    return ddp_runs["sync"][0]


def test_replicas_stay_identical_across_unfreeze_stages(synced):
    for step in SNAPSHOT_STEPS:
        rank0, rank1 = synced[(0, step)], synced[(1, step)]
        for name in rank0:
            assert torch.equal(rank0[name], rank1[name]), f"step {step}: {name} differs between ranks"
    # and the late-unfrozen layers really trained
    assert not torch.equal(synced[(0, 2)]["layers.0.weight"], synced[(0, 6)]["layers.0.weight"])


def test_synced_grads_are_the_ddp_average(synced, tmp_path):
    """Same as one process on both ranks' batches concatenated (mean loss == mean of rank means)."""
    rank_loaders = [regression_loader(n=64, seed=100 + r) for r in (0, 1)]
    x = torch.cat([torch.cat([b0[0], b1[0]]) for b0, b1 in zip(*rank_loaders)])
    y = torch.cat([torch.cat([b0[1], b1[1]]) for b0, b1 in zip(*rank_loaders)])
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=max(SNAPSHOT_STEPS), logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[GradualUnfreezing(SCHEDULE, unit="step"),
                   SnapshotParams(tmp_path, SNAPSHOT_STEPS)],
    )
    trainer.fit(StandInModule(), DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False))
    for step in SNAPSHOT_STEPS:
        reference = torch.load(tmp_path / f"rank0_step{step}.pt")
        for name, value in reference.items():
            torch.testing.assert_close(synced[(0, step)][name], value, rtol=1e-5, atol=1e-6)


def test_without_the_sync_replicas_diverge(ddp_runs):
    """Stock BaseFinetuning behaviour: parameters unfrozen after DDP wrapped the model are never reduced."""
    snaps = ddp_runs["nosync"][0]
    assert all(torch.equal(snaps[(0, 2)][n], snaps[(1, 2)][n]) for n in snaps[(0, 2)])  # before any unfreeze
    assert not torch.equal(snaps[(0, 4)]["layers.2.weight"], snaps[(1, 4)]["layers.2.weight"])
    assert not torch.equal(snaps[(0, 6)]["layers.0.weight"], snaps[(1, 6)]["layers.0.weight"])


def test_throughput_is_summed_over_ranks(ddp_runs):
    """Rank 0 logs the global figure: both ranks' audio over the (mean) interval time."""
    metrics = ddp_runs["sync"][1] / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    audio = [r["train/audio_sec_per_sec"] for r in records if "train/audio_sec_per_sec" in r]
    utts = [r["train/samples_per_sec"] for r in records if "train/samples_per_sec" in r]
    interval = LOG_EVERY * SECONDS_PER_BATCH
    per_interval_audio = LOG_EVERY * BATCH_SIZE * sum(RANK_AUDIO_SAMPLES) / 16000  # 2 ranks' audio seconds
    assert audio == pytest.approx([per_interval_audio / interval] * 3)  # steps 2, 4, 6
    assert utts == pytest.approx([LOG_EVERY * BATCH_SIZE * 2 / interval] * 3)
