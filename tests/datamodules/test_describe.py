"""Datamodules describe their training data for run summaries and the comparison report."""

import pytest
import yaml
from jsonargparse import ArgumentParser

from datamodules import SpeechDataModule

EXPECTED = {
    "demo_source": ({"source": "LibriSpeech train-clean-100", "target": None}, 0.0),
    "demo_dann": ({"source": "LibriSpeech train-clean-100", "target": "CommonVoice en/train (unlabelled)"}, 0.0),
    "demo_target_subset": ({"source": None, "target": "CommonVoice en/train (≤2 min)"}, 2.0),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_describe_and_labelled_target_minutes(name):
    parser = ArgumentParser()
    parser.add_subclass_arguments(SpeechDataModule, "data")
    config = yaml.safe_load(open(f"experiments/data/{name}.yaml"))
    datamodule = parser.instantiate_classes(parser.parse_object({"data": config})).data
    described, minutes = EXPECTED[name]
    assert datamodule.describe() == described
    assert datamodule.labelled_target_minutes == pytest.approx(minutes, abs=0.05)
