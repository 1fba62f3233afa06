"""Few-shot test results reach summary.json and W&B; throughput counts meta-learning batches."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import WandbLogger

from callbacks import RunSummary, WandbAdaptationCurve
from callbacks.nonfinite import batch_ids
from callbacks.throughput import batch_audio
from lightning_modules.ctc import CTCModule
from tests.conftest import QUIET, char_tokenizer, make_tiny_backbone
from tests.lightning_modules.test_adaptation import PROTOCOL, Episodes, episode


def test_batch_audio_counts_every_support_and_query():
    tok = char_tokenizer()
    meta_batch = [episode(tok, 3), episode(tok, 0)]  # k = 3 and k = 0 (no support)
    total, n = batch_audio(meta_batch)
    expected = sum(int(e[part]["lengths"].sum()) for e in meta_batch for part in ("support", "query") if e[part])
    assert int(total) == expected and n == 3 + 3 + 3


def test_nonfinite_guard_names_every_support_and_query_utterance_of_a_meta_batch():
    tok = char_tokenizer()
    meta_batch = [episode(tok, 3), episode(tok, 0)]
    expected = [i for e in meta_batch for part in ("query", "support") if e[part] for i in e[part]["ids"]]
    assert batch_ids(meta_batch) == expected and len(expected) == 3 + 3 + 3


def fewshot_test(tmp_path, callbacks, logger=False) -> pl.Trainer:
    tok = char_tokenizer()
    trainer = pl.Trainer(**{**QUIET, "logger": logger}, default_root_dir=tmp_path, callbacks=callbacks)
    loaders = {f"fewshot/k{k}": [episode(tok, k, PROTOCOL)] for k in (0, 1, 3)}
    trainer.test(CTCModule(make_tiny_backbone(0), tok.to_dict(), dropout=0.0), datamodule=Episodes(loaders),
                 verbose=False)
    return trainer


def test_summary_gets_the_test_results_and_keeps_the_fit_entries(tmp_path, one_thread):
    fewshot_test(tmp_path, [RunSummary()])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "tested" and summary["method"] == "CTCModule"
    assert set(summary["test"]) == {f"test/fewshot/k{k}/{m}" for k in (0, 1, 3) for m in ("wer", "cer", "loss")}
    (tmp_path / "summary.json").write_text(json.dumps({"status": "finished", "best": {"val/target/wer": 0.5}}))
    fewshot_test(tmp_path, [RunSummary()])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["best"] == {"val/target/wer": 0.5}
    assert summary["test"]["test/fewshot/k3/wer"] >= 0.0


def test_adaptation_curve_is_a_wandb_table(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var, sub in (("WANDB_DATA_DIR", "data"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_CONFIG_DIR", "config")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="speechxfer-test")
    try:
        trainer = fewshot_test(tmp_path, [WandbAdaptationCurve()], logger)
    finally:
        logger.experiment.finish()
    run = next((tmp_path / "wandb").glob("offline-run-*"))
    tables = list((run / "files" / "media" / "table").rglob("*.table.json"))
    curve = next(json.loads(t.read_text()) for t in tables if "curve_table" in t.name)
    assert curve["columns"] == ["k", "wer", "cer"] and [row[0] for row in curve["data"]] == [0, 1, 3]
    metrics = trainer.callback_metrics
    assert [row[1] for row in curve["data"]] == pytest.approx(
        [float(metrics[f"test/fewshot/k{k}/wer"]) for k in (0, 1, 3)])
    assert torch.isfinite(metrics["test/fewshot/k3/loss"])
