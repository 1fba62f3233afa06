"""Bad-input errors and the ``on_bad_input`` policy shared by corpora and tokenizers.

Every problem with the data is either raised as :class:`BadInputError` (message names the file
and the reason) or, under ``on_bad_input="skip"``, counted per reason and logged as one summary
line: never dropped silently.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

# Reasons (the keys of ``corpus.skipped`` / ``corpus.notes``).
MISSING_ROOT = "missing_root"
MISSING_SUBSET = "missing_subset"
MISSING_LOCALE = "missing_locale"
MISSING_TSV = "missing_tsv"
EMPTY_TSV = "empty_tsv"
BAD_TSV_HEADER = "bad_tsv_header"
MALFORMED_ROW = "malformed_row"
NON_UTF8 = "non_utf8_text"
EMPTY_TEXT = "empty_text"
DUPLICATE_ID = "duplicate_id"
AUDIO_WITHOUT_TRANSCRIPT = "audio_without_transcript"
TRANSCRIPT_WITHOUT_AUDIO = "transcript_without_audio"
MISSING_FILE = "missing_file"
EMPTY_FILE = "empty_file"
UNREADABLE_DIR = "unreadable_directory"
UNREADABLE_FILE = "unreadable_file"
UNREADABLE_AUDIO = "unreadable_audio"
NON_FINITE_AUDIO = "non_finite_audio"
TRUNCATED_AUDIO = "truncated_audio"
EMPTY_AUDIO = "empty_audio"
NO_UTTERANCES = "no_usable_utterances"
# Notes: not errors, the item is kept (and fixed) but counted and logged.
UNEXPECTED_SAMPLE_RATE = "unexpected_sample_rate"  # resampled to SAMPLE_RATE
MULTICHANNEL_AUDIO = "multichannel_audio"  # downmixed to mono (channel mean) when loaded

ON_BAD_INPUT = ("error", "skip")


class BadInputError(ValueError):
    """A data file (or line of it) that cannot be used; ``str(e)`` is ``"<where>: <reason>: <detail>"``."""

    def __init__(self, where: str | Path, reason: str, detail: str = ""):
        self.where, self.reason, self.detail = str(where), reason, detail
        super().__init__(f"{where}: {reason}" + (f": {detail}" if detail else ""))


class OOVError(BadInputError):
    """A character outside the tokenizer vocabulary (``char``; ``utt_id`` when the caller gave one)."""

    def __init__(self, char: str, utt_id: str | None = None, text: str | None = None):
        self.char, self.utt_id = char, utt_id
        where = f"utterance {utt_id!r}" if utt_id is not None else "text"
        detail = f"character {char!r} (U+{ord(char):04X}) is not in the vocabulary"
        if text is not None:
            detail += f" in {text!r}"
        super().__init__(where, "oov_character", detail)


def check_on_bad_input(value: str) -> str:
    if value not in ON_BAD_INPUT:
        raise ValueError(f"on_bad_input must be one of {ON_BAD_INPUT}, got {value!r}")
    return value


class BadInputPolicy:
    """Raise or count problems found while scanning one corpus.

    ``bad(where, reason, detail)`` raises :class:`BadInputError` under ``"error"``; under
    ``"skip"`` it increments ``skipped[reason]`` (the caller then drops the item).
    ``note(...)`` counts a fixed-up oddity (e.g. resampled audio) under either mode.
    ``examples`` keeps the first offending item per reason for the summary line; ``errors`` every
    skipped item's error, in order.
    """

    def __init__(self, on_bad_input: str, owner: str):
        self.on_bad_input = check_on_bad_input(on_bad_input)
        self.owner = owner
        self.skipped: Counter[str] = Counter()
        self.notes: Counter[str] = Counter()
        self.examples: dict[str, str] = {}
        self.errors: list[BadInputError] = []

    def bad(self, where: str | Path, reason: str, detail: str = "") -> None:
        error = BadInputError(where, reason, detail)
        if self.on_bad_input == "error":
            raise error
        self.skipped[reason] += 1
        self.errors.append(error)
        self.examples.setdefault(reason, str(error))
        logging.getLogger(__name__).debug("skipped %s", error)

    def note(self, where: str | Path, reason: str, detail: str = "") -> None:
        self.notes[reason] += 1
        self.examples.setdefault(reason, f"{where}: {reason}" + (f": {detail}" if detail else ""))

    def merge(self, skipped: dict[str, int], notes: dict[str, int], examples: dict[str, str]) -> None:
        self.skipped.update(skipped)
        self.notes.update(notes)
        for reason, example in examples.items():
            self.examples.setdefault(reason, example)

    def state(self) -> dict:
        """JSON-safe counts, stored next to a cached manifest so cache hits report them too."""
        return {"skipped": dict(self.skipped), "notes": dict(self.notes), "examples": dict(self.examples)}

    def summary(self) -> str | None:
        """One line describing everything skipped or noted, or ``None`` when there was nothing."""
        parts = []
        if self.skipped:
            counts = ", ".join(f"{r}={n}" for r, n in sorted(self.skipped.items()))
            parts.append(f"skipped {sum(self.skipped.values())} item(s) ({counts})")
        if self.notes:
            parts.append("noted " + ", ".join(f"{r}={n}" for r, n in sorted(self.notes.items())))
        if not parts:
            return None
        firsts = "; ".join(self.examples[r] for r in sorted(self.examples))
        return f"{self.owner}: " + "; ".join(parts) + f" - first of each: {firsts}"

    def log_summary(self, logger: logging.Logger) -> None:
        line = self.summary()
        if line is not None:
            logger.warning(line)
