"""TextNormalizer, CharTokenizer and SentencePieceTokenizer behaviour and serialisation."""

from __future__ import annotations

import json

import pytest
import torch

from datamodules.errors import BadInputError, OOVError
from datamodules.text import (
    CharTokenizer,
    SentencePieceTokenizer,
    TextNormalizer,
    load_tokenizer,
    tokenizer_from_dict,
)

TRAIN = ["THE CAT SAT ON A MAT.", "Don't run, dog!", "red box", "big old man; hot sun", "the far-away dog"]


@pytest.mark.parametrize(
    ("kwargs", "text", "expected"),
    [
        ({}, "  Hello,\tWORLD!  ", "hello world"),
        ({}, "Don’t stop", "don't stop"),                  # typographic apostrophe kept as '
        ({}, "well-known — fact", "well known fact"),       # dashes separate words
        ({}, "ﬁne Ｆｕｌｌ", "fine full"),                   # NFKC: ligature, full-width
        ({}, 'He said "hi".', "he said hi"),
        ({}, "zero\u200bwidth", "zerowidth"),               # invisible format char removed
        ({"case": "upper"}, "Mixed case", "MIXED CASE"),
        ({"case": "keep", "punctuation": "keep"}, "Keep it, Sam!", "Keep it, Sam!"),
        ({"keep_chars": "'-"}, "it's well-known.", "it's well-known"),
        ({"form": None, "case": "keep"}, "ﬁ", "ﬁ"),
    ],
)
def test_normalizer(kwargs, text, expected):
    assert TextNormalizer(**kwargs)(text) == expected


@pytest.mark.parametrize("kwargs", [{"form": "XYZ"}, {"case": "title"}, {"punctuation": "drop"}])
def test_normalizer_rejects_bad_options(kwargs):
    with pytest.raises(ValueError):
        TextNormalizer(**kwargs)


def test_char_tokenizer_build_encode_decode():
    tok = CharTokenizer.build(TRAIN)
    chars = sorted(set("".join(TextNormalizer()(t) for t in TRAIN)))
    assert tok.tokens == ["<blank>"] + chars
    assert tok.blank_id == 0 and tok.word_delimiter == " " and " " in tok.tokens
    assert tok.vocab_size == len(chars) + 1
    ids = tok.encode("The dog, RAN!")
    assert 0 not in ids and len(ids) == len("the dog ran")
    assert tok.decode(ids) == "the dog ran"
    assert tok.decode([0, ids[0], ids[0], 0, ids[1]]) == "tth"  # blanks dropped, no collapse
    assert tok.decode(torch.tensor(ids)) == "the dog ran"
    with pytest.raises(ValueError, match="outside"):
        tok.decode([tok.vocab_size])
    with pytest.raises(ValueError, match="outside"):
        tok.decode([-1])


def test_char_tokenizer_min_count_and_space_always_present():
    tok = CharTokenizer.build(["aab", "aac"], min_count=2)
    assert tok.tokens == ["<blank>", " ", "a"]
    with pytest.raises(ValueError):
        CharTokenizer(["a", "b"])  # no word delimiter
    with pytest.raises(ValueError):
        CharTokenizer([" ", "a", "a"])


def test_oov_error_names_character_and_utterance():
    tok = CharTokenizer.build(TRAIN)
    with pytest.raises(OOVError) as info:
        tok.encode("the quiz", utt_id="spk-1-0003")
    err = info.value
    assert isinstance(err, BadInputError)
    assert err.char == "q" and err.utt_id == "spk-1-0003"
    assert "'q'" in str(err) and "spk-1-0003" in str(err)
    assert tok.oov_chars("Quiz the Zebra") == ["q", "z"]


def test_oov_skip_drops_and_counts():
    tok = CharTokenizer.build(TRAIN, oov="skip")
    assert tok.decode(tok.encode("the quiz zoo")) == "the ui oo"
    assert tok.decode(tok.encode("a € b")) == "a b"  # no double space left behind
    assert tok.oov_counts == {"q": 1, "z": 2, "€": 1}
    with pytest.raises(ValueError):
        CharTokenizer.build(TRAIN, oov="ignore")


