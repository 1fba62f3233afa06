"""Smoke test of ``benchmarks/bench_decode.py --quick``: it runs and prints one ratio per beam decoder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.bench_common import parse_result_lines  # noqa: E402


@pytest.mark.slow  # end-to-end, > 30 s on 2 cores
def test_bench_decode_quick_reports_every_decoder_against_greedy():
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
    env.pop("SPEECHXFER_RUN_DIR", None)
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "bench_decode.py"), "--quick"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    rows = {r["name"]: r for r in parse_result_lines(proc.stdout)}
    assert set(rows) == {f"decode time {d} / greedy" for d in (
        "beam 1", "beam 8", "beam 8 + lexicon", "beam 8 + lexicon + LM", "beam 8 + LM, open vocabulary")}
    assert all(r["status"] == "smoke" and float(r["value"].rstrip("x")) > 0 for r in rows.values())
    assert "| greedy |" in proc.stdout
