"""ResultsTable: the before row is the starting model on every validation batch; after = best checkpoint."""

from __future__ import annotations

import copy

import pytorch_lightning as pl
import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from callbacks.results_table import ResultsTable, format_table
from lightning_modules import CTCModule
from tests.conftest import QUIET, TinyDataModule, make_tiny_backbone


def test_format_table_columns_per_domain():
    table = format_table([("before", {"val/target/wer": 0.5, "val/target/cer": 0.25}),
                          ("after", {"val/target/wer": 0.125, "val/target/cer": 0.0625, "val/source/wer": 1.0})],
                         ["target", "source"])
    lines = table.splitlines()
    assert lines[0].split("|")[1:-1] == [" model  ", " target WER ", " target CER ", " source WER ", " source CER "]
    assert [c.strip() for c in lines[2].split("|")[1:-1]] == ["before", "50.0", "25.0", "-", "-"]
    assert [c.strip() for c in lines[3].split("|")[1:-1]] == ["after", "12.5", "6.2", "100.0", "-"]


def module(datamodule: TinyDataModule) -> CTCModule:
    return CTCModule(make_tiny_backbone(), datamodule.tokenizer.to_dict(),
                     lr=3e-3)


def test_before_is_the_starting_model_and_after_the_best_validation(tmp_path, one_thread, capsys):
    torch.manual_seed(0)
    dm = TinyDataModule(n_train=8, batch_size=4, val_domains=("target", "source"), n_val_batches=2)
    model = module(dm)
    reference = pl.Trainer(**QUIET).validate(copy.deepcopy(model), datamodule=dm, verbose=False)
    expected_before = {k: v for d in reference for k, v in d.items() if k.endswith(("/wer", "/cer"))}

    table = ResultsTable(before=True)
    best = ModelCheckpoint(dirpath=tmp_path, monitor="val/target/wer", mode="min", filename="best-{step}")
    trainer = pl.Trainer(**{**QUIET, "enable_checkpointing": True}, max_steps=6, val_check_interval=2,
                         num_sanity_val_steps=0, callbacks=[best, table], default_root_dir=tmp_path)
    trainer.validate_loop.inference_mode = False  # as SpeechCLI.before_fit: fit reuses the metric objects
    trainer.validate(model, datamodule=dm, verbose=False)
    trainer.fit(model, datamodule=dm)

    assert table.before == pytest.approx(expected_before)
    assert set(table.before) == {"val/target/wer", "val/target/cer", "val/source/wer", "val/source/cer"}
    assert table.best_step == int(best.best_model_path.rsplit("best-step=", 1)[1].split(".")[0])
    assert table.best["val/target/wer"] == pytest.approx(float(best.best_model_score))
    out = capsys.readouterr().out
    assert "before training (step 0)" in out and f"best checkpoint (step {table.best_step})" in out
    assert f"best checkpoint: {best.best_model_path}" in out and f"run:             {tmp_path}" in out


def test_state_round_trip_keeps_the_start_of_a_resumed_run():
    table = ResultsTable(before=True)
    table.before, table.best, table.best_step = {"val/target/wer": 0.9}, {"val/target/wer": 0.4}, 12
    restored = ResultsTable(before=True)
    restored.load_state_dict(table.state_dict())
    assert (restored.before, restored.best, restored.best_step) == (table.before, table.best, 12)
