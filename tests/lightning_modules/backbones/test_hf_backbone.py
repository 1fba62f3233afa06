"""``HFBackbone`` exercised like the torchaudio backbone: tiny Wav2Vec2 / HuBERT / WavLM saved with
``save_pretrained`` to a temp dir and loaded from that local path (no network)."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch

from callbacks import GradualUnfreezing
from lightning_modules import DANNCTC, FineTuneCTC, FrozenFeatureCTC, load_model
from lightning_modules.backbones import HFBackbone, build_backbone
from lightning_modules.backbones.masking import MASK_PRESETS
from tests.conftest import QUIET, TinyDataModule, char_tokenizer
from tests.corpus_factory import tone_speech

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

CONFIGS = {"wav2vec2": "Wav2Vec2Config", "hubert": "HubertConfig", "wavlm": "WavLMConfig"}
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,  # 64: channel span
            conv_dim=(32,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),  # 50 fps
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, feat_extract_norm="layer",
            do_stable_layer_norm=True, hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
            feat_proj_dropout=0.0, final_dropout=0.0, layerdrop=0.0)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, str]:
    """kind -> local directory written by ``save_pretrained`` (HF default masking: mask_time_prob 0.05)."""
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for kind, config_class in CONFIGS.items():
        torch.manual_seed(0)
        model = transformers.AutoModel.from_config(getattr(transformers, config_class)(**TINY))
        model.save_pretrained(root / kind)
        out[kind] = str(root / kind)
    return out


def loaded(path: str, **kwargs) -> HFBackbone:
    backbone = HFBackbone(path, **kwargs)
    backbone.load_pretrained()
    return backbone.eval()


@pytest.fixture(scope="module")
def batch():
    waves = [torch.from_numpy(tone_speech("the big dog", seed=1)), torch.from_numpy(tone_speech("cat", seed=2))]
    lengths = torch.tensor([len(w) for w in waves])
    return torch.nn.utils.rnn.pad_sequence(waves, batch_first=True), lengths


@pytest.mark.parametrize("kind", CONFIGS)
def test_local_model_shapes_padding_and_weights(saved, batch, kind):
    backbone = loaded(saved[kind])
    reference = transformers.AutoModel.from_pretrained(saved[kind]).eval()
    audio, lengths = batch
    with torch.no_grad():
        out = backbone(audio, lengths)
        frames = backbone.output_lengths(lengths)
        assert torch.equal(out.lengths, frames) and len(out.hidden_states) == backbone.num_layers == 3
        for h in out.hidden_states:
            assert h.shape == (2, int(frames.max()), 64) and h[1, int(frames[1]):].abs().sum() == 0
        for i in range(2):  # attention mask: valid frames do not depend on padding
            alone = backbone(audio[i:i + 1, :int(lengths[i])], lengths[i:i + 1])
            for h_pad, h_alone in zip(out.hidden_states, alone.hidden_states):
                torch.testing.assert_close(h_pad[i, :int(frames[i])], h_alone[0], atol=1e-4, rtol=1e-4)
        short = audio[1:, :int(lengths[1])]  # the pretrained weights: same outputs as the HF model itself
        from lightning_modules.backbones.base import masked_normalize
        theirs = reference(masked_normalize(short, lengths[1:]), output_hidden_states=True).hidden_states
        for mine, ref in zip(backbone(short, lengths[1:]).hidden_states, theirs):
            torch.testing.assert_close(mine, ref)
    groups = backbone.layer_groups()
    seen = [id(p) for _, module in groups for p in module.parameters()]
    assert len(seen) == len(set(seen)) == len(list(backbone.parameters()))
    assert [n for n, _ in groups] == ["feature_extractor", "feature_projection", "layer.0", "layer.1"]
    config = json.loads(json.dumps(backbone.config()))  # JSON-safe; rebuilds offline from the embedded config
    rebuilt = build_backbone({**config, "init_args": {**config["init_args"], "name_or_path": "/nonexistent"}})
    rebuilt.load_state_dict(backbone.state_dict())


def test_masking_goes_through_the_hf_config(saved, batch):
    audio, lengths = batch
    plain = loaded(saved["wav2vec2"], config_overrides={"mask_time_prob": 0.0, "mask_feature_prob": 0.0})
    assert plain.feature_masking() is None
    masked = loaded(saved["wav2vec2"], mask="100h")
    cfg = masked.hf_config
    assert (cfg.mask_time_prob, cfg.mask_time_length, cfg.mask_feature_length) == (0.5, 10, 64)
    assert masked.feature_masking() == MASK_PRESETS["100h"]
    default = loaded(saved["wav2vec2"])  # HF's own default: mask_time_prob 0.05 = p 0.005 (the trap)
    assert default.feature_masking().time_prob == pytest.approx(0.005)
    with torch.no_grad():
        for a, b in zip(plain(audio, lengths).hidden_states, masked(audio, lengths).hidden_states):
            assert torch.equal(a, b)  # eval: masking settings change nothing
        torch.manual_seed(0)
        trained = masked.train()(audio, lengths).hidden_states[-1]
    assert not torch.equal(trained, plain(audio, lengths).hidden_states[-1])  # training: masked


def fit(module, dm, tmp_path, steps=3, callbacks=()) -> pl.Trainer:
    trainer = pl.Trainer(max_steps=steps, num_sanity_val_steps=0, limit_val_batches=1, default_root_dir=tmp_path,
                         callbacks=list(callbacks), **QUIET)
    trainer.fit(module, datamodule=dm)
    return trainer


def test_fine_tune_with_unfreezing_and_checkpoint_round_trip(saved, tmp_path, batch):
    tok = char_tokenizer()
    module = FineTuneCTC(HFBackbone(saved["wav2vec2"], mask="10h"), tok.to_dict(),
                         freeze_feature_encoder=True, lr=3e-3, dropout=0.0)
    module.backbone.load_pretrained()
    before = {k: v.clone() for k, v in module.backbone.state_dict().items()}
    trainer = fit(module, TinyDataModule(n_train=8, batch_size=2), tmp_path, steps=4,
                  callbacks=[GradualUnfreezing({0: ["head"], 2: ["all"]}, unit="step")])
    after = module.backbone.state_dict()
    encoder = [k for k in before if k.startswith("model.feature_extractor.")]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)  # feature encoder pinned
    assert not torch.equal(before["model.encoder.layers.1.attention.q_proj.weight"],
                           after["model.encoder.layers.1.attention.q_proj.weight"])
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    trainer.save_checkpoint(tmp_path / "hf.ckpt")
    restored = load_model(tmp_path / "hf.ckpt")  # rebuilt from the checkpoint alone (embedded HF config)
    audio, lengths = batch
    module.eval()
    assert torch.equal(restored(audio, lengths)[0], module(audio, lengths)[0])


def test_frozen_features_and_dann(saved, tmp_path):
    tok = char_tokenizer()
    frozen = FrozenFeatureCTC(HFBackbone(saved["hubert"]), tok.to_dict(), lr=3e-3)
    frozen.backbone.load_pretrained()  # what fit's setup does; the comparison starts from the loaded weights
    before = {k: v.clone() for k, v in frozen.backbone.state_dict().items()}
    weights = frozen.featurizer.state_dict()["weights"].clone()
    fit(frozen, TinyDataModule(n_train=4, batch_size=2), tmp_path / "frozen", steps=2)
    assert all(torch.equal(before[k], v) for k, v in frozen.backbone.state_dict().items())
    assert not torch.equal(weights, frozen.featurizer.state_dict()["weights"])
    dann = DANNCTC(HFBackbone(saved["wavlm"]), tok.to_dict(), lambda_schedule="constant",
                   lambda_max=0.1)
    trainer = fit(dann, TinyDataModule(n_train=4, batch_size=2, dann=True, val_domains=("source", "target")),
                  tmp_path / "dann", steps=2)
    assert torch.isfinite(trainer.callback_metrics["train/domain_loss"])
    assert {"val/source/wer", "val/target/wer"} <= set(trainer.callback_metrics)


def test_adapters_on_hf_attention(saved):
    tok = char_tokenizer()
    FineTuneCTC(HFBackbone(saved["wav2vec2"]), tok.to_dict(), adapter={"kind": "lora", "targets": ["q", "v"]})
    with pytest.raises(ValueError, match="without calling"):  # HF WavLM: fused multi_head_attention_forward
        FineTuneCTC(HFBackbone(saved["wavlm"]), tok.to_dict(), adapter={"kind": "lora", "targets": ["q"]})
