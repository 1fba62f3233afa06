"""Render and submit SLURM batch scripts for ``speechxfer fit`` (``speechxfer slurm ...``).

::

    speechxfer slurm experiments/quickstart.yaml --nodes 2 --gpus-per-node 4            # print script
    speechxfer slurm experiments/quickstart.yaml --out job.sbatch -- --trainer.max_steps=1000
    speechxfer slurm experiments/quickstart.yaml --partition gpu --submit                # sbatch it

The script comes from ``experiments/slurm/template.sbatch`` (``string.Template``). SLURM's
``srun`` starts one process per device and Lightning's ``SLURMEnvironment`` picks ranks, world size
and the master address from the SLURM environment. ``--signal=SIGUSR1@90`` + ``--requeue``: on the
signal ``callbacks.SlurmRequeue`` saves ``checkpoints/last.ckpt`` at the next step and stops every
rank cleanly; rank 0 writes the requeue flag file (``$SPEECHXFER_REQUEUE_FLAG``) and the script runs
``scontrol requeue`` after ``srun`` returned. Each leg runs ``fit --ckpt_path last_if_any``, so the
requeued job resumes from that ``last.ckpt`` in the same run dir (``runs/<experiment>/slurm-<job id>``).
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
import time as _time
from collections.abc import Sequence
from pathlib import Path
from string import Template

from experiments.commands import tool_parser

TEMPLATE_PATH = Path(__file__).parent / "slurm" / "template.sbatch"
ACCELERATORS = ("gpu", "cpu")
DEFAULT_CPUS_PER_TASK = {"gpu": 4, "cpu": 1}
# Lightning ignores SLURM when the job is named like an interactive shell.
_INTERACTIVE_JOB_NAMES = ("bash", "interactive")
_FINISHED_STATES = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED",
    "BOOT_FAIL", "DEADLINE",
}


def render_sbatch(
    config: str,
    nodes: int = 1,
    gpus_per_node: int | None = None,
    tasks_per_node: int | None = None,
    cpus_per_task: int | None = None,
    time: str = "24:00:00",
    partition: str | None = None,
    job_name: str | None = None,
    output_dir: str | Path = "runs/slurm",
    extra_args: Sequence[str] = (),
    accelerator: str = "gpu",
    *,
    command: Sequence[str] | None = None,
    sbatch_args: Sequence[str] = (),
    env_setup: str | None = None,
    workdir: str | Path | None = None,
) -> str:
    """Return the text of an sbatch script that trains ``config`` with ``speechxfer fit``.

    Args:
        config: YAML config path, relative to ``workdir`` or absolute.
        nodes: machines; becomes ``--trainer.num_nodes``.
        gpus_per_node: GPUs per machine (``--gres=gpu:N``); default 1 for ``accelerator="gpu"``,
            0 (no ``--gres`` line) for ``"cpu"``, where a positive value is an error.
        tasks_per_node: processes per machine, = ``--trainer.devices``; default ``gpus_per_node``
            (GPU) or 1 (CPU; set it to the number of CPU DDP processes).
        cpus_per_task: cores per process; default 4 (GPU) or 1 (CPU).
        time: SLURM time limit, e.g. ``"24:00:00"`` or ``"2-00:00:00"``.
        partition: ``--partition``; None uses the cluster's default partition.
        job_name: default ``speechxfer-<config stem>``.
        output_dir: folder of the job logs ``%x-%j.out`` (relative to ``workdir``); create it
            before submitting (``submit_sbatch`` does).
        extra_args: more ``speechxfer fit`` arguments, e.g. ``["--trainer.max_steps=1000"]``.
        accelerator: ``"gpu"`` or ``"cpu"``; becomes ``--trainer.accelerator``.
        command: the program srun runs instead of ``speechxfer fit --config <config>``
            (trainer arguments are still appended), e.g. a smoke-test script.
        sbatch_args: more ``#SBATCH`` options, e.g. ``["--account=abc", "--mem=64G"]``.
        env_setup: shell line(s) that prepare the environment (module load, conda activate);
            default: put the current python's ``bin`` folder first on ``PATH``.
        workdir: job working directory (``--chdir``); default the current directory.
    """
    gpus_per_node, tasks_per_node, cpus_per_task = resolve_resources(
        accelerator, gpus_per_node, tasks_per_node, cpus_per_task
    )
    if nodes < 1:
        raise ValueError(f"nodes must be a positive int, got {nodes!r}")
    job_name = job_name or default_job_name(config)
    if job_name in _INTERACTIVE_JOB_NAMES:
        raise ValueError(f"job_name {job_name!r} makes Lightning ignore SLURM; choose another name")
    workdir = str(Path(workdir or Path.cwd()).resolve())
    output_dir = str(output_dir)
    _check_sbatch_values(job_name=job_name, time=time, partition=partition, output_dir=output_dir,
                         workdir=workdir, sbatch_args=list(sbatch_args))

    # --ckpt_path last_if_any: a requeued job (same SLURM_JOB_ID, so the same run dir) resumes from the
    # last.ckpt that callbacks.SlurmRequeue saved; on the first start there is none and it starts fresh.
    program = list(command) if command is not None else ["speechxfer", "fit", "--config", config, "--ckpt_path",
                                                         "last_if_any"]
    trainer_args = f"--trainer.num_nodes={nodes} --trainer.devices={tasks_per_node} --trainer.accelerator={accelerator}"
    srun_lines = [shlex.join(program)] + ([shlex.join(extra_args)] if extra_args else []) + [trainer_args]
    fields = {
        "job_name": job_name,
        "nodes": nodes,
        "tasks_per_node": tasks_per_node,
        "cpus_per_task": cpus_per_task,
        "gres_line": _sbatch_line("GPUs per node.", f"--gres=gpu:{gpus_per_node}" if gpus_per_node else None,
                                  "No --gres: CPU job."),
        "time": time,
        "partition_line": _sbatch_line("Partition (queue).", f"--partition={partition}" if partition else None,
                                       "No --partition: the cluster's default partition."),
        "workdir": workdir,
        "output_dir": output_dir,
        "sbatch_extra": "\n".join(f"#SBATCH {arg}" for arg in sbatch_args) or "# (no extra #SBATCH options)",
        "env_setup": env_setup if env_setup is not None else default_env_setup(),
        "command": " \\\n    ".join(srun_lines),
    }
    return Template(TEMPLATE_PATH.read_text()).substitute(fields)


def resolve_resources(
    accelerator: str, gpus_per_node: int | None, tasks_per_node: int | None, cpus_per_task: int | None
) -> tuple[int, int, int]:
    """Fill defaults and validate: returns ``(gpus_per_node, tasks_per_node, cpus_per_task)``."""
    if accelerator not in ACCELERATORS:
        raise ValueError(f"accelerator must be one of {ACCELERATORS}, got {accelerator!r}")
    if gpus_per_node is None:
        gpus_per_node = 1 if accelerator == "gpu" else 0
    if accelerator == "cpu" and gpus_per_node > 0:
        raise ValueError(f"accelerator='cpu' requests no GPUs, got gpus_per_node={gpus_per_node}")
    if accelerator == "gpu" and gpus_per_node < 1:
        raise ValueError(f"accelerator='gpu' needs gpus_per_node >= 1, got {gpus_per_node}")
    if tasks_per_node is None:
        tasks_per_node = gpus_per_node if accelerator == "gpu" else 1
    if cpus_per_task is None:
        cpus_per_task = DEFAULT_CPUS_PER_TASK[accelerator]
    for name, value in (("tasks_per_node", tasks_per_node), ("cpus_per_task", cpus_per_task)):
        if value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    return gpus_per_node, tasks_per_node, cpus_per_task


def _check_sbatch_values(sbatch_args: list[str], **values: str | None) -> None:
    """Values that go on ``#SBATCH`` lines must be single tokens (no spaces, no newlines)."""
    items = [(k, v) for k, v in values.items() if v is not None] + [("sbatch_args", a) for a in sbatch_args]
    for name, value in items:
        if not value or re.search(r"\s", value):
            raise ValueError(f"{name} goes on an #SBATCH line and must be non-empty without whitespace: {value!r}")


