"""Reading and writing checkpoint files: weights-only loads, atomic writes, finite weights only.

Every checkpoint load of the framework goes through :func:`read_checkpoint` (``load_model``,
``CheckpointBackbone``, ``transcribe``, and resuming with ``--ckpt_path`` through
:class:`AtomicCheckpointIO`, which the CLI installs in every Trainer):

- ``torch.load(weights_only=True)``: a checkpoint holds tensors and plain Python values only
  (dicts, lists, tuples, str, numbers, None), which is all speechxfer and Lightning put in it. A
  file carrying any other pickled object (an object whose unpickling runs code) is **refused**
  with :class:`CheckpointLoadError` naming the file and the object; nothing of it executes.
- Full unpickling is an explicit opt-in naming the file: ``SPEECHXFER_TRUST_CHECKPOINTS=<path>[:<path>...]``
  (``os.pathsep``-separated), ``read_checkpoint(path, trusted=True)`` / ``load_model(path, trusted=True)``,
  or ``speechxfer fit ... --ckpt_path <path> --weights_only false`` for a resume. Only do this for
  files from a source you trust.
- A missing, truncated or corrupt file raises :class:`CheckpointLoadError` with the path and reason.

Writes (:class:`AtomicCheckpointIO.save_checkpoint`) go through ``datamodules.atomic`` (temporary
file next to the destination, fsync, ``os.replace``): a kill or a full disk mid-write leaves the
previous ``last.ckpt`` intact on any file system and nothing in ``/tmp``. A checkpoint whose
``state_dict`` holds NaN/inf is never written (:class:`NonFiniteCheckpointError`), so a diverged
model cannot replace a good ``last.ckpt`` or best checkpoint.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from datamodules.atomic import torch_save_atomic

log = logging.getLogger(__name__)
TRUST_ENV = "SPEECHXFER_TRUST_CHECKPOINTS"


class CheckpointLoadError(ValueError):
    """A checkpoint that cannot (or may not) be loaded; ``str(e)`` is ``"<path>: <reason>"``."""

    def __init__(self, path: str | Path, reason: str, hint: str = "") -> None:
        self.path, self.reason, self.hint = str(path), reason, hint
        super().__init__(f"{path}: {reason}" + (f"\n  {hint}" if hint else ""))


class CheckpointNotFoundError(CheckpointLoadError, FileNotFoundError):
    """The checkpoint file does not exist (also a ``FileNotFoundError``)."""


class NonFiniteCheckpointError(RuntimeError):
    """Refused to write a checkpoint whose weights hold NaN/inf (names the file and the tensors)."""


def trusted_paths() -> set[Path]:
    """Files named in ``SPEECHXFER_TRUST_CHECKPOINTS`` (resolved)."""
    raw = os.environ.get(TRUST_ENV, "")
    return {Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p.strip()}


def _refused_global(message: str) -> str:
    """The pickled global torch refused (``posix.system``), from its error message."""
    match = re.search(r"unsupported GLOBAL (\S+)", message) or re.search(r"Unsupported global: GLOBAL (\S+)", message)
    return match.group(1).rstrip(".,") if match else "a non-tensor object"


def read_checkpoint(path: str | Path, map_location: Any = "cpu", mmap: bool = False,
                    trusted: bool = False) -> dict[str, Any]:
    """``torch.load`` of a checkpoint file, weights only unless ``trusted`` or named in ``SPEECHXFER_TRUST_CHECKPOINTS``.

    Raises :class:`CheckpointLoadError` (path + reason) for a missing, corrupt or refused file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(path, "checkpoint file not found")
    full = trusted or path.resolve() in trusted_paths()
    if full:
        log.warning("%s: loading with full unpickling (trusted by the caller / %s)", path, TRUST_ENV)
    try:
        checkpoint = torch.load(path, map_location=map_location, mmap=mmap, weights_only=not full)
    except pickle.UnpicklingError as err:
        if full or "Weights only load failed" not in str(err):
            raise CheckpointLoadError(path, f"corrupt checkpoint ({_first_line(err)})") from None
        raise CheckpointLoadError(
            path, f"refused: it holds a pickled object ({_refused_global(str(err))}) that is not a tensor or "
                  "plain value, and unpickling it could run code",
            f"if you trust this file, allow it by name: {TRUST_ENV}={path}",
        ) from None
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, AttributeError) as err:
        raise CheckpointLoadError(path, f"not a readable checkpoint, truncated or corrupt ({_first_line(err)})") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointLoadError(path, f"not a checkpoint (holds a {type(checkpoint).__name__}, not a dict)")
    return checkpoint


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def non_finite_tensors(state_dict: dict[str, Any], limit: int = 5) -> list[str]:
    """Names of (at most ``limit``) floating-point tensors of ``state_dict`` holding NaN or inf."""
    bad = []
    for name, value in state_dict.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad.append(name)
            if len(bad) == limit:
                break
    return bad


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO``: atomic writes, finite weights only, weights-only loads.

    Args:
        on_saved: called with the path after every successful save (the CLI repoints
            ``runs/<experiment>/latest`` at a run once it has a checkpoint).
    """

    def __init__(self, on_saved: Callable[[Path], None] | None = None) -> None:
        super().__init__()
        self.on_saved = on_saved

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options")
        bad = non_finite_tensors(checkpoint.get("state_dict", {}))
        if bad:
            raise NonFiniteCheckpointError(
                f"{path}: not written: the model weights hold NaN/inf ({', '.join(bad)}); "
                "the previous checkpoint is kept")
        torch_save_atomic(checkpoint, path)
        if self.on_saved is not None:
            self.on_saved(Path(path))

    def load_checkpoint(self, path: str | Path, map_location: Any = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        """Weights only, unless the caller passes ``weights_only=False`` (``--weights_only false``)."""
        return read_checkpoint(path, map_location=map_location or "cpu", trusted=weights_only is False)

    def remove_checkpoint(self, path: str | Path) -> None:
        Path(path).unlink(missing_ok=True)
