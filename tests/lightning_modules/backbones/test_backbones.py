"""Backbones: shapes/lengths, padding invariance, layer groups, weights round trips, configs."""

from __future__ import annotations

import json
import sys
import urllib.error

import pytest
import torch
import torch.nn.functional as F
import torchaudio.pipelines._wav2vec2.utils as ta_utils

from lightning_modules.backbones import (
    CheckpointBackbone,
    HFBackbone,
    ScratchEncoder,
    TorchaudioBackbone,
    build_backbone,
    masked_normalize,
    save_backbone_weights,
)
from lightning_modules.backbones.base import file_sha1
from tests.corpus_factory import tone_speech

SMALL_CNN = [[32, 10, 5], [32, 3, 2], [32, 3, 2], [32, 3, 2], [32, 3, 2], [32, 2, 2], [32, 2, 2]]  # 320x, 50 fps


# Tiny models run fastest single-threaded, and other test runs share the CPU cores.
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(extractor_mode: str = "layer_norm", **extra) -> dict:
    return {
        "encoder_num_layers": 2, "encoder_embed_dim": 32, "encoder_num_heads": 2,
        "encoder_ff_interm_features": 64, "extractor_conv_layer_config": SMALL_CNN,
        "encoder_pos_conv_kernel": 16, "encoder_pos_conv_groups": 4, "extractor_mode": extractor_mode, **extra,
    }


BUILDERS = {
    "wav2vec2_base": lambda: TorchaudioBackbone("WAV2VEC2_BASE", config_overrides=tiny()),
    "xlsr53_preln_normalized": lambda: TorchaudioBackbone("WAV2VEC2_XLSR53", config_overrides=tiny()),
    "wavlm_base": lambda: TorchaudioBackbone("WAVLM_BASE", config_overrides=tiny()),
    "scratch_bilstm": lambda: ScratchEncoder(n_mels=40, conv_channels=8, hidden=32, num_layers=2, kind="bilstm"),
    "scratch_conformer": lambda: ScratchEncoder(
        n_mels=40, conv_channels=8, hidden=32, num_layers=2, kind="conformer", num_heads=2, conv_kernel=7
    ),
}


def make(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return BUILDERS[name]().eval()


@pytest.fixture(scope="module")
def batch():
    """Two tone-speech utterances of different lengths, zero padded: audio (2, T), lengths (2,)."""
    waves = [torch.from_numpy(tone_speech("the big dog", seed=1)), torch.from_numpy(tone_speech("cat", seed=2))]
    lengths = torch.tensor([len(w) for w in waves])
    audio = torch.zeros(2, int(lengths.max()))
    for i, w in enumerate(waves):
        audio[i, : len(w)] = w
    return audio, lengths


@pytest.mark.parametrize("name", BUILDERS)
def test_hidden_states_shapes_and_lengths(name, batch):
    model = make(name)
    audio, lengths = batch
    out = model(audio, lengths)
    frames = model.output_lengths(lengths)
    assert len(out.hidden_states) == model.num_layers
    assert torch.equal(out.lengths, frames) and out.lengths.dtype == torch.long
    assert int(frames[0]) > int(frames[1]) > 0
    for h in out.hidden_states:
        assert h.shape == (2, int(frames.max()), model.output_dim)
        assert torch.isfinite(h).all()
        assert h[1, int(frames[1]):].abs().sum() == 0  # padded frames are zero
    json.dumps(model.config())  # JSON-safe for checkpoints


@pytest.mark.parametrize("name", BUILDERS)
def test_padding_does_not_change_outputs(name, batch):
    model = make(name)
    audio, lengths = batch
    with torch.no_grad():
        padded = model(audio, lengths)
        for i in range(2):
            alone = model(audio[i : i + 1, : int(lengths[i])], lengths[i : i + 1])
            n = int(alone.lengths[0])
            assert n == int(padded.lengths[i])
            for h_pad, h_alone in zip(padded.hidden_states, alone.hidden_states):
                torch.testing.assert_close(h_pad[i, :n], h_alone[0], atol=2e-5, rtol=1e-4)


def test_group_norm_extractor_is_not_padding_invariant(batch):
    """Documented caveat: wav2vec2-base style GroupNorm normalises over the padded sequence."""
    torch.manual_seed(0)
    model = TorchaudioBackbone("WAV2VEC2_BASE", config_overrides=tiny("group_norm")).eval()
    audio, lengths = batch
    with torch.no_grad():
        padded = model(audio, lengths).hidden_states[-1][1, : int(model.output_lengths(lengths[1:]))]
        alone = model(audio[1:, : int(lengths[1])], lengths[1:]).hidden_states[-1][0]
    assert (padded - alone).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["wav2vec2_base", "scratch_bilstm"])