def test_char_tokenizer_serialisation(tmp_path):
    tok = CharTokenizer.build(TRAIN, TextNormalizer(case="upper", keep_chars="'-"), oov="skip")
    d = json.loads(json.dumps(tok.to_dict()))
    again = tokenizer_from_dict(d)
    assert isinstance(again, CharTokenizer)
    assert again.tokens == tok.tokens and again.normalizer == tok.normalizer and again.oov == "skip"
    text = "far-away DOG's box"
    assert again.encode(text) == tok.encode(text)
    tok.save(tmp_path / "tok.json")
    loaded = CharTokenizer.load(tmp_path / "tok.json")
    assert loaded.to_dict() == tok.to_dict()
    assert load_tokenizer(tmp_path / "tok.json").encode(text) == tok.encode(text)
    with pytest.raises(TypeError):
        SentencePieceTokenizer.load(tmp_path / "tok.json")
    with pytest.raises(ValueError, match="unknown tokenizer type"):
        tokenizer_from_dict({"type": "bpe"})


@pytest.fixture(scope="module")
def spm_tok(tmp_path_factory):
    path = tmp_path_factory.mktemp("spm") / "sp.model"
    return SentencePieceTokenizer.build(TRAIN * 4, vocab_size=40, model_path=path), path


def test_sentencepiece_api(spm_tok):
    tok, model_path = spm_tok
    assert model_path.stat().st_size > 0
    assert tok.blank_id == 0 and tok.sp.id_to_piece(0) == "<blank>"
    assert 1 < tok.vocab_size <= 40
    ids = tok.encode("The dog ran, far!")
    assert ids and 0 not in ids
    assert tok.decode(ids) == "the dog ran far"
    assert tok.decode([0] + ids + [0]) == "the dog ran far"
    with pytest.raises(OOVError, match="u1.*'q'"):
        tok.encode("quiz", utt_id="u1")


def test_sentencepiece_serialisation_is_self_contained(spm_tok, tmp_path):
    tok, model_path = spm_tok
    d = json.loads(json.dumps(tok.to_dict()))
    model_path.unlink()  # the checkpoint dict alone must suffice
    again = tokenizer_from_dict(d)
    assert isinstance(again, SentencePieceTokenizer) and again.vocab_size == tok.vocab_size
    assert again.encode("red box, big dog") == tok.encode("red box, big dog")
    tok.save(tmp_path / "sp.json")
    assert SentencePieceTokenizer.load(tmp_path / "sp.json").to_dict() == tok.to_dict()


def test_sentencepiece_oov_skip():
    tok = SentencePieceTokenizer.build(TRAIN * 4, vocab_size=40, oov="skip")
    assert tok.decode(tok.encode("the quiz")) == "the ui"
    assert tok.oov_counts == {"q": 1, "z": 1}


def test_a_label_is_normalised_once_and_encoded_from_that_text():
    from types import SimpleNamespace

    from datamodules.dataset import encode_label

    tok = CharTokenizer.build(TRAIN)
    seen = []
    normalizer = tok.normalizer
    tok.normalizer = lambda text: seen.append(text) or normalizer(text)
    cut = SimpleNamespace(id="u1", supervisions=[SimpleNamespace(text="The  DOG, ran!")])
    text, ids = encode_label(cut, tok)
    assert seen == ["The  DOG, ran!"] and text == "the dog ran" and tok.decode(ids) == text
    assert ids == tok.encode("The  DOG, ran!") == tok.encode_normalized("the dog ran")


def test_character_table_is_per_policy():
    text = "It's a well-known fact, isn't it?"
    assert TextNormalizer()(text) == "it's a well known fact isn't it"
    assert TextNormalizer(keep_chars="-")(text) == "its a well-known fact isnt it"  # no stale cached mapping
    assert TextNormalizer(punctuation="keep")(text) == "it's a well-known fact, isn't it?"
