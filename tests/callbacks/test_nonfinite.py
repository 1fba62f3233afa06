"""Nothing trains on NaN (issue 11, item 1): NaN/inf audio is bad input; a non-finite loss stops the run
naming the batch (or, opted in, skips the step and counts it); no checkpoint ever holds non-finite weights.

End to end through ``speechxfer fit`` (in-process) on the tiny quickstart (tests/cli_helpers.py)."""

from __future__ import annotations

import json

import pytest
import torch

from callbacks.nonfinite import non_finite_grads
from tests.cli_helpers import callbacks_yaml, fit_in_process, tiny_quickstart
from tests.corpus_factory import write_non_finite_wav

pytestmark = pytest.mark.slow


def finite_weights(ckpt) -> bool:
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    return all(bool(v.isfinite().all()) for v in state.values() if v.is_floating_point())


@pytest.fixture
def nan_corpus_config(tmp_path):
    config = tiny_quickstart(tmp_path / "work")
    flac = sorted((tmp_path / "work/tiny_corpus/LibriSpeech/train-clean-100").rglob("*.flac"))[0]
    write_non_finite_wav(flac, "the cat sat")  # a float WAV with NaN/inf, named .flac
    return config, flac


def test_nan_audio_is_a_clear_error(nan_corpus_config, tmp_path, capsys):
    config, flac = nan_corpus_config
    code = fit_in_process(["--config", config, "--runs_dir", tmp_path / "runs", "--run_name", "r",
                           "--trainer.max_steps", 4, "--wandb", "false"], tmp_path)
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == f"speechxfer: bad input: {flac}" and "non_finite_audio" in err[1] and len(err) <= 5
    assert not (tmp_path / "runs/quickstart/r/checkpoints").exists()


def test_nan_audio_is_a_counted_skip_and_the_model_stays_finite(nan_corpus_config, tmp_path):
    config, flac = nan_corpus_config
    code = fit_in_process(["--config", config, "--runs_dir", tmp_path / "runs", "--run_name", "r",
                           "--trainer.max_steps", 4, "--wandb", "false",
                           "--data.init_args.train.init_args.on_bad_input", "skip"], tmp_path)
    run = tmp_path / "runs/quickstart/r"
    assert code == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["data_report"]["scan"]["train"]["skipped"] == {"non_finite_audio": 1}
    assert finite_weights(run / "checkpoints/last.ckpt")
    assert all(finite_weights(p) for p in (run / "checkpoints").glob("best-*.ckpt"))


def test_non_finite_loss_stops_the_run_naming_the_batch(tmp_path, capsys):
    config = tiny_quickstart(tmp_path / "work")
    poison = callbacks_yaml(tmp_path / "poison.yaml", [{"class_path": "tests.cli_helpers.PoisonBatch",
                                                        "init_args": {"step": 3}}])
    code = fit_in_process(["--config", config, "--config", poison, "--runs_dir", tmp_path / "runs", "--run_name", "r",
                           "--trainer.max_steps", 6, "--checkpoint_every_n_steps", 1, "--wandb", "false"], tmp_path)
    run = tmp_path / "runs/quickstart/r"
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("speechxfer: non-finite gradient") and "global step 3" in err[0]
    assert "batch utterances: " in err[0] and len(err) <= 5
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "NonFiniteError" in summary["error"]
    last = torch.load(run / "checkpoints/last.ckpt", weights_only=True)
    assert last["global_step"] == 3 and finite_weights(run / "checkpoints/last.ckpt")  # the last good state


def test_skip_policy_skips_and_counts_the_step(tmp_path):
    config = tiny_quickstart(tmp_path / "work")
    callbacks = callbacks_yaml(tmp_path / "cb.yaml", [
        {"class_path": "tests.cli_helpers.PoisonBatch", "init_args": {"step": 3}},
        {"class_path": "callbacks.NonFiniteGuard", "init_args": {"policy": "skip"}}])
    code = fit_in_process(["--config", config, "--config", callbacks, "--runs_dir", tmp_path / "runs",
                           "--run_name", "r", "--trainer.max_steps", 6, "--wandb", "false"], tmp_path)
    run = tmp_path / "runs/quickstart/r"
    assert code == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["nonfinite"]["skipped_steps"] == 1 and "global step 3" in summary["nonfinite"]["first"]
    assert summary["global_step"] == 6 and finite_weights(run / "checkpoints/last.ckpt")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_grads_names_the_parameters(bad):
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    a.grad, b.grad = torch.ones(3), torch.tensor([1.0, bad])
    assert non_finite_grads([("a", a), ("b", b)]) == ["b"]
    b.grad = torch.ones(2)
    assert non_finite_grads([("a", a), ("b", b)]) == []
