"""``speechxfer sweep SPEC``: hyperparameter search over the training CLI's own config keys.

    speechxfer sweep experiments/sweeps/quickstart_lr.yaml                       # Optuna, SQLite, in-process
    speechxfer sweep SPEC --storage postgresql://host/db --n-trials 50           # shared Optuna study
    speechxfer sweep SPEC --backend wandb --out sweep.yaml                       # W&B sweep YAML + agent commands

Spec format: :mod:`experiments.sweep_spec`. Every trial is an ordinary run
``runs/sweep-<study>/trial-<n>/`` (config.yaml, metrics.csv, summary.json, checkpoints).

**optuna** (default): the study lives in ``<runs_dir>/sweeps/<study>.db`` (or ``--storage``, any Optuna
RDB URL) and is loaded if it exists, so rerunning the command adds ``--n-trials`` more trials to the
same study. Trials run in this process on one device; the validation metric is reported to Optuna
after every validation and a trial is pruned (MedianPruner) when it falls behind. Multi-GPU trials
cannot run in-process (Lightning's DDP launcher re-executes the command line): use the wandb backend,
or run one ``speechxfer sweep SPEC --storage <shared RDB URL> --n-trials 1`` process per GPU worker.

**wandb**: writes a W&B sweep YAML whose command is ``speechxfer fit --config <config> <fixed args>
${args}``; the agent passes each sampled value as ``--<dotted.key>=<value>``. Because the values are
command-line arguments, they reach every DDP rank (Lightning's launcher re-executes ``sys.argv``). W&B
ranks a run by the metric's value in the run summary (its last logged value).

**decode-only** specs (a ``decode:`` section) tune beam-search weights of a trained checkpoint on
cached validation log-probs, without retraining: :mod:`experiments.decode_sweep`.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
import yaml
from pytorch_lightning import Callback, LightningModule, Trainer

from experiments.commands import tool_parser
from experiments.sweep_spec import (
    Parameter,
    SweepSpec,
    SweepSpecError,
    check_keys,
    load_spec,
    quiet_args_warning,
    trial_args,
)

WANDB_DISTRIBUTIONS = {"log_uniform": "log_uniform_values", "uniform": "uniform", "int_uniform": "int_uniform"}


class OptunaPruning(Callback):
    """Reports ``metric`` to an Optuna trial after each validation; raises ``TrialPruned`` when told to.

    Also tracks the best reported value (``best``), which becomes the trial's value.
    Single-process only: under DDP the trial object cannot be shared between ranks.
    """

    def __init__(self, trial: optuna.Trial, metric: str, direction: str = "minimize") -> None:
        self.trial, self.metric, self.direction = trial, metric, direction
        self.best: float | None = None
        self.seen_metrics: list[str] = []

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if trainer.world_size > 1:
            raise RuntimeError(
                "the optuna sweep backend runs trials in-process on one device; for multi-GPU trials use "
                "`--backend wandb` or one `speechxfer sweep SPEC --storage <RDB URL>` process per worker"
            )

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":  # (not the start model's validate-before-fit)
            return
        self.seen_metrics = sorted(trainer.callback_metrics)
        if self.metric not in trainer.callback_metrics:
            return
        value, step = float(trainer.callback_metrics[self.metric]), int(trainer.global_step)
        better = min if self.direction == "minimize" else max
        self.best = value if self.best is None else better(self.best, value)
        self.trial.report(value, step=step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step}: {self.metric}={value:.4f}")


def run_trial(args: Sequence[str], callbacks: Sequence[Callback]) -> None:
    """Run ``speechxfer <args>`` in this process with extra trainer ``callbacks``."""

    from experiments.cli import SpeechCLI, build_cli
    from experiments.runs import RUN_DIR_ENV

    class _TrialCLI(SpeechCLI):
        def _instantiate_trainer(self, config: dict[str, Any], cbs: list[Callback]) -> Trainer:
            return super()._instantiate_trainer(config, [*cbs, *callbacks])

    previous = os.environ.pop(RUN_DIR_ENV, None)  # each trial picks its own run dir
    try:
        with quiet_args_warning():
            build_cli(args, cli_class=_TrialCLI, exit_on_error=False)
    finally:
        os.environ.pop(RUN_DIR_ENV, None)
        if previous is not None:
            os.environ[RUN_DIR_ENV] = previous
        _finish_wandb()


def _finish_wandb() -> None:
    """Close the W&B run of a trial, otherwise the next trial's WandbLogger would reuse it."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


