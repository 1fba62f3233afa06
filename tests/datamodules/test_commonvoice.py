"""Common Voice scan faults (issue 11, items 7, 12): an unreadable TSV and two clips with one utterance id."""

from __future__ import annotations

import pytest
import soundfile as sf

from datamodules import errors as E
from datamodules.corpora import CommonVoiceCorpus
from datamodules.errors import BadInputError
from tests.corpus_factory import make_commonvoice, tone_speech


@pytest.fixture
def root(tmp_path):
    return make_commonvoice(tmp_path / "cv", "en", {"train": 4})


def corpus(root, mode):
    return CommonVoiceCorpus(root, "en", "train", on_bad_input=mode)


@pytest.mark.parametrize("mode", ["error", "skip"])
def test_unreadable_tsv_is_bad_input_in_both_modes(root, tmp_path, mode):
    from tests.corpus_factory import unreadable

    tsv = root / "en/train.tsv"
    with unreadable(tsv), pytest.raises(BadInputError) as info:
        corpus(root, mode).cuts(tmp_path / "cache")
    # error: the TSV itself; skip: nothing left, and the summary says why
    assert info.value.reason == (E.UNREADABLE_FILE if mode == "error" else E.NO_UTTERANCES)
    assert str(tsv) in str(info.value) and E.UNREADABLE_FILE in str(info.value)
    assert not isinstance(info.value, PermissionError)


def test_same_utterance_id_as_mp3_and_wav(root, tmp_path):
    tsv = root / "en/train.tsv"
    first = tsv.read_text().splitlines()[1].split("\t")
    twin = first[1].replace(".mp3", ".wav")
    sf.write(root / "en/clips" / twin, tone_speech("cat"), 16000)
    with tsv.open("a") as f:
        f.write("\t".join([first[0], twin, "Cat."] + first[3:]) + "\n")
    with pytest.raises(BadInputError) as info:
        corpus(root, "error").cuts(tmp_path / "cache-e")
    assert info.value.reason == E.DUPLICATE_ID and twin in str(info.value) and f"{tsv}:6" in str(info.value)
    skipping = corpus(root, "skip")
    cuts = skipping.cuts(tmp_path / "cache-s")
    assert len(cuts) == 4 and skipping.skipped == {E.DUPLICATE_ID: 1}
    (kept,) = cuts.subset(cut_ids=[first[1][:-4]])
    assert kept.recording.sources[0].source.endswith(".mp3")  # the first listed clip is kept
