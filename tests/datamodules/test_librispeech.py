"""LibriSpeech scan faults (issue 11, items 6, 7): unreadable folders/files and duplicate utterance ids are
a clear error under ``on_bad_input="error"`` and a counted skip under ``"skip"`` -- never a silent drop."""

from __future__ import annotations

import logging

import pytest

from datamodules import errors as E
from datamodules.corpora import LibriSpeechCorpus
from datamodules.errors import BadInputError
from tests.corpus_factory import make_librispeech, unreadable

CHAPTER = "LibriSpeech/train-clean-100/101/200"  # 3 of the 6 utterances (100/200 holds the others)


@pytest.fixture
def root(tmp_path):
    return make_librispeech(tmp_path / "data", {"train-clean-100": 6})


def corpus(root, mode, subsets=("train-clean-100",)):
    return LibriSpeechCorpus(root, list(subsets), on_bad_input=mode)


def test_unreadable_chapter_folder_is_an_error_naming_it(root, tmp_path):
    folder = root / CHAPTER
    with unreadable(folder), pytest.raises(BadInputError) as info:
        corpus(root, "error").cuts(tmp_path / "cache")
    assert info.value.reason == E.UNREADABLE_DIR and str(folder) in str(info.value)


def test_unreadable_chapter_folder_is_a_counted_skip(root, tmp_path, caplog):
    folder = root / CHAPTER
    skipping = corpus(root, "skip")
    with unreadable(folder), caplog.at_level(logging.WARNING, logger="datamodules"):
        cuts = skipping.cuts(tmp_path / "cache")
    assert len(cuts) == 3 and skipping.skipped == {E.UNREADABLE_DIR: 1}
    assert any(E.UNREADABLE_DIR in r.getMessage() and str(folder) in r.getMessage() for r in caplog.records)
    again = corpus(root, "skip")  # fixed permissions: a new fingerprint, rescanned, all 6 back
    assert len(again.cuts(tmp_path / "cache")) == 6 and not again.skipped


def test_every_folder_unreadable_says_why(root, tmp_path):
    subset = root / "LibriSpeech/train-clean-100"
    with unreadable(subset), pytest.raises(BadInputError) as info:
        corpus(root, "skip").cuts(tmp_path / "cache")
    assert info.value.reason == E.NO_UTTERANCES
    assert E.UNREADABLE_DIR in str(info.value) and str(subset) in str(info.value) and "None" not in str(info.value)


def test_unreadable_transcript_file(root, tmp_path):
    trans = root / CHAPTER / "101-200.trans.txt"
    with unreadable(trans), pytest.raises(BadInputError) as info:
        corpus(root, "error").cuts(tmp_path / "cache")
    assert info.value.reason == E.UNREADABLE_FILE and str(trans) in str(info.value)


def test_unreadable_flac(root, tmp_path):
    flac = sorted((root / CHAPTER).glob("*.flac"))[0]
    skipping = corpus(root, "skip")
    with unreadable(flac):
        assert len(skipping.cuts(tmp_path / "cache")) == 5
    assert skipping.skipped == {E.UNREADABLE_FILE: 1}


def test_duplicate_utterance_ids_across_subsets(tmp_path):
    root = make_librispeech(tmp_path / "data", {"train-clean-100": 4})
    copy = make_librispeech(tmp_path / "other", {"train-clean-360": 4})  # same speaker/chapter/utterance ids
    (root / "LibriSpeech/train-clean-360").symlink_to(copy / "LibriSpeech/train-clean-360")
    subsets = ("train-clean-100", "train-clean-360")
    with pytest.raises(BadInputError) as info:
        corpus(root, "error", subsets).cuts(tmp_path / "cache-e")
    assert info.value.reason == E.DUPLICATE_ID and "train-clean-360" in str(info.value)
    assert "train-clean-100" in str(info.value)  # names the first occurrence too
    skipping = corpus(root, "skip", subsets)
    cuts = skipping.cuts(tmp_path / "cache-s")
    assert len(cuts) == 4 and skipping.skipped == {E.DUPLICATE_ID: 4}  # one count per duplicate
    assert len({c.id for c in cuts}) == 4
