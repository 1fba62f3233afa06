"""Decode-only sweeps: the model runs once per (checkpoint, data), trials only decode cached log-probs."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import pytorch_lightning as pl
import torch
import yaml
from torchmetrics.functional.text import char_error_rate, word_error_rate

from experiments import sweep
from experiments.decode_sweep import validation_loaders
from experiments.lm import build_lm, load_datamodule, training_texts
from lightning_modules import CTCModule
from lightning_modules.decoding import BeamSearchDecoder, DecoderConfig
from tests.conftest import QUIET, make_tiny_backbone
from tests.experiments.test_lm import data_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """A data config (tiny LibriSpeech), a checkpoint of a tiny model (random head), an LM + lexicon, a spec."""
    tmp = tmp_path_factory.mktemp("decode_sweep")
    data = data_config(tmp)
    dm = load_datamodule(data)
    pl.seed_everything(0)
    model = CTCModule(make_tiny_backbone(), dm.tokenizer.to_dict(), lr=1e-2)
    trainer = pl.Trainer(max_steps=2, limit_val_batches=0, use_distributed_sampler=False, **QUIET)
    trainer.fit(model, datamodule=dm)
    generator = torch.Generator().manual_seed(0)
    for param in model.head.parameters():  # a random head: transcripts depend on the audio, not only blanks
        param.data = torch.randn(param.shape, generator=generator)
    trainer.save_checkpoint(tmp / "model.ckpt")
    build_lm([dm.tokenizer.normalize(t) for t in training_texts(dm)], dm.tokenizer, 2, tmp / "lm", ["train"])
    spec = {"config": str(data), "metric": "val/source/wer", "n_trials": 3, "sampler": {"type": "random", "seed": 0},
            "decode": {"ckpt": str(tmp / "model.ckpt"), "decoder": {
                "beam_size": 4, "lexicon": str(tmp / "lm" / "lexicon.txt"), "lexicon_only": False,
                "lm": str(tmp / "lm" / "lm.arpa")}},
            "parameters": {"lm_weight": {"distribution": "uniform", "min": 0.0, "max": 2.0},
                           "word_score": {"distribution": "uniform", "min": -1.0, "max": 1.0}}}
    (tmp / "spec.yaml").write_text(yaml.safe_dump(spec))
    return {"tmp": tmp, "data": data, "spec": tmp / "spec.yaml", "raw": spec}


def test_trials_decode_cached_log_probs_without_rerunning_the_model(setup, monkeypatch, capsys):
    tmp, runs = setup["tmp"], setup["tmp"] / "runs"
    calls = []
    forward = CTCModule.forward
    monkeypatch.setattr(CTCModule, "forward", lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))
    assert sweep.main([str(setup["spec"]), "--runs-dir", str(runs)]) == 0
    batches = sum(1 for _ in validation_loaders(load_datamodule(setup["data"]))["source"])
    assert len(calls) == batches  # once over the validation set, not once per trial
    assert "computed" in capsys.readouterr().out

    def refuse(self, *args, **kwargs):
        raise AssertionError("a decode-only trial ran the model")

    monkeypatch.setattr(CTCModule, "forward", refuse)
    assert sweep.main([str(setup["spec"]), "--runs-dir", str(runs), "--n-trials", "2"]) == 0
    out = capsys.readouterr().out
    assert "reused" in out and "--model.init_args.eval_decoders" in out and "--lm-weight" in out
    study = optuna.load_study(study_name="spec", storage=f"sqlite:///{runs / 'sweeps' / 'spec.db'}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 5
    assert len(list((runs / "decode_cache").glob("*.pt"))) == 1

    # a trial's value is what decoding the model's own log-probs with its settings gives
    monkeypatch.setattr(CTCModule, "forward", forward)
    trial = study.trials[0]
    model = CTCModule.load_from_checkpoint(tmp / "model.ckpt", backbone=make_tiny_backbone()).eval()
    decoder = BeamSearchDecoder(model.tokenizer, DecoderConfig(**{**setup["raw"]["decode"]["decoder"], **trial.params}))
    hyps, refs = [], []
    with torch.no_grad():
        for batch in validation_loaders(load_datamodule(setup["data"]))["source"]:
            log_probs, lengths = model(batch["audio"], batch["lengths"])
            hyps += model.decode(log_probs, lengths, decoder)
            refs += batch["texts"]
    assert trial.value == pytest.approx(float(word_error_rate(hyps, refs)), abs=1e-6)
    assert trial.user_attrs["metrics"]["val/source/wer"] == trial.value
    assert trial.user_attrs["metrics"]["val/source/cer"] == pytest.approx(float(char_error_rate(hyps, refs)), abs=1e-6)
    assert all(hyps)


@pytest.mark.parametrize("change, message", [
    ({"parameters": {"lm_wieght": {"distribution": "uniform", "min": 0.0, "max": 1.0}}}, "lm_wieght"),
    ({"metric": "test/source/wer"}, "val/<domain>/<wer|cer>"),
    ({"decode": {"ckpt": "missing.ckpt"}}, "missing.ckpt: no such checkpoint"),
])
def test_bad_decode_specs_are_clear_errors(setup, tmp_path, capsys, change, message):
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump({**setup["raw"], **change}))
    assert sweep.main([str(spec), "--runs-dir", str(tmp_path / "runs")]) == 2
    assert message in capsys.readouterr().out


def test_the_shipped_decode_spec_is_valid_up_to_its_checkpoint(tmp_path, monkeypatch):
    from experiments.decode_sweep import check_decode_spec
    from experiments.sweep_spec import SweepSpecError, load_spec

    repo = Path(__file__).resolve().parents[2]
    (tmp_path / "experiments").symlink_to(repo / "experiments")  # the spec's config, but not the user's runs/
    monkeypatch.chdir(tmp_path)  # its paths are cwd-relative: a runs/quickstart/latest in the checkout is not read
    spec = load_spec(repo / "experiments" / "sweeps" / "quickstart_decode.yaml")
    with pytest.raises(SweepSpecError, match="runs/quickstart/latest/checkpoints/last.ckpt: no such checkpoint"):
        check_decode_spec(spec)  # every other field checked first; the checkpoint is trained by the user
