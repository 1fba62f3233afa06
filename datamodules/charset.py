"""The training-text character policy: which characters may become output classes of a character model.

Without a policy every character of the training transcripts becomes a CTC class, so one transcript
with an emoji, a CJK word or a digit silently adds classes the model can never learn. The policy is
explicit (``ASRDataModule(charset=..., min_char_count=...)``) and reported in ``summary.json``
(``data_report.text``: vocabulary, excluded characters with their counts):

- ``charset="letters"`` (default): Unicode letters and combining marks (categories ``L*``, ``M*``),
  the normaliser's kept characters (``'``) and the space. Digits, symbols and emoji are excluded.
- a locale name from :data:`LOCALE_CHARSETS` (``"en"``: a-z and ``'``): only those characters;
  use it to also exclude foreign-script letters (CJK in an English corpus).
- any other string: exactly its characters (plus the space); ``None``: every character.
- ``min_char_count``: characters seen fewer times in the (normalised) training text are excluded too.

An utterance that uses an excluded character is bad input (reason ``oov_character``): an error under
``on_bad_input="error"`` (message names the character and the utterance), a counted skip under ``"skip"``.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Iterable

LOCALE_CHARSETS = {
    "en": "abcdefghijklmnopqrstuvwxyz'",
    "de": "abcdefghijklmnopqrstuvwxyzäöüß'",
    "fr": "abcdefghijklmnopqrstuvwxyzàâæçéèêëîïôœùûüÿ'",
    "es": "abcdefghijklmnopqrstuvwxyzáéíñóúü'",
}


class CharPolicy:
    """Decides which characters of the training text are vocabulary (see module docstring)."""

    def __init__(self, charset: str | None = "letters", min_count: int = 1, keep_chars: str = "'") -> None:
        if min_count < 1:
            raise ValueError(f"min_char_count must be >= 1, got {min_count}")
        self.charset, self.min_count, self.keep_chars = charset, min_count, keep_chars
        self._set = None
        if charset is not None and charset != "letters":
            self._set = frozenset(LOCALE_CHARSETS.get(charset, charset))

    def allows(self, ch: str) -> bool:
        """Whether ``ch`` may be a class at all (before counting)."""
        if ch == " " or self.charset is None:
            return True
        if self._set is not None:
            return ch in self._set
        return unicodedata.category(ch)[0] in "LM" or ch in self.keep_chars

    def split(self, counts: Counter) -> tuple[list[str], dict[str, int]]:
        """(sorted vocabulary incl. the space, {excluded character: count}) from character counts."""
        keep = {c for c, n in counts.items() if self.allows(c) and n >= self.min_count} | {" "}
        excluded = {c: n for c, n in sorted(counts.items()) if c not in keep}
        return sorted(keep), excluded

    def settings(self) -> dict:
        return {"charset": self.charset, "min_char_count": self.min_count}


def count_chars(texts: Iterable[str]) -> Counter:
    """Character counts of (already normalised) ``texts``."""
    counts: Counter = Counter()
    for text in texts:
        counts.update(text)
    return counts


def describe_excluded(excluded: dict[str, int], limit: int = 20) -> dict[str, int]:
    """``{"'x' U+0078": count}`` for the most frequent excluded characters (readable in JSON/logs)."""
    top = sorted(excluded.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
    return {f"{c!r} U+{ord(c):04X}": n for c, n in top}
