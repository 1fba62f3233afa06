"""Lexicon spellings in the tokenizer's units (char and SentencePiece), decoder token names, file round trip."""

from __future__ import annotations

import random

import pytest

from datamodules.lexicon import (
    WORD_DELIMITER, build_lexicon, decoder_tokens, read_lexicon, spell, word_pieces, write_lexicon,
)
from datamodules.text import CharTokenizer, SentencePieceTokenizer
from tests.conftest import char_tokenizer
from tests.corpus_factory import WORDS


def sentencepiece_tokenizer() -> SentencePieceTokenizer:
    rng = random.Random(0)
    return SentencePieceTokenizer.build([" ".join(rng.choice(WORDS) for _ in range(5)) for _ in range(200)],
                                        vocab_size=40)


def test_char_spellings_and_token_names():
    tok = char_tokenizer()
    names = decoder_tokens(tok)
    assert names[0] == "<blank>" and WORD_DELIMITER in names and " " not in names and len(names) == tok.vocab_size
    assert spell("don't", tok) == ["d", "o", "n", "'", "t"]
    pieces = word_pieces(tok)
    assert pieces[tok.tokens.index(" ")] == (True, "") and pieces[tok.tokens.index("a")] == (False, "a")
    lexicon = build_lexicon(["cat", "café", "cat", "x1"], tok)
    assert lexicon.entries == {"cat": ["c", "a", "t"]}
    assert set(lexicon.unspellable) == {"café", "x1"} and "é" in lexicon.unspellable["café"]
    with pytest.raises(ValueError, match="delimiter"):
        decoder_tokens(CharTokenizer(list("ab |")))


def test_sentencepiece_spellings_are_the_tokenizer_encoding():
    tok = sentencepiece_tokenizer()
    names = decoder_tokens(tok)
    for word in WORDS:
        spelling = spell(word, tok)
        assert spelling[0].startswith("\u2581")
        assert tok.decode([names.index(p) for p in spelling]) == word
    starts = [names[i] for i, (start, _) in enumerate(word_pieces(tok)) if start]
    assert starts and all(n.startswith("\u2581") for n in starts)


def test_lexicon_file_round_trip_and_errors(tmp_path):
    tok = char_tokenizer()
    path = write_lexicon(build_lexicon(["the", "a", "cat"], tok), tmp_path / "lexicon.txt")
    assert path.read_text().splitlines() == ["a\ta", "cat\tc a t", "the\tt h e"]
    assert read_lexicon(path) == {"a": [["a"]], "cat": [["c", "a", "t"]], "the": [["t", "h", "e"]]}
    (tmp_path / "bad.txt").write_text("cat\tc a t\ndog\n")
    with pytest.raises(ValueError, match="bad.txt:2"):
        read_lexicon(tmp_path / "bad.txt")
