"""One CTC length rule, checked in the data layer with the backbone's EXACT frame counts."""

from __future__ import annotations

import numpy as np
import pytest
import pytorch_lightning as pl
import soundfile as sf
import torch
from lhotse import CutSet, Recording, SupervisionSegment

from datamodules import ASRDataModule, BadInputError, CharTokenizer, LibriSpeechCorpus
from datamodules.ctc_check import ctc_infeasible, min_frames, padded
from datamodules.dataset import check_labels
from lightning_modules import CTCModule
from lightning_modules.backbones import TorchaudioBackbone
from tests.cli_helpers import TINY_TORCHAUDIO
from tests.conftest import QUIET, make_tiny_backbone
from tests.corpus_factory import make_librispeech
from tests.datamodules.test_asr import rewrite_transcript, first_uid

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def test_the_rule_counts_a_blank_between_repeats():
    targets, lengths = padded([[3, 3, 4, 4, 4], [1, 2], [5]])
    assert min_frames(targets, lengths).tolist() == [8, 2, 1]
    assert ctc_infeasible(torch.tensor([7, 2, 0]), targets, lengths).tolist() == [True, False, True]


def one_second_cut(tmp_path, text: str):
    """A 16000-sample FLAC and its cut with transcript ``text``."""
    path = tmp_path / f"{len(text)}.flac"
    sf.write(path, np.random.default_rng(0).normal(0, 0.1, 16000).astype("float32"), 16000)
    rec = Recording.from_file(path, recording_id=path.stem)
    cut = rec.to_cut()
    cut.supervisions = [SupervisionSegment(id=path.stem, recording_id=rec.id, start=0, duration=1.0, text=text)]
    return cut


def test_an_utterance_the_backbone_cannot_align_is_caught_with_the_exact_frame_count(tmp_path):
    backbone = TorchaudioBackbone("WAV2VEC2_BASE", config_overrides=TINY_TORCHAUDIO)  # 320x conv stack
    frames = int(backbone.output_lengths(torch.tensor([16000]))[0])
    assert frames == 49  # a 1 s clip: 49 frames, where "50 frames per second" estimates 50
    tokenizer = CharTokenizer(list(" " + LETTERS))
    fits = one_second_cut(tmp_path, (LETTERS * 2)[:49])        # 49 distinct-neighbour tokens: exactly enough
    too_long = one_second_cut(tmp_path, (LETTERS * 2)[:50])    # 50: the estimate would accept it
    kept, skipped, _ = check_labels(CutSet.from_cuts([fits, too_long]), tokenizer, backbone.output_lengths, "skip")
    assert [c.id for c in kept] == [fits.id] and skipped == {"too_short_for_ctc": 1}
    with pytest.raises(BadInputError, match=r"1\.000 s gives 49 encoder frames but its 50-token label needs 50"):
        check_labels(CutSet.from_cuts([too_long]), tokenizer, backbone.output_lengths)
    repeats = one_second_cut(tmp_path, "a" * 25)  # 25 tokens + 24 blanks between repeats = 49: fits
    assert check_labels(CutSet.from_cuts([repeats]), tokenizer, backbone.output_lengths)[1] == {}


def test_the_datamodule_asks_the_attached_models_backbone(tmp_path):
    root = make_librispeech(tmp_path / "data", {"train-clean-100": 8})
    uid = first_uid(root, "train-clean-100")
    rewrite_transcript(root, "train-clean-100", uid, "A " * 60 + "A")
    dm = ASRDataModule(train=LibriSpeechCorpus(root, ["train-clean-100"]), max_duration=2.0, num_buckets=2, num_workers=0, on_bad_input="skip",
                       cache_dir=str(root / "cache"))
    model = CTCModule(make_tiny_backbone(), dm.tokenizer.to_dict())
    trainer = pl.Trainer(max_steps=1, **QUIET)
    trainer.fit(model, datamodule=dm)
    assert dm.skipped["train"] == {"too_short_for_ctc": 1}
    assert uid not in {c.id for c in dm.train_cuts()}