def suggest(trial: optuna.Trial, p: Parameter) -> Any:
    """Sample one parameter with the Optuna distribution matching the spec."""
    if p.distribution == "categorical":
        return trial.suggest_categorical(p.key, list(p.values))
    if p.distribution == "int_uniform":
        return trial.suggest_int(p.key, int(p.low), int(p.high))
    return trial.suggest_float(p.key, p.low, p.high, log=p.distribution == "log_uniform")


def make_objective(spec: SweepSpec, runs_dir: str):
    """Optuna objective: one in-process ``fit`` per trial, value = best ``spec.metric`` of the run."""
    experiment = f"sweep-{spec.study_name}"

    def objective(trial: optuna.Trial) -> float:
        values = {p.key: suggest(trial, p) for p in spec.parameters}
        run_name = f"trial-{trial.number}"
        args = trial_args(
            spec, values, ["--experiment", experiment, "--run_name", run_name, "--runs_dir", runs_dir]
        )
        run_dir = Path(runs_dir) / experiment / run_name
        if run_dir.exists():
            raise FileExistsError(f"{run_dir} exists (an earlier study named {spec.study_name!r}?); "
                                  "pass --study-name or move it away")
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("args", args)
        pruning = OptunaPruning(trial, spec.metric, spec.direction)
        run_trial(args, [pruning])
        if pruning.best is None:
            raise ValueError(
                f"trial {trial.number}: metric {spec.metric!r} was never logged at validation; "
                f"logged: {pruning.seen_metrics or 'nothing (did validation run?)'}"
            )
        return pruning.best

    return objective


def make_study(spec: SweepSpec, storage: str) -> optuna.Study:
    """Create or load the study (``load_if_exists``): reruns continue it."""
    if storage.startswith("sqlite:///"):
        Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        rdb = optuna.storages.RDBStorage(
            storage,
            heartbeat_interval=60,
            grace_period=180,  # trials of a killed sweep are marked failed and retried on the next run
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1),
        )
    pruner: optuna.pruners.BasePruner = optuna.pruners.NopPruner()
    if spec.pruner["type"] == "median":
        pruner = optuna.pruners.MedianPruner(
            n_startup_trials=int(spec.pruner.get("startup_trials", 3)),
            n_warmup_steps=int(spec.pruner.get("warmup_steps", 0)),
        )
    seed = spec.sampler.get("seed")
    random = spec.sampler["type"] == "random"
    sampler = optuna.samplers.RandomSampler(seed) if random else optuna.samplers.TPESampler(seed=seed)
    return optuna.create_study(
        storage=rdb,
        study_name=spec.study_name,
        direction=spec.direction,
        pruner=pruner,
        sampler=sampler,
        load_if_exists=True,
    )


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def trials_table(study: optuna.Study) -> str:
    """Plain-text table of every trial: number, state, value, parameters, run dir."""
    keys = sorted({k for t in study.trials for k in t.params})
    header = ["#", "state", "value", *keys, "run_dir"]
    rows = [header]
    for t in study.trials:
        value = "" if t.value is None else f"{t.value:.4g}"
        params = [_cell(t.params.get(k, "")) for k in keys]
        rows.append([str(t.number), t.state.name, value, *params, str(t.user_attrs.get("run_dir", ""))])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def run_optuna(spec: SweepSpec, storage: str | None, runs_dir: str, n_trials: int) -> int:
    """Run ``n_trials`` more trials of the study; print all trials; 0 if any trial of the study completed."""
    storage = storage or f"sqlite:///{Path(runs_dir) / 'sweeps' / spec.study_name}.db"
    best = optimize_and_report(spec, storage, make_objective(spec, runs_dir), n_trials)
    if best is None:
        return 1
    print(f"best: trial {best.number} {spec.metric}={best.value:.4g} {best.params} ({best.user_attrs.get('run_dir')})")
    return 0


