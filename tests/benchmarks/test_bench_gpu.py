"""``benchmarks/bench_gpu.py``: the reduced CPU mode runs both sides and prints its RESULT lines; the full
mode skips cleanly without a GPU. No timing is asserted (the figures come from a GPU run)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.bench_common import parse_result_lines

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_gpu.py"


def run(*args: str) -> str:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
    env.pop("SPEECHXFER_RUN_DIR", None)
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


def test_cpu_smoke_mode_measures_both_sides(tmp_path):
    out = run("--cpu-smoke", "--workdir", str(tmp_path))
    rows = {r["name"]: r for r in parse_result_lines(out)}
    throughput = rows["GPU fine-tune wav2vec2-base bf16: audio-h per GPU-h (framework)"]
    ratio = rows["GPU fine-tune: framework / hand loop throughput"]
    wait = rows["GPU fine-tune: loader wait, % of step time (framework)"]
    assert throughput["status"] == ratio["status"] == wait["status"] == "smoke"
    assert float(throughput["value"].split()[0]) > 0 and float(ratio["value"].rstrip("x")) > 0
    assert 0 <= float(wait["value"].split()[0]) <= 100
    assert "hand loop:" in out and "framework:" in out
    durations = sorted(f.stat().st_size for f in (tmp_path / "LibriSpeech").rglob("*.flac"))
    assert len(durations) == 16  # the generated corpus (concatenated demo-corpus speech)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the full mode would run")
def test_full_mode_skips_without_a_gpu():
    out = run()
    assert out.startswith("SKIP") and "RESULT" not in out
