"""From-scratch baseline encoder: log-mel -> per-utterance CMVN -> conv2d subsampling -> BiLSTM | Conformer.

Small and fast on CPU; exactly padding invariant in eval mode (and in training up to dropout
randomness): the STFT is not centred (frame ``i`` covers samples ``[i*hop, i*hop + win)``), CMVN
uses valid frames only, the subsampling convs are unpadded in time, the BiLSTM is packed, and the
Conformer's depthwise convolution sees zeroed padding (its BatchNorm is replaced by a per-frame
channel LayerNorm, so batch statistics never mix padding in).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torchaudio
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from datamodules.batch import SAMPLE_RATE, lengths_to_mask

from .base import Backbone, BackboneOutput, masked_normalize, module_group, zero_padding


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
        conv_channels: channels of each stride-2 Conv2d (kernel 3, no time padding).
        hidden: output_dim (BiLSTM: ``hidden // 2`` units per direction).
        num_layers: encoder layers; each layer's output is one hidden state.
        kind: ``"bilstm"`` or ``"conformer"`` (torchaudio ConformerLayer).
        subsampling: 1, 2, 4 or 8 (number of stride-2 convs = log2).
        dropout: between / inside layers.
        num_heads, ffn_dim, conv_kernel: Conformer only (``ffn_dim`` defaults to ``4 * hidden``).
    """

    def __init__(
        self,
        n_mels: int = 80,
        conv_channels: int = 32,
        hidden: int = 256,
        num_layers: int = 3,
        kind: Literal["bilstm", "conformer"] = "bilstm",
        subsampling: int = 4,
        dropout: float = 0.1,
        num_heads: int = 4,
        ffn_dim: int | None = None,
        conv_kernel: int = 15,
        sample_rate: int = SAMPLE_RATE,
    ) -> None:
        super().__init__()
        if subsampling not in (1, 2, 4, 8):
            raise ValueError(f"subsampling must be 1, 2, 4 or 8, got {subsampling}")
        if kind not in ("bilstm", "conformer"):
            raise ValueError(f"kind must be 'bilstm' or 'conformer', got {kind!r}")
        if kind == "bilstm" and hidden % 2:
            raise ValueError(f"bilstm needs an even hidden size, got {hidden}")
        self._init_args = {
            "n_mels": n_mels, "conv_channels": conv_channels, "hidden": hidden, "num_layers": num_layers,
            "kind": kind, "subsampling": subsampling, "dropout": dropout, "num_heads": num_heads,
            "ffn_dim": ffn_dim, "conv_kernel": conv_kernel, "sample_rate": sample_rate,
        }
        self.kind = kind
        self.sample_rate = sample_rate
        self.win, self.hop = int(0.025 * sample_rate), int(0.010 * sample_rate)
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate, n_fft=self.win, win_length=self.win, hop_length=self.hop, n_mels=n_mels, center=False
        )
        self.num_convs = int(math.log2(subsampling))
        convs, channels, freq = [], 1, n_mels
        for _ in range(self.num_convs):
            convs += [nn.Conv2d(channels, conv_channels, 3, stride=2), nn.ReLU()]
            channels, freq = conv_channels, (freq - 3) // 2 + 1
        self.subsample = nn.Sequential(*convs)
        self.input_proj = nn.Sequential(nn.Linear(channels * freq, hidden), nn.Dropout(dropout))
        self.layers = nn.ModuleList(self._make_layer(hidden, dropout, num_heads, ffn_dim, conv_kernel)
                                    for _ in range(num_layers))
        self.dropout = nn.Dropout(dropout)
        self.output_dim, self.num_layers = hidden, num_layers
        self.frames_per_second = sample_rate / self.hop / subsampling

    def _make_layer(self, hidden: int, dropout: float, heads: int, ffn_dim: int | None, kernel: int) -> nn.Module:
        if self.kind == "bilstm":
            return nn.LSTM(hidden, hidden // 2, batch_first=True, bidirectional=True)
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
        frames = torch.div(lengths - self.win, self.hop, rounding_mode="floor") + 1
        for _ in range(self.num_convs):
            frames = torch.div(frames - 3, 2, rounding_mode="floor") + 1
        return frames.clamp(min=0)

    def features(self, audio: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Normalised log-mel (B, T_mel, n_mels) in float32 and its lengths (B,)."""
        mel_lengths = torch.div(lengths - self.win, self.hop, rounding_mode="floor") + 1
        with torch.autocast(device_type=audio.device.type, enabled=False):
            feats = (self.mel(audio.float()) + 1e-6).log().transpose(1, 2)  # (B, T_mel, n_mels)
            return masked_normalize(feats, mel_lengths), mel_lengths  # CMVN over valid frames

    def forward(self, audio: Tensor, lengths: Tensor) -> BackboneOutput:
        """audio (B, T), lengths (B,) -> ``num_layers`` hidden states (B, T', hidden), lengths (B,)."""
        lengths = lengths.to(audio.device)
        frames = self.check_output_lengths(lengths)
        feats, _ = self.features(audio, lengths)
        x = self.subsample(feats.unsqueeze(1))  # (B, C, T', F')
        x = self.input_proj(x.permute(0, 2, 1, 3).flatten(2))  # (B, T', hidden)
        x = zero_padding(x, frames)
        run = self._run_bilstm if self.kind == "bilstm" else self._run_conformer
        hidden = run(x, frames)
        return BackboneOutput(tuple(zero_padding(h, frames) for h in hidden), frames)

    def _run_bilstm(self, x: Tensor, frames: Tensor) -> list[Tensor]:
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
