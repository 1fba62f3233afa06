"""SLURM's pre-timeout signal and the requeue (issue 11, items 15, 16).

- a SIGUSR1 that arrives while ``speechxfer`` still imports torch no longer kills the job: it is recorded
  and acted on at the first step (checkpoint, clean stop, requeue flag);
- the requeue happens in the sbatch script after ``srun`` returned (all ranks exited), never from inside a
  running rank;
- on a real single-node SLURM (``.ci/install_slurm.sh && .ci/start_slurm.sh``): ``scancel --signal=USR1`` on a
  training job gives one requeue, a clean first leg, a resumed second leg, COMPLETED.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from experiments.slurm import job_state, render_sbatch, submit_sbatch
from experiments.slurm_signal import REQUEUE_EXIT_CODE, install_early_handler
from tests.cli_helpers import REPO, callbacks_yaml, cli_command, cli_env, tiny_quickstart, wait_for


def test_early_handler_records_the_signal(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_ID", "1")
    monkeypatch.setenv("SLURM_JOB_NAME", "speechxfer-x")
    previous = signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    try:
        handler = install_early_handler()
        os.kill(os.getpid(), signal.SIGUSR1)
        assert handler is not None and handler.received
    finally:
        signal.signal(signal.SIGUSR1, previous)
    monkeypatch.setenv("SLURM_JOB_NAME", "bash")  # interactive allocation: nothing installed
    assert install_early_handler() is None


@pytest.mark.slow
@pytest.mark.parametrize("flag", [True, False], ids=["template-flag", "no-flag"])
def test_sigusr1_during_startup_checkpoints_and_stops_for_the_requeue(tmp_path, flag):
    config = tiny_quickstart(tmp_path / "work")
    env = cli_env(SLURM_JOB_ID="4242", SLURM_JOB_NAME="speechxfer-test")
    if flag:
        env["SPEECHXFER_REQUEUE_FLAG"] = str(tmp_path / "requeue.flag")
    proc = subprocess.Popen(cli_command(["fit", "--config", config, "--runs_dir", tmp_path / "runs", "--wandb", "false",
                                         "--trainer.max_steps", 8, "--ckpt_path", "last_if_any"]),
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(0.5)  # python is importing torch / Lightning now
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == (0 if flag else REQUEUE_EXIT_CODE), out[-3000:]
    run = tmp_path / "runs/quickstart/slurm-4242"
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 1  # the first step
    assert json.loads((run / "summary.json").read_text())["status"] == "requeued"
    assert (tmp_path / "requeue.flag").is_file() == flag
    assert "Traceback" not in out


def fake_bin(tmp_path: Path, srun_body: str) -> Path:
    """``srun`` and ``scontrol`` stand-ins that log their calls (in order) to ``tmp_path/calls``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    (bin_dir / "srun").write_text(f"#!/bin/bash\n{srun_body}\necho srun-exited >> {calls}\n")
    (bin_dir / "scontrol").write_text(f'#!/bin/bash\necho "scontrol $*" >> {calls}\n')
    for tool in ("srun", "scontrol"):
        (bin_dir / tool).chmod(0o755)
    return bin_dir


@pytest.mark.parametrize("stopped", [True, False])
def test_the_script_requeues_only_after_srun_returned(tmp_path, stopped):
    # rank 0 of a fit stopped by SIGUSR1 writes the flag file (experiments.slurm_signal.finish_for_requeue)
    body = 'echo "$SLURM_JOB_ID" > "$SPEECHXFER_REQUEUE_FLAG"' if stopped else "true"
    bin_dir = fake_bin(tmp_path, body)
    script = render_sbatch("cfg.yaml", accelerator="cpu", output_dir=str(tmp_path / "logs"), workdir=str(tmp_path),
                           env_setup=f'export PATH={bin_dir}:"$PATH"')
    (tmp_path / "logs").mkdir()
    (tmp_path / "job.sbatch").write_text(script)
    env = {"PATH": os.environ["PATH"], "SLURM_JOB_ID": "99"}
    proc = subprocess.run(["bash", str(tmp_path / "job.sbatch")], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls == (["srun-exited", "scontrol requeue 99"] if stopped else ["srun-exited"])
    assert not list((tmp_path / "logs").glob("*.requeue"))  # consumed
    assert "--ckpt_path last_if_any" in script.replace("\\\n", " ")


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.skipif(shutil.which("sbatch") is None, reason="sbatch not on PATH: run .ci/install_slurm.sh "
                    "and .ci/start_slurm.sh for a single-node SLURM")
def test_real_slurm_signal_requeues_once_and_the_job_completes(tmp_path):
    config = tiny_quickstart(tmp_path / "work")
    slow = callbacks_yaml(tmp_path / "slow.yaml", [{"class_path": "tests.cli_helpers.Throttle",
                                                    "init_args": {"after_step": 0, "seconds": 0.5}}])
    command = [sys.executable, "-m", "experiments", "fit", "--config", str(config), "--config", str(slow),
               "--runs_dir", str(tmp_path / "runs"), "--wandb", "false", "--trainer.max_steps", "12",
               "--checkpoint_every_n_steps", "100", "--ckpt_path", "last_if_any"]
    log_dir = tmp_path / "slurm"
    env_setup = f"export PYTHONPATH={REPO} WANDB_MODE=offline OMP_NUM_THREADS=1"
    script = render_sbatch("unused.yaml", accelerator="cpu", tasks_per_node=1, cpus_per_task=1, time="00:10:00",
                           job_name="speechxfer-requeue-test", output_dir=str(log_dir), command=command,
                           workdir=str(tmp_path), env_setup=env_setup)
    (tmp_path / "job.sbatch").write_text(script)
    job = submit_sbatch(tmp_path / "job.sbatch", log_dir)
    run = tmp_path / "runs/quickstart" / f"slurm-{job}"
    try:
        wait_for(lambda: list(run.glob("metrics.csv")), timeout=240)  # training has started
        subprocess.run(["scancel", "--signal=USR1", job], check=True)
        wait_for(lambda: re.search(r"Restarts=1\b", subprocess.run(["scontrol", "show", "job", job],
                                                                 capture_output=True, text=True).stdout), timeout=120)
        subprocess.run(["scontrol", "release", job], capture_output=True)  # (requeued jobs may be held)
        wait_for(lambda: job_state(job) in ("COMPLETED", "FAILED", "CANCELLED"), timeout=300, poll=2)
    finally:
        if job_state(job) not in ("COMPLETED", "FAILED", "CANCELLED"):
            subprocess.run(["scancel", job])
    logs = "\n".join(p.read_text(errors="replace") for p in log_dir.glob("*.out"))
    assert job_state(job) == "COMPLETED", logs[-4000:]
    assert "requeueing job" in logs and "Traceback" not in logs, logs[-4000:]
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 12
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["global_step"] == 12
