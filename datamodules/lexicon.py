"""Lexicons: how the model tokenizer's units spell words, for lexicon-constrained beam search.

    tokens = decoder_tokens(tokenizer)      # names of the CTC classes: ["<blank>", "|", "'", "a", ...]
    spell("cat", tokenizer)                 # ["c", "a", "t"]; SentencePiece: e.g. ["▁c", "at"]
    lexicon = build_lexicon(words, tokenizer)
    write_lexicon(lexicon, "lm/lexicon.txt")       # "cat\tc a t", one word per line, sorted
    read_lexicon("lm/lexicon.txt")                 # {"cat": [["c", "a", "t"]], ...}

Token names (one owner, shared by the lexicon file and the decoder): ``CharTokenizer`` characters as
they are, except the word delimiter ``" "``, named ``"|"`` (flashlight's files are whitespace
separated); ``SentencePieceTokenizer`` pieces (``"▁"`` marks a word start). Spellings are the
tokenizer's own encoding of the (normalised) word, so they match the training targets. A word with a
character outside the vocabulary cannot be spelled: ``build_lexicon`` leaves it out and reports it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from datamodules.atomic import write_text_atomic
from datamodules.text import CharTokenizer, SentencePieceTokenizer

WORD_DELIMITER = "|"  # name of CharTokenizer's " " in decoder token lists and lexicon files


def decoder_tokens(tokenizer: CharTokenizer | SentencePieceTokenizer) -> list[str]:
    """Name of every CTC class, by id (id 0 = blank); unique, without whitespace."""
    if isinstance(tokenizer, SentencePieceTokenizer):
        return [tokenizer.sp.id_to_piece(i) for i in range(tokenizer.vocab_size)]
    if WORD_DELIMITER in tokenizer.tokens:
        raise ValueError(f"the character vocabulary contains {WORD_DELIMITER!r}, the decoder's name for the "
                         "word delimiter ' ': beam search cannot tell them apart")
    return [WORD_DELIMITER if t == " " else t for t in tokenizer.tokens]


def word_pieces(tokenizer: CharTokenizer | SentencePieceTokenizer) -> list[tuple[bool, str]]:
    """Per token id: (starts a new word, text it adds to the current word). Blank: (False, "")."""
    pieces = []
    for i, name in enumerate(decoder_tokens(tokenizer)):
        if i == tokenizer.blank_id:
            pieces.append((False, ""))
        elif isinstance(tokenizer, SentencePieceTokenizer):
            starts = name.startswith(SentencePieceTokenizer.word_delimiter)
            pieces.append((starts, name.removeprefix(SentencePieceTokenizer.word_delimiter)))
        else:
            pieces.append((name == WORD_DELIMITER, "" if name == WORD_DELIMITER else name))
    return pieces


def spell(word: str, tokenizer: CharTokenizer | SentencePieceTokenizer) -> list[str]:
    """Token names spelling one normalised ``word``; ``ValueError`` if a character is outside the vocabulary."""
    if not word or any(ch.isspace() for ch in word):
        raise ValueError(f"not a single word: {word!r}")
    unknown = tokenizer.oov_chars(word)
    if unknown:
        raise ValueError(f"{word!r}: character(s) {unknown} are not in the model's vocabulary")
    names = decoder_tokens(tokenizer)
    return [names[i] for i in tokenizer.encode_normalized(word)]


@dataclass
class Lexicon:
    """``entries``: word -> spelling (token names); ``unspellable``: word -> why it was left out."""

    entries: dict[str, list[str]] = field(default_factory=dict)
    unspellable: dict[str, str] = field(default_factory=dict)


def build_lexicon(words: Iterable[str], tokenizer: CharTokenizer | SentencePieceTokenizer) -> Lexicon:
    """Spell every distinct word (already normalised with ``tokenizer.normalize``)."""
    lexicon = Lexicon()
    for word in dict.fromkeys(words):
        try:
            lexicon.entries[word] = spell(word, tokenizer)
        except ValueError as err:
            lexicon.unspellable[word] = str(err)
    return lexicon


def write_lexicon(lexicon: Lexicon, path: str | Path) -> Path:
    """``word<TAB>tok tok ...`` per word, sorted by word (atomic write)."""
    lines = [f"{word}\t{' '.join(spelling)}\n" for word, spelling in sorted(lexicon.entries.items())]
    return write_text_atomic(path, "".join(lines))


def read_lexicon(path: str | Path) -> dict[str, list[list[str]]]:
    """word -> its spellings; ``ValueError`` naming the file and line for a line without a spelling."""
    entries: dict[str, list[list[str]]] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 2:
                raise ValueError(f"{path}:{number}: expected 'word<TAB>spelling tokens', got {line.strip()!r}")
            entries.setdefault(fields[0], []).append(fields[1:])
    if not entries:
        raise ValueError(f"{path}: empty lexicon")
    return entries
