"""Real recordings (tests/fixtures/real_speech, see ATTRIBUTION.md) through the corpus scanners.

Real audio differs from tone speech in level, noise floor, sample rate (LJSpeech: 22.05 kHz)
and container: these tests load it at 16 kHz and check durations and content.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from datamodules import errors as E
from datamodules.corpora import CommonVoiceCorpus, LibriSpeechCorpus
from datamodules.text import CharTokenizer, TextNormalizer

FIXTURES = Path(__file__).parents[1] / "fixtures" / "real_speech"
LJ = FIXTURES / "ljspeech"


def lj_text(utt_id: str) -> str:
    for line in (LJ / "metadata.csv").read_text(encoding="utf-8").splitlines():
        uid, _, normalized = line.split("|")
        if uid == utt_id:
            return normalized
    raise KeyError(utt_id)


def reference_16k(path: Path) -> np.ndarray:
    """(T,) the file decoded by soundfile and resampled by torchaudio: an independent reference."""
    audio, rate = sf.read(str(path), dtype="float32")
    return torchaudio.functional.resample(torch.from_numpy(audio), rate, 16000).numpy()


def test_real_librispeech_layout(tmp_path):
    corpus = LibriSpeechCorpus(FIXTURES, ["dev-clean"])
    cuts = corpus.cuts(tmp_path / "cache")  # nothing is written next to the fixtures
    assert list(cuts.ids) == ["1272-128104-0000"] and not corpus.skipped and not corpus.notes
    cut = cuts[0]
    sup = cut.supervisions[0]
    assert sup.speaker == "1272" and sup.custom["chapter"] == "128104" and sup.custom["subset"] == "dev-clean"
    assert sup.text.startswith("MISTER QUILTER IS THE APOSTLE")
    assert cut.sampling_rate == 16000 and cut.duration == pytest.approx(4.815)
    audio = cut.load_audio()
    assert audio.shape == (1, 77040)
    assert 0.01 < float(np.sqrt(np.mean(audio**2))) < 0.5  # real speech, not silence or clipping
    tok = CharTokenizer.build([sup.text])
    assert tok.decode(tok.encode(sup.text)) == TextNormalizer()(sup.text) == sup.text.lower()


def test_ljspeech_flac_22khz_in_librispeech_layout_is_resampled(tmp_path):
    chapter = tmp_path / "LibriSpeech/train-clean-100/9/1"
    chapter.mkdir(parents=True)
    shutil.copy(LJ / "LJ001-0002.flac", chapter / "9-1-0000.flac")
    (chapter / "9-1.trans.txt").write_text(f"9-1-0000 {lj_text('LJ001-0002').upper()}\n")
    corpus = LibriSpeechCorpus(tmp_path, ["train-clean-100"])
    (cut,) = corpus.cuts(tmp_path / "cache")
    assert corpus.notes == {E.UNEXPECTED_SAMPLE_RATE: 1}
    native = sf.info(str(LJ / "LJ001-0002.flac"))
    assert native.samplerate == 22050
    assert cut.sampling_rate == 16000 and cut.duration == pytest.approx(native.duration, abs=1e-3)
    audio = cut.load_audio()[0]
    reference = reference_16k(LJ / "LJ001-0002.flac")
    assert audio.shape == (cut.num_samples,) and abs(len(reference) - len(audio)) <= 1
    n = min(len(audio), len(reference))
    assert np.corrcoef(audio[:n], reference[:n])[0, 1] > 0.99


def test_ljspeech_mp3_in_commonvoice_layout_loads_at_16khz(tmp_path):
    clips = tmp_path / "en" / "clips"
    clips.mkdir(parents=True)
    shutil.copy(LJ / "LJ001-0008.mp3", clips / "lj_0008.mp3")
    header = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccents\tvariant\tlocale\tsegment"
    row = f"lj\tlj_0008.mp3\t{lj_text('LJ001-0008')}\t2\t0\t\tfemale\t\t\ten\t"
    (tmp_path / "en" / "train.tsv").write_text(f"{header}\n{row}\n", encoding="utf-8")
    corpus = CommonVoiceCorpus(tmp_path, "en", "train")
    (cut,) = corpus.cuts(tmp_path / "cache")
    assert corpus.notes == {E.UNEXPECTED_SAMPLE_RATE: 1}  # 22.05 kHz is not a Common Voice rate
    sup = cut.supervisions[0]
    assert sup.text == "has never been surpassed." and sup.custom["gender"] == "female"
    flac_duration = sf.info(str(LJ / "LJ001-0008.flac")).duration
    assert cut.sampling_rate == 16000 and cut.duration == pytest.approx(flac_duration, abs=0.05)
    audio = cut.load_audio()[0]
    assert audio.shape == (cut.num_samples,)
    reference = reference_16k(LJ / "LJ001-0008.flac")
    rms, ref_rms = (float(np.sqrt(np.mean(x**2))) for x in (audio, reference))
    assert ref_rms > 0.01 and rms == pytest.approx(ref_rms, rel=0.1)  # same speech, lossy codec
