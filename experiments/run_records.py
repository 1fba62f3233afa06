"""One :class:`RunRecord` per run, from a local run dir or the W&B API.

Local run dirs (``runs/<experiment>/<version>/``): ``summary.json`` (written by
``callbacks.RunSummary``) when present; otherwise everything is derived from ``metrics.csv``
(best values, curves) and ``config.yaml`` (method, backbone, data). W&B runs: the
``speechxfer`` entry of the run summary (the same dict) when present, else the run's tags
(``method:``/``backbone:``) and history.

W&B *offline* run folders (``wandb/offline-run-*``) are not read: every speechxfer run writes the
same metrics to its run dir (``metrics.csv``, ``summary.json``, where the offline run also lives),
while the offline folder holds them only in W&B's private binary transaction log, whose format
changes between wandb releases. A folder given on its own is reported as skipped with that hint
(read its run dir, or ``wandb sync`` it and use ``--wandb-project``).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from datamodules.episodic import FEWSHOT_METRIC

log = logging.getLogger(__name__)
# val/<domain>/<wer|cer>, test/..., and the same per extra decoder: val_<decoder>/..., test_<decoder>/...
VAL_METRIC = re.compile(r"^(val|test)(_[a-z0-9]+)?/([^/]+)/(wer|cer)$")
METRICS_CSV = ("metrics.csv", "csv/metrics.csv")
WANDB_OFFLINE_HINT = ("a W&B offline run folder (not read: its metrics are in the speechxfer run dir that holds it; "
                      "pass that run dir, or `wandb sync` it and use --wandb-project)")


@dataclass
class RunRecord:
    """What the comparison report needs to know about one run.

    ``best`` maps ``val/<domain>/<wer|cer>`` (and ``test/...``, ``val_<decoder>/...``, ``test_<decoder>/...``
    from validate/test runs with ``eval_decoders``) to the best (lowest) value; ``curves`` maps the same
    names to ``[(step, value), ...]`` in step order; ``fewshot`` maps k (support shots) to
    ``{"wer": ..., "cer": ...}`` of a few-shot test (``summary.json["test"]``).
    """

    name: str
    origin: str  # "local" | "wandb"
    path: str
    method: str | None = None
    backbone: str | None = None
    source_data: str | None = None
    target_data: str | None = None
    labelled_target_minutes: float | None = None
    trainable_params: int | None = None
    wall_time_s: float | None = None
    status: str | None = None
    headline_metric: str | None = None  # "val/<domain>/<wer|cer>" from summary.json (CER: no-space languages)
    best: dict[str, float] = field(default_factory=dict)
    curves: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    fewshot: dict[float, dict[str, float]] = field(default_factory=dict)

    def best_of(self, domain: str, kind: str = "wer", family: str = "val") -> float | None:
        """Best ``<family>/<domain>/<kind>``; family "val", "test", "test_beam", ..."""
        return self.best.get(f"{family}/{domain}/{kind}")

    @property
    def headline_kind(self) -> str:
        """"cer" when the run's headline metric is a CER (languages written without spaces), else "wer"."""
        return "cer" if (self.headline_metric or "").endswith("/cer") else "wer"

    def primary_curve(self) -> tuple[str, list[tuple[int, float]]] | None:
        """The target WER curve if logged, else the source WER curve, else any WER curve."""
        names = ["val/target/wer", "val/source/wer", *sorted(k for k in self.curves if k.startswith("val/") and
                                                             k.endswith("/wer"))]
        return next(((n, self.curves[n]) for n in names if self.curves.get(n)), None)


