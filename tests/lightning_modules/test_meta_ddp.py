"""MetaCTC under a REAL 2-process CPU DDP equals one process on the same episodes (subprocesses: DDP re-executes
``sys.argv``, so it never runs inside pytest; see tests/callbacks/test_unfreeze_ddp.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.corpus_factory import make_librispeech

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "ddp_meta.py"
DIST_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GLOBAL_RANK", "RANK")


def launch(corpus: Path, out: Path, devices: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    cmd = [sys.executable, str(SCRIPT), "--corpus", str(corpus), "--out", str(out), "--devices", str(devices)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(proc: subprocess.Popen) -> None:
    try:
        output, _ = proc.communicate(timeout=400)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the rank it spawned
        except ProcessLookupError:
            pass
        proc.wait()
    assert proc.returncode == 0, output[-5000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    corpus = make_librispeech(tmp_path_factory.mktemp("corpus"), {"train-clean-100": 48}, speakers=8)
    outs = {n: tmp_path_factory.mktemp(f"ddp{n}") for n in (1, 2)}
    procs = {n: launch(corpus, outs[n], n) for n in (1, 2)}
    for proc in procs.values():
        finish(proc)
    return {(n, r): torch.load(outs[n] / f"rank{r}.pt") for n, r in ((1, 0), (2, 0), (2, 1))}


def test_two_ranks_take_the_one_process_step(runs):
    one, rank0, rank1 = runs[1, 0], runs[2, 0], runs[2, 1]
    for step, tasks in enumerate(one["tasks"]):  # each rank adapted its own half of the same meta-batch
        assert rank0["tasks"][step] == tasks[0::2] and rank1["tasks"][step] == tasks[1::2]
    for name, value in one["params"].items():
        assert torch.equal(rank0["params"][name], rank1["params"][name]), f"{name} differs between ranks"
        torch.testing.assert_close(rank0["params"][name], value, rtol=1e-5, atol=1e-6, msg=f"{name}: 2 ranks != 1")
    assert not torch.equal(one["params"]["inner_log_lr"], torch.full_like(one["params"]["inner_log_lr"], -4.605170))


def test_meta_validation_is_exact_over_ranks(runs):
    one, rank0 = runs[1, 0]["metrics"], runs[2, 0]["metrics"]
    for key in ("val/target/wer", "val/target/cer", "val/target/loss"):
        assert rank0[key] == pytest.approx(one[key], rel=1e-4, abs=1e-5), key
