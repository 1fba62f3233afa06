"""DomainAdaptationDataModule(target_labels="monitor"): unlabelled batches + transcripts for metrics only."""

from __future__ import annotations

from pathlib import Path

import pytest

from datamodules import CommonVoiceCorpus, DomainAdaptationDataModule, LibriSpeechCorpus
from datamodules.batch import LABEL_KEYS, check_batch
from tests.corpus_factory import make_commonvoice, make_librispeech, write_tsv

POISON = "Quiz 42 wøk!"  # out of the source vocabulary: encoding it as a label would fail


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("monitor")
    source = make_librispeech(base / "ls", {"train-clean-100": 12})
    target = make_commonvoice(base / "cv", "en", {"train": 6})
    tsv = target / "en" / "train.tsv"
    rows = [line.split("\t") for line in tsv.read_text().splitlines()[1:]]
    write_tsv(tsv, [r[:2] + [f"{POISON} {i}"] + r[3:] for i, r in enumerate(rows)])
    return source, target


def make_da(roots, target_labels) -> DomainAdaptationDataModule:
    ls, cv = roots
    return DomainAdaptationDataModule(LibriSpeechCorpus(ls, ["train-clean-100"]), CommonVoiceCorpus(cv, "en", "train"),
                                      target_labels=target_labels, max_duration=1.5, num_buckets=3, num_workers=0,
                                      cache_dir=str(ls / "cache"))


def test_monitor_batches_are_the_unlabelled_batches_plus_normalised_transcripts(roots):
    plain, monitored = make_da(roots, False), make_da(roots, "monitor")
    batches, watched = list(plain.train_dataloader()), list(monitored.train_dataloader())
    assert len(batches) == len(watched) > 0
    for b, w in zip(batches, watched):
        check_batch(w["target"], labels=False)  # no targets / target_lengths / texts: nothing a loss could use
        assert not set(LABEL_KEYS) & set(w["target"])
        assert w["target"]["ids"] == b["target"]["ids"] and (w["target"]["audio"] == b["target"]["audio"]).all()
        texts = w["target"]["monitor_texts"]
        assert len(texts) == len(w["target"]["ids"])
        assert set(texts) <= {monitored.tokenizer.normalize(f"{POISON} {i}") for i in range(6)}
        assert "monitor_texts" not in w["source"] and "monitor_texts" not in b["target"]
    assert monitored.describe() == plain.describe() == {"source": "LibriSpeech train-clean-100",
                                                        "target": "CommonVoice en/train (unlabelled)"}
    assert monitored.labelled_target_minutes == 0.0


def test_target_labels_setting_is_checked(roots):
    with pytest.raises(ValueError, match="'monitor'"):
        make_da(roots, "yes")
