"""The progress bar is on for a person at a terminal, off when stdout is piped or under a SLURM batch job."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from experiments import cli


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("tty", "env", "expected"), [
    (True, {}, True),
    (False, {}, False),
    (True, {"SLURM_JOB_ID": "7", "SLURM_JOB_NAME": "train"}, False),
    (True, {"SLURM_JOB_ID": "7", "SLURM_JOB_NAME": "interactive"}, True),  # srun --pty / salloc shells
])
def test_interactive(monkeypatch, tty, env, expected):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_JOB_NAME", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr("sys.stdout", Terminal() if tty else io.StringIO())
    assert cli.interactive() is expected


@pytest.mark.parametrize("interactive", [True, False])
def test_trainer_default_follows_the_terminal(monkeypatch, interactive):
    monkeypatch.setattr(cli, "interactive", lambda: interactive)
    config = Path(__file__).resolve().parents[2] / "experiments" / "scratch_demo.yaml"
    built = cli.build_cli(["--config", str(config), "--trainer.fast_dev_run", "true"], run=False)
    assert (built.trainer.progress_bar_callback is not None) is interactive
