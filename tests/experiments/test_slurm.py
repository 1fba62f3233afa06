"""SLURM: sbatch rendering (unit) and a 2-task CPU DDP job on a real single-node SLURM (integration).

The integration test needs ``sbatch`` on PATH and running daemons: ``bash .ci/install_slurm.sh &&
bash .ci/start_slurm.sh``. The training commands it submits are parameters (``SLURM_JOB_CASES``):
a self-contained smoke script (checks ranks, world size and DDP weight sync) and the real
``speechxfer fit --config experiments/quickstart.yaml`` (checks its checkpoint).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from experiments.slurm import job_state, main, render_sbatch, submit_sbatch, wait_for_job

REPO = Path(__file__).resolve().parents[2]
SMOKE_SCRIPT = REPO / "tests" / "scripts" / "slurm_ddp_smoke.py"


def sbatch_options(script: str) -> list[str]:
    """The ``#SBATCH`` options of a script, in order."""
    return [line.removeprefix("#SBATCH ").strip() for line in script.splitlines() if line.startswith("#SBATCH ")]


def srun_argv(script: str) -> list[str]:
    """argv of the script's ``srun`` line (backslash continuations joined)."""
    joined = script.replace("\\\n", " ")
    (line,) = [ln for ln in joined.splitlines() if ln.startswith("srun ")]
    return shlex.split(line)


def bash_syntax_ok(script: str, tmp_path: Path) -> subprocess.CompletedProcess:
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    return subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def test_gpu_multi_node_script(tmp_path):
    script = render_sbatch(
        "experiments/wav2vec2.yaml", nodes=2, gpus_per_node=4, partition="gpu", time="12:00:00",
        extra_args=["--trainer.max_steps=1000"], workdir=str(tmp_path),
    )
    options = sbatch_options(script)
    assert options == [
        "--job-name=speechxfer-wav2vec2",
        "--nodes=2",
        "--ntasks-per-node=4",
        "--cpus-per-task=4",
        "--gres=gpu:4",
        "--time=12:00:00",
        "--partition=gpu",
        f"--chdir={tmp_path.resolve()}",
        "--output=runs/slurm/%x-%j.out",
        "--open-mode=append",
        "--signal=SIGUSR1@90",
        "--requeue",
    ]
    assert srun_argv(script) == [
        "srun", "--kill-on-bad-exit=1", "--cpus-per-task=4",
        "speechxfer", "fit", "--config", "experiments/wav2vec2.yaml", "--ckpt_path", "last_if_any",
        "--trainer.max_steps=1000",
        "--trainer.num_nodes=2", "--trainer.devices=4", "--trainer.accelerator=gpu",
    ]
    assert script.startswith("#!/bin/bash\n")
    result = bash_syntax_ok(script, tmp_path)
    assert result.returncode == 0, result.stderr


def test_cpu_ddp_script_has_no_gres(tmp_path):
    script = render_sbatch("cfg.yaml", accelerator="cpu", tasks_per_node=2, output_dir="logs", job_name="cpu-ddp")
    options = sbatch_options(script)
    assert not any(opt.startswith("--gres") for opt in options)
    assert not any(opt.startswith("--partition") for opt in options)
    for expected in ("--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--output=logs/%x-%j.out",
                     "--job-name=cpu-ddp", "--signal=SIGUSR1@90", "--requeue", "--open-mode=append"):
        assert expected in options
    assert srun_argv(script)[-3:] == ["--trainer.num_nodes=1", "--trainer.devices=2", "--trainer.accelerator=cpu"]
    result = bash_syntax_ok(script, tmp_path)
    assert result.returncode == 0, result.stderr


