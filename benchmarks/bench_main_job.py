"""The README's main job, timed: wall and CPU time of ``speechxfer fit --config experiments/quickstart.yaml``.

    python benchmarks/bench_main_job.py                  # the command exactly as in the README
    python benchmarks/bench_main_job.py -- --trainer.max_epochs 2   # extra CLI arguments after --

Runs the command in a subprocess from the repo root (run dir ``runs/quickstart/<version>``, as the README
command; W&B offline), then prints the
wall time, the CPU time of the command and every process it started (user + system, from
``getrusage(RUSAGE_CHILDREN)``: DataLoader workers included), and the results table the run printed
(target WER/CER before and after transfer). Goal: at most 3 CPU-minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.bench_common import ratio_line  # noqa: E402

COMMAND = ["fit", "--config", "experiments/quickstart.yaml"]
GOAL_CPU_MIN = 3.0


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_main_job(runs_dir: Path, extra: list[str]) -> tuple[float, float, str]:
    """(wall s, CPU s, stdout+stderr) of the main job; raises with the output tail if it fails."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    cmd = [sys.executable, "-m", "experiments", *COMMAND, "--runs_dir", str(runs_dir), *extra]
    cpu0, start = children_cpu_s(), time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - start, children_cpu_s() - cpu0
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode}:\n{output[-4000:]}")
    return wall, cpu, output


def results_block(stdout: str) -> str:
    """The ``Results (...)`` table and the run / checkpoint lines the run printed at its end."""
    lines = stdout.splitlines()
    start = max((i for i, line in enumerate(lines) if line.startswith("Results (")), default=None)
    if start is None:
        return "(no results table printed)"
    block = [lines[start]]
    for line in lines[start + 1:]:
        if not line.startswith(("|", "run:", "best checkpoint:")):
            break
        block.append(line)
    return "\n".join(block)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs", help="root of the run directories")
    parser.add_argument("extra", nargs="*", help="more CLI arguments (after --)")
    args = parser.parse_args(argv)
    wall, cpu, output = run_main_job(args.runs_dir, args.extra)
    print(f"command: speechxfer {' '.join(COMMAND + args.extra)}  ({os.cpu_count()} CPUs)")
    print(f"wall {wall:.1f} s, CPU {cpu:.1f} s = {cpu / 60:.2f} CPU-min (user + system, all processes)")
    print(results_block(output))
    print(ratio_line("main job: CPU minutes", cpu / 60, GOAL_CPU_MIN, unit=" min",
                     detail=f"wall {wall:.0f} s; speechxfer {' '.join(COMMAND + args.extra)}"))


if __name__ == "__main__":
    main()
