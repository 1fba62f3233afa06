"""Every kind of bad input: ``BadInputError`` naming file + reason under "error", counted skip under "skip".

Each case builds a tiny corpus with ``tests/corpus_factory.py`` and damages one thing.
"""

from __future__ import annotations

import logging
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from tests.corpus_factory import CV_COLUMNS, make_commonvoice, make_librispeech, tone_speech, write_tsv

from datamodules import errors as E
from datamodules.corpora import CommonVoiceCorpus, LibriSpeechCorpus
from datamodules.dataset import SpeechDataset
from datamodules.errors import BadInputError

LS = "LibriSpeech/dev-clean"
CHAPTER = f"{LS}/100/200"  # utterances 100-200-0000 and 100-200-0002 (101-200-* in 101/200)


def zero_sample_flac() -> bytes:
    """A valid FLAC stream with no audio frames (STREAMINFO total_samples = 0)."""
    rate_ch_bps = (16000 << 44) | (0 << 41) | (15 << 36)
    info = struct.pack(">HH", 4096, 4096) + bytes(6) + rate_ch_bps.to_bytes(8, "big") + bytes(16)
    return b"fLaC" + bytes([0x80]) + len(info).to_bytes(3, "big") + info


def rewrite(path: Path, fn) -> None:
    path.write_bytes(fn(path.read_bytes()))


def expect_bad(make, reason: str, where: str, n_left: int, caplog, tmp_path) -> None:
    """``make(on_bad_input)`` builds the damaged corpus; check both policies."""
    with pytest.raises(BadInputError) as info:
        make("error").cuts(tmp_path / "cache-error")
    assert info.value.reason == reason
    assert where in str(info.value)

    corpus = make("skip")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="datamodules"):
        if n_left == 0:
            with pytest.raises(BadInputError, match=E.NO_UTTERANCES):
                corpus.cuts(tmp_path / "cache-skip")
        else:
            assert len(corpus.cuts(tmp_path / "cache-skip")) == n_left
    assert dict(corpus.skipped) == {reason: 1}
    summaries = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(summaries) == 1 and reason in summaries[0] and where in summaries[0]


# -- LibriSpeech --------------------------------------------------------------------------------


@pytest.fixture
def ls_root(tmp_path) -> Path:
    return make_librispeech(tmp_path / "data", {"dev-clean": 4})


def ls(root, subsets=("dev-clean",)):
    return lambda mode: LibriSpeechCorpus(root, list(subsets), on_bad_input=mode)


def test_corrupt_flac(ls_root, caplog, tmp_path):
    flac = ls_root / CHAPTER / "100-200-0000.flac"
    rewrite(flac, lambda b: b[:4] + np.random.default_rng(0).bytes(len(b)))
    expect_bad(ls(ls_root), E.UNREADABLE_AUDIO, str(flac), 3, caplog, tmp_path)