def test_tasks_default_to_gpus_and_env_puts_this_python_first(tmp_path):
    script = render_sbatch("cfg.yaml", gpus_per_node=3)
    assert "--ntasks-per-node=3" in sbatch_options(script)
    assert "--trainer.devices=3" in srun_argv(script)
    path_line = next(line for line in script.splitlines() if line.startswith("export PATH="))
    env = subprocess.run(["bash", "-c", f"{path_line}; command -v python"], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin"})
    assert Path(env.stdout.strip()).parent == Path(sys.executable).parent


def test_extra_args_are_shell_quoted_and_command_replaceable():
    script = render_sbatch(
        "cfg.yaml", accelerator="cpu", extra_args=["--run_name", "two words", "--x=$HOME"],
        command=["python", "train.py"], sbatch_args=["--mem=8G", "--account=lab"], env_setup="module load cuda",
    )
    argv = srun_argv(script)
    assert argv[3:] == ["python", "train.py", "--run_name", "two words", "--x=$HOME",
                        "--trainer.num_nodes=1", "--trainer.devices=1", "--trainer.accelerator=cpu"]
    assert sbatch_options(script)[-2:] == ["--mem=8G", "--account=lab"]
    assert "\nmodule load cuda\n" in script


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"accelerator": "cpu", "gpus_per_node": 1}, "requests no GPUs"),
        ({"gpus_per_node": 0}, "gpus_per_node >= 1"),
        ({"accelerator": "tpu"}, "accelerator must be one of"),
        ({"nodes": 0}, "nodes must be a positive int"),
        ({"accelerator": "cpu", "tasks_per_node": 0}, "tasks_per_node must be a positive int"),
        ({"job_name": "bash"}, "makes Lightning ignore SLURM"),
        ({"time": "1 day"}, "time goes on an #SBATCH line"),
        ({"sbatch_args": ["--mem=8G\nrm -rf /"]}, "sbatch_args goes on an #SBATCH line"),
    ],
)
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        render_sbatch("cfg.yaml", **kwargs)


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


def test_cli_prints_or_writes_script(tmp_path, capsys):
    assert main(["cfg.yaml", "--nodes", "2", "--gpus-per-node", "4", "--", "--trainer.max_steps=7"]) == 0
    printed = capsys.readouterr().out
    assert "#SBATCH --gres=gpu:4" in printed and "--trainer.max_steps=7" in srun_argv(printed)
    out = tmp_path / "job.sbatch"
    assert main(["cfg.yaml", "--accelerator", "cpu", "--tasks-per-node", "2", "--out", str(out)]) == 0
    assert "--ntasks-per-node=2" in sbatch_options(out.read_text())
    assert main(["cfg.yaml", "--accelerator", "cpu", "--gpus-per-node", "2"]) == 2
    assert "requests no GPUs" in capsys.readouterr().err


