"""ResultsTable: the before row is the starting model on every validation batch; after = best checkpoint."""

from __future__ import annotations

import copy

import pytorch_lightning as pl
import pytest
import torch
from callbacks.checkpointing import BestCheckpoint
from callbacks.results_table import ResultsTable, decoder_rows, format_table
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


def test_each_eval_decoder_gets_its_own_row_under_the_greedy_one():
    metrics = {"val/target/wer": 0.75, "val/target/cer": 0.5, "val_beam/target/wer": 0.5, "val_beam/target/cer": 0.25}
    assert decoder_rows("after", metrics) == [
        ("after", {"val/target/wer": 0.75, "val/target/cer": 0.5}),
        ("after, beam", {"val/target/wer": 0.5, "val/target/cer": 0.25})]
    assert decoder_rows("before", {"val/target/wer": 1.0}) == [("before", {"val/target/wer": 1.0})]


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
    best = BestCheckpoint("val/target/wer", dirpath=tmp_path, filename="best-{step}", auto_insert_metric_name=False)
    trainer = pl.Trainer(**{**QUIET, "enable_checkpointing": True}, max_steps=6, val_check_interval=2,
                         num_sanity_val_steps=0, callbacks=[best, table], default_root_dir=tmp_path)
    trainer.validate_loop.inference_mode = False  # as SpeechCLI.before_fit: fit reuses the metric objects
    trainer.validate(model, datamodule=dm, verbose=False)
    trainer.fit(model, datamodule=dm)

    assert table.before == pytest.approx(expected_before)
    assert set(table.before) == {"val/target/wer", "val/target/cer", "val/source/wer", "val/source/cer"}
    assert sorted(table.validations) == [2, 4, 6]
    label, step, after = table.after(trainer)
    assert (label, step) == ("best checkpoint", best.best_step) and best.best_model_path.endswith(f"best-{step}.ckpt")
    assert after["val/target/wer"] == pytest.approx(float(best.best_model_score))
    out = capsys.readouterr().out
    assert "before training (step 0)" in out and f"best checkpoint (step {step})" in out
    assert f"best checkpoint: {best.best_model_path}" in out and f"run:             {tmp_path}" in out


class ScriptedValidation(pl.LightningModule):
    """Logs scripted val/target/{wer,cer} per validation (no model): WER ties, CER decides."""

    def __init__(self, script: list[tuple[float, float]]) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.script, self.validations = script, 0

    def training_step(self, batch, batch_idx):
        return (self.weight * batch[0]).sum() ** 2

    def validation_step(self, batch, batch_idx):
        wer, cer = self.script[self.validations]
        self.log_dict({"val/target/wer": wer, "val/target/cer": cer})

    def on_validation_epoch_end(self) -> None:
        self.validations += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_after_row_is_the_validation_of_the_best_checkpoint_file(tmp_path, capsys):
    """WER ties at 1.0 in every validation; BestCheckpoint breaks the tie by CER (step 4), and the table names
    that same step and file (it used to name the first validation of the tie, step 2, next to best-4.ckpt)."""
    loader = torch.utils.data.DataLoader(torch.ones(2, 1), batch_size=1)
    model = ScriptedValidation([(1.0, 0.625), (1.0, 0.5), (1.0, 0.5625)])
    best = BestCheckpoint("val/target/wer", dirpath=tmp_path, filename="best-{step}", auto_insert_metric_name=False)
    table = ResultsTable()
    trainer = pl.Trainer(**{**QUIET, "enable_checkpointing": True}, max_steps=6, val_check_interval=2,
                         num_sanity_val_steps=0, callbacks=[best, table], default_root_dir=tmp_path)
    trainer.fit(model, train_dataloaders=loader, val_dataloaders=loader)

    assert best.best_step == 4 and best.best_model_path == str(tmp_path / "best-4.ckpt")
    assert table.after(trainer) == ("best checkpoint", 4, {"val/target/wer": 1.0, "val/target/cer": 0.5})
    out = capsys.readouterr().out
    assert "after: best checkpoint (step 4)" in out and f"best checkpoint: {tmp_path / 'best-4.ckpt'}" in out


def test_without_a_best_checkpoint_the_after_row_is_the_last_validation(tmp_path):
    loader = torch.utils.data.DataLoader(torch.ones(2, 1), batch_size=1)
    table = ResultsTable()
    trainer = pl.Trainer(**QUIET, max_steps=4, val_check_interval=2, num_sanity_val_steps=0, callbacks=[table],
                         default_root_dir=tmp_path)
    trainer.fit(ScriptedValidation([(0.5, 0.25), (0.75, 0.375)]), train_dataloaders=loader, val_dataloaders=loader)
    assert table.after(trainer) == ("last validation", 4, {"val/target/wer": 0.75, "val/target/cer": 0.375})


def test_best_step_travels_in_the_checkpoint_state():
    best = BestCheckpoint("val/target/wer")
    best.best_key, best.best_step = [1.0, 0.5, 2.0], 216
    restored = BestCheckpoint("val/target/wer")
    restored.load_state_dict(best.state_dict())
    assert (restored.best_key, restored.best_step) == ([1.0, 0.5, 2.0], 216)


def test_state_round_trip_keeps_the_start_of_a_resumed_run():
    table = ResultsTable(before=True)
    table.before, table.validations = {"val/target/wer": 0.9}, {12: {"val/target/wer": 0.4}}
    restored = ResultsTable(before=True)
    restored.load_state_dict(table.state_dict())
    assert (restored.before, restored.validations) == (table.before, table.validations)
