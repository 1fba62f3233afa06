"""GradualUnfreezing on resume (issue 11, item 17): the log names the stage restored from the checkpoint,
not "training ['head'] from the start"."""

from __future__ import annotations

import logging

import pytorch_lightning as pl

from callbacks import GradualUnfreezing
from lightning_modules.finetune import FineTuneCTC
from tests.conftest import QUIET, TinyDataModule, char_tokenizer, make_tiny_backbone

SCHEDULE = {0: ["head"], 2: ["top:1"]}


def fit(tmp_path, max_steps, ckpt_path=None):
    module = FineTuneCTC(make_tiny_backbone(), char_tokenizer().to_dict(), dropout=0.0)
    saver = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=1)
    trainer = pl.Trainer(max_steps=max_steps, callbacks=[GradualUnfreezing(SCHEDULE, unit="step"), saver],
                         **{**QUIET, "enable_checkpointing": True})
    trainer.fit(module, datamodule=TinyDataModule(n_train=8, batch_size=2), ckpt_path=ckpt_path)


def test_resume_log_names_the_restored_stage(tmp_path, caplog, one_thread):
    fit(tmp_path, 3)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        fit(tmp_path, 4, ckpt_path=tmp_path / "last.ckpt")
    messages = [r.getMessage() for r in caplog.records if "GradualUnfreezing" in r.getMessage()]
    assert not any("from the start" in m for m in messages), messages
    (resumed,) = [m for m in messages if "resumed" in m]
    assert "[0, 2] applied" in resumed and "'head'" in resumed and "layer" in resumed
