"""wav2vec 2.0-style feature masking: presets, span statistics, before the transformer, training only."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from lightning_modules import CTCModule, FrozenFeatureCTC
from lightning_modules.backbones import TorchaudioBackbone
from lightning_modules.backbones.masking import MASK_PRESETS, FeatureMasking, MaskConfig, resolve_mask, span_mask
from tests.cli_helpers import TINY_TORCHAUDIO
from tests.corpus_factory import tone_speech

pytestmark = pytest.mark.usefixtures("one_thread")
NO_DROPOUT = {"encoder_projection_dropout": 0.0, "encoder_dropout": 0.0, "encoder_attention_dropout": 0.0,
              "encoder_ff_interm_dropout": 0.0, "extractor_mode": "layer_norm"}


def expected_coverage(length: int, prob: float, span: int, min_spans: int = 0) -> float:
    """Exact expected fraction of positions covered: n = max(min, floor(p·L + u)) starts drawn without
    replacement among M = L - span + 1; position t is covered unless none of its k_t starts is drawn."""
    m = length - span + 1
    base, frac = divmod(prob * length, 1.0)
    total = 0.0
    for n, weight in ((int(base), 1 - frac), (int(base) + 1, frac)):
        n = min(max(n, min_spans), m)
        for t in range(length):
            k = min(t, m - 1) - max(0, t - span + 1) + 1
            uncovered = math.prod((m - n - i) / (m - i) for i in range(k)) if n <= m - k else 0.0
            total += weight * (1 - uncovered) / length
    return total


def runs(row: torch.Tensor) -> list[int]:
    """Lengths of the maximal runs of True in a 1-D bool tensor."""
    edges = torch.diff(torch.cat([torch.tensor([0]), row.int(), torch.tensor([0])]))
    return (torch.nonzero(edges == -1).flatten() - torch.nonzero(edges == 1).flatten()).tolist()


def test_presets_follow_the_paper_and_convert_to_fairseq_hf_convention():
    assert [MASK_PRESETS[k].time_prob for k in ("10min", "1h", "10h", "100h")] == [0.075, 0.075, 0.065, 0.05]
    assert all(0.0016 <= p.channel_prob <= 0.008 and p.time_span == 10 and p.channel_span == 64
               for p in MASK_PRESETS.values())
    hf = MASK_PRESETS["10h"].to_hf()  # fairseq/HF write p x span: base_10h.yaml mask_prob 0.65, mask_channel_prob 0.5
    assert hf["mask_time_prob"] == pytest.approx(0.65) and hf["mask_feature_prob"] == pytest.approx(0.512)
    assert resolve_mask("1h") is MASK_PRESETS["1h"] and resolve_mask(None) is None
    assert resolve_mask({"time_prob": 0.02}) == MaskConfig(time_prob=0.02)
    with pytest.raises(ValueError, match="presets"):
        resolve_mask("5h")
    with pytest.raises(ValueError, match="unknown mask setting"):
        resolve_mask({"mask_prob": 0.65})


@pytest.mark.parametrize("preset", ["10min", "10h", "100h"])
def test_time_mask_fraction_matches_the_preset(preset):
    torch.manual_seed(0)
    config = replace(MASK_PRESETS[preset], channel_prob=0.0)
    masking = FeatureMasking(4, config).train()
    with torch.no_grad():
        masking.embedding.fill_(1.0)
    length = 1000
    out = masking(torch.zeros(256, length, 4), torch.full((256,), length))
    masked = (out == 1.0).all(-1)                                                   # (B, T)
    expected = expected_coverage(length, config.time_prob, config.time_span, config.time_min_spans)
    assert masked.float().mean().item() == pytest.approx(expected, abs=0.01)      # ~0.40-0.54
    assert min(n for row in masked for n in runs(row)) >= config.time_span         # spans of 10 frames (union)


@pytest.mark.parametrize("preset", ["10h", "960h"])
def test_channel_mask_fraction_matches_the_preset(preset):
    torch.manual_seed(0)
    config = replace(MASK_PRESETS[preset], time_prob=0.0, time_min_spans=0)
    masking = FeatureMasking(768, config).train()
    out = masking(torch.ones(2000, 1, 768), torch.ones(2000, dtype=torch.long))
    zeroed = out[:, 0] == 0                                                        # (B, D)
    expected = expected_coverage(768, config.channel_prob, config.channel_span)
    assert zeroed.float().mean().item() == pytest.approx(expected, abs=0.01)
    assert min(n for row in zeroed for n in runs(row)) >= 64


def test_span_count_matches_probability_when_spans_rarely_overlap():
    torch.manual_seed(0)
    length, prob = 4000, 0.002  # 8 spans of 10 per row in expectation
    mask = span_mask(torch.full((500,), length), length, prob, 10)
    counts = [len(runs(row)) for row in mask]
    assert sum(counts) / len(counts) == pytest.approx(prob * length, rel=0.05)
    lengths = [n for row in mask for n in runs(row)]
    assert lengths.count(10) / len(lengths) > 0.9


def test_spans_stay_inside_valid_frames():
    torch.manual_seed(0)
    lengths = torch.tensor([50, 9, 0, 200])
    mask = span_mask(lengths, 200, 0.2, 10, min_spans=2)
    assert not mask[0, 50:].any() and not mask[1].any() and not mask[2].any()
    assert mask[0].any() and mask[3].any()


def tiny_backbone(mask, seed: int = 0) -> TorchaudioBackbone:
    torch.manual_seed(seed)
    return TorchaudioBackbone("WAV2VEC2_BASE", config_overrides={**TINY_TORCHAUDIO, **NO_DROPOUT}, mask=mask)


@pytest.fixture(scope="module")
def audio():
    waves = [torch.from_numpy(tone_speech("the big dog", seed=1)), torch.from_numpy(tone_speech("cat", seed=2))]
    lengths = torch.tensor([len(w) for w in waves])
    return torch.nn.utils.rnn.pad_sequence(waves, batch_first=True), lengths


def capture_transformer_input(backbone: TorchaudioBackbone) -> tuple[list, list]:
    """Record the feature projection's output and the transformer's input on every forward."""
    projected, transformer_in = [], []
    backbone.model.encoder.feature_projection.register_forward_hook(lambda m, i, o: projected.append(o.detach()))
    transformer = backbone.model.encoder.transformer
    original = transformer._preprocess

    def preprocess(x):
        transformer_in.append(x.detach().clone())
        return original(x)

    transformer._preprocess = preprocess
    return projected, transformer_in


def test_masks_are_applied_before_the_transformer_in_training_only(audio):
    mask = {"time_prob": 0.05, "channel_prob": 0.1, "channel_span": 4}
    backbone = tiny_backbone(mask)
    projected, transformer_in = capture_transformer_input(backbone)
    x, lengths = audio
    frames = backbone.output_lengths(lengths)
    backbone.train()(x, lengths)
    proj, seen = projected[-1], transformer_in[-1]
    valid = torch.arange(proj.shape[1])[None, :] < frames[:, None]
    is_embedding = seen == backbone.masking.embedding.detach()                      # channel masks zero some of it
    time = ((is_embedding | (seen == 0)).all(-1) & is_embedding.any(-1)) & valid     # (B, T') masked frames
    changed = (seen != proj).any(-1) & valid
    assert time.any() and (changed & ~time).any()                                   # time and channel masks
    for b in range(len(frames)):  # channel masks: the same channels zeroed on every unmasked valid frame
        rows = valid[b] & ~time[b]
        zeroed = ((seen[b, rows] == 0) & (proj[b, rows] != 0)).any(0)                 # (D,)
        assert zeroed.any() and (seen[b, rows][:, zeroed] == 0).all()
    assert not (seen[~valid] != 0).any()                                            # padding stays zero
    backbone.eval()(x, lengths)
    assert torch.equal(transformer_in[-1], projected[-1])                           # eval: nothing masked


def test_eval_output_does_not_depend_on_masking_settings(audio):
    x, lengths = audio
    reference = tiny_backbone(None).eval()
    for mask in ("10min", "960h", {"time_prob": 0.5, "channel_prob": 0.1, "channel_span": 4}):
        masked = tiny_backbone(mask).eval()
        masked.model.load_state_dict(reference.model.state_dict())
        for a, b in zip(masked(x, lengths).hidden_states, reference(x, lengths).hidden_states):
            assert torch.equal(a, b)
    assert "masking.embedding" in tiny_backbone("10h").state_dict()
    assert "masking.embedding" not in reference.state_dict()                        # old checkpoints still load


def test_frozen_feature_mode_never_masks(audio, tokenizer):
    x, lengths = audio
    model = FrozenFeatureCTC(tiny_backbone({"time_prob": 0.5, "channel_prob": 0.1, "channel_span": 4}),
                             tokenizer.to_dict(), dropout=0.0)
    model.train()
    with torch.no_grad():
        train_out = model.backbone(x, lengths).hidden_states[-1]
        assert torch.equal(train_out, model.eval().backbone(x, lengths).hidden_states[-1])


def test_spec_augment_is_not_applied_on_top_of_backbone_masking(tokenizer):
    with pytest.raises(ValueError, match="second time"):
        CTCModule(tiny_backbone("100h"), tokenizer.to_dict(), spec_augment={"time_masks": 2})
    FrozenFeatureCTC(tiny_backbone("100h"), tokenizer.to_dict(), spec_augment={"time_masks": 2})  # never masks
    CTCModule(tiny_backbone(None), tokenizer.to_dict(), spec_augment={"time_masks": 2})