def test_frames_per_second_matches_output_rate(name):
    model = make(name)
    seconds = 2.0
    audio = torch.randn(1, int(seconds * model.sample_rate))
    out = model(audio, torch.tensor([audio.size(1)]))
    assert out.hidden_states[0].size(1) == int(out.lengths[0])
    assert abs(int(out.lengths[0]) - model.frames_per_second * seconds) <= 3
    assert model.frames_per_second == {"wav2vec2_base": 50.0, "scratch_bilstm": 25.0}[name]


@pytest.mark.parametrize("name", BUILDERS)
def test_layer_groups_cover_every_parameter_exactly_once(name):
    model = make(name)
    groups = model.layer_groups()
    seen = [id(p) for _, module in groups for p in module.parameters()]
    assert len(seen) == len(set(seen))
    assert set(seen) == {id(p) for p in model.parameters()}
    names = [n for n, _ in groups]  # every tiny model has a 2-layer stack
    assert names[-2:] == ["layer.0", "layer.1"] and len(names) == len(set(names))
    assert names[0] in {"feature_extractor", "frontend"}


@pytest.mark.parametrize("bundle", ["WAV2VEC2_BASE", "WAV2VEC2_XLSR53"])
def test_matches_torchaudio_reference_model(bundle):
    """Our layer loop reproduces torchaudio's extract_features / forward (post-LN and pre-LN + normalise)."""
    torch.manual_seed(0)
    backbone = TorchaudioBackbone(bundle, config_overrides=tiny()).eval()
    reference = ta_utils._extend_model(backbone.model, normalize_waveform=backbone.normalize_input).eval()
    audio = torch.from_numpy(tone_speech("red box", seed=3))[None]
    lengths = torch.tensor([audio.size(1)])
    with torch.no_grad():
        ours = backbone(audio, lengths).hidden_states
        layers, _ = reference.extract_features(audio, lengths)
        final, _ = reference(audio, lengths)
    for mine, theirs in zip(ours[1:-1], layers[:-1]):
        torch.testing.assert_close(mine, theirs)
    torch.testing.assert_close(ours[-1], final)


def test_layer_drop_skips_layers_only_in_training(batch):
    torch.manual_seed(0)
    model = TorchaudioBackbone("WAV2VEC2_BASE", config_overrides=tiny(encoder_dropout=0.0,
                               encoder_projection_dropout=0.0), layer_drop=1.0)
    audio, lengths = batch
    hidden = model.train()(audio, lengths).hidden_states
    assert len(hidden) == model.num_layers and all(torch.equal(h, hidden[0]) for h in hidden)
    hidden = model.eval()(audio, lengths).hidden_states
    assert not torch.equal(hidden[-1], hidden[0])


def test_local_weights_roundtrip_is_bit_exact(tmp_path, batch):
    source = make("xlsr53_preln_normalized", seed=0)
    path = save_backbone_weights(source, tmp_path / "weights.pt")
    torch.manual_seed(1)
    loaded = TorchaudioBackbone("WAV2VEC2_XLSR53", weights_path=str(path), config_overrides=tiny()).eval()
    audio, lengths = batch
    assert not torch.equal(loaded(audio, lengths).hidden_states[-1], source(audio, lengths).hidden_states[-1])
    loaded.load_pretrained()
    for a, b in zip(loaded(audio, lengths).hidden_states, source(audio, lengths).hidden_states):
        assert torch.equal(a, b)
    assert loaded.identity.endswith(f"weights={file_sha1(path)}")
    assert source.identity.endswith("weights=bundle") and loaded.identity != source.identity
    rebuilt = build_backbone(loaded.config()).eval()  # config carries weights_path: rebuild + reload offline
    rebuilt.load_pretrained()
    assert torch.equal(rebuilt(audio, lengths).hidden_states[-1], source(audio, lengths).hidden_states[-1])


def test_weights_that_do_not_fit_raise_clear_error(tmp_path):
    path = save_backbone_weights(make("wav2vec2_base"), tmp_path / "w.pt")
    other = TorchaudioBackbone("WAV2VEC2_BASE", weights_path=str(path), config_overrides=tiny(encoder_embed_dim=16))
    with pytest.raises(ValueError, match=r"w\.pt.*shape mismatch"):
        other.load_pretrained()


def test_download_failure_raises_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(ta_utils, "load_state_dict_from_url", offline)
    model = TorchaudioBackbone("HUBERT_BASE", config_overrides=tiny())
    with pytest.raises(RuntimeError, match=r"HUBERT_BASE.*no network.*weights_path"):
        model.load_pretrained()


def test_bad_configuration_is_rejected():
    with pytest.raises(ValueError, match="not a WAV2VEC2_BASE parameter"):
        TorchaudioBackbone("WAV2VEC2_BASE", config_overrides={"encoder_nmu_layers": 2})
    with pytest.raises(ValueError, match="layer_drop"):
        TorchaudioBackbone("WAV2VEC2_BASE", config_overrides={"encoder_layer_drop": 0.1})
    with pytest.raises(ValueError, match="available"):
        TorchaudioBackbone("WAV2VEC3_HUGE")