def default_job_name(config: str) -> str:
    """``speechxfer-<config file stem>``."""
    return f"speechxfer-{Path(config).stem}"


def _sbatch_line(comment: str, option: str | None, absent: str) -> str:
    """``# comment\\n#SBATCH option`` or, when ``option`` is None, a comment saying why it is absent."""
    return f"# {comment}\n#SBATCH {option}" if option else f"# {absent}"


def default_env_setup() -> str:
    """Shell line putting the running interpreter's ``bin`` folder (python, speechxfer) first on PATH."""
    bin_dir = Path(sys.executable).parent
    return f'export PATH={shlex.quote(str(bin_dir))}:"$PATH"'


def submit_sbatch(script_path: str | Path, output_dir: str | Path | None = None) -> str:
    """``sbatch`` a script file and return the job id; creates ``output_dir`` (the log folder) first.

    Raises ``RuntimeError`` with sbatch's message when submission fails.
    """
    if output_dir is not None:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["sbatch", "--parsable", str(script_path)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"sbatch {script_path} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout.strip().split(";")[0]  # --parsable prints "<id>" or "<id>;<cluster>"


def job_state(job_id: str) -> str | None:
    """SLURM state of a job (``PENDING``, ``RUNNING``, ``COMPLETED``, ``FAILED``, ...); None if unknown.

    Asks ``scontrol`` (jobs stay there for MinJobAge after finishing), then ``sacct``.
    """
    proc = subprocess.run(["scontrol", "show", "job", "-o", str(job_id)], capture_output=True, text=True)
    match = re.search(r"\bJobState=(\S+)", proc.stdout)
    if match:
        return match.group(1)
    proc = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", str(job_id)], capture_output=True, text=True)
    states = proc.stdout.split() if proc.returncode == 0 else []
    return states[0].split()[0] if states else None


def wait_for_job(job_id: str, timeout_s: float = 300.0, poll_s: float = 2.0) -> str:
    """Poll until the job finishes; return its final state. Raises ``TimeoutError`` (job left running)."""
    deadline = _time.monotonic() + timeout_s
    state = None
    while _time.monotonic() < deadline:
        state = job_state(job_id)
        if state in _FINISHED_STATES:
            return state
        _time.sleep(poll_s)
    raise TimeoutError(f"SLURM job {job_id} still {state} after {timeout_s:.0f} s")


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser("slurm", __doc__, epilog="Arguments after `--` are passed to `speechxfer fit`.")
    parser.add_argument("config", help="experiment YAML")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=None, help="default 1 (gpu) / 0 (cpu)")
    parser.add_argument("--tasks-per-node", type=int, default=None, help="processes per node (default: GPUs)")
    parser.add_argument("--cpus-per-task", type=int, default=None, help="default 4 (gpu) / 1 (cpu)")
    parser.add_argument("--time", default="24:00:00")
    parser.add_argument("--partition", default=None)
    parser.add_argument("--job-name", default=None)
    parser.add_argument("--output-dir", default="runs/slurm", help="job log folder")
    parser.add_argument("--accelerator", choices=ACCELERATORS, default="gpu")
    parser.add_argument("--sbatch-arg", action="append", default=[], help="extra #SBATCH option (repeatable)")
    parser.add_argument("--env-setup", default=None, help="shell line run before srun (default: PATH of this python)")
    parser.add_argument("--out", default=None, help="write the script here instead of printing it")
    parser.add_argument("--submit", action="store_true", help="sbatch the script and print the job id")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``speechxfer slurm CONFIG [options] [--submit] [-- fit args]``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = build_parser().parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    try:
        script = render_sbatch(
            args.config, args.nodes, args.gpus_per_node, args.tasks_per_node, args.cpus_per_task, args.time,
            args.partition, args.job_name, args.output_dir, extra, args.accelerator,
            sbatch_args=args.sbatch_arg, env_setup=args.env_setup,
        )
    except ValueError as err:
        print(f"speechxfer slurm: error: {err}", file=sys.stderr)
        return 2
    job_name = args.job_name or default_job_name(args.config)
    out = Path(args.out) if args.out else (Path(args.output_dir) / f"{job_name}.sbatch" if args.submit else None)
    if out is None:
        print(script, end="")
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(script)
    print(f"wrote {out}", file=sys.stderr)
    if args.submit:
        try:
            job_id = submit_sbatch(out, args.output_dir)
        except (RuntimeError, FileNotFoundError) as err:
            print(f"speechxfer slurm: error: {err}", file=sys.stderr)
            return 1
        print(job_id)
    return 0


if __name__ == "__main__":
    sys.exit(main())
