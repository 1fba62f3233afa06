"""The scan's audio probe (issue 11, items 12, 13): the decoder's reason reaches the message in full;
a 0-sample FLAC is ``empty_audio`` (also ``tests/datamodules/test_bad_input.py::test_zero_sample_flac``)."""

from __future__ import annotations

import pytest

from datamodules import errors as E
from datamodules.corpora import LibriSpeechCorpus
from datamodules.errors import BadInputError
from tests.corpus_factory import make_librispeech
from tests.datamodules.test_bad_input import zero_sample_flac


def test_unreadable_audio_message_carries_the_decoders_reason(tmp_path):
    root = make_librispeech(tmp_path / "data", {"dev-clean": 2})
    flac = sorted(root.rglob("*.flac"))[0]
    flac.write_bytes(flac.read_bytes()[:4] + bytes(3000))
    with pytest.raises(BadInputError) as info:
        LibriSpeechCorpus(root, ["dev-clean"]).cuts(tmp_path / "cache")
    assert info.value.reason == E.UNREADABLE_AUDIO
    assert "unimplemented format" in info.value.detail and not info.value.detail.endswith("Details:")


def test_zero_sample_flac_is_empty_audio(tmp_path):
    root = make_librispeech(tmp_path / "data", {"dev-clean": 2})
    flac = sorted(root.rglob("*.flac"))[0]
    flac.write_bytes(zero_sample_flac())
    corpus = LibriSpeechCorpus(root, ["dev-clean"], on_bad_input="skip")
    assert len(corpus.cuts(tmp_path / "cache")) == 1 and corpus.skipped == {E.EMPTY_AUDIO: 1}
