"""Read a W&B offline run directory (``wandb/offline-run-<time>-<id>/``) without the network.

wandb 0.31 writes an offline run only as its transaction log ``run-<id>.wandb`` (plus
``files/requirements.txt``); ``files/config.yaml`` and ``files/wandb-summary.json`` appear only
after ``wandb sync`` or in older versions, and are preferred when present. The log is a LevelDB-style
record log: a 7-byte header (``":W&B"``, magic ``0xBEE1``, version 0), then 32 KiB blocks of
records ``<crc32 u32><length u16><type u8><data>`` (type 1 = full, 2/3/4 = first/middle/last
chunk), each record a protobuf ``wandb.proto.wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HEADER = struct.Struct("<4sHB")
RECORD_HEADER = struct.Struct("<IHB")
BLOCK_SIZE = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class WandbLogError(ValueError):
    """A ``.wandb`` file is not a W&B transaction log or is truncated; names the file."""


@dataclass
class OfflineRun:
    """What a W&B run recorded: config, final summary, history rows and run metadata."""

    path: Path
    run_id: str = ""
    name: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


def iter_records(path: Path):
    """Yield the raw protobuf bytes of every complete record in a ``.wandb`` log."""
    data = Path(path).read_bytes()
    if len(data) < HEADER.size or HEADER.unpack_from(data)[:2] != (b":W&B", 0xBEE1):
        raise WandbLogError(f"{path}: not a W&B transaction log (bad header)")
    pos, pending = HEADER.size, b""
    while pos + RECORD_HEADER.size <= len(data):
        if BLOCK_SIZE - pos % BLOCK_SIZE < RECORD_HEADER.size:  # block trailer padding
            pos += BLOCK_SIZE - pos % BLOCK_SIZE
            continue
        _crc, length, kind = RECORD_HEADER.unpack_from(data, pos)
        chunk = data[pos + RECORD_HEADER.size : pos + RECORD_HEADER.size + length]
        pos += RECORD_HEADER.size + length
        if kind == 0 and length == 0:
            continue
        if len(chunk) < length:  # run killed while writing: keep what is complete
            return
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""
        else:
            raise WandbLogError(f"{path}: unknown record type {kind} at byte {pos}")


def _set(target: dict, item: Any) -> None:
    keys = list(item.nested_key) or [item.key]
    for k in keys[:-1]:
        target = target.setdefault(k, {})
    target[keys[-1]] = json.loads(item.value_json)


def read_transaction_log(path: Path) -> OfflineRun:
    """Parse a ``run-<id>.wandb`` log into an :class:`OfflineRun`."""
    from wandb.proto import wandb_internal_pb2

    run = OfflineRun(path=Path(path).parent)
    for raw in iter_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id, run.name, run.group, run.tags = r.run_id, r.display_name, r.run_group, list(r.tags)
            for item in r.config.update:
                _set(run.config, item)
        elif kind == "config":
            for item in record.config.update:
                _set(run.config, item)
        elif kind == "summary":
            for item in record.summary.update:
                _set(run.summary, item)
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _set(row, item)
            run.history.append(row)
    return run


def _unwrap_config(config: dict[str, Any]) -> dict[str, Any]:
    """W&B stores config values as ``{"value": v, "desc": ...}`` in ``config.yaml``."""
    return {k: v["value"] if isinstance(v, dict) and "value" in v else v for k, v in config.items() if k != "_wandb"}


def read_offline_run(run_dir: Path) -> OfflineRun:
    """Read ``run_dir`` (an ``offline-run-*`` folder): files/*.json|yaml when present, else the log."""
    run_dir = Path(run_dir)
    logs = sorted(run_dir.glob("run-*.wandb"))
    run = read_transaction_log(logs[0]) if logs else OfflineRun(path=run_dir)
    files = run_dir / "files"
    if (files / "wandb-summary.json").is_file():
        run.summary = json.loads((files / "wandb-summary.json").read_text(encoding="utf-8"))
    if (files / "config.yaml").is_file():
        run.config = yaml.safe_load((files / "config.yaml").read_text(encoding="utf-8")) or {}
    if not logs and not run.summary:
        raise WandbLogError(f"{run_dir}: no run-*.wandb log and no files/wandb-summary.json")
    run.config = _unwrap_config(run.config)
    return run