def optimize_and_report(spec: SweepSpec, storage: str, objective, n_trials: int) -> optuna.trial.FrozenTrial | None:
    """Load (or create) the study, run ``n_trials`` more trials of ``objective``, print every trial;
    the best trial, or None (said so) when no trial of the study completed."""
    study = make_study(spec, storage)
    before = len(study.trials)
    study.optimize(objective, n_trials=n_trials, catch=(Exception,), gc_after_trial=True)
    print(f"study {spec.study_name!r} in {storage}: {len(study.trials)} trials ({len(study.trials) - before} new)")
    print(trials_table(study))
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        print("no trial completed; see the errors above")
        return None
    return study.best_trial


def wandb_sweep_config(spec: SweepSpec, method: str = "bayes", project: str = "speechxfer") -> dict[str, Any]:
    """W&B sweep config for ``spec`` (see module docstring)."""
    parameters: dict[str, Any] = {}
    for p in spec.parameters:
        if p.distribution == "categorical":
            parameters[p.key] = {"values": list(p.values)}
        else:
            parameters[p.key] = {"distribution": WANDB_DISTRIBUTIONS[p.distribution], "min": p.low, "max": p.high}
    fixed = [*spec.fixed_args, "--experiment", f"sweep-{spec.study_name}", "--wandb=true", f"--wandb_project={project}"]
    config: dict[str, Any] = {
        "name": spec.study_name,
        "project": project,
        "program": "speechxfer",
        "method": method,
        "metric": {"name": spec.metric, "goal": spec.direction},
        "parameters": parameters,
        "command": ["${env}", "speechxfer", "fit", "--config", spec.config, *fixed, "${args}"],
    }
    if spec.pruner["type"] == "median":  # W&B's only early-termination rule is Hyperband
        config["early_terminate"] = {"type": "hyperband", "min_iter": max(1, int(spec.pruner.get("warmup_steps", 3)))}
    return config


def export_wandb(spec: SweepSpec, out: Path, method: str, project: str) -> int:
    """Write the W&B sweep YAML and print how to start it."""
    continuous = [p.key for p in spec.parameters if p.distribution != "categorical"]
    if method == "grid" and continuous:
        print(f"error: --method grid needs categorical parameters only; {continuous} are distributions")
        return 2
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(wandb_sweep_config(spec, method, project), sort_keys=False), encoding="utf-8")
    print(f"wrote W&B sweep config {out}\nstart it with:\n  wandb sweep {out}\n"
          f"then on each machine / GPU worker:\n  wandb agent <entity>/{project}/<sweep_id> --count {spec.n_trials}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser("sweep", __doc__)
    parser.add_argument("spec", type=Path, help="sweep spec YAML (see experiments/sweeps/)")
    parser.add_argument("--backend", choices=["optuna", "wandb"], default="optuna")
    parser.add_argument("--storage", help="Optuna RDB URL (default: sqlite:///<runs_dir>/sweeps/<study>.db)")
    parser.add_argument("--n-trials", type=int, help="trials to run now (default: the spec's n_trials)")
    parser.add_argument("--study-name", help="default: the spec's study_name, else the spec file name")
    parser.add_argument("--runs-dir", default="runs", help="root of the trial run directories")
    parser.add_argument("--out", type=Path,
                        help="wandb backend: output YAML (default <runs_dir>/sweeps/<study>.wandb.yaml)")
    parser.add_argument("--method", choices=["bayes", "random", "grid"], default="bayes", help="wandb search method")
    parser.add_argument("--wandb-project", default="speechxfer")
    parser.add_argument("--skip-key-check", action="store_true", help="do not parse the config to check the keys")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        spec = load_spec(args.spec)
        if args.study_name:
            spec.study_name = args.study_name
        if spec.decode is not None:  # beam-search weights on cached log-probs: no training
            from experiments.decode_sweep import run_decode_sweep

            return run_decode_sweep(spec, args.backend, args.storage, args.runs_dir, args.n_trials or spec.n_trials)
        if not args.skip_key_check:
            check_keys(spec)
    except SweepSpecError as err:
        print(f"error: {err}")
        return 2
    if args.backend == "wandb":
        out = args.out or Path(args.runs_dir) / "sweeps" / f"{spec.study_name}.wandb.yaml"
        return export_wandb(spec, out, args.method, args.wandb_project)
    return run_optuna(spec, args.storage, args.runs_dir, args.n_trials or spec.n_trials)
