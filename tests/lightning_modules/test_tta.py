"""Test-time adaptation (SUTA): weights restored bit for bit, objective lowered, per-utterance, backbones, CLI."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from callbacks import RunSummary
from callbacks.tta import TestTimeAdaptation
from lightning_modules import CTCModule, FrozenFeatureCTC
from lightning_modules.backbones import CheckpointBackbone, ScratchEncoder, TorchaudioBackbone
from lightning_modules.tta import TestTimeAdapter, TTASettings, adaptable_parameters, suta_objective
from tests.conftest import QUIET, TinyDataModule, make_tiny_backbone, tone_batch

pytestmark = pytest.mark.usefixtures("one_thread")

SUTA = TTASettings(method="suta", steps=4, lr=3e-3)


def tiny_model(tokenizer, **kwargs) -> CTCModule:
    torch.manual_seed(0)
    return CTCModule(make_tiny_backbone(), tokenizer.to_dict(), dropout=0.0, **kwargs).eval()


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class RecordingAdapter(TestTimeAdapter):
    """Records, after each group, whether the weights equal the originals and the adapted log-probs."""

    def __init__(self, settings: TTASettings, original: dict[str, torch.Tensor]) -> None:
        super().__init__(settings)
        self.original, self.restored, self.outputs = original, [], []

    def adapt_group(self, model, params, audio, lengths):
        out = super().adapt_group(model, params, audio, lengths)
        now = model.state_dict()
        self.restored.append(all(torch.equal(now[k], v) for k, v in self.original.items()))
        self.outputs.append(out[0])
        return out


def test_weights_are_restored_bit_for_bit_after_each_utterance(tokenizer):
    model = tiny_model(tokenizer)
    batch = tone_batch(["the big dog", "cat", "a red box"], tokenizer, shift=0.5, seed=3)
    original = state(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    with torch.inference_mode():  # as in Lightning's test / predict loops
        plain, _ = model(batch["audio"], batch["lengths"])
        adapter = RecordingAdapter(SUTA, original)
        adapted, lengths = adapter(model, batch["audio"], batch["lengths"])
    assert adapter.restored == [True, True, True]
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters()) and not model.training
    valid = lengths[1]
    assert not torch.equal(adapted[1, :valid], plain[1, :valid]), "the decoded output is the adapted model's"
    assert adapter.stats.utterances == 3 and adapter.stats.groups == 3
    assert adapter.stats.audio_seconds == pytest.approx(float(batch["lengths"].sum()) / 16000)
    assert adapter.stats.extra_seconds_per_audio_second > 0


def test_adaptation_lowers_the_objective_it_minimises(tokenizer):
    model = tiny_model(tokenizer)
    batch = tone_batch(["the big dog", "a red box"], tokenizer, shift=0.5, seed=5)
    adapter = TestTimeAdapter(TTASettings(method="suta", steps=6, lr=3e-3))
    adapter(model, batch["audio"], batch["lengths"])
    assert adapter.stats.objective_after < adapter.stats.objective_before
    with torch.no_grad():  # and the model itself is back to the unadapted objective
        log_probs, lengths = model(batch["audio"], batch["lengths"])
        first = suta_objective(log_probs[:1, : lengths[0]], lengths[:1], 0.3, 2.5)
    second = TestTimeAdapter(TTASettings(method="suta", steps=1, lr=3e-3))
    second(model, batch["audio"][:1], batch["lengths"][:1])
    assert second.stats.objective_before == pytest.approx(float(first), rel=1e-5)


def test_deterministic_and_per_utterance_independent_of_batching(tokenizer):
    model = tiny_model(tokenizer)
    batch = tone_batch(["the big dog", "cat", "a red box"], tokenizer, shift=0.5, seed=3)
    together, lengths = TestTimeAdapter(SUTA)(model, batch["audio"], batch["lengths"])
    again, _ = TestTimeAdapter(SUTA)(model, batch["audio"], batch["lengths"])
    assert torch.equal(together, again)
    for i, n in enumerate(lengths.tolist()):  # one utterance alone, unpadded
        alone, _ = TestTimeAdapter(SUTA)(model, batch["audio"][i:i + 1, : batch["lengths"][i]], batch["lengths"][i:i + 1])
        torch.testing.assert_close(together[i, :n], alone[0, :n], rtol=1e-4, atol=1e-5)


def test_objective_uses_valid_nonblank_frames_for_entropy():
    log_probs = torch.tensor([[0.1, 0.8, 0.1], [0.9, 0.05, 0.05], [0.2, 0.2, 0.6]]).log()[None]
    padded = torch.cat([log_probs, torch.tensor([[[0.05, 0.9, 0.05]]]).log()], dim=1)  # a padded frame
    entropy_only = suta_objective(log_probs, torch.tensor([3]), em_weight=1.0, temperature=1.0)
    probs = log_probs.exp()[0]
    entropies = -(probs * probs.log()).sum(-1)
    torch.testing.assert_close(entropy_only, entropies[[0, 2]].mean())  # frame 1 is blank
    torch.testing.assert_close(suta_objective(padded, torch.tensor([3]), 1.0, 1.0), entropy_only)
    torch.testing.assert_close(suta_objective(padded, torch.tensor([3]), 0.0, 1.0),
                               suta_objective(log_probs, torch.tensor([3]), 0.0, 1.0))


# ------------------------------------------------------------------ which parameters adapt
def names(model: nn.Module, params: list[nn.Parameter]) -> set[str]:
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_default_parameters_per_backbone_type(tokenizer, tmp_path):
    conformer = tiny_model(tokenizer)
    chosen = names(conformer, adaptable_parameters(conformer, "norm+frontend"))
    assert {"backbone.subsample.0.weight", "backbone.input_proj.0.weight"} <= chosen
    assert {"backbone.layers.1.final_layer_norm.weight", "backbone.layers.0.ffn1.sequential.0.bias",
            "backbone.layers.0.conv_module.sequential.3.weight"} <= chosen  # LayerNorms, ChannelLayerNorm
    assert not {"backbone.layers.0.ffn1.sequential.1.weight", "backbone.layers.0.self_attn.in_proj_weight",
                "head.proj.weight"} & chosen  # no linear / attention / output weights
    assert names(conformer, adaptable_parameters(conformer, "all")) == {n for n, _ in conformer.named_parameters()}

    bilstm = CTCModule(ScratchEncoder(n_mels=40, hidden=32, num_layers=1, kind="bilstm", proj_norm=False), tokenizer.to_dict())
    assert names(bilstm, adaptable_parameters(bilstm, "norm+frontend")) == \
        {n for n, _ in bilstm.named_parameters() if n.startswith(("backbone.subsample", "backbone.input_proj"))}
    with pytest.raises(ValueError, match="selects no parameter"):
        adaptable_parameters(bilstm, "norm")

    overrides = {"encoder_num_layers": 1, "encoder_embed_dim": 32, "encoder_num_heads": 2,
                 "encoder_ff_interm_features": 64, "encoder_pos_conv_kernel": 16, "encoder_pos_conv_groups": 4,
                 "extractor_conv_layer_config": [[32, 10, 5], [32, 3, 2]]}
    w2v2 = CTCModule(TorchaudioBackbone("WAV2VEC2_BASE", config_overrides=overrides), tokenizer.to_dict())
    chosen = names(w2v2, adaptable_parameters(w2v2, "frontend"))
    assert chosen == {n for n, _ in w2v2.named_parameters()
                      if n.startswith(("backbone.model.feature_extractor.", "backbone.model.encoder.feature_projection."))}
    norms = names(w2v2, adaptable_parameters(w2v2, "norm"))
    assert "backbone.model.encoder.transformer.layers.0.layer_norm.weight" in norms
    assert "backbone.model.feature_extractor.conv_layers.0.layer_norm.weight" in norms  # GroupNorm

    trainer = pl.Trainer(max_steps=1, limit_val_batches=0, **QUIET)
    trainer.fit(conformer.train(), datamodule=TinyDataModule(tokenizer))
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    wrapped = CTCModule(CheckpointBackbone(str(tmp_path / "c.ckpt")), tokenizer.to_dict())
    assert names(wrapped, adaptable_parameters(wrapped, "norm+frontend")) == \
        names(conformer, adaptable_parameters(conformer, "norm+frontend"))


def test_a_frozen_backbone_asks_for_params_all(tokenizer):
    model = FrozenFeatureCTC(make_tiny_backbone(), tokenizer.to_dict()).eval()
    batch = tone_batch(["cat"], tokenizer)
    with pytest.raises(ValueError, match="params all"):
        TestTimeAdapter(SUTA)(model, batch["audio"], batch["lengths"])
    out, _ = TestTimeAdapter(TTASettings(method="suta", steps=1, params="all"))(model, batch["audio"], batch["lengths"])
    assert torch.isfinite(out).all()


# ------------------------------------------------------------------ in a Trainer
def test_callback_adapts_lightning_test_and_logs_the_cost(tokenizer):
    model = tiny_model(tokenizer)
    dm = TinyDataModule(tokenizer, val_domains=("source", "target"))
    trainer = pl.Trainer(callbacks=[TestTimeAdaptation(SUTA)], **QUIET)
    original = state(model)
    adapted = {k: v for per_loader in trainer.test(model, datamodule=dm, verbose=False) for k, v in per_loader.items()}
    plain = {k: v for per_loader in pl.Trainer(**QUIET).test(model, datamodule=dm, verbose=False)
             for k, v in per_loader.items()}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in original.items())
    assert model.test_time_adaptation is None, "detached after the run"
    assert adapted["test/tta/utterances"] == 8 and adapted["test/tta/extra_s_per_audio_s"] > 0
    assert adapted["test/tta/objective_after"] < adapted["test/tta/objective_before"]
    assert adapted["test/target/loss"] != plain["test/target/loss"]
    with pytest.raises(ValueError, match="not to fit"):
        pl.Trainer(max_steps=1, callbacks=[TestTimeAdaptation(SUTA)], **QUIET).fit(model, datamodule=dm)


def test_the_cost_is_in_the_run_summary_of_the_test_run(tokenizer, tmp_path):
    """``summary.json`` of a test run: test metrics + ``"tta"`` (settings and cost); a fit summary is kept."""
    model, dm = tiny_model(tokenizer), TinyDataModule(tokenizer, val_domains=("source", "target"))
    quiet = {**QUIET, "logger": False}
    pl.Trainer(callbacks=[TestTimeAdaptation(SUTA), RunSummary()], default_root_dir=tmp_path / "alone",
               **quiet).test(model, datamodule=dm, verbose=False)
    alone = json.loads((tmp_path / "alone" / "summary.json").read_text())
    assert alone["status"] == "tested" and alone["method"] == "CTCModule"
    assert alone["tta"]["settings"]["method"] == "suta" and alone["tta"]["settings"]["steps"] == 4 and alone["tta"]["utterances"] == 8
    assert alone["tta"]["extra_s_per_audio_s"] == pytest.approx(alone["tta"]["adapt_s"] / alone["tta"]["audio_s"])
    assert alone["tta"]["extra_s_per_audio_s"] > 0
    assert alone["test"]["test/tta/extra_s_per_audio_s"] == pytest.approx(alone["tta"]["extra_s_per_audio_s"])
    assert {"test/source/wer", "test/target/cer"} <= set(alone["test"])

    fitted = tmp_path / "fitted"
    fitted.mkdir()
    (fitted / "summary.json").write_text(json.dumps({"status": "finished", "best": {"val/target/wer": {"value": 0.5}}}))
    pl.Trainer(callbacks=[TestTimeAdaptation(SUTA), RunSummary()], default_root_dir=fitted,
               **quiet).test(model, datamodule=dm, verbose=False)
    kept = json.loads((fitted / "summary.json").read_text())
    assert kept["status"] == "finished" and kept["best"] == {"val/target/wer": {"value": 0.5}}
    assert kept["tta"]["utterances"] == 8 and "test/target/wer" in kept["test"]
