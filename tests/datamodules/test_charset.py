"""The training-text character policy (issue 11, item 10): characters outside it never become output
classes silently; the outcome is in the datamodule's report (-> summary.json)."""

from __future__ import annotations

from pathlib import Path

import pytest

from datamodules import ASRDataModule, LibriSpeechCorpus
from datamodules.charset import CharPolicy
from datamodules.errors import BadInputError
from tests.corpus_factory import make_librispeech

TRAIN = "train-clean-100"


def with_transcript(root: Path, text: str) -> str:
    trans = sorted((root / "LibriSpeech" / TRAIN).rglob("*.trans.txt"))[0]
    lines = trans.read_text().splitlines()
    uid = lines[0].split()[0]
    trans.write_text("\n".join([f"{uid} {text}", *lines[1:]]) + "\n")
    return uid


def make_dm(root: Path, mode: str = "error", **kwargs) -> ASRDataModule:
    return ASRDataModule(train=LibriSpeechCorpus(root, [TRAIN]), on_bad_input=mode, num_workers=0,
                         cache_dir=str(root / "cache"), max_chars_per_second=None, **kwargs)


@pytest.mark.parametrize("odd", ["😀", "7"])
def test_emoji_and_digits_are_not_classes_by_default(tmp_path, odd):
    root = make_librispeech(tmp_path / "data", {TRAIN: 6})
    uid = with_transcript(root, f"THE DOG {odd} RAN")
    with pytest.raises(BadInputError) as info:  # error mode: the utterance is named, with the character
        make_dm(root).setup("fit")
    assert info.value.reason == "oov_character" and uid in str(info.value) and repr(odd) in str(info.value)
    dm = make_dm(root, "skip")
    dm.setup("fit")
    assert odd not in dm.tokenizer.tokens and len(dm.train_cuts()) == 5
    text = dm.bad_input_report()["text"]
    assert text["charset"] == "letters" and text["excluded_total"] == 1
    assert f"{odd!r} U+{ord(odd):04X}" in text["excluded"] and odd not in text["vocabulary"]


def test_locale_charset_excludes_foreign_scripts_and_min_count_rare_characters(tmp_path):
    root = make_librispeech(tmp_path / "data", {TRAIN: 6})
    with_transcript(root, "THE DOG 犬 RAN")
    letters = make_dm(root, "skip")  # CJK are letters: kept by "letters", and reported in the vocabulary
    assert "犬" in letters.tokenizer.tokens and "犬" in letters.bad_input_report()["text"]["vocabulary"]
    english = make_dm(root, "skip", charset="en")
    english.setup("fit")
    assert "犬" not in english.tokenizer.tokens and len(english.train_cuts()) == 5
    rare = make_dm(root, "skip", min_char_count=2)
    assert "犬" not in rare.tokenizer.tokens


def test_policy_unit():
    policy = CharPolicy("letters")
    assert all(policy.allows(c) for c in "aé' ") and not any(policy.allows(c) for c in "7😀-")
    vocab, excluded = CharPolicy("en", min_count=2).split(__import__("collections").Counter("aab cc犬"))
    assert vocab == [" ", "a", "c"] and excluded == {"b": 1, "犬": 1}
