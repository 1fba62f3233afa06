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
      model.init_args.dropout: {distribution: uniform, min: 0.0, max: 0.3}
      model.init_args.warmup_steps: {distribution: int_uniform, min: 0, max: 100}
      data.init_args.max_duration: {distribution: uniform, min: 20.0, max: 80.0}
      model.init_args.featurizer: {distribution: categorical, values: [last, weighted]}

A spec with a ``decode:`` section (``DecodeSpec``) is a decode-only sweep over beam-search weights of a
trained checkpoint (no training; ``experiments/decode_sweep.py`` documents it and checks its keys).

The file's structure is the ``SpecFile`` dataclass (jsonargparse checks types, choices, required
and unknown fields; ``_parameter`` adds what types cannot say: bounds and non-empty values).
Keys are checked by parsing ``fit --config <config> <fixed_args> --<key>=<value>`` with the CLI
parser (no class is instantiated, no data is read), so a typo or a wrong type fails before any
trial runs.
"""

from __future__ import annotations

import contextlib
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from jsonargparse import ArgumentError, ArgumentParser
from jsonargparse.typing import PositiveInt

Distribution = Literal["log_uniform", "uniform", "int_uniform", "categorical"]


class SweepSpecError(ValueError):
    """The sweep spec is invalid; the message names the spec file and the reason."""


# --- the file's schema: jsonargparse checks types, choices, required and unknown fields ------------
@dataclass
class PrunerSpec:
    """``pruner:`` (or its ``type`` alone, e.g. ``pruner: none``)."""

    type: Literal["median", "none"] = "median"
    warmup_steps: int = 0
    startup_trials: int = 3


@dataclass
class SamplerSpec:
    """``sampler:`` of the optuna backend (or its ``type`` alone)."""

    type: Literal["tpe", "random"] = "tpe"
    seed: int | None = None


@dataclass
class ParameterSpec:
    """One entry of ``parameters:`` (``min``/``max`` for the ranges, ``values`` for categorical)."""

    distribution: Distribution
    min: float | None = None
    max: float | None = None
    values: list[bool | int | float | str | None] | None = None


@dataclass
class DecodeSpec:
    """``decode:`` of a decode-only sweep: the checkpoint and the fixed decoder settings (``DecoderConfig``
    field names, checked by ``experiments/decode_sweep.py``)."""

    ckpt: str
    decoder: dict[str, Any] = field(default_factory=dict)


@dataclass
class SpecFile:
    """The sweep YAML as written (see the module docstring); ``parameters`` are checked one by one."""

    config: str
    metric: str
    parameters: dict[str, dict[str, Any]]
    direction: Literal["minimize", "maximize"] = "minimize"
    n_trials: PositiveInt = 10
    study_name: str = ""
    fixed_args: list[str | int | float] = field(default_factory=list)
    pruner: PrunerSpec = field(default_factory=PrunerSpec)
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    decode: DecodeSpec | None = None


def parse_as(schema: type, raw: dict[str, Any]) -> Any:
    """``raw`` as a ``schema`` dataclass instance; raises ``ValueError`` with a short reason."""
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(schema, "spec")
    try:
        return parser.instantiate(parser.parse_object({"spec": raw})).spec
    except ArgumentError as err:
        raise ValueError(short_reason(str(err).replace("spec.", ""), schema)) from None


def short_reason(message: str, schema: type) -> str:
    """jsonargparse's error as one line: a missing or unknown field, an unknown choice, or a wrong type."""
    if found := re.search(r"arguments are required: (.+)", message):
        return f"missing required field {found.group(1).split(', ')[0]!r}"
    if found := re.search(r"does not accept option '([^']+)'", message):
        return f"unknown field(s) [{found.group(1)!r}]; expected some of {sorted(f.name for f in fields(schema))}"
    path = ".".join(re.findall(r'Parser key "([^"]+)"', message))
    parent, _, leaf = path.rpartition(".")
    where = f"{parent}: " if parent else ""
    if found := re.search(r"Expected a typing\.Literal\[(.*)\]\. Got value: (.*)$", message, re.M):
        return f"{where}unknown {leaf} {found.group(2)!r}; {leaf} must be one of [{found.group(1)}]"
    types = {f.name: f.type for f in fields(schema)}
    if (found := re.search(r"(?:Given value|Got value): (.*)$", message, re.M)) and leaf in types:
        return f"{where}{leaf} must be {types[leaf]}, got {found.group(1)}"
    return f"{path}: {message.strip().splitlines()[-1].strip()}"