def test_cli_submit_calls_sbatch_and_prints_job_id(tmp_path, capsys, monkeypatch):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    calls = tmp_path / "sbatch_calls.txt"
    (fake_bin / "sbatch").write_text(f'#!/bin/bash\necho "$@" >> {calls}\necho "4242;cluster"\n')
    (fake_bin / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")
    monkeypatch.chdir(tmp_path)
    assert main(["cfg.yaml", "--output-dir", "logs", "--submit"]) == 0
    assert capsys.readouterr().out.strip() == "4242"
    script_path = tmp_path / "logs" / "speechxfer-cfg.sbatch"
    assert calls.read_text().split() == ["--parsable", str(Path("logs") / "speechxfer-cfg.sbatch")]
    assert "#SBATCH --output=logs/%x-%j.out" in script_path.read_text()


def test_submit_reports_sbatch_error(tmp_path, monkeypatch):
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "sbatch").write_text('#!/bin/bash\necho "sbatch: error: invalid partition" >&2\nexit 1\n')
    (fake_bin / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")
    with pytest.raises(RuntimeError, match="invalid partition"):
        submit_sbatch(tmp_path / "job.sbatch", tmp_path / "logs")
    assert (tmp_path / "logs").is_dir()


# ---------------------------------------------------------------------------------------------
# Real SLURM: 2 tasks x CPU DDP
# ---------------------------------------------------------------------------------------------


@dataclass
class SlurmJobCase:
    """What the integration test submits and where it looks for results."""

    command: list[str]          # program srun runs; the template appends --trainer.num_nodes/devices/accelerator
    checkpoint_dir: Path        # searched recursively for *.ckpt
    rank_dir: Path | None       # rank_<i>.json files (smoke script only)


def smoke_case(tmp_path: Path) -> SlurmJobCase:
    out_dir = tmp_path / "train"
    command = [sys.executable, str(SMOKE_SCRIPT), f"--out_dir={out_dir}", "--trainer.max_steps=4"]
    return SlurmJobCase(command, out_dir / "checkpoints", out_dir)


def quickstart_case(tmp_path: Path) -> SlurmJobCase:
    """The real training command: quickstart config, 2 CPU ranks, 4 steps, runs under tmp_path."""
    command = [
        "speechxfer", "fit", "--config", str(REPO / "experiments" / "quickstart.yaml"),
        "--trainer.strategy=ddp", "--trainer.max_steps=4", f"--runs_dir={tmp_path / 'runs'}",
    ]
    return SlurmJobCase(command, tmp_path / "runs", None)


def _read_logs(log_dir: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted(log_dir.glob("*.out")))


def _squeue() -> str:
    return subprocess.run(["squeue"], capture_output=True, text=True).stdout


SLURM_JOB_CASES: list[Callable[[Path], SlurmJobCase]] = [smoke_case, quickstart_case]


@pytest.mark.slow
@pytest.mark.timeout(480)
@pytest.mark.skipif(shutil.which("sbatch") is None, reason="sbatch not on PATH: run .ci/install_slurm.sh "
                    "and .ci/start_slurm.sh for a single-node SLURM")
@pytest.mark.parametrize("make_case", SLURM_JOB_CASES, ids=lambda f: f.__name__)
def test_two_task_cpu_ddp_job_on_slurm(make_case, tmp_path):
    case = make_case(tmp_path)
    log_dir = tmp_path / "slurm"
    script = render_sbatch(
        "unused.yaml", accelerator="cpu", tasks_per_node=2, cpus_per_task=1, time="00:10:00",
        job_name="speechxfer-slurm-test", output_dir=str(log_dir), command=case.command, workdir=str(REPO),
    )
    script_path = tmp_path / "job.sbatch"
    script_path.write_text(script)
    try:
        job_id = submit_sbatch(script_path, log_dir)
    except RuntimeError as err:
        pytest.fail(f"{err}\nIs SLURM running? `bash .ci/start_slurm.sh` (as root) starts it.")
    try:
        state = wait_for_job(job_id, timeout_s=300)
    except TimeoutError as err:
        subprocess.run(["scancel", job_id], check=False)
        pytest.fail(f"{err}; squeue:\n{_squeue()}\nlog:\n{_read_logs(log_dir)}")
    logs = _read_logs(log_dir)
    assert state == "COMPLETED", f"job {job_id} ended {state}; log:\n{logs}"
    assert job_state(job_id) == "COMPLETED"

    # Lightning found both ranks through SLURM (its own rank announcement, any training command).
    members = set(re.findall(r"GLOBAL_RANK: (\d), MEMBER: (\d)/(\d)", logs))
    assert members == {("0", "1", "2"), ("1", "2", "2")}, logs
    checkpoints = sorted(case.checkpoint_dir.rglob("*.ckpt"))
    assert checkpoints, f"no checkpoint under {case.checkpoint_dir}; log:\n{logs}"

    if case.rank_dir is not None:
        records = [json.loads((case.rank_dir / f"rank_{r}.json").read_text()) for r in range(2)]
        for rank, record in enumerate(records):
            assert record["slurm_procid"] == record["global_rank"] == rank
            assert record["slurm_ntasks"] == record["world_size"] == 2
            assert record["cluster_environment"] == "SLURMEnvironment"
            assert record["global_step"] == 4
        # Ranks train on different shards: equal weights mean DDP all-reduced the gradients.
        assert records[0]["weights"] == records[1]["weights"]
