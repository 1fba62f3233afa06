"""wav2vec 2.0-style masking of the CNN feature sequence before the transformer (fine-tuning SpecAugment).

During fine-tuning, wav2vec 2.0 / HuBERT / WavLM replace time spans of the projected CNN features
with a learned mask embedding and zero spans of channels, *before* the transformer, so the
transformer learns to fill the gaps from context (Baevski et al., 2020, "wav2vec 2.0", section 4.4
and appendix B). ``FeatureMasking`` does this on ``(B, T', D)`` features inside each row's valid
frames, in training mode only (identity in ``eval()``; the frozen-feature method keeps its backbone
in eval, so it never masks).

Probability convention (the trap): ``time_prob`` / ``channel_prob`` here are the PAPER's ``p``, the
chance that a frame (channel) *starts* a span; each span covers ``time_span`` = 10 frames
(``channel_span`` = 64 channels), spans may overlap. fairseq configs and Hugging Face configs write
``mask_prob`` / ``mask_time_prob`` = ``p × span`` instead ("fraction of frames masked", before
overlaps): fairseq's ``mask_prob: 0.65`` with ``mask_length: 10`` is p = 0.065, which masks about
1 − (1 − 0.065)^10 ≈ 49 % of the frames. Hugging Face's default ``mask_time_prob=0.05`` is p = 0.005,
about 13× less masking than the recipe (``HFBackbone(mask="100h")`` writes the preset into the HF
config in HF's convention).

Presets (``MASK_PRESETS``, by amount of labelled data):

=========  ===========  ==============  ==============================================
label      time p       channel p       sources
=========  ===========  ==============  ==============================================
``10min``  0.075        0.004           time: paper appendix B (10 min, 1 h: 0.075;
``1h``     0.075        0.004           10 h: 0.065; 100 h and 960 h: 0.05);
``10h``    0.065        0.008           channel: fairseq
``100h``   0.05         0.008           ``examples/wav2vec/config/finetuning/base_*.yaml``
``960h``   0.05         0.0016          ``mask_channel_prob`` / 64 = 0.25, 0.25, 0.5, 0.5, 0.1
=========  ===========  ==============  ==============================================

(fairseq's base configs use ``mask_prob`` 0.65 for 10 min-100 h and 0.5 for 960 h, i.e. p = 0.065 /
0.05, and ``vox_10h.yaml`` 0.75; the presets take the paper's time values.) Number of spans per
utterance: ``floor(p · L + u)``, u ~ U(0, 1) (so ``p · L`` in expectation), at least ``time_min_spans``
(2, as fairseq and HF) for time; starts drawn without replacement among the ``L − span + 1`` positions.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from datamodules.batch import lengths_to_mask


@dataclass(frozen=True)
class MaskConfig:
    """Span-masking settings in the paper's convention (see module docstring)."""

    time_prob: float = 0.05
    time_span: int = 10
    channel_prob: float = 0.008
    channel_span: int = 64
    time_min_spans: int = 2

    def __post_init__(self) -> None:
        for name in ("time_prob", "channel_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"mask {name} must be in [0, 1], got {getattr(self, name)}")
        if self.time_span < 1 or self.channel_span < 1 or self.time_min_spans < 0:
            raise ValueError(f"mask spans must be >= 1 and time_min_spans >= 0, got {self}")

    def to_hf(self) -> dict[str, Any]:
        """The same masking in Hugging Face ``Wav2Vec2Config`` terms (probabilities × span)."""
        return {"apply_spec_augment": True, "mask_time_prob": self.time_prob * self.time_span,
                "mask_time_length": self.time_span, "mask_time_min_masks": self.time_min_spans,
                "mask_feature_prob": self.channel_prob * self.channel_span,
                "mask_feature_length": self.channel_span, "mask_feature_min_masks": 0}


MASK_PRESETS: dict[str, MaskConfig] = {
    "10min": MaskConfig(time_prob=0.075, channel_prob=0.004),
    "1h": MaskConfig(time_prob=0.075, channel_prob=0.004),
    "10h": MaskConfig(time_prob=0.065, channel_prob=0.008),
    "100h": MaskConfig(time_prob=0.05, channel_prob=0.008),
    "960h": MaskConfig(time_prob=0.05, channel_prob=0.0016),
}


def resolve_mask(mask: str | dict[str, Any] | MaskConfig | None) -> MaskConfig | None:
    """A preset name, a dict of ``MaskConfig`` fields, a ``MaskConfig`` or None (no masking)."""
    if mask is None or isinstance(mask, MaskConfig):
        return mask
    if isinstance(mask, str):
        if mask not in MASK_PRESETS:
            raise ValueError(f"unknown mask preset {mask!r}; presets: {sorted(MASK_PRESETS)} (or a dict of "
                             f"{list(MaskConfig.__dataclass_fields__)})")
        return MASK_PRESETS[mask]
    unknown = set(mask) - set(MaskConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown mask setting(s) {sorted(unknown)}; expected {list(MaskConfig.__dataclass_fields__)}")
    return MaskConfig(**mask)


def span_mask(lengths: Tensor, size: int, prob: float, span: int, min_spans: int = 0,
              generator: torch.Generator | None = None) -> Tensor:
    """(B, size) bool: random spans of ``span`` positions inside each row's first ``lengths[b]`` positions.

    Row ``b`` gets ``max(min_spans, floor(prob · L_b + u))`` spans (u ~ U(0, 1)), at most one per
    start position, starts uniform without replacement over ``[0, L_b − span]``; rows shorter than
    ``span`` get none.
    """
    device = lengths.device
    lengths = lengths.clamp(max=size)
    if prob <= 0 and min_spans <= 0:
        return torch.zeros(len(lengths), size, dtype=torch.bool, device=device)
    starts_possible = (lengths - span + 1).clamp(min=0)                                   # (B,)
    u = torch.rand(len(lengths), device=device, generator=generator)
    count = (prob * lengths.float() + u).floor().long().clamp(min=min_spans)
    count = torch.minimum(count, starts_possible)                                          # (B,)
    positions = torch.arange(size, device=device)[None, :]
    scores = torch.rand(len(lengths), size, device=device, generator=generator)
    scores = scores.masked_fill(positions >= starts_possible[:, None], 2.0)                # invalid starts last
    rank = scores.argsort(dim=1).argsort(dim=1)                                            # 0 = first chosen
    starts = (rank < count[:, None]).long()                                                # (B, size)
    covered = starts.cumsum(1)
    covered = covered - torch.nn.functional.pad(covered, (span, 0))[:, :size]              # starts in (t-span, t]
    return covered > 0


class FeatureMasking(nn.Module):
    """Time spans -> learned ``embedding``, channel spans -> 0, on (B, T', D) features; training only.

    The embedding is initialised uniform in [0, 1) as in fairseq (torchaudio's fine-tuning bundles do
    not ship the pre-training mask embedding, so it is learned here).
    """

    def __init__(self, dim: int, config: MaskConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Parameter(torch.rand(dim))

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """x (B, T', D), lengths (B,) valid frames -> masked copy (B, T', D); identity in eval."""
        if not self.training:
            return x
        cfg, (b, t, d) = self.config, x.shape
        valid = lengths_to_mask(lengths, t)
        time = span_mask(lengths, t, cfg.time_prob, cfg.time_span, cfg.time_min_spans) & valid        # (B, T')
        channel = span_mask(torch.full_like(lengths, d), d, cfg.channel_prob, cfg.channel_span)       # (B, D)
        x = torch.where(time[:, :, None], self.embedding.to(x.dtype), x)
        return x.masked_fill(channel[:, None, :] & valid[:, :, None], 0.0)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in asdict(self.config).items())