@pytest.mark.parametrize("name", ["wav2vec2_base", "scratch_conformer"])
def test_config_rebuilds_same_architecture(name):
    model = make(name)
    config = json.loads(json.dumps(model.config()))
    rebuilt = build_backbone(config)
    assert type(rebuilt) is type(model) and rebuilt.identity == model.identity
    rebuilt.load_state_dict(model.state_dict())  # same keys and shapes


def test_too_short_audio_raises_clear_error():
    model = make("wav2vec2_base")
    with pytest.raises(ValueError, match="too short"):
        model(torch.randn(1, 300), torch.tensor([300]))


def test_normalize_waveform_uses_valid_samples_only():
    x = torch.randn(1, 500) * 3 + 1
    torch.testing.assert_close(masked_normalize(x, torch.tensor([500])), F.layer_norm(x, x.shape))
    padded = torch.cat([x, torch.full((1, 100), 7.0)], dim=1)
    out = masked_normalize(padded, torch.tensor([500]))
    torch.testing.assert_close(out[:, :500], F.layer_norm(x, x.shape))
    assert out[:, 500:].abs().sum() == 0


def test_feature_cmvn_uses_valid_frames_only_per_bin():
    feats = torch.randn(2, 40, 3) * 2 + 5
    out = masked_normalize(torch.cat([feats, torch.full((2, 10, 3), 9.0)], dim=1), torch.tensor([40, 25]))
    for row, n in ((0, 40), (1, 25)):
        valid = feats[row, :n]
        expected = (valid - valid.mean(0)) / valid.var(0, unbiased=False).add(1e-5).sqrt()
        torch.testing.assert_close(out[row, :n], expected)
    assert out[0, 40:].abs().sum() == 0 and out[1, 25:].abs().sum() == 0


def test_hf_backbone_without_transformers_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers -> ImportError
    with pytest.raises(ImportError, match=r"speechxfer\[hf\]"):
        HFBackbone("facebook/wav2vec2-base")


def _write_speechxfer_checkpoint(path, backbone):
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    state["head.weight"] = torch.zeros(3, backbone.output_dim)
    torch.save({"state_dict": state, "speechxfer": {"module_class": "x.CTC", "backbone_config": backbone.config(),
                                                    "tokenizer": {}}}, path)


@pytest.mark.parametrize("name", ["scratch_bilstm", "wav2vec2_base"])
def test_checkpoint_backbone_restores_inner_backbone(tmp_path, batch, name):
    source = make(name, seed=0)
    _write_speechxfer_checkpoint(tmp_path / "ft.ckpt", source)
    torch.manual_seed(5)
    wrapped = CheckpointBackbone(str(tmp_path / "ft.ckpt"))
    assert wrapped.config() == source.config()  # the inner config: no dependency on ft.ckpt later
    assert list(wrapped.state_dict()) == list(source.state_dict())  # no extra key prefix
    assert [n for n, _ in wrapped.layer_groups()] == [n for n, _ in source.layer_groups()]
    assert (wrapped.output_dim, wrapped.num_layers) == (source.output_dim, source.num_layers)
    wrapped.load_pretrained()
    wrapped.eval()
    assert not wrapped.inner.training
    audio, lengths = batch
    for a, b in zip(wrapped(audio, lengths).hidden_states, source(audio, lengths).hidden_states):
        assert torch.equal(a, b)
    wrapped.train()
    assert wrapped.inner.training and all(m.training for m in wrapped.modules())
    rebuilt = build_backbone(wrapped.config())
    rebuilt.load_state_dict(wrapped.state_dict())


def test_checkpoint_backbone_rejects_foreign_checkpoint(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match=r"other\.ckpt.*not a speechxfer checkpoint"):
        CheckpointBackbone(str(tmp_path / "other.ckpt"))
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        CheckpointBackbone(str(tmp_path / "missing.ckpt"))


def test_scratch_encoder_learns_tone_speech():
    """A CTC head on the scratch encoder overfits two utterances within a few dozen CPU steps."""
    torch.manual_seed(0)
    encoder = ScratchEncoder(n_mels=40, conv_channels=8, hidden=64, num_layers=1, dropout=0.0)
    head = torch.nn.Linear(64, 29)
    texts = ["cat", "dog"]
    waves = [torch.from_numpy(tone_speech(t, seed=i)) for i, t in enumerate(texts)]
    audio = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
    lengths = torch.tensor([len(w) for w in waves])
    targets = torch.tensor([[ord(c) - 96 for c in t] for t in texts])
    optim = torch.optim.Adam([*encoder.parameters(), *head.parameters()], lr=3e-3)
    losses = []
    for _ in range(40):
        out = encoder(audio, lengths)
        log_probs = head(out.hidden_states[-1]).log_softmax(-1).transpose(0, 1)
        loss = F.ctc_loss(log_probs, targets, out.lengths, torch.tensor([3, 3]))
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
