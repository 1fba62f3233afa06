"""Corpus scanning, manifest caching and deterministic subsets on generated tiny corpora."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from tests.corpus_factory import make_commonvoice, make_librispeech
from lhotse import CutSet

from datamodules.corpora import CommonVoiceCorpus, Corpus, LibriSpeechCorpus, subset_by_minutes
from datamodules.manifest_cache import LOCAL_CACHE_NAME

LS_SUBSETS = {"train-clean-100": 6, "train-clean-360": 4, "dev-clean": 3}


@pytest.fixture
def ls_root(tmp_path) -> Path:
    return make_librispeech(tmp_path / "data", LS_SUBSETS)


@pytest.fixture
def cv_root(tmp_path) -> Path:
    return make_commonvoice(tmp_path / "cv", "en", {"train": 6, "dev": 2})


def count_scans(monkeypatch, cls) -> list:
    calls = []
    original = cls._scan

    def counting(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "_scan", counting)
    return calls


def bump_mtime(path: Path) -> None:
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))


def test_librispeech_several_subsets(ls_root, tmp_path):
    cuts = LibriSpeechCorpus(ls_root, ["train-clean-100", "train-clean-360"]).cuts(tmp_path / "cache")
    assert cuts.is_lazy and len(cuts) == 10  # streamed from the cached jsonl.gz
    subsets = {c.supervisions[0].custom["subset"] for c in cuts}
    assert subsets == {"train-clean-100", "train-clean-360"}
    (cut,) = cuts.subset(cut_ids=["100-200-0000"])  # lhotse cannot index a lazy CutSet by id
    audio_path = ls_root / "LibriSpeech/train-clean-100/100/200/100-200-0000.flac"
    trans = (audio_path.parent / "100-200.trans.txt").read_text().splitlines()[0]
    sup = cut.supervisions[0]
    assert sup.text == trans.split(" ", 1)[1]  # raw transcript, untouched
    assert sup.speaker == "100"
    assert sup.custom == {"corpus": "librispeech", "subset": "train-clean-100", "chapter": "200"}
    assert cut.sampling_rate == 16000 and cut.num_channels == 1
    assert cut.recording.sources[0].source == str(audio_path)  # absolute path
    assert cut.duration == pytest.approx(sf.info(str(audio_path)).duration)
    assert list(cuts.ids) == sorted(cuts.ids)
    audio = cut.load_audio()
    expected, _ = sf.read(str(audio_path), dtype="float32")
    np.testing.assert_allclose(audio[0], expected, atol=1e-6)


def test_librispeech_root_may_be_the_librispeech_folder(ls_root, tmp_path):
    cuts = LibriSpeechCorpus(ls_root / "LibriSpeech", ["dev-clean"]).cuts(tmp_path / "cache")
    assert len(cuts) == 3


def test_commonvoice_mp3_resampled_lazily(cv_root, tmp_path):
    cuts = CommonVoiceCorpus(cv_root, "en", "train").cuts(tmp_path / "cache")
    assert len(cuts) == 6
    cached = CommonVoiceCorpus(cv_root, "en", "train").cuts(tmp_path / "cache")
    assert [c.to_dict() for c in cached] == [c.to_dict() for c in cuts]  # transforms survive the cache
    cut = cuts[0]
    assert cut.recording.transforms is not None  # resampling is a lazy transform, not a decode
    assert cut.sampling_rate == 16000
    audio = cut.load_audio()
    assert audio.shape == (1, cut.num_samples)
    native = sf.info(str(cv_root / "en/clips" / f"{cut.id}.mp3"))
    assert native.samplerate == 48000
    assert cut.num_samples == pytest.approx(native.frames / 3, abs=1)
    sup = cut.supervisions[0]
    assert sup.text.endswith(".") and sup.text[0].isupper()  # raw sentence
    assert sup.speaker.startswith("client") and sup.language == "en"
    assert sup.custom == {"corpus": "commonvoice", "subset": "train", "locale": "en"}


def test_cache_hit_skips_scan_and_touch_rescans(ls_root, tmp_path, monkeypatch):
    calls = count_scans(monkeypatch, LibriSpeechCorpus)
    cache = tmp_path / "cache"
    first = LibriSpeechCorpus(ls_root, ["dev-clean"]).cuts(cache)
    second = LibriSpeechCorpus(ls_root, ["dev-clean"]).cuts(cache)  # a new object, same sources
    assert len(calls) == 1
    assert [c.to_dict() for c in first] == [c.to_dict() for c in second]
    manifests = sorted(p.name for p in cache.iterdir())
    assert len(manifests) == 2 and any(n.endswith(".jsonl.gz") for n in manifests)  # no temp files left

    bump_mtime(ls_root / "LibriSpeech/dev-clean/120/202/120-202.trans.txt")
    LibriSpeechCorpus(ls_root, ["dev-clean"]).cuts(cache)
    assert len(calls) == 2
    # a new audio file (even without content changes elsewhere) is a new source
    flac = ls_root / "LibriSpeech/dev-clean/120/202/120-202-0000.flac"
    sf.write(str(flac.with_name("120-202-0009.flac")), sf.read(str(flac))[0], 16000)
    with open(flac.parent / "120-202.trans.txt", "a") as f:
        f.write("120-202-0009 NEW UTTERANCE\n")
    assert len(LibriSpeechCorpus(ls_root, ["dev-clean"]).cuts(cache)) == 4
    assert len(calls) == 3
    # a different subset list is a different manifest
    LibriSpeechCorpus(ls_root, ["dev-clean", "train-clean-360"]).cuts(cache)
    assert len(calls) == 4


def test_commonvoice_cache_keyed_on_tsv_and_clips(cv_root, tmp_path, monkeypatch):
    calls = count_scans(monkeypatch, CommonVoiceCorpus)
    cache = tmp_path / "cache"
    for _ in range(2):
        CommonVoiceCorpus(cv_root, "en", "dev").cuts(cache)
    assert len(calls) == 1
    bump_mtime(cv_root / "en/dev.tsv")
    CommonVoiceCorpus(cv_root, "en", "dev").cuts(cache)
    assert len(calls) == 2
    bump_mtime(cv_root / "en/clips/common_voice_en_dev_00001.mp3")
    CommonVoiceCorpus(cv_root, "en", "dev").cuts(cache)
    assert len(calls) == 3
    bump_mtime(cv_root / "en/clips/common_voice_en_train_00001.mp3")  # not in dev.tsv
    CommonVoiceCorpus(cv_root, "en", "dev").cuts(cache)
    assert len(calls) == 3


def test_failed_cache_write_leaves_no_manifest(ls_root, tmp_path, monkeypatch):
    def broken_to_file(self, path):
        Path(path).write_text("partial")
        raise OSError("disk full")

    monkeypatch.setattr(CutSet, "to_file", broken_to_file)
    cache = tmp_path / "cache"
    with pytest.raises(OSError, match="disk full"):
        LibriSpeechCorpus(ls_root, ["dev-clean"]).cuts(cache)
    names = [p.name for p in cache.iterdir()]
    assert not [n for n in names if n.endswith(".jsonl.gz") or ".tmp" in n]
    monkeypatch.undo()
    assert len(LibriSpeechCorpus(ls_root, ["dev-clean"]).cuts(cache)) == 3


def test_default_cache_dir_next_to_data(ls_root):
    LibriSpeechCorpus(ls_root, ["dev-clean"]).cuts()
    assert any(p.name.endswith(".jsonl.gz") for p in (ls_root / LOCAL_CACHE_NAME).iterdir())


def test_max_minutes_subset_is_deterministic_and_nested(ls_root, tmp_path):
    cache = tmp_path / "cache"
    full = LibriSpeechCorpus(ls_root, list(LS_SUBSETS)).cuts(cache)
    total = sum(c.duration for c in full)
    budget_min = 0.5 * total / 60

    def pick(minutes, seed):
        corpus = LibriSpeechCorpus(ls_root, list(LS_SUBSETS), max_minutes=minutes, seed=seed)
        return corpus.cuts(cache)

    half = pick(budget_min, seed=3)
    assert sum(c.duration for c in half) <= budget_min * 60
    assert half.is_lazy and 0 < len(half) < len(full)  # a subset manifest written next to the full one
    assert list(half.ids) == list(pick(budget_min, seed=3).ids) == sorted(half.ids)
    assert len(list(cache.glob("*.minutes-*.jsonl.gz"))) == 1  # written once, reused
    assert set(half.ids) <= set(pick(0.8 * total / 60, seed=3).ids)  # nested budgets
    assert {tuple(pick(budget_min, seed=s).ids) for s in range(4)} != {tuple(half.ids)}
    eager = subset_by_minutes(full.to_eager(), budget_min, seed=3)  # same subset from an in-memory CutSet
    assert not eager.is_lazy and list(eager.ids) == list(half.ids)
    with pytest.raises(ValueError, match="max_minutes"):
        subset_by_minutes(full, 1e-4, seed=0)
    with pytest.raises(ValueError, match="max_minutes"):
        LibriSpeechCorpus(ls_root, ["dev-clean"], max_minutes=0)


def test_corpora_build_from_class_path_config(ls_root):
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_argument("--corpus", type=Corpus)
    cfg = parser.parse_object(
        {"corpus": {"class_path": "datamodules.corpora.LibriSpeechCorpus",
                    "init_args": {"root": str(ls_root), "subsets": ["dev-clean"], "max_minutes": 1.5}}}
    )
    corpus = parser.instantiate_classes(cfg).corpus
    assert isinstance(corpus, LibriSpeechCorpus)
    assert corpus.subsets == ["dev-clean"] and corpus.max_minutes == 1.5
