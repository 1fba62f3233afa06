"""From-scratch encoder: log-mel -> per-utterance CMVN -> conv2d subsampling -> LayerNorm -> BiGRU | BiLSTM | Conformer.

Small and fast on CPU; exactly padding invariant in eval mode (and in training up to dropout /
SpecAugment randomness): the STFT is centred with ZERO padding (frame ``i`` covers samples
``[i*hop - win/2, i*hop + win/2)``, samples past the end read as 0 whether or not the row is padded), CMVN
uses valid frames only, frames past each row's end are zeroed before every subsampling conv (so the
convs' time padding reads zeros either way), recurrent layers are packed, and the Conformer's
depthwise convolution sees zeroed padding (its BatchNorm is replaced by a per-frame channel LayerNorm,
so batch statistics never mix padding in).

Why these defaults (``benchmarks/study_notes.md``, "From-scratch recipe"): with PyTorch's default
init the conv + projection stack shrinks the normalised features to a ~0.05-std signal, on which a
BiLSTM + CTC head stays on the blank plateau for hundreds of steps; a LayerNorm after the projection
restores unit scale, and GRU layers leave the plateau several times sooner than LSTMs. The padded
frontend keeps 8 frames (at 25/s) for a 0.29 s clip instead of 6, and never fewer than
``floor(seconds * frames_per_second)``, the estimate of the datamodule's too-short-for-CTC check.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torchaudio
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from datamodules.augment import SpecAugment
from datamodules.batch import SAMPLE_RATE, lengths_to_mask

from .base import Backbone, BackboneOutput, masked_normalize, module_group, zero_padding


def masked_cmn(feats: Tensor, lengths: Tensor) -> Tensor:
    """Per-utterance, per-bin mean subtraction over valid frames; (B, T, F) -> (B, T, F)."""
    mask = lengths_to_mask(lengths, feats.size(1)).unsqueeze(-1).to(feats.dtype)
    mean = (feats * mask).sum(1, keepdim=True) / lengths.clamp(min=1).to(feats.dtype)[:, None, None]
    return (feats - mean) * mask


NORMALIZERS = {"utterance": masked_normalize, "mean": masked_cmn, "none": zero_padding}  # (B, T, F), (B,) -> (B, T, F)


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over channels of a (B, C, T) tensor: per frame, so padding cannot leak."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class PaddingMaskedConv(nn.Module):
    """Wraps a 'same'-padded conv over (B, C, T), zeroing padded frames first (mask set per batch)."""

    def __init__(self, conv: nn.Conv1d) -> None:
        super().__init__()
        self.conv = conv
        self.valid: Tensor | None = None  # (B, 1, T) float, set by ScratchEncoder.forward

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x if self.valid is None else x * self.valid)


class ScratchEncoder(Backbone):
    """Log-mel + conv subsampling + ``num_layers`` BiLSTM or Conformer layers, trained from scratch.

    Args:
        n_mels: mel bins (25 ms window, 10 ms hop).
        conv_channels: channels of each stride-2 Conv2d (kernel 3).
        hidden: output_dim (BiGRU/BiLSTM: ``hidden // 2`` units per direction).
        num_layers: encoder layers; each layer's output is one hidden state.
        kind: ``"bigru"``, ``"bilstm"`` or ``"conformer"`` (torchaudio ConformerLayer).
        subsampling: 1, 2, 4 or 8 (number of stride-2 convs = log2).
        dropout: between / inside layers.
        num_heads, ffn_dim, conv_kernel: Conformer only (``ffn_dim`` defaults to ``4 * hidden``).
        center: centred STFT (``L // hop + 1`` frames; False: ``(L - win) // hop + 1``).
        conv_padding: time/frequency padding 1 in the subsampling convs (``ceil(n / 2)`` frames per
            conv; False: ``(n - 3) // 2 + 1``).
        normalize: per-utterance feature normalisation over valid frames: ``"utterance"`` (mean and
            variance per mel bin), ``"mean"`` (mean only) or ``"none"``. Normalising makes the model
            independent of recording level and channel.
        proj_norm: LayerNorm after the input projection (unit-scale input to the first layer).
        spec_augment: keyword arguments of ``datamodules.augment.SpecAugment``, masking the normalised
            log-mel (B, T, n_mels) in training mode only (e.g. ``{"time_masks": 2, "time_width": 0.05,
            "feature_masks": 2, "feature_width": 10}``); None: off.
    """

    def __init__(
        self,
        n_mels: int = 80,
        conv_channels: int = 32,
        hidden: int = 256,
        num_layers: int = 3,
        kind: Literal["bigru", "bilstm", "conformer"] = "bigru",
        subsampling: int = 4,
        dropout: float = 0.1,
        num_heads: int = 4,
        ffn_dim: int | None = None,
        conv_kernel: int = 15,
        sample_rate: int = SAMPLE_RATE,
        center: bool = True,
        conv_padding: bool = True,
        normalize: Literal["utterance", "mean", "none"] = "utterance",
        proj_norm: bool = True,
        spec_augment: dict | None = None,
    ) -> None:
        super().__init__()
        if subsampling not in (1, 2, 4, 8):
            raise ValueError(f"subsampling must be 1, 2, 4 or 8, got {subsampling}")
        if kind not in ("bigru", "bilstm", "conformer"):
            raise ValueError(f"kind must be 'bigru', 'bilstm' or 'conformer', got {kind!r}")
        if normalize not in NORMALIZERS:
            raise ValueError(f"normalize must be one of {sorted(NORMALIZERS)}, got {normalize!r}")
        if kind != "conformer" and hidden % 2:
            raise ValueError(f"{kind} needs an even hidden size, got {hidden}")
        self._init_args = {
            "n_mels": n_mels, "conv_channels": conv_channels, "hidden": hidden, "num_layers": num_layers,
            "kind": kind, "subsampling": subsampling, "dropout": dropout, "num_heads": num_heads,
            "ffn_dim": ffn_dim, "conv_kernel": conv_kernel, "sample_rate": sample_rate,
            "center": center, "conv_padding": conv_padding, "normalize": normalize, "proj_norm": proj_norm,
            "spec_augment": spec_augment,
        }
        self.center, self.conv_padding, self.normalize = center, conv_padding, normalize
        self.kind = kind
        self.sample_rate = sample_rate
        self.win, self.hop = int(0.025 * sample_rate), int(0.010 * sample_rate)
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate, n_fft=self.win, win_length=self.win, hop_length=self.hop, n_mels=n_mels, center=center,
            pad_mode="constant",
        )
        self.num_convs = int(math.log2(subsampling))
        convs, channels, freq = [], 1, n_mels
        pad = 1 if conv_padding else 0
        for _ in range(self.num_convs):
            convs += [nn.Conv2d(channels, conv_channels, 3, stride=2, padding=pad), nn.ReLU()]
            channels, freq = conv_channels, (freq + 2 * pad - 3) // 2 + 1
        self.subsample = nn.Sequential(*convs)
        self.input_proj = nn.Sequential(nn.Linear(channels * freq, hidden),
                                        *([nn.LayerNorm(hidden)] if proj_norm else []), nn.Dropout(dropout))
        self.spec_augment = SpecAugment(**spec_augment) if spec_augment else None
        self.layers = nn.ModuleList(self._make_layer(hidden, dropout, num_heads, ffn_dim, conv_kernel)
                                    for _ in range(num_layers))
        self.dropout = nn.Dropout(dropout)
        self.output_dim, self.num_layers = hidden, num_layers
        self.frames_per_second = sample_rate / self.hop / subsampling

    def _make_layer(self, hidden: int, dropout: float, heads: int, ffn_dim: int | None, kernel: int) -> nn.Module:
        if self.kind == "bilstm":
            return nn.LSTM(hidden, hidden // 2, batch_first=True, bidirectional=True)
        if self.kind == "bigru":
            return nn.GRU(hidden, hidden // 2, batch_first=True, bidirectional=True)
        layer = torchaudio.models.conformer.ConformerLayer(hidden, ffn_dim or 4 * hidden, heads, kernel, dropout)
        conv = layer.conv_module.sequential
        conv[2] = PaddingMaskedConv(conv[2])  # depthwise conv: zero padding first
        conv[3] = ChannelLayerNorm(conv[3].num_features)  # BatchNorm1d -> per-frame norm
        return layer

    @property
    def identity(self) -> str:
        args = ",".join(f"{k}={v}" for k, v in sorted(self._init_args.items()))
        return f"scratch:{args}"  # random init: only meaningful with fixed seeds / trained weights

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Mel frames ``(L - win) // hop + 1``, then ``(n - 3) // 2 + 1`` per stride-2 conv."""
        frames = self.mel_lengths(lengths)
        for _ in range(self.num_convs):
            frames = self.conv_lengths(frames)
        return frames.clamp(min=0)

    def mel_lengths(self, lengths: Tensor) -> Tensor:
        if self.center:
            return torch.div(lengths, self.hop, rounding_mode="floor") + 1
        return torch.div(lengths - self.win, self.hop, rounding_mode="floor") + 1

    def conv_lengths(self, frames: Tensor) -> Tensor:
        if self.conv_padding:
            return torch.div(frames + 1, 2, rounding_mode="floor")
        return torch.div(frames - 3, 2, rounding_mode="floor") + 1

    def features(self, audio: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised log-mel (B, T_mel, n_mels) in float32 and its lengths (B,)."""
        mel_lengths = self.mel_lengths(lengths)
        with torch.autocast(device_type=audio.device.type, enabled=False):
            feats = (self.mel(audio.float()) + 1e-6).log().transpose(1, 2)  # (B, T_mel, n_mels)
            feats = NORMALIZERS[self.normalize](feats, mel_lengths)
            if self.spec_augment is not None:  # masks in training mode only (its own flag: CheckpointBackbone
                feats = self.spec_augment(feats, mel_lengths)  # and Lightning's mode restore set it, not ours)
            return feats, mel_lengths

    def forward(self, audio: Tensor, lengths: Tensor) -> BackboneOutput:
        """audio (B, T), lengths (B,) -> ``num_layers`` hidden states (B, T', hidden), lengths (B,)."""
        lengths = lengths.to(audio.device)
        frames = self.check_output_lengths(lengths)
        feats, mel_lengths = self.features(audio, lengths)
        x = self._subsample(feats.unsqueeze(1), mel_lengths)  # (B, C, T', F')
        x = self.input_proj(x.permute(0, 2, 1, 3).flatten(2))  # (B, T', hidden)
        x = zero_padding(x, frames)
        run = self._run_conformer if self.kind == "conformer" else self._run_recurrent
        hidden = run(x, frames)
        return BackboneOutput(tuple(zero_padding(h, frames) for h in hidden), frames)

    def _subsample(self, x: Tensor, frames: Tensor) -> Tensor:
        """(B, 1, T_mel, F) -> (B, C, T', F'); with time padding, frames past each row's end are zeroed
        before every conv, so a row's outputs never see the batch's padding."""
        if not self.conv_padding:
            return self.subsample(x)
        for i in range(0, len(self.subsample), 2):
            x = x * lengths_to_mask(frames, x.size(2))[:, None, :, None].to(x.dtype)
            x = self.subsample[i + 1](self.subsample[i](x))
            frames = self.conv_lengths(frames)
        return x

    def _run_recurrent(self, x: Tensor, frames: Tensor) -> list[Tensor]:
        hidden = []
        for i, lstm in enumerate(self.layers):
            packed = pack_padded_sequence(x if i == 0 else self.dropout(x), frames.cpu(), batch_first=True,
                                          enforce_sorted=False)
            x, _ = pad_packed_sequence(lstm(packed)[0], batch_first=True, total_length=x.size(1))
            hidden.append(x)
        return hidden

    def _run_conformer(self, x: Tensor, frames: Tensor) -> list[Tensor]:
        valid = lengths_to_mask(frames, x.size(1))
        convs = [layer.conv_module.sequential[2] for layer in self.layers]
        for conv in convs:
            conv.valid = valid[:, None, :].to(x.dtype)
        try:
            hidden, x = [], x.transpose(0, 1)  # ConformerLayer works on (T, B, D)
            for layer in self.layers:
                x = layer(x, ~valid)
                hidden.append(x.transpose(0, 1))
            return hidden
        finally:
            for conv in convs:
                conv.valid = None

    def layer_groups(self) -> list[tuple[str, nn.Module]]:
        """frontend (subsampling convs + input projection; the mel transform has no parameters), layer.i."""
        groups = [("frontend", module_group(self.subsample, self.input_proj))]
        return groups + [(f"layer.{i}", layer) for i, layer in enumerate(self.layers)]
