"""Training-time augmentation: waveform (speed, noise) in the data pipeline, SpecAugment in the model.

``WaveformAugmentation`` is a plain dataclass (LightningCLI/jsonargparse builds it as a nested
group) applied by ``SpeechDataset`` to TRAINING batches only.  All randomness comes from the
``random.Random`` the dataset passes in (seeded from the run seed and the batch's cut ids), so
results do not depend on which DataLoader worker builds a batch.

``SpecAugment`` is an ``nn.Module`` for the model: the backbones consume waveforms, so masking
happens on the model's (B, T, F) features, inside the valid frames given by ``lengths``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from lhotse import CutSet, Recording, RecordingSet, load_manifest
from lhotse.dataset.cut_transforms import CutMix, PerturbSpeed
from torch import nn

from datamodules.batch import SAMPLE_RATE, lengths_to_mask

AUDIO_PATTERNS = ("*.wav", "*.flac", "*.mp3", "*.ogg")
_NOISE_CACHE: dict[str, CutSet] = {}  # per process: noise manifests are read once


@dataclass
class WaveformAugmentation:
    """Waveform augmentation settings (all off by default).

    Args:
        speed_factors: speed perturbation factors, e.g. ``[0.9, 1.0, 1.1]`` (lhotse
            ``cut.perturb_speed``: changes duration and pitch, like Kaldi's 3-way perturbation).
        speed_prob: probability to perturb each utterance.
        noise: directory of noise recordings (wav/flac/mp3/ogg, searched recursively) or a lhotse
            CutSet/RecordingSet manifest (``.jsonl``/``.jsonl.gz``); mixed with lhotse ``CutMix``.
        noise_snr: (low, high) SNR in dB, sampled uniformly per utterance (file noise and Gaussian).
        noise_prob: probability to add noise to each utterance.
        gaussian_noise: add white Gaussian noise at ``noise_snr`` (no noise files needed).
    """

    speed_factors: list[float] | None = None
    speed_prob: float = 1.0
    noise: str | None = None
    noise_snr: tuple[float, float] = (10.0, 20.0)
    noise_prob: float = 0.5
    gaussian_noise: bool = False

    @property
    def enabled(self) -> bool:
        """True when any waveform change is configured (the model must then not cache features)."""
        speed = bool(self.speed_factors) and any(f != 1.0 for f in self.speed_factors)
        return speed or self.noise is not None or self.gaussian_noise

    @property
    def max_speed(self) -> float:
        """Largest speed factor: the shortest an utterance can become is ``duration / max_speed``."""
        return max([1.0, *(self.speed_factors or [])])

    def apply_to_cuts(self, cuts: CutSet, rng: random.Random) -> CutSet:
        """Speed perturbation and file-noise mixing on a batch of cuts (ids are preserved)."""
        if self.speed_factors:
            cuts = PerturbSpeed(self.speed_factors, p=self.speed_prob, randgen=rng, preserve_id=True)(cuts)
        if self.noise is not None:
            mix = CutMix(self.noise_cuts(), snr=tuple(self.noise_snr), p=self.noise_prob,
                         pad_to_longest=False, preserve_id=True, seed=rng, random_mix_offset=True)
            cuts = mix(cuts)
        return cuts

    def apply_to_waves(self, waves: list[torch.Tensor], rng: random.Random) -> list[torch.Tensor]:
        """Gaussian noise on each (T_i,) waveform at an SNR drawn from ``noise_snr``."""
        if not self.gaussian_noise:
            return waves
        out = []
        for wave in waves:
            if rng.random() < self.noise_prob:
                snr = rng.uniform(*self.noise_snr)
                gen = torch.Generator().manual_seed(rng.getrandbits(63))
                wave = add_noise_at_snr(wave, torch.randn(wave.shape, generator=gen), snr)
            out.append(wave)
        return out

    def noise_cuts(self) -> CutSet:
        """The noise recordings as ``SAMPLE_RATE`` cuts (read once per process)."""
        if self.noise not in _NOISE_CACHE:
            _NOISE_CACHE[self.noise] = load_noise_cuts(self.noise)
        return _NOISE_CACHE[self.noise]


def load_noise_cuts(source: str, sample_rate: int = SAMPLE_RATE) -> CutSet:
    """Noise cuts from a directory of audio files or a lhotse manifest; errors name the path."""
    path = Path(source)
    if path.is_dir():
        files = sorted(f for pattern in AUDIO_PATTERNS for f in path.rglob(pattern))
        if not files:
            raise FileNotFoundError(f"{path}: no noise audio ({', '.join(AUDIO_PATTERNS)}) found")
        recordings = RecordingSet.from_recordings(Recording.from_file(f) for f in files)
        cuts = CutSet.from_manifests(recordings=recordings)
    elif path.is_file():
        manifest = load_manifest(path)  # lhotse detects RecordingSet vs CutSet
        cuts = CutSet.from_manifests(recordings=manifest) if isinstance(manifest, RecordingSet) else manifest
    else:
        raise FileNotFoundError(f"{path}: noise source does not exist")
    return cuts.resample(sample_rate).to_eager()


def add_noise_at_snr(signal: torch.Tensor, noise: torch.Tensor, snr_db: float) -> torch.Tensor:
    """``signal + a * noise`` with ``a`` chosen so that 10 log10(P_signal / P_scaled_noise) = ``snr_db``."""
    p_signal = signal.pow(2).mean().clamp_min(1e-10)
    p_noise = noise.pow(2).mean().clamp_min(1e-10)
    scale = torch.sqrt(p_signal / (p_noise * 10.0 ** (snr_db / 10.0)))
    return signal + scale * noise


class SpecAugment(nn.Module):
    """Time and feature masking on (B, T, F) features, only inside each row's valid frames.

    Active in training mode only (``model.train()``); identity in eval.  Masked values are set
    to ``mask_value`` (0 by default; features are typically normalised).

    Args:
        time_masks: number of time masks per utterance.
        time_width: maximum width of a time mask: frames if >= 1, else a fraction of the
            utterance's valid length (e.g. 0.05).
        feature_masks: number of feature (channel) masks per utterance.
        feature_width: maximum width of a feature mask: channels if >= 1, else a fraction of F.
        mask_value: value written into masked positions.
    """

    def __init__(self, time_masks: int = 2, time_width: float = 0.05, feature_masks: int = 2,
                 feature_width: float = 27, mask_value: float = 0.0) -> None:
        super().__init__()
        self.time_masks, self.time_width = time_masks, time_width
        self.feature_masks, self.feature_width = feature_masks, feature_width
        self.mask_value = mask_value

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """features (B, T, F), lengths (B,) valid frames -> masked copy (B, T, F)."""
        if not self.training or (self.time_masks == 0 and self.feature_masks == 0):
            return features
        b, t, f = features.shape
        lengths = lengths.to(features.device).clamp(max=t)
        time = self._spans(lengths, self.time_width, self.time_masks, t)               # (B, T)
        feat = self._spans(torch.full_like(lengths, f), self.feature_width, self.feature_masks, f)  # (B, F)
        mask = time[:, :, None] | feat[:, None, :]
        mask &= lengths_to_mask(lengths, t)[:, :, None]
        return features.masked_fill(mask, self.mask_value)

    @staticmethod
    def _spans(extent: torch.Tensor, width: float, count: int, size: int) -> torch.Tensor:
        """(B, size) bool: ``count`` random spans per row within ``[0, extent)``."""
        device = extent.device
        mask = torch.zeros(extent.shape[0], size, dtype=torch.bool, device=device)
        if count == 0:
            return mask
        limit = extent.float() * width if width < 1 else torch.full_like(extent, math.floor(width)).float()
        limit = torch.minimum(limit.floor(), extent.float())                            # (B,)
        pos = torch.arange(size, device=device)[None, :]
        for _ in range(count):
            w = (torch.rand(extent.shape, device=device) * (limit + 1)).floor()          # 0..limit
            start = (torch.rand(extent.shape, device=device) * (extent.float() - w + 1)).floor()
            mask |= (pos >= start[:, None]) & (pos < (start + w)[:, None])
        return mask
