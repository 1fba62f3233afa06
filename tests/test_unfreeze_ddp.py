"""GradualUnfreezing under a REAL 2-process CPU DDP (gloo), run as a subprocess.

DDP's launcher re-executes ``sys.argv``, so DDP never runs inside the pytest process: the test runs
``tests/scripts/ddp_unfreeze.py`` (each rank trains on different data; stages at steps 2 and 4) and
compares the parameters every rank saved.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

SCRIPTS = Path(__file__).parent / "scripts"
sys.path.insert(0, str(SCRIPTS))
from ddp_unfreeze import SNAPSHOT_STEPS, SnapshotParams  # noqa: E402
from unfreeze_standin import StandInModule, regression_loader  # noqa: E402

from callbacks import GradualUnfreezing  # noqa: E402

pytestmark = pytest.mark.slow
DIST_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GLOBAL_RANK", "RANK")


def run_ddp(out: Path, *flags: str) -> dict[tuple[int, int], dict[str, torch.Tensor]]:
    """Run the 2-rank script; returns {(rank, step): {param name: tensor}}."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "ddp_unfreeze.py"), "--out", str(out), *flags],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {(r, s): torch.load(out / f"rank{r}_step{s}.pt") for r in (0, 1) for s in SNAPSHOT_STEPS}


@pytest.fixture(scope="module")
def synced(tmp_path_factory):
    return run_ddp(tmp_path_factory.mktemp("ddp_sync"))


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
        callbacks=[GradualUnfreezing({0: ["head"], 2: ["top:1"], 4: ["all"]}, unit="step"),
                   SnapshotParams(tmp_path, SNAPSHOT_STEPS)],
    )
    trainer.fit(StandInModule(), DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False))
    for step in SNAPSHOT_STEPS:
        reference = torch.load(tmp_path / f"rank0_step{step}.pt")
        for name, value in reference.items():
            torch.testing.assert_close(synced[(0, step)][name], value, rtol=1e-5, atol=1e-6)


def test_without_the_sync_replicas_diverge(tmp_path):
    """Stock BaseFinetuning behaviour: parameters unfrozen after DDP wrapped the model are never reduced."""
    snaps = run_ddp(tmp_path, "--no-sync")
    assert all(torch.equal(snaps[(0, 2)][n], snaps[(1, 2)][n]) for n in snaps[(0, 2)])  # before any unfreeze
    assert not torch.equal(snaps[(0, 4)]["layers.2.weight"], snaps[(1, 4)]["layers.2.weight"])
    assert not torch.equal(snaps[(0, 6)]["layers.0.weight"], snaps[(1, 6)]["layers.0.weight"])
