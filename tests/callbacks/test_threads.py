"""IntraOpThreads sets torch's intra-op thread count when the trainer sets up."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from callbacks import IntraOpThreads
from lightning_modules import CTCModule
from tests.conftest import QUIET, TinyDataModule, make_tiny_backbone


def test_threads_set_before_validation():
    saved = torch.get_num_threads()
    seen = []

    class Probe(pl.Callback):
        def on_validation_start(self, trainer, pl_module):
            seen.append(torch.get_num_threads())

    try:
        torch.set_num_threads(2)
        dm = TinyDataModule()
        model = CTCModule(make_tiny_backbone(), dm.tokenizer.to_dict())
        pl.Trainer(**QUIET, callbacks=[IntraOpThreads(1), Probe()]).validate(model, datamodule=dm, verbose=False)
        assert seen == [1]
    finally:
        torch.set_num_threads(saved)
    with pytest.raises(ValueError, match="num_threads must be >= 1"):
        IntraOpThreads(0)
