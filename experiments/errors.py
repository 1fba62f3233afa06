"""Short messages for the errors a user can fix: bad input data, unloadable checkpoints, impossible resumes.

``speechxfer`` prints at most five lines for them (what, where, why, what to do) instead of a traceback
through jsonargparse / Lightning / DataLoader workers, and exits with status 2. Everything else keeps
its traceback.

    speechxfer: bad input: /data/LibriSpeech/train-clean-100/19/198/19-198-0001.flac
      reason: unreadable_audio
      detail: File contains data in an unimplemented format.
      to skip and count such items instead: on_bad_input: skip in the data config
      (e.g. --data.init_args.on_bad_input skip)
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from typing import TextIO

from datamodules.errors import BadInputError
from lightning_modules.checkpoint_io import CheckpointLoadError, NonFiniteCheckpointError

USER_ERROR_EXIT_CODE = 2
_WORKER_ERROR = re.compile(r"^\S*BadInputError: (.+)$", re.MULTILINE)


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def user_error_lines(err: BaseException) -> list[str] | None:
    """The short message for ``err`` (or an error it was raised from), or ``None`` if it is not a user error."""
    from callbacks.nonfinite import NonFiniteError
    from experiments.runs import ResumeError

    for e in _chain(err):
        if isinstance(e, BadInputError) and e.reason:
            lines = [f"speechxfer: bad input: {e.where}", f"  reason: {e.reason}"]
            if e.detail:
                lines.append(f"  detail: {e.detail}")
            return lines + ["  to skip and count such items instead: on_bad_input: skip in the data config",
                            "  (e.g. --data.init_args.on_bad_input skip)"]
        if isinstance(e, CheckpointLoadError):
            lines = [f"speechxfer: cannot load checkpoint {e.path}", f"  reason: {e.reason}"]
            return lines + ([f"  {e.hint}"] if e.hint else [])
        if isinstance(e, (ResumeError, NonFiniteError, NonFiniteCheckpointError)):
            return [f"speechxfer: {line}" if i == 0 else f"  {line}" for i, line in enumerate(str(e).splitlines()[:5])]
        worker = _WORKER_ERROR.findall(str(e)) if "DataLoader worker" in str(e) else []
        if worker:  # a BadInputError raised in a DataLoader worker arrives as the worker's traceback text
            return [f"speechxfer: bad input: {worker[-1]}",
                    "  to skip and count such items instead: on_bad_input: skip in the data config",
                    "  (e.g. --data.init_args.on_bad_input skip)"]
    return None


def report_user_error(err: BaseException, stream: TextIO | None = None) -> int | None:
    """Print the short message of a user error and return the exit status; ``None`` for other errors."""
    lines = user_error_lines(err)
    if lines is None:
        return None
    print("\n".join(lines[:5]), file=stream or sys.stderr)
    return USER_ERROR_EXIT_CODE
