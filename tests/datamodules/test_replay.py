"""Source replay: the training epoch is a lhotse mux of the target and a weighted slice of the source."""

from __future__ import annotations

import pytest

from datamodules import ASRDataModule, LibriSpeechCorpus
from tests.corpus_factory import make_librispeech


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("replay")
    source = make_librispeech(base / "source", {"train-clean-100": 150, "dev-clean": 4})
    # target: other speaker/chapter ids (second subset slot), a shifted voice
    target = make_librispeech(base / "target", {"unused": 0, "train-other-500": 60, "dev-other": 4}, shift=0.5,
                              seed=7)
    return source, target


def target_dm(roots, ratio: float) -> ASRDataModule:
    source, target = roots
    return ASRDataModule(
        train=LibriSpeechCorpus(target, ["train-other-500"]), domain="target",
        val={"target": LibriSpeechCorpus(target, ["dev-other"]), "source": LibriSpeechCorpus(source, ["dev-clean"])},
        replay=LibriSpeechCorpus(source, ["train-clean-100"]), replay_ratio=ratio,
        max_duration=3.0, num_buckets=3, num_workers=0, on_bad_input="skip", cache_dir=str(source / "cache"))


@pytest.mark.parametrize("ratio", [0.2, 0.5])
def test_replay_mix_ratio_over_an_epoch(roots, ratio):
    dm = target_dm(roots, ratio)
    target_ids = {c.id for c in LibriSpeechCorpus(roots[1], ["train-other-500"]).cuts(str(roots[0] / "cache"))}
    dm.train_dataloader(rank=0, world_size=1)
    batches = list(dm.train_sampler)  # one epoch of cut batches (metadata only)
    seconds = {"source": 0.0, "target": 0.0}
    halves = [dict(seconds), dict(seconds)]
    for i, batch in enumerate(batches):
        for cut in batch:
            side = "target" if cut.id in target_ids else "source"
            seconds[side] += cut.duration
            halves[2 * i // len(batches)][side] += cut.duration
    assert seconds["target"] == pytest.approx(sum(c.duration for c in LibriSpeechCorpus(
        roots[1], ["train-other-500"]).cuts(str(roots[0] / "cache"))), rel=0.05)  # the whole target, once
    share = seconds["source"] / (seconds["source"] + seconds["target"])
    assert share == pytest.approx(ratio, abs=0.04)
    for half in halves:  # interleaved over the epoch, not appended
        assert half["source"] / (half["source"] + half["target"]) == pytest.approx(ratio, abs=0.15)
    assert dm.labelled_target_minutes == pytest.approx(seconds["target"] / 60, rel=0.05)
    assert f"{100 * ratio:g} % replay of LibriSpeech" in dm.describe()["target"]
    assert dm.val_domains == ["target", "source"]


def test_replay_needs_labels(roots):
    with pytest.raises(ValueError, match="replay needs labelled training"):
        ASRDataModule(train=LibriSpeechCorpus(roots[1], ["train-other-500"]), train_labels=False,
                      replay=LibriSpeechCorpus(roots[0], ["train-clean-100"]))
