"""Headline metric: CER for languages written without spaces, in the checkpoint monitor and the summary."""

from __future__ import annotations

import pytest

from datamodules import ASRDataModule, CommonVoiceCorpus, DomainAdaptationDataModule, LibriSpeechCorpus
from datamodules.locales import headline_metric, monitored_metric, written_without_spaces


@pytest.mark.parametrize(("locale", "spaceless"), [
    ("ja", True), ("zh-CN", True), ("zh_TW", True), ("yue", True), ("th", True), ("JA", True),
    ("en", False), ("de", False), ("vi", False), (None, False),
])
def test_written_without_spaces(locale, spaceless):
    assert written_without_spaces(locale) is spaceless
    assert headline_metric(locale) == ("cer" if spaceless else "wer")


def test_monitored_metric_follows_the_target_language(tmp_path):
    source = ASRDataModule(train=LibriSpeechCorpus(tmp_path, ["train-clean-100"]),
                           val=LibriSpeechCorpus(tmp_path, ["dev-clean"]))
    assert source.val_languages == {"source": "en"} and monitored_metric(source) == "val/source/wer"
    ja = ASRDataModule(train=CommonVoiceCorpus(tmp_path, "ja", "train"), val=CommonVoiceCorpus(tmp_path, "ja", "dev"),
                       domain="target")
    assert monitored_metric(ja) == "val/target/cer"
    dann = DomainAdaptationDataModule(source_train=LibriSpeechCorpus(tmp_path, ["train-clean-100"]),
                                      target_train=CommonVoiceCorpus(tmp_path, "ja", "train"),
                                      val={"source": LibriSpeechCorpus(tmp_path, ["dev-clean"]),
                                           "target": CommonVoiceCorpus(tmp_path, "ja", "dev")})
    assert dann.val_languages == {"source": "en", "target": "ja"}
    assert monitored_metric(dann) == "val/target/cer"
    assert monitored_metric(ASRDataModule()) is None
