"""Load-time and pre-sampling faults (issue 11, items 1, 8, 9, 11): NaN/inf audio, audio that fails to
decode mid-file (counted across DataLoader workers, never aborting a skip-mode run), audio far shorter
than its transcript, clips longer than ``max_duration``."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import soundfile as sf

from datamodules import ASRDataModule, LibriSpeechCorpus
from datamodules import errors as E
from datamodules.dataset import DECODE_FAILED, FAST_SPEECH, TOO_LONG
from datamodules.errors import BadInputError
from tests.corpus_factory import (break_mid_file, make_commonvoice, make_librispeech, tone_speech,
                                  write_cut_short_mp3, write_non_finite_wav)

TRAIN = "train-clean-100"


def make_dm(root: Path, mode: str = "skip", **kwargs) -> ASRDataModule:
    defaults = dict(train=LibriSpeechCorpus(root, [TRAIN], on_bad_input=mode), max_duration=2.0, num_buckets=2,
                    num_workers=0, cache_dir=str(root / "cache"), on_bad_input=mode, shuffle=False)
    return ASRDataModule(**{**defaults, **kwargs})


def flacs(root: Path) -> list[Path]:
    return sorted((root / "LibriSpeech" / TRAIN).rglob("*.flac"))


def epoch(dm: ASRDataModule) -> list[str]:
    return [i for batch in dm.train_dataloader() for i in batch["ids"]]


# -- NaN / inf audio (item 1) ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["x.wav-as.flac"])
def test_non_finite_audio_is_bad_input_at_scan_time(tmp_path, name):
    root = make_librispeech(tmp_path / "data", {TRAIN: 4})
    flac = flacs(root)[0]
    write_non_finite_wav(flac, "the big dog")  # a float WAV renamed .flac: libsndfile reads it anyway
    with pytest.raises(BadInputError) as info:
        LibriSpeechCorpus(root, [TRAIN]).cuts(tmp_path / "c1")
    assert info.value.reason == E.NON_FINITE_AUDIO and str(flac) in str(info.value)
    skipping = LibriSpeechCorpus(root, [TRAIN], on_bad_input="skip")
    assert len(skipping.cuts(tmp_path / "c2")) == 3 and skipping.skipped == {E.NON_FINITE_AUDIO: 1}


def test_non_finite_audio_mid_file_is_bad_input_at_load_time(tmp_path):
    root = make_librispeech(tmp_path / "data", {TRAIN: 6})
    bad = flacs(root)[0]
    write_non_finite_wav(bad, "the big dog", where="middle")  # head and tail finite: passes the scan
    dm = make_dm(root, "error")
    dm.setup("fit")
    with pytest.raises(BadInputError) as info:
        epoch(dm)
    assert info.value.reason == E.NON_FINITE_AUDIO and str(bad) in str(info.value)
    dm = make_dm(root, "skip")
    dm.setup("fit")
    assert bad.stem not in epoch(dm) and len(epoch(dm)) == 5
    assert dm.load_skip_counts() == {E.NON_FINITE_AUDIO: 2}  # one per epoch
    assert dm.bad_input_report()["load"]["train"]["skipped"] == {E.NON_FINITE_AUDIO: 2}


# -- decode failures at load time (item 8) ---------------------------------------------------------

@pytest.mark.parametrize("workers", [0, 2])
def test_decode_failures_are_counted_across_workers_and_never_stop_a_skip_run(tmp_path, workers, caplog):
    root = make_librispeech(tmp_path / "data", {TRAIN: 8})
    broken = flacs(root)[:3]
    for flac in broken:  # 1.7 s (the others ~0.5 s): alone in a 3 s batch, its middle far from the probed tail
        sf.write(flac, tone_speech("a " * 13, seed=1), 16000)
        break_mid_file(flac)
    dm = make_dm(root, "skip", num_workers=workers, max_duration=3.0)
    dm.setup("fit")
    assert len(list(dm.train_cuts())) == 8  # the scan's header + tail probe passes them
    with caplog.at_level(logging.WARNING, logger="datamodules"):
        seen = epoch(dm)
    assert sorted(seen) == sorted(f.stem for f in flacs(root) if f not in broken)
    assert dm.load_skip_counts() == {DECODE_FAILED: 3}  # summed in the main process, whatever the workers
    record = dm.load_skips["train"]
    assert record.empty_batches >= 1  # a batch whose only utterance failed was dropped, not an empty_batch crash
    assert "flac decoder lost sync" in record.examples[DECODE_FAILED]
    assert any("dropped a batch" in r.getMessage() for r in caplog.records)


def test_decode_failure_in_error_mode_names_the_file(tmp_path):
    root = make_librispeech(tmp_path / "data", {TRAIN: 4})
    broken = flacs(root)[1]
    sf.write(broken, tone_speech("a " * 13, seed=1), 16000)
    break_mid_file(broken)
    dm = make_dm(root, "error")
    dm.setup("fit")
    with pytest.raises(BadInputError) as info:
        epoch(dm)
    assert info.value.reason == DECODE_FAILED and str(broken) in str(info.value)
    assert "lost sync" in str(info.value)  # the decoder's reason, not "failed. Details:"


# -- audio much shorter than its transcript (item 9) ----------------------------------------------

def test_cut_short_mp3_is_flagged_by_its_speaking_rate(tmp_path, caplog):
    root = make_commonvoice(tmp_path / "cv", "en", {"train": 6})
    tsv = (root / "en/train.tsv").read_text().splitlines()
    row = tsv[1].split("\t")
    text = "the big dog ran far and the old man sat on a red mat"
    write_cut_short_mp3(root / "en/clips" / row[1], text, keep=0.5)
    row[2] = text.capitalize() + "."
    (root / "en/train.tsv").write_text("\n".join([tsv[0], "\t".join(row), *tsv[2:]]) + "\n")
    from datamodules import CommonVoiceCorpus

    def dm(mode):
        return ASRDataModule(train=CommonVoiceCorpus(root, "en", "train"), on_bad_input=mode, num_workers=0,
                             cache_dir=str(tmp_path / "cache"), max_duration=30.0)

    for mode in ("error", "skip"):  # a suspicion, not proof: a counted skip under either policy
        skipping = dm(mode)
        with caplog.at_level(logging.WARNING, logger="datamodules"):
            skipping.setup("fit")
        assert len(skipping.train_cuts()) == 5 and skipping.skipped["train"] == {FAST_SPEECH: 1}
        example = skipping.bad_input_report()["checks"]["train"]["examples"][FAST_SPEECH]
        assert row[1][:-4] in example and "/s > max_chars_per_second=25" in example
        assert any(FAST_SPEECH in r.getMessage() for r in caplog.records)
    # the ordinary clips (tone speech, ~14 characters/s) pass the documented threshold (25/s)
    ok = ASRDataModule(train=CommonVoiceCorpus(make_commonvoice(tmp_path / "ok", "en", {"train": 6}), "en", "train"),
                       num_workers=0, cache_dir=str(tmp_path / "cache"), max_duration=30.0)
    ok.setup("fit")
    assert len(ok.train_cuts()) == 6


# -- max_duration (item 11) -----------------------------------------------------------------------

def test_max_duration_is_honoured_and_a_longer_clip_is_a_counted_skip(tmp_path):
    root = make_librispeech(tmp_path / "data", {TRAIN: 12})
    long_clip = flacs(root)[0]
    text = "the cat sat on a mat " * 25
    sf.write(long_clip, tone_speech(text), 16000)  # ~30 s among ~0.5-1 s clips
    trans = long_clip.parent / f"{long_clip.parent.parent.name}-{long_clip.parent.name}.trans.txt"
    lines = [f"{long_clip.stem} {text.strip().upper()}" if ln.startswith(long_clip.stem) else ln
             for ln in trans.read_text().splitlines()]
    trans.write_text("\n".join(lines) + "\n")
    for mode in ("error", "skip"):  # it cannot be batched: a counted skip under either policy
        dm = make_dm(root, mode, max_duration=4.0, shuffle=True)
        dm.setup("fit")
        assert dm.skipped["train"] == {TOO_LONG: 1}
        assert "longer than max_duration=4 s" in dm.bad_input_report()["checks"]["train"]["examples"][TOO_LONG]
        padded = [b["audio"].shape[0] * b["audio"].shape[1] / 16000 for b in dm.train_dataloader()]
        assert max(padded) <= 4.0, padded  # padded batch seconds within max_duration