# --- the validated spec ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Parameter:
    """One searched hyperparameter: a dotted CLI key and its distribution."""

    key: str
    distribution: Distribution
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
    direction: Literal["minimize", "maximize"] = "minimize"
    n_trials: int = 10
    study_name: str = ""
    fixed_args: list[str] = field(default_factory=list)
    pruner: dict[str, Any] = field(default_factory=lambda: {"type": "median"})
    sampler: dict[str, Any] = field(default_factory=lambda: {"type": "tpe"})
    parameters: list[Parameter] = field(default_factory=list)
    decode: dict[str, Any] | None = None  # decode-only sweep: {"ckpt": ..., "decoder": {...}}


def _fail(path: Path, reason: str) -> SweepSpecError:
    return SweepSpecError(f"{path}: {reason}")


def _parameter(key: str, raw: Any) -> Parameter:
    """Types and names by ``ParameterSpec``; what they cannot say (bounds, emptiness) checked here."""
    if not isinstance(raw, dict):
        raise ValueError(f"parameter {key!r} needs a mapping with 'distribution' (one of {get_args(Distribution)})")
    try:
        spec = parse_as(ParameterSpec, raw)
    except ValueError as err:
        raise ValueError(f"parameter {key!r}: {err}") from None
    if spec.distribution == "categorical":
        if not spec.values:
            raise ValueError(f"parameter {key!r}: categorical needs a non-empty 'values' list")
        return Parameter(key, spec.distribution, values=tuple(spec.values))
    if spec.min is None or spec.max is None:
        raise ValueError(f"parameter {key!r}: {spec.distribution} needs 'min' and 'max'")
    low, high = spec.min, spec.max
    if spec.distribution == "int_uniform":
        if not (low.is_integer() and high.is_integer() and all(type(raw[k]) is int for k in ("min", "max"))):
            raise ValueError(f"parameter {key!r}: int_uniform bounds must be integers, "
                             f"got {raw['min']!r}, {raw['max']!r}")
        low, high = int(low), int(high)
    if not low < high or not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"parameter {key!r}: need finite min < max, got {low!r}, {high!r}")
    if spec.distribution == "log_uniform" and low <= 0:
        raise ValueError(f"parameter {key!r}: log_uniform needs min > 0, got {low!r}")
    return Parameter(key, spec.distribution, low=low, high=high)


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
    for choice in ("pruner", "sampler"):  # the type alone: ``pruner: none``
        if isinstance(raw.get(choice), str):
            raw[choice] = {"type": raw[choice]}
    try:
        spec = parse_as(SpecFile, {k: v for k, v in raw.items() if v is not None})
        parameters = [_parameter(str(k), v) for k, v in spec.parameters.items()]
    except ValueError as err:
        raise _fail(path, str(err)) from None
    if not parameters:
        raise _fail(path, "missing required field 'parameters'")
    return SweepSpec(
        path=path,
        config=_resolve_config(path, spec.config),
        metric=spec.metric,
        direction=spec.direction,
        n_trials=spec.n_trials,
        study_name=spec.study_name or path.stem,
        fixed_args=[str(a) for a in spec.fixed_args],
        pruner=vars(spec.pruner),
        sampler=vars(spec.sampler),
        parameters=parameters,
        decode=None if spec.decode is None else vars(spec.decode),
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