# --- curves and best values ------------------------------------------------------------------
def _float(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def curves_from_rows(rows: list[dict[str, Any]], step_keys: tuple[str, ...]) -> dict[str, list[tuple[int, float]]]:
    """``val/*/wer|cer`` curves from logged rows (CSV rows or W&B history rows)."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        step = next((int(float(row[k])) for k in step_keys if _float(row.get(k)) is not None), None)
        for key, raw in row.items():
            value = _float(raw)
            if step is not None and value is not None and VAL_METRIC.match(key):
                curves.setdefault(key, []).append((step, value))
    return {k: sorted(v) for k, v in curves.items()}


def best_from_curves(curves: dict[str, list[tuple[int, float]]]) -> dict[str, float]:
    return {k: min(v for _, v in points) for k, points in curves.items() if points}


def find_metrics_csv(run_dir: Path) -> Path | None:
    return next((run_dir / name for name in METRICS_CSV if (run_dir / name).is_file()), None)


def read_metrics_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


# --- config.yaml -> method, backbone, data -----------------------------------------------------
def short_class(class_path: str | None) -> str | None:
    return class_path.rsplit(".", 1)[-1] if class_path else None


def data_from_config(data: dict | None) -> tuple[str | None, str | None, float | None]:
    """(source description, target description, labelled target minutes) from a run's ``data`` config.

    The datamodule is built from the config (nothing is scanned) and describes itself
    (``SpeechDataModule.describe``, the same text ``summary.json`` holds); the minutes are its
    ``labelled_target_minutes`` (0.0 without labelled target data; None when the labelled target
    corpus cannot be read here). A config this version cannot build leaves all three unknown.
    """
    if not isinstance(data, dict):
        return None, None, None
    from jsonargparse import ArgumentParser

    from datamodules import BadInputError, SpeechDataModule

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(SpeechDataModule, "data")
    try:
        datamodule = parser.instantiate_classes(parser.parse_object({"data": data})).data
    except Exception as err:  # jsonargparse wraps unknown classes / arguments in various errors
        log.warning("data config not readable by this version (%s: %s); data columns left empty",
                    type(err).__name__, str(err).splitlines()[0] if str(err) else "")
        return None, None, None
    described = datamodule.describe()
    try:
        minutes = datamodule.labelled_target_minutes
    except (BadInputError, OSError):  # the labelled target data is not on this machine
        minutes = None
    return described["source"], described["target"], minutes


def _from_summary(record: RunRecord, summary: dict[str, Any]) -> None:
    record.method = summary.get("method") or record.method
    backbone = summary.get("backbone") or {}
    record.backbone = backbone.get("name") or short_class(backbone.get("class")) or record.backbone
    data = summary.get("data")
    if isinstance(data, dict):
        for side in ("source", "target"):
            if data.get(side) is not None:
                setattr(record, f"{side}_data", data[side] if isinstance(data[side], str) else json.dumps(data[side]))
    if summary.get("labelled_target_minutes") is not None:
        record.labelled_target_minutes = float(summary["labelled_target_minutes"])
    record.trainable_params = summary.get("trainable_params", record.trainable_params)
    record.wall_time_s = summary.get("wall_time_s", record.wall_time_s)
    record.status = summary.get("status", record.status)
    record.headline_metric = summary.get("headline_metric", record.headline_metric)
    for name, best in (summary.get("best") or {}).items():
        record.best[name] = float(best["value"] if isinstance(best, dict) else best)
    for name, value in (summary.get("test") or {}).items():
        if (match := FEWSHOT_METRIC.match(name)) and _float(value) is not None:
            record.fewshot.setdefault(float(match.group(1)), {})[match.group(2)] = float(value)


def _from_config(record: RunRecord, config: dict[str, Any]) -> None:
    model = config.get("model") or {}
    record.method = short_class(model.get("class_path"))
    backbone = (model.get("init_args") or {}).get("backbone")
    record.backbone = short_class(backbone.get("class_path")) if isinstance(backbone, dict) else None
    record.source_data, record.target_data, record.labelled_target_minutes = data_from_config(config.get("data"))


# --- loaders --------------------------------------------------------------------------------
def is_local_run(path: Path) -> bool:
    return (path / "summary.json").is_file() or (path / "config.yaml").is_file() or find_metrics_csv(path) is not None


def load_local_run(run_dir: Path) -> RunRecord:
    """Read ``config.yaml`` + ``metrics.csv`` + ``summary.json`` (each optional) of a run dir."""
    run_dir = Path(run_dir)
    record = RunRecord(name=f"{run_dir.parent.name}/{run_dir.name}", origin="local", path=str(run_dir))
    if (run_dir / "config.yaml").is_file():
        _from_config(record, yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {})
    if (csv_path := find_metrics_csv(run_dir)) is not None:
        record.curves = curves_from_rows(read_metrics_csv(csv_path), ("step",))
        record.best = best_from_curves(record.curves)
    if (run_dir / "summary.json").is_file():
        _from_summary(record, json.loads((run_dir / "summary.json").read_text(encoding="utf-8")))
    if not (record.best or record.method):
        raise ValueError(f"{run_dir}: no summary.json, metrics.csv or config.yaml to read")
    return record


def record_from_wandb(name: str, origin: str, path: str, tags: list[str], config: dict, summary: dict,
                      history: list[dict[str, Any]]) -> RunRecord:
    """A record from W&B run data (the API)."""
    record = RunRecord(name=name, origin=origin, path=path)
    tag = dict(t.split(":", 1) for t in tags if ":" in t)
    record.method, record.backbone = tag.get("method"), tag.get("backbone")
    record.curves = curves_from_rows(history, ("trainer/global_step", "_step"))
    record.best = best_from_curves(record.curves)
    if isinstance(summary.get("speechxfer"), dict):
        _from_summary(record, summary["speechxfer"])
    return record


def load_wandb_project(project: str) -> list[RunRecord]:
    """All runs of a W&B project (``entity/project`` or ``project``) through the public API."""
    from experiments.runs import wandb_offline

    if wandb_offline():
        raise RuntimeError(
            f"--wandb-project {project}: the W&B API needs network access and credentials "
            "(WANDB_API_KEY or `wandb login`), and WANDB_MODE must not be offline/disabled"
        )
    import wandb

    records = []
    for run in wandb.Api().runs(project):
        history = list(run.scan_history())
        records.append(record_from_wandb(run.name, "wandb", run.url, list(run.tags), dict(run.config),
                                         dict(run.summary), history))
    return records


def discover(paths: list[Path]) -> tuple[list[RunRecord], list[tuple[str, str]]]:
    """Records for every run under ``paths`` (run dirs or folders holding them).

    Returns ``(records, skipped)``; ``skipped`` lists ``(path, reason)`` of run dirs that could not
    be read, W&B offline run folders outside a run dir among them (see the module docstring). A
    local run's own ``wandb/`` folder belongs to it (the run is counted once).
    """
    records: list[RunRecord] = []
    skipped: list[tuple[str, str]] = []
    seen: set[Path] = set()
    for root in paths:
        root = Path(root)
        if not root.exists():
            raise FileNotFoundError(f"{root}: no such run directory")
        # symlinks inside (e.g. ``<experiment>/latest``) point at runs that are listed anyway
        for path in [root, *sorted(p for p in root.rglob("*") if p.is_dir() and not p.is_symlink())]:
            resolved = path.resolve()
            if resolved in seen or any(parent in seen for parent in resolved.parents):
                continue
            if path.name.startswith("offline-run-") or any(path.glob("run-*.wandb")):
                skipped.append((str(path), WANDB_OFFLINE_HINT))
                seen.add(resolved)
                continue
            if not is_local_run(path) or path.name == "wandb":
                continue
            seen.add(resolved)
            try:
                records.append(load_local_run(path))
            except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as err:
                skipped.append((str(path), f"{type(err).__name__}: {err}"))
    return records, skipped
