"""Sweep specification: one YAML per study, validated against the training CLI's own parser.

.. code-block:: yaml

    config: experiments/quickstart.yaml     # LightningCLI config (relative to the cwd or to this file)
    metric: val/target/wer                  # logged validation metric to optimise
    direction: minimize                     # or maximize
    n_trials: 20
    study_name: quickstart_lr               # default: the spec file's stem
    fixed_args: [--trainer.max_steps=300]   # extra CLI arguments for every trial
    pruner: {type: median, warmup_steps: 2, startup_trials: 3}   # or "none"
    sampler: {type: tpe, seed: 0}           # tpe | random (optuna backend)
    parameters:                             # keys are the CLI's dotted keys
      model.init_args.lr: {distribution: log_uniform, min: 1.0e-4, max: 1.0e-2}
      model.init_args.head_dropout: {distribution: uniform, min: 0.0, max: 0.3}
      data.init_args.batch_seconds: {distribution: int_uniform, min: 20, max: 80}
      model.init_args.featurizer: {distribution: categorical, values: [last, weighted]}

A spec with a ``decode:`` section is a decode-only sweep over beam-search weights of a trained
checkpoint (no training; ``experiments/decode_sweep.py`` documents its fields and checks its keys).

Keys are checked by parsing ``fit --config <config> <fixed_args> --<key>=<value>`` with the CLI
parser (no class is instantiated, no data is read), so a typo or a wrong type fails before any
trial runs.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DISTRIBUTIONS = ("log_uniform", "uniform", "int_uniform", "categorical")
DIRECTIONS = ("minimize", "maximize")
PRUNERS = ("median", "none")
SAMPLERS = ("tpe", "random")


class SweepSpecError(ValueError):
    """The sweep spec is invalid; the message names the spec file and the reason."""


@dataclass(frozen=True)
class Parameter:
    """One searched hyperparameter: a dotted CLI key and its distribution."""

    key: str
    distribution: str
    low: float | int | None = None
    high: float | int | None = None
    values: tuple = ()

    def probe_values(self) -> list[Any]:
        """Values that must all parse: both bounds, or every categorical value."""
        return list(self.values) if self.distribution == "categorical" else [self.low, self.high]


@dataclass
class SweepSpec:
    """A validated sweep spec (see module docstring)."""

    path: Path
    config: str
    metric: str
    direction: str = "minimize"
    n_trials: int = 10
    study_name: str = ""
    fixed_args: list[str] = field(default_factory=list)
    pruner: dict[str, Any] = field(default_factory=lambda: {"type": "median"})
    sampler: dict[str, Any] = field(default_factory=lambda: {"type": "tpe"})
    parameters: list[Parameter] = field(default_factory=list)
    decode: dict[str, Any] | None = None  # decode-only sweep (experiments/decode_sweep.py)


def _fail(path: Path, reason: str) -> SweepSpecError:
    return SweepSpecError(f"{path}: {reason}")


def _parameter(path: Path, key: str, raw: Any) -> Parameter:
    if not isinstance(raw, dict) or "distribution" not in raw:
        raise _fail(path, f"parameter {key!r} needs a mapping with 'distribution' (one of {DISTRIBUTIONS})")
    dist = raw["distribution"]
    if dist not in DISTRIBUTIONS:
        raise _fail(path, f"parameter {key!r}: unknown distribution {dist!r} (expected one of {DISTRIBUTIONS})")
    unknown = set(raw) - {"distribution", "min", "max", "values"}
    if unknown:
        raise _fail(path, f"parameter {key!r}: unknown field(s) {sorted(unknown)}")
    if dist == "categorical":
        values = raw.get("values")
        if not isinstance(values, list) or not values:
            raise _fail(path, f"parameter {key!r}: categorical needs a non-empty 'values' list")
        if any(v is not None and not isinstance(v, (bool, int, float, str)) for v in values):
            raise _fail(path, f"parameter {key!r}: categorical values must be scalars (str, number, bool, null)")
        return Parameter(key, dist, values=tuple(values))
    if "min" not in raw or "max" not in raw:
        raise _fail(path, f"parameter {key!r}: {dist} needs 'min' and 'max'")
    low, high = raw["min"], raw["max"]
    cast = int if dist == "int_uniform" else float
    if dist == "int_uniform" and not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)):
        raise _fail(path, f"parameter {key!r}: int_uniform bounds must be integers, got {low!r}, {high!r}")
    try:
        low, high = cast(low), cast(high)
    except (TypeError, ValueError):
        raise _fail(path, f"parameter {key!r}: min/max must be numbers, got {low!r}, {high!r}") from None
    if not low < high or not (math.isfinite(low) and math.isfinite(high)):
        raise _fail(path, f"parameter {key!r}: need finite min < max, got {low!r}, {high!r}")
    if dist == "log_uniform" and low <= 0:
        raise _fail(path, f"parameter {key!r}: log_uniform needs min > 0, got {low!r}")
    return Parameter(key, dist, low=low, high=high)


def _choice(path: Path, raw: Any, name: str, choices: Sequence[str], default: str) -> dict[str, Any]:
    options = {"type": raw} if isinstance(raw, str) or raw is None else dict(raw)
    options["type"] = options.get("type") or default
    if options["type"] not in choices:
        raise _fail(path, f"{name}: unknown type {options['type']!r} (expected one of {list(choices)})")
    return options


def _resolve_config(spec_path: Path, config: str) -> str:
    """The config path as given (relative to the working directory), else relative to the spec file."""
    if Path(config).is_file():
        return config
    beside = spec_path.parent / config
    if beside.is_file():
        return str(beside)
    raise _fail(spec_path, f"config {config!r} not found (relative to {Path.cwd()} or to the spec file)")


def load_spec(path: str | Path) -> SweepSpec:
    """Read and check a spec file (structure only; see :func:`check_keys` for the CLI keys)."""
    path = Path(path)
    if not path.is_file():
        raise SweepSpecError(f"{path}: sweep spec not found")
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict):
        raise _fail(path, "expected a YAML mapping")
    for required in ("config", "metric", "parameters"):
        if not raw.get(required):
            raise _fail(path, f"missing required field {required!r}")
    known = {"config", "metric", "direction", "n_trials", "study_name", "fixed_args", "pruner", "sampler", "parameters",
             "decode"}
    if unknown := set(raw) - known:
        raise _fail(path, f"unknown field(s) {sorted(unknown)}; expected some of {sorted(known)}")
    if raw.get("direction", "minimize") not in DIRECTIONS:
        raise _fail(path, f"direction must be one of {DIRECTIONS}, got {raw['direction']!r}")
    if not isinstance(raw["parameters"], dict):
        raise _fail(path, "parameters must map dotted CLI keys to distributions")
    fixed = raw.get("fixed_args") or []
    if not isinstance(fixed, list) or not all(isinstance(a, (str, int, float)) for a in fixed):
        raise _fail(path, "fixed_args must be a list of command-line arguments")
    n_trials = raw.get("n_trials", 10)
    if not isinstance(n_trials, int) or n_trials < 1:
        raise _fail(path, f"n_trials must be a positive integer, got {n_trials!r}")
    return SweepSpec(
        path=path,
        config=_resolve_config(path, str(raw["config"])),
        metric=str(raw["metric"]),
        direction=raw.get("direction", "minimize"),
        n_trials=n_trials,
        study_name=str(raw.get("study_name") or path.stem),
        fixed_args=[str(a) for a in fixed],
        pruner=_choice(path, raw.get("pruner"), "pruner", PRUNERS, "median"),
        sampler=_choice(path, raw.get("sampler"), "sampler", SAMPLERS, "tpe"),
        parameters=[_parameter(path, str(k), v) for k, v in raw["parameters"].items()],
        decode=raw.get("decode"),
    )


def cli_value(value: Any) -> str:
    """A sampled value as the CLI parser reads it (``true``/``false``/``null`` for YAML scalars)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def trial_args(spec: SweepSpec, values: dict[str, Any], extra: Sequence[str] = ()) -> list[str]:
    """``fit`` arguments for one trial: config, fixed args, ``extra``, then ``--key=value`` per parameter."""
    args = ["fit", "--config", spec.config, *spec.fixed_args, *extra]
    return args + [f"--{key}={cli_value(value)}" for key, value in values.items()]


