"""Text normalisation and CTC tokenizers (blank id 0), JSON-serialisable for checkpoints.

    norm = TextNormalizer(form="NFKC", case="lower", punctuation="strip", keep_chars="'")
    tok = CharTokenizer.build(train_texts, norm)          # vocab: <blank>, " ", sorted chars
    ids = tok.encode("Hello, world!", utt_id="x")           # list[int], no blanks
    tok.decode(ids) == "hello world"                        # ids -> chars (CTC collapse is the model's job)
    tok2 = tokenizer_from_dict(tok.to_dict())               # what checkpoints store

Characters outside the vocabulary follow ``oov``: ``"error"`` raises :class:`OOVError` naming the
character and utterance; ``"skip"`` drops them and counts them in ``tokenizer.oov_counts``.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import unicodedata
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

from datamodules.errors import OOVError
from datamodules.atomic import write_text_atomic

BLANK = "<blank>"
OOV_POLICIES = ("error", "skip")
TYPOGRAPHIC_APOSTROPHES = {"\u2019": "'", "\u2018": "'", "\u02bc": "'"}


@dataclass(frozen=True)
class TextNormalizer:
    """Unicode form, case and punctuation policy; ``__call__(text) -> str``.

    ``punctuation="strip"`` removes Unicode punctuation (category ``P*``) except ``keep_chars``;
    dashes become spaces ("well-known" -> "well known"); typographic apostrophes become ``'``
    when ``'`` is kept. Invisible format/control characters are removed and whitespace runs
    collapse to one space, always.
    """

    form: str | None = "NFKC"
    case: str = "lower"
    punctuation: str = "strip"
    keep_chars: str = "'"

    def __post_init__(self):
        if self.form not in (None, "NFC", "NFKC", "NFD", "NFKD"):
            raise ValueError(f"form must be NFC/NFKC/NFD/NFKD or None, got {self.form!r}")
        if self.case not in ("lower", "upper", "keep"):
            raise ValueError(f"case must be 'lower', 'upper' or 'keep', got {self.case!r}")
        if self.punctuation not in ("strip", "keep"):
            raise ValueError(f"punctuation must be 'strip' or 'keep', got {self.punctuation!r}")

    def __call__(self, text: str) -> str:
        if self.form is not None:
            text = unicodedata.normalize(self.form, text)
        if self.case == "lower":
            text = text.lower()
        elif self.case == "upper":
            text = text.upper()
        return " ".join(text.translate(_char_table(self.punctuation, self.keep_chars)).split())

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TextNormalizer:
        return cls(**d)


def map_char(ch: str, punctuation: str, keep_chars: str) -> str:
    """What one (already case-mapped) character becomes: itself, ``""`` (removed) or ``" "``."""
    category = unicodedata.category(ch)
    if category in ("Cc", "Cf") and not ch.isspace():
        return ""
    if punctuation == "keep" or not category.startswith("P") or ch in keep_chars:
        return ch
    if "'" in keep_chars and ch in TYPOGRAPHIC_APOSTROPHES:
        return "'"
    return " " if category == "Pd" else ""


class _CharTable(dict):
    """``str.translate`` table that fills itself: each code point is classified once per policy."""

    def __init__(self, punctuation: str, keep_chars: str) -> None:
        super().__init__()
        self.punctuation, self.keep_chars = punctuation, keep_chars

    def __missing__(self, code: int) -> str:
        self[code] = mapped = map_char(chr(code), self.punctuation, self.keep_chars)
        return mapped


@lru_cache(maxsize=None)
def _char_table(punctuation: str, keep_chars: str) -> _CharTable:
    return _CharTable(punctuation, keep_chars)


def _check_oov_policy(oov: str) -> str:
    if oov not in OOV_POLICIES:
        raise ValueError(f"oov must be one of {OOV_POLICIES}, got {oov!r}")
    return oov


class _TokenizerIO:
    """Shared normalise / OOV handling / JSON persistence; subclasses define ``_known`` and codecs."""

    blank_id = 0
    normalizer: TextNormalizer
    oov: str
    oov_counts: Counter

    def normalize(self, text: str) -> str:
        return self.normalizer(text)

    def encode(self, text: str, utt_id: str | None = None) -> list[int]:
        """Token ids (no blank) of ``text`` after normalisation; OOV per ``self.oov``."""
        return self.encode_normalized(self.normalize(text), utt_id)

    def encode_normalized(self, text: str, utt_id: str | None = None) -> list[int]:
        """``encode`` for text that is already ``normalize``d (skips the second normalisation)."""
        raise NotImplementedError

    def oov_chars(self, text: str) -> list[str]:
        """Characters of the *normalised* ``text`` outside the vocabulary, in order of appearance."""
        return [ch for ch in dict.fromkeys(self.normalize(text)) if not self._known(ch)]

    def _clean(self, text: str, utt_id: str | None) -> str:
        """Already normalised ``text`` with OOV characters raised (``oov="error"``) or dropped and counted."""
        if all(self._known(ch) for ch in set(text)):  # distinct characters only: the common case
            return text
        unknown = [ch for ch in text if not self._known(ch)]
        if self.oov == "error":
            raise OOVError(unknown[0], utt_id, text)
        self.oov_counts.update(unknown)
        return " ".join("".join(ch for ch in text if self._known(ch)).split())

    def _known(self, ch: str) -> bool:
        raise NotImplementedError

    def save(self, path: str | Path) -> None:
        """JSON file of ``to_dict()`` (atomic write)."""
        write_text_atomic(path, json.dumps(self.to_dict(), ensure_ascii=False, indent=1))

    @classmethod
    def load(cls, path: str | Path):
        tok = load_tokenizer(path)
        if not isinstance(tok, cls):
            raise TypeError(f"{path} holds a {type(tok).__name__}, not a {cls.__name__}")
        return tok


class CharTokenizer(_TokenizerIO):
    """Character CTC vocabulary: id 0 is the blank, the space char is the word delimiter.

    Args:
        chars: the non-blank symbols, in id order (ids 1..len(chars)); must contain ``" "``.
        normalizer: applied by ``encode``/``normalize`` (default ``TextNormalizer()``).
        oov: ``"error"`` or ``"skip"`` for characters outside ``chars``.
    """

    word_delimiter = " "

    def __init__(self, chars: Sequence[str], normalizer: TextNormalizer | None = None, oov: str = "error"):
        chars = list(chars)
        bad = [c for c in chars if len(c) != 1]
        if bad or len(set(chars)) != len(chars) or " " not in chars:
            raise ValueError(f"chars must be unique single characters including ' ', got {chars!r}")
        self.tokens = [BLANK] + chars
        self._ids = {c: i for i, c in enumerate(self.tokens) if i != self.blank_id}
        self.normalizer = normalizer or TextNormalizer()
        self.oov = _check_oov_policy(oov)
        self.oov_counts: Counter[str] = Counter()

    @classmethod
    def build(
        cls,
        texts: Iterable[str],
        normalizer: TextNormalizer | None = None,
        oov: str = "error",
        min_count: int = 1,
    ) -> CharTokenizer:
        """Vocabulary = characters seen at least ``min_count`` times in the normalised ``texts``, sorted."""
        normalizer = normalizer or TextNormalizer()
        counts = Counter(ch for text in texts for ch in normalizer(text))
        chars = sorted({" "} | {c for c, n in counts.items() if n >= min_count})
        return cls(chars, normalizer, oov)

    @property
    def vocab_size(self) -> int:
        """Number of classes of the CTC output layer, blank included."""
        return len(self.tokens)

    @property
    def symbols(self) -> list[str]:
        """The symbol of every id, blank (id 0) included."""
        return list(self.tokens)

    def _known(self, ch: str) -> bool:
        return ch in self._ids

    def encode_normalized(self, text: str, utt_id: str | None = None) -> list[int]:
        return [self._ids[ch] for ch in self._clean(text, utt_id)]

    def decode(self, ids: Iterable[int]) -> str:
        """Map ids to characters; blanks are dropped, nothing is collapsed."""
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
        bad = [i for i in ids if not 0 <= i < len(self.tokens)]
        if bad:
            raise ValueError(f"token id(s) {bad[:5]} outside [0, {len(self.tokens)})")
        return "".join(self.tokens[i] for i in ids if i != self.blank_id)

    def to_dict(self) -> dict:
        normalizer = self.normalizer.to_dict()
        return {"type": "char", "chars": self.tokens[1:], "normalizer": normalizer, "oov": self.oov}

    @classmethod
    def from_dict(cls, d: dict) -> CharTokenizer:
        return cls(d["chars"], TextNormalizer.from_dict(d["normalizer"]), d.get("oov", "error"))


class SentencePieceTokenizer(_TokenizerIO):
    """SentencePiece subword CTC vocabulary with the ``CharTokenizer`` API.

    Trained with piece 0 = ``<blank>`` (sentencepiece's pad, never produced by ``encode``) and
    1 = ``<unk>``; ``character_coverage=1.0`` so every training character is a piece and OOV is
    exactly "character not in the training text". ``to_dict`` embeds the model bytes (base64),
    so a checkpoint alone rebuilds the tokenizer.
    """

    word_delimiter = "\u2581"

    def __init__(self, model_proto: bytes, normalizer: TextNormalizer | None = None, oov: str = "error"):
        import sentencepiece as spm

        self.model_proto = bytes(model_proto)
        self.sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
        if self.sp.id_to_piece(self.blank_id) != BLANK:
            raise ValueError(f"piece {self.blank_id} must be {BLANK!r}; train with SentencePieceTokenizer.build")
        self.normalizer = normalizer or TextNormalizer()
        self.oov = _check_oov_policy(oov)
        self.oov_counts: Counter[str] = Counter()
        self._known_chars: dict[str, bool] = {}

    @classmethod
    def build(
        cls,
        texts: Iterable[str],
        normalizer: TextNormalizer | None = None,
        vocab_size: int = 256,
        model_type: str = "unigram",
        oov: str = "error",
        model_path: str | Path | None = None,
    ) -> SentencePieceTokenizer:
        """Train on the normalised ``texts``; also writes ``model_path`` (a ``.model`` file) if given.

        ``vocab_size`` is an upper bound (tiny corpora yield fewer pieces).
        """
        import sentencepiece as spm

        normalizer = normalizer or TextNormalizer()
        normalized = _non_empty(normalizer(x) for x in texts)  # streamed: no list of 280k sentences
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=normalized, model_writer=model, vocab_size=vocab_size,
            model_type=model_type, character_coverage=1.0, hard_vocab_limit=False,
            pad_id=0, pad_piece=BLANK, unk_id=1, bos_id=-1, eos_id=-1,
            normalization_rule_name="identity", minloglevel=2,
        )
        if model_path is not None:
            Path(model_path).write_bytes(model.getvalue())
        return cls(model.getvalue(), normalizer, oov)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def symbols(self) -> list[str]:
        """The piece of every id, blank (id 0) included."""
        return [self.sp.id_to_piece(i) for i in range(self.vocab_size)]

    def _known(self, ch: str) -> bool:
        known = self._known_chars.get(ch)
        if known is None:
            known = self._known_chars[ch] = ch == " " or self.sp.piece_to_id(ch) != self.sp.unk_id()
        return known

    def encode_normalized(self, text: str, utt_id: str | None = None) -> list[int]:
        return self.sp.encode(self._clean(text, utt_id), out_type=int)

    def decode(self, ids: Iterable[int]) -> str:
        ids = ids.tolist() if hasattr(ids, "tolist") else ids
        return self.sp.decode([int(i) for i in ids if i != self.blank_id])

    def to_dict(self) -> dict:
        return {
            "type": "sentencepiece",
            "model": base64.b64encode(self.model_proto).decode("ascii"),
            "normalizer": self.normalizer.to_dict(),
            "oov": self.oov,
        }

    @classmethod
    def from_dict(cls, d: dict) -> SentencePieceTokenizer:
        return cls(base64.b64decode(d["model"]), TextNormalizer.from_dict(d["normalizer"]), d.get("oov", "error"))


def _non_empty(texts: Iterable[str]) -> Iterator[str]:
    """The non-empty ``texts``, lazily; raises ``ValueError`` now (not mid-training) if there is none."""
    texts = (t for t in texts if t)
    first = next(texts, None)
    if first is None:
        raise ValueError("SentencePieceTokenizer.build needs at least one non-empty text")
    return itertools.chain([first], texts)


TOKENIZER_TYPES = {"char": CharTokenizer, "sentencepiece": SentencePieceTokenizer}


def tokenizer_from_dict(d: dict) -> CharTokenizer | SentencePieceTokenizer:
    """Rebuild any tokenizer from its ``to_dict()`` (e.g. ``checkpoint["speechxfer"]["tokenizer"]``)."""
    if d.get("type") not in TOKENIZER_TYPES:
        raise ValueError(f"unknown tokenizer type {d.get('type')!r}; expected one of {sorted(TOKENIZER_TYPES)}")
    return TOKENIZER_TYPES[d["type"]].from_dict(d)


def load_tokenizer(path: str | Path) -> CharTokenizer | SentencePieceTokenizer:
    """Load a tokenizer saved with ``save(path)``, or the one a speechxfer checkpoint (``*.ckpt``) carries
    (``checkpoint["speechxfer"]["tokenizer"]``: fine-tuning a model on new data keeps its vocabulary)."""
    path = Path(path)
    if path.suffix == ".ckpt":
        import torch

        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=False)  # trusted, as Lightning
        tokenizer = (checkpoint.get("speechxfer") or {}).get("tokenizer")
        if tokenizer is None:
            raise ValueError(f"{path}: no tokenizer in checkpoint['speechxfer'] (not a speechxfer checkpoint?)")
        return tokenizer_from_dict(tokenizer)
    return tokenizer_from_dict(json.loads(path.read_text(encoding="utf-8")))