def test_truncated_flac_found_without_full_decode(ls_root, caplog, tmp_path):
    flac = ls_root / CHAPTER / "100-200-0000.flac"
    rewrite(flac, lambda b: b[: len(b) // 2])
    assert sf.info(str(flac)).frames > 0  # the header alone still looks fine
    expect_bad(ls(ls_root), E.TRUNCATED_AUDIO, str(flac), 3, caplog, tmp_path)


def test_audio_without_transcript_line(ls_root, caplog, tmp_path):
    trans = ls_root / CHAPTER / "100-200.trans.txt"
    trans.write_text("".join(line for line in trans.open() if not line.startswith("100-200-0002")))
    where = str(ls_root / CHAPTER / "100-200-0002.flac")
    expect_bad(ls(ls_root), E.AUDIO_WITHOUT_TRANSCRIPT, where, 3, caplog, tmp_path)


def test_transcript_line_without_audio(ls_root, caplog, tmp_path):
    os.remove(ls_root / f"{LS}/101/200/101-200-0001.flac")
    where = f"{ls_root / LS}/101/200/101-200.trans.txt:1"
    expect_bad(ls(ls_root), E.TRANSCRIPT_WITHOUT_AUDIO, where, 3, caplog, tmp_path)


def test_non_utf8_transcript_line(ls_root, caplog, tmp_path):
    trans = ls_root / CHAPTER / "100-200.trans.txt"
    rewrite(trans, lambda b: b"100-200-0000 CAF\xc9 NOIR\n" + b.split(b"\n", 1)[1])
    # reported once, as a bad line (its audio is not also counted as "without transcript")
    expect_bad(ls(ls_root), E.NON_UTF8, f"{trans}:1", 3, caplog, tmp_path)


def test_malformed_transcript_line(ls_root, caplog, tmp_path):
    trans = ls_root / CHAPTER / "100-200.trans.txt"
    with trans.open("a") as f:
        f.write("100-200-0009\n")
    expect_bad(ls(ls_root), E.MALFORMED_ROW, f"{trans}:3", 4, caplog, tmp_path)


def test_stereo_flac_is_downmixed_with_counted_warning(ls_root, caplog, tmp_path):
    """One multichannel policy for training and ``speechxfer transcribe``: keep, downmix (mean), count, log."""
    flac = ls_root / CHAPTER / "100-200-0000.flac"
    mono = tone_speech("cat")
    sf.write(str(flac), np.stack([mono, 0.5 * mono], axis=1), 16000)
    corpus = LibriSpeechCorpus(ls_root, ["dev-clean"])  # not an error even under "error"
    with caplog.at_level(logging.WARNING, logger="datamodules"):
        cuts = corpus.cuts(tmp_path / "cache")
    assert len(cuts) == 4 and not corpus.skipped and corpus.notes == {E.MULTICHANNEL_AUDIO: 1}
    assert any(E.MULTICHANNEL_AUDIO in r.getMessage() and str(flac) in r.getMessage() for r in caplog.records)
    batch = SpeechDataset(labels=False)[cuts.subset(cut_ids=["100-200-0000"])]
    np.testing.assert_allclose(batch["audio"][0].numpy(), 0.75 * mono, atol=1e-4)  # mean of the two channels


def test_zero_byte_flac(ls_root, caplog, tmp_path):
    flac = ls_root / CHAPTER / "100-200-0000.flac"
    flac.write_bytes(b"")
    expect_bad(ls(ls_root), E.EMPTY_FILE, str(flac), 3, caplog, tmp_path)


def test_zero_sample_flac(ls_root, caplog, tmp_path):
    flac = ls_root / CHAPTER / "100-200-0000.flac"
    flac.write_bytes(zero_sample_flac())
    expect_bad(ls(ls_root), E.EMPTY_AUDIO, str(flac), 3, caplog, tmp_path)


def test_missing_subset(ls_root, caplog, tmp_path):
    where = str(ls_root / "LibriSpeech/dev-other")
    expect_bad(ls(ls_root, ["dev-clean", "dev-other"]), E.MISSING_SUBSET, where, 4, caplog, tmp_path)


def test_missing_root(tmp_path, caplog):
    root = tmp_path / "nowhere"
    expect_bad(ls(root), E.MISSING_ROOT, str(root), 0, caplog, tmp_path)


def test_8khz_flac_resampled_with_counted_warning(ls_root, caplog, tmp_path):
    flac = ls_root / CHAPTER / "100-200-0000.flac"
    sf.write(str(flac), tone_speech("cat", sample_rate=8000), 8000)
    corpus = LibriSpeechCorpus(ls_root, ["dev-clean"])  # not an error even under "error"
    with caplog.at_level(logging.WARNING, logger="datamodules"):
        cuts = corpus.cuts(tmp_path / "cache")
    assert len(cuts) == 4 and not corpus.skipped
    assert corpus.notes == {E.UNEXPECTED_SAMPLE_RATE: 1}
    (cut,) = cuts.subset(cut_ids=["100-200-0000"])  # the CutSet is lazy: no lookup by id
    assert cut.sampling_rate == 16000
    assert cut.load_audio().shape == (1, round(sf.info(str(flac)).duration * 16000))
    assert any(E.UNEXPECTED_SAMPLE_RATE in r.getMessage() and str(flac) in r.getMessage() for r in caplog.records)
    # a cache hit reports the same counts
    again = LibriSpeechCorpus(ls_root, ["dev-clean"])
    again.cuts(tmp_path / "cache")
    assert again.notes == corpus.notes


# -- Common Voice -------------------------------------------------------------------------------


@pytest.fixture
def cv_root(tmp_path) -> Path:
    return make_commonvoice(tmp_path / "cv", "en", {"train": 4})


def cv(root, locale="en", split="train"):
    return lambda mode: CommonVoiceCorpus(root, locale, split, on_bad_input=mode)


def clip(root, i=1) -> Path:
    return root / f"en/clips/common_voice_en_train_{i:05d}.mp3"


def edit_rows(root, fn) -> Path:
    tsv = root / "en/train.tsv"
    rows = [line.split("\t") for line in tsv.read_text().splitlines()[1:]]
    fn(rows)
    write_tsv(tsv, rows)
    return tsv


def test_corrupt_mp3(cv_root, caplog, tmp_path):
    rewrite(clip(cv_root), lambda b: np.random.default_rng(0).bytes(len(b)))
    expect_bad(cv(cv_root), E.UNREADABLE_AUDIO, str(clip(cv_root)), 3, caplog, tmp_path)


def test_truncated_mp3(cv_root, caplog, tmp_path):
    rewrite(clip(cv_root), lambda b: b[: len(b) // 2])
    expect_bad(cv(cv_root), E.TRUNCATED_AUDIO, str(clip(cv_root)), 3, caplog, tmp_path)


def test_zero_byte_mp3(cv_root, caplog, tmp_path):
    clip(cv_root).write_bytes(b"")
    expect_bad(cv(cv_root), E.EMPTY_FILE, str(clip(cv_root)), 3, caplog, tmp_path)


def test_tsv_row_without_clip(cv_root, caplog, tmp_path):
    os.remove(clip(cv_root, 2))
    expect_bad(cv(cv_root), E.TRANSCRIPT_WITHOUT_AUDIO, f"{cv_root}/en/train.tsv:4", 3, caplog, tmp_path)


def test_tsv_row_with_extra_tab(cv_root, caplog, tmp_path):
    tsv = edit_rows(cv_root, lambda rows: rows[1].__setitem__(2, "Sat\ton a mat."))
    expect_bad(cv(cv_root), E.MALFORMED_ROW, f"{tsv}:3", 3, caplog, tmp_path)


def test_tsv_row_not_utf8(cv_root, caplog, tmp_path):
    tsv = cv_root / "en/train.tsv"
    lines = tsv.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b".\t", b" caf\xe9.\t", 1)  # latin-1 byte in the 2nd row's sentence
    tsv.write_bytes(b"\n".join(lines))
    expect_bad(cv(cv_root), E.NON_UTF8, f"{tsv}:3", 3, caplog, tmp_path)


def test_tsv_quotes_are_literal(cv_root, tmp_path):
    sentences = ['He said "hi.', '"Quoted" words, and \'single\' ones.']
    edit_rows(cv_root, lambda rows: [rows[i].__setitem__(2, s) for i, s in enumerate(sentences)])
    cuts = CommonVoiceCorpus(cv_root, "en", "train").cuts(tmp_path / "cache")
    assert len(cuts) == 4
    picked = cuts.subset(cut_ids=[f"common_voice_en_train_{i:05d}" for i in range(2)])  # lazy: no cuts["id"]
    texts = [c.supervisions[0].text for c in picked]
    assert texts == sentences


def test_empty_tsv(cv_root, caplog, tmp_path):
    (cv_root / "en/train.tsv").write_bytes(b"")
    expect_bad(cv(cv_root), E.EMPTY_TSV, f"{cv_root}/en/train.tsv", 0, caplog, tmp_path)


def test_header_only_tsv(cv_root, caplog, tmp_path):
    write_tsv(cv_root / "en/train.tsv", [])
    expect_bad(cv(cv_root), E.EMPTY_TSV, f"{cv_root}/en/train.tsv", 0, caplog, tmp_path)


def test_tsv_without_required_columns(cv_root, caplog, tmp_path):
    tsv = cv_root / "en/train.tsv"
    tsv.write_text(tsv.read_text().replace("sentence", "text", 1))
    assert "sentence" in CV_COLUMNS
    expect_bad(cv(cv_root), E.BAD_TSV_HEADER, f"{tsv}:1", 0, caplog, tmp_path)


def test_missing_locale(cv_root, caplog, tmp_path):
    expect_bad(cv(cv_root, locale="fr"), E.MISSING_LOCALE, f"{cv_root}/fr", 0, caplog, tmp_path)


def test_missing_split_tsv(cv_root, caplog, tmp_path):
    expect_bad(cv(cv_root, split="other"), E.MISSING_TSV, f"{cv_root}/en/other.tsv", 0, caplog, tmp_path)


def test_skip_counts_several_reasons_in_one_summary(cv_root, caplog, tmp_path):
    rewrite(clip(cv_root, 0), lambda b: b[: len(b) // 2])
    os.remove(clip(cv_root, 3))
    corpus = CommonVoiceCorpus(cv_root, "en", "train", on_bad_input="skip")
    with caplog.at_level(logging.WARNING, logger="datamodules"):
        cuts = corpus.cuts(tmp_path / "cache")
    assert len(cuts) == 2
    assert corpus.skipped == {E.TRUNCATED_AUDIO: 1, E.TRANSCRIPT_WITHOUT_AUDIO: 1}
    (line,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "skipped 2 item(s)" in line and E.TRUNCATED_AUDIO in line and E.TRANSCRIPT_WITHOUT_AUDIO in line


def test_bad_policy_value_rejected(cv_root):
    with pytest.raises(ValueError, match="on_bad_input"):
        CommonVoiceCorpus(cv_root, "en", "train", on_bad_input="ignore")
