"""Atomic, durable file writes: the one owner of "write next to the destination, fsync, rename".

Every file speechxfer writes that someone may read while it is written, or that must survive a kill
or a full disk (checkpoints, manifests, tokenizers, feature-cache entries, ``summary.json``,
``config.yaml``), goes through :func:`atomic_write`:

1. a temporary file is created **in the destination folder** (same file system, so the final
   ``os.replace`` is a rename, never a copy -- also on NFS / Lustre / a data disk);
2. ``write(tmp_path)`` fills it; the data is flushed and ``fsync``-ed;
3. ``os.replace(tmp, final)``, then the folder is ``fsync``-ed so the rename itself is durable.

Readers see the old file or the new one, never half of one; on any error (``ENOSPC``, a signal
turned into an exception) the temporary file is removed and the old file is left untouched.
A ``kill -9`` mid-write can only leave a ``.<name>.*.tmp*`` file next to the destination, never a
truncated destination, and never anything in ``/tmp``; :func:`remove_stale_temps` deletes such
leftovers when a run (re)starts in a folder. The written file gets the usual ``0o666 & ~umask``
permissions (``mkstemp`` alone would leave it private to the owner).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()
# mkstemp(prefix=".<name>.", suffix=".tmp<suffixes>"): 8 random characters in between
_TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp(\..*)?$")


def fsync_dir(folder: str | Path) -> None:
    """``fsync`` a folder so a rename inside it survives a crash (no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: str | Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, fsync it, then rename it to ``path``.

    The temporary name keeps ``path``'s suffixes (``.jsonl.gz`` stays last) because some writers
    (lhotse) pick the format from the extension. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f"{TMP_SUFFIX}{suffix}")
    os.close(fd)
    try:
        os.chmod(tmp, _FILE_MODE)
        write(Path(tmp))
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def is_temp_name(name: str) -> bool:
    """True for the temporary names :func:`atomic_write` creates (``.<final name>.<random>.tmp<suffixes>``)."""
    return _TEMP_NAME.match(name) is not None


def remove_stale_temps(folder: str | Path) -> list[Path]:
    """Delete temporary files an interrupted :func:`atomic_write` left in ``folder`` (not recursive).

    Only call this when no other process writes into ``folder`` (e.g. when a run starts in its own
    run directory); returns what was removed.
    """
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for path in folder.iterdir():
            if path.is_file() and is_temp_name(path.name):
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda p: p.write_bytes(data))


def write_text_atomic(path: str | Path, text: str) -> Path:
    """UTF-8 ``text`` to ``path``, atomically."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | Path, payload: Any, indent: int | None = 2) -> Path:
    """``payload`` as JSON (non-JSON values via ``str``), atomically."""
    return write_text_atomic(path, json.dumps(payload, indent=indent, default=str, ensure_ascii=False) + "\n")


def torch_save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path``, atomically."""
    import torch

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    return atomic_write(path, save)
