"""Run every benchmark, print one summary table and write ``benchmarks/results.md``.

    python benchmarks/run_all.py [--quick] [--only step,cache] [--results benchmarks/results.md]

Each benchmark runs as its own process (``python benchmarks/<script> [--quick]``), one after the
other; its ``RESULT`` lines (see ``bench_common.ratio_line``) and the goal table of ``bench_data.py``
are collected. ``results.md`` records the machine (CPU model, cores, load average before and after),
the library versions, the exact commands, the summary table and each benchmark's full output.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_common import REPO, RESULT_PREFIX, parse_result_lines  # noqa: E402

BENCHMARKS = {  # key -> script
    "data": "bench_data.py",
    "step": "bench_step.py",
    "cache": "bench_feature_cache.py",
    "ddp": "bench_ddp.py",
    "memory": "bench_memory.py",
    "decode": "bench_decode.py",
    "gpu": "bench_gpu.py",  # prints SKIP without CUDA (--quick: its reduced CPU mode)
}
DATA_ROW = re.compile(r"^\|\s*(?P<name>[^|]+?)\s*\|\s*(?P<value>[^|]+?)\s*\|\s*(?P<goal>[<>]=[^|]+?)\s*\|"
                      r"\s*(?P<ratio>[^|]+?)\s*\|\s*(?P<status>[^|]*?)\s*\|$")


def parse_data_table(text: str) -> list[dict[str, str]]:
    """``bench_data.py``'s goal table rows as RESULT-style dicts."""
    rows = []
    for line in text.splitlines():
        m = DATA_ROW.match(line.strip())
        if m and m["name"] != "measure":
            rows.append({"name": m["name"], "value": m["value"], "goal": m["goal"], "status": m["status"],
                         "detail": f"value/goal ratio {m['ratio']}"})
    return rows


def machine() -> dict[str, str]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    import lhotse
    import pytorch_lightning
    import torch

    return {"cpu": cpu, "cores": str(os.cpu_count()), "python": platform.python_version(),
            "torch": torch.__version__, "pytorch_lightning": pytorch_lightning.__version__,
            "lhotse": lhotse.__version__, "platform": platform.platform()}


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def run(script: str, quick: bool) -> tuple[str, float, int]:
    """(stdout + stderr tail, wall seconds, return code) of one benchmark."""
    cmd = [sys.executable, str(REPO / "benchmarks" / script)] + (["--quick"] if quick else [])
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONWARNINGS": "ignore"}
    env.pop("SPEECHXFER_RUN_DIR", None)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    tail = "" if proc.returncode == 0 else "\n--- stderr (tail) ---\n" + proc.stderr[-4000:]
    return proc.stdout + tail, wall, proc.returncode


def summary_table(rows: list[dict[str, str]]) -> list[str]:
    lines = ["| benchmark | measure | value | goal | status |", "|---|---|---|---|---|"]
    lines += [f"| {r['bench']} | {r['name']} | {r['value']} | {r['goal']} | {r['status']} |" for r in rows]
    return lines


def write_results(path: Path, info: dict[str, str], loads: tuple[str, str], commands: list[str],
                  rows: list[dict[str, str]], outputs: dict[str, tuple[str, float, int]], quick: bool) -> None:
    lines = ["# speechxfer benchmark results", "",
             f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')} by `python benchmarks/run_all.py"
             f"{' --quick' if quick else ''}`" + (" (QUICK smoke run: numbers are not meaningful)" if quick else "."),
             "", "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += [f"- load average (1/5/15 min) before: {loads[0]}, after: {loads[1]}", "",
              "Every ratio is measured against a baseline run in the same process / session, so a shared",
              "or loaded machine slows both sides; absolute times are not comparable across machines.", "",
              "## Summary", ""] + summary_table(rows)
    lines += ["", "Details (per measure):", ""]
    lines += [f"- **{r['name']}**: {r['detail']}" for r in rows if r.get("detail")]
    lines += ["", "## Commands", "", "```bash"] + commands + ["```", "", "## Full output", ""]
    for key, (text, wall, code) in outputs.items():
        lines += [f"### {key} ({BENCHMARKS[key]}, {wall:.0f} s, exit {code})", "", "```", text.strip(), "```", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="every benchmark in its --quick (smoke) mode")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {list(BENCHMARKS)}")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results.md")
    args = parser.parse_args(argv)
    keys = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = set(keys) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmarks {sorted(unknown)}; choose from {list(BENCHMARKS)}")
    before, info = load(), machine()
    rows, outputs, commands = [], {}, []
    for key in keys:
        script = BENCHMARKS[key]
        commands.append(f"python benchmarks/{script}{' --quick' if args.quick else ''}")
        print(f"== {script} ...", flush=True)
        text, wall, code = run(script, args.quick)
        outputs[key] = (text, wall, code)
        found = parse_data_table(text) if key == "data" else parse_result_lines(text)
        if code or not found:
            found.append({"name": f"{script} run", "value": f"exit {code}", "goal": "exit 0", "status": "FAILED",
                          "detail": text.strip().splitlines()[-1] if text.strip() else ""})
        for row in found:
            rows.append({"bench": key, **row})
            print(f"{RESULT_PREFIX} | {row['name']} | {row['value']} | {row['goal']} | {row['status']} | "
                  f"{row.get('detail', '')}", flush=True)
        print(f"   [{wall:.0f} s]", flush=True)
    after = load()
    print()
    print("\n".join(summary_table(rows)))
    print(f"\nmachine: {info['cpu']}, {info['cores']} cores; load average before {before}, after {after}")
    write_results(args.results, info, (before, after), commands, rows, outputs, args.quick)
    print(f"wrote {args.results}")
    return 1 if any(r["status"] == "FAILED" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
