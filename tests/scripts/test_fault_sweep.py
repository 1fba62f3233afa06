"""Smoke test of ``tests/scripts/fault_sweep.py --quick``: it runs, prints the table, finds no silent case."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.cli_helpers import REPO, cli_env


def test_fault_sweep_quick_has_no_silent_row():
    proc = subprocess.run([sys.executable, str(Path(REPO) / "tests/scripts/fault_sweep.py"), "--quick"], cwd=REPO,
                          env=cli_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    outcomes = {(r.split(" | ")[0][2:], r.split(" | ")[1], r.split(" | ")[2]) for r in rows}
    assert ("NaN/inf float WAV named .flac", "error", "clear error") in outcomes
    assert ("NaN/inf float WAV named .flac", "skip", "counted skip") in outcomes
    assert ("non-finite loss / gradient", "stop", "clear error") in outcomes
    assert ("disk full while saving last.ckpt", "-", "handled") in outcomes
    assert "0 silent, 0 trained on NaN, 0 unclear" in proc.stdout
