"""Smoke tests of the benchmark scripts: each runs in ``--quick`` mode and prints its ``RESULT`` lines.

No timing is asserted (the machine is shared); the equality checks the benchmarks make on the way
(same losses framework vs plain loop, identical DDP metrics) are asserted, because they are exact.
The DDP and transfer-study smokes start several CLI processes and are marked ``slow``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.bench_common import parse_result_lines, ratio_line  # noqa: E402


def run_script(script: str, *args: str, timeout: int = 600) -> str:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
    env.pop("SPEECHXFER_RUN_DIR", None)
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout


def results_by_name(text: str) -> dict[str, dict[str, str]]:
    return {row["name"]: row for row in parse_result_lines(text)}


def number(value: str) -> float:
    return float(value.rstrip("x"))


def test_ratio_line_round_trips_through_the_parser():
    text = "noise\n" + ratio_line("a / b", 1.5, 1.05, detail="d") + "\n" + ratio_line("c", 2.0, 1.6, False, quick=True)
    rows = parse_result_lines(text)
    assert [(r["name"], r["value"], r["goal"], r["status"]) for r in rows] == [
        ("a / b", "1.500x", "<= 1.05x", "MISSED"), ("c", "2.000x", ">= 1.6x", "smoke")]
    assert rows[0]["detail"] == "d"


def test_run_all_reads_the_bench_data_goal_table():
    from benchmarks.bench_data import row
    from benchmarks.run_all import parse_data_table

    text = "header\n" + row("loader FLAC 16k", 1500.0, 1000, "x", True) + "\n" + row("padded", 7.5, 5.0, "%", False)
    rows = parse_data_table(text)
    assert [(r["name"], r["status"]) for r in rows] == [("loader FLAC 16k", "ok"), ("padded", "MISSED")]
    assert rows[0]["value"] == "1500.0 x"


@pytest.mark.slow  # end-to-end, > 30 s on 2 cores
def test_run_all_quick_runs_step_cache_and_memory_and_writes_results(tmp_path):
    results = tmp_path / "results.md"
    out = run_script("run_all.py", "--quick", "--only", "step,cache,memory", "--results", str(results))
    rows = results_by_name(out)
    assert {"train step: framework / plain PyTorch", "train step: same losses (max abs diff)",
            "frozen features epoch 2+: cache / no cache"} <= set(rows)
    memory = [name for name in rows if name.startswith("memory: ")]
    assert len(memory) == 5, memory
    # the framework and the plain loop computed exactly the same training run
    assert rows["train step: same losses (max abs diff)"]["status"] == "ok"
    assert number(rows["train step: same losses (max abs diff)"]["value"]) < 1e-4
    assert rows["train step: framework / plain PyTorch"]["status"] == "smoke"
    assert number(rows["memory: scratch / scratch step peak"]["value"]) == pytest.approx(1.0)
    text = results.read_text()
    assert "## Summary" in text and "train step: framework / plain PyTorch" in text and "model name" not in text
    assert "FAILED" not in text


@pytest.mark.slow
def test_bench_ddp_quick_gives_identical_metrics():
    rows = results_by_name(run_script("bench_ddp.py", "--quick"))
    assert number(rows["DDP CPU: 2 ranks / 1 rank samples/s"]["value"]) > 0
    same = rows["DDP CPU: final val metrics max abs diff (2 vs 1 rank)"]
    assert same["status"] == "ok", same


@pytest.mark.slow
def test_transfer_study_quick_writes_report(tmp_path):
    out = tmp_path / "study"
    run_script("transfer_study.py", "--quick", "--out", str(out))
    report = (out / "report.md").read_text()
    for label in ("(a) scratch", "(b) source only", "(c) fine-tune", "(d) frozen", "(e) DANN", "(g) self-training",
                  "(h) self-training after DANN", "(i) source only + TTA"):
        assert label in report
    assert (out / "compare" / "report.md").is_file()
    assert "## Expected orderings" in report
    assert "target WER % beam+LM" in report and (out / "compare_test" / "report.md").is_file()  # greedy and beam+LM
    tta_row = next(line for line in report.splitlines() if line.startswith("| (i) source only + TTA"))
    assert float(tta_row.rstrip(" |").rsplit("|", 1)[1]) > 0  # TTA s per audio s