@contextlib.contextmanager
def quiet_args_warning():
    """Silence LightningCLI's warning about ``args`` given while ``sys.argv`` has arguments (intended here)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        yield


def parse_config(args: Sequence[str]):
    """Parse CLI ``args`` with the training CLI's parser without instantiating anything.

    Returns the jsonargparse Namespace; raises :class:`SweepSpecError` with the parser's message
    when an argument is unknown or has the wrong type.
    """
    from jsonargparse import ArgumentError

    from experiments.cli import SpeechCLI, build_cli

    class _Parsed(Exception):
        def __init__(self, config):
            self.config = config

    class _ParseOnlyCLI(SpeechCLI):
        def before_instantiate_classes(self) -> None:
            raise _Parsed(self.config)

    try:
        with quiet_args_warning():
            build_cli(args, cli_class=_ParseOnlyCLI, exit_on_error=False)
    except _Parsed as parsed:
        return parsed.config
    except ArgumentError as err:
        raise SweepSpecError(f"invalid arguments {' '.join(args)}: {err}") from None
    raise RuntimeError("LightningCLI returned without reaching instantiation")


def check_keys(spec: SweepSpec) -> None:
    """Parse the config with every parameter at its bounds / each categorical value; raise on error."""
    rounds = max(len(p.probe_values()) for p in spec.parameters)
    for i in range(rounds):
        values = {p.key: p.probe_values()[min(i, len(p.probe_values()) - 1)] for p in spec.parameters}
        try:
            parse_config(trial_args(spec, values))
        except SweepSpecError as err:
            raise SweepSpecError(f"{spec.path}: parameters do not fit config {spec.config}: {err}") from None
