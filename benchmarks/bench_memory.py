"""Peak memory of one training step of each method, on the demo configs (CPU).

    python benchmarks/bench_memory.py [--quick] [--steps 6]

For each of ``scratch_demo.yaml`` (from scratch), ``demo_finetune.yaml`` (first stage: head only, and
with every group unfrozen), ``demo_frozen.yaml`` and ``demo_dann.yaml`` the real CLI builds the
model and datamodule (``experiments.cli.build_cli``), then ``Trainer.fit`` runs ``--steps`` steps with
a callback that, around every training step, reads the process RSS and the kernel's peak-RSS mark
(``VmHWM``, reset before each step through ``/proc/self/clear_refs``). Reported per method: the
largest step transient (peak during the step minus RSS before it: activations, autograd buffers,
new gradients/optimizer state) and the peak RSS of the process. glibc is told to serve allocations
>= 128 kB by mmap (``MALLOC_MMAP_THRESHOLD_``) so freed tensors leave RSS and each step's peak is its
own. Each method runs in a fresh process (``--quick``: all in one process, 2 steps). DataLoader
workers are separate processes and not counted. Ratios are against the from-scratch model.
The fine-tune / frozen / DANN configs start from the scratch run's checkpoint (written by its first run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_common import REPO, ratio_line, reset_peak_rss, rss_mb, write_yaml  # noqa: E402

METHODS = {  # name -> (config, override yaml or None)
    "scratch": ("experiments/scratch_demo.yaml", None),
    "finetune (head stage)": ("experiments/demo_finetune.yaml", None),
    "finetune (all unfrozen)": ("experiments/demo_finetune.yaml", {"callbacks": [
        {"class_path": "callbacks.GradualUnfreezing", "init_args": {"unit": "epoch", "schedule": {0: ["all"]}}}]}),
    "frozen": ("experiments/demo_frozen.yaml", None),
    "dann": ("experiments/demo_dann.yaml", None),
}
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


def step_memory_callback():
    from pytorch_lightning import Callback

    class StepMemory(Callback):
        """RSS before each training step and the peak RSS during it (MB)."""

        def __init__(self) -> None:
            self.steps: list[tuple[float, float]] = []
            self._before = 0.0
            self.resettable = True

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self._before = rss_mb()[0]
            self.resettable = reset_peak_rss() and self.resettable

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.steps.append((self._before, rss_mb()[1]))

    return StepMemory()


def measure(name: str, work: Path, steps: int, checkpoint: Path) -> dict:
    """Build ``name``'s config through the CLI, train ``steps`` steps; memory figures in MB."""
    from experiments.cli import build_cli

    os.environ.pop("SPEECHXFER_RUN_DIR", None)  # set by the CLI for DDP ranks; one run dir per method here
    config, override = METHODS[name]
    args = ["--config", config]
    if override:
        args += ["--config", str(write_yaml(work / f"override-{abs(hash(name))}.yaml", override))]
    if name.startswith(("finetune", "frozen", "dann")):
        args += ["--model.init_args.backbone.init_args.path", str(checkpoint)]
    if name == "frozen":
        args += ["--model.init_args.feature_cache_dir", str(work / "feature_cache")]
    args += ["--runs_dir", str(work / "runs"), "--run_name", "mem", "--wandb", "false", "--trainer.logger", "false",
             "--trainer.enable_checkpointing", "false", "--trainer.max_steps", str(steps),
             "--trainer.limit_val_batches", "0", "--trainer.enable_model_summary", "false"]
    cli = build_cli(args, run=False)
    callback = step_memory_callback()
    cli.trainer.callbacks.append(callback)
    params = sum(p.numel() for p in cli.model.parameters())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    if name == "scratch" and not checkpoint.is_file():
        cli.trainer.save_checkpoint(checkpoint)
    measured = callback.steps[1:] or callback.steps  # step 0 also allocates the optimizer state
    return {"method": name, "params": params, "steps": len(callback.steps),
            "step_transient_mb": max(peak - before for before, peak in measured),
            "peak_rss_mb": max(peak for _, peak in callback.steps),
            "pre_step_rss_mb": max(before for before, _ in measured), "hwm_reset": callback.resettable,
            "per_step": [(round(b, 1), round(p - b, 1)) for b, p in callback.steps]}


def run_worker(names: list[str], work: Path, steps: int) -> None:
    import logging

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    for name in names:
        print("MEMORY " + json.dumps(measure(name, work, steps, work / "source.ckpt")), flush=True)


def spawn(names: list[str], work: Path, steps: int) -> list[dict]:
    env = {**os.environ, **MALLOC_ENV, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    env.pop("SPEECHXFER_RUN_DIR", None)
    cmd = [sys.executable, __file__, "--worker", json.dumps(names), "--workdir", str(work), "--steps", str(steps)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode:
        raise RuntimeError(f"memory worker {names} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return [json.loads(line[len("MEMORY "):]) for line in proc.stdout.splitlines() if line.startswith("MEMORY ")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="all methods in one process, 2 steps (smoke run)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per method (default 6)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    steps = args.steps or (2 if args.quick else 6)
    tmp = tempfile.TemporaryDirectory(prefix="bench_memory_")
    work = args.workdir or Path(tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    if args.worker:
        run_worker(json.loads(args.worker), work, steps)
        return
    names = list(METHODS)
    results = spawn(names, work, steps) if args.quick else [r for n in names for r in spawn([n], work, steps)]
    base = results[0]
    for r in results:
        print(f"{r['method']:<24} params {r['params'] / 1e6:6.2f}M  step transient {r['step_transient_mb']:7.1f} MB  "
              f"pre-step RSS {r['pre_step_rss_mb']:7.1f} MB  peak RSS {r['peak_rss_mb']:7.1f} MB", flush=True)
    if not base["hwm_reset"]:
        print("note: /proc/self/clear_refs not writable: peaks are process-lifetime peaks")
    for r in results:
        detail = (f"{r['step_transient_mb']:.1f} MB vs {base['step_transient_mb']:.1f} MB step transient; "
                  f"peak RSS {r['peak_rss_mb']:.0f} MB; {r['params'] / 1e6:.2f}M params; {r['steps']} steps")
        ratio = r["step_transient_mb"] / max(base["step_transient_mb"], 1e-6)
        print(ratio_line(f"memory: {r['method']} / scratch step peak", ratio, None, detail=detail))
    tmp.cleanup()


if __name__ == "__main__":
    main()
