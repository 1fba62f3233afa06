"""Output heads: CTC heads (linear, BiLSTM) and the DANN domain classifier.

All take ``x (B, T, F)`` and ``lengths (B,)`` (valid frames per row); padded frames never
influence a valid output (the BiLSTM packs its input, pooling is masked).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from datamodules.batch import lengths_to_mask


def masked_mean(x: Tensor, lengths: Tensor) -> Tensor:
    """(B, T, F) -> (B, F): mean over the valid frames of each row (rows of length 0 give 0)."""
    mask = lengths_to_mask(lengths, x.shape[1]).unsqueeze(-1).to(x.dtype)
    return (x * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class LinearHead(nn.Module):
    """Dropout + Linear per frame: (B, T, F) -> logits (B, T, V)."""

    def __init__(self, in_dim: int, vocab_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(in_dim, vocab_size)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        return self.proj(self.dropout(x))


class BiLSTMHead(nn.Module):
    """Packed bidirectional LSTM + Linear: (B, T, F) -> logits (B, T, V); padding is packed away."""

    def __init__(self, in_dim: int, vocab_size: int, hidden: int = 256, num_layers: int = 2,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(in_dim, hidden, num_layers=num_layers, batch_first=True, bidirectional=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.proj = nn.Linear(2 * hidden, vocab_size)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        packed = pack_padded_sequence(self.dropout(x), lengths.clamp(min=1).cpu(), batch_first=True,
                                      enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return self.proj(self.dropout(out))


def build_head(name: str, in_dim: int, vocab_size: int, hidden: int = 256, dropout: float = 0.0) -> nn.Module:
    """``name`` in {"linear", "bilstm"}."""
    if name == "linear":
        return LinearHead(in_dim, vocab_size, dropout)
    if name == "bilstm":
        return BiLSTMHead(in_dim, vocab_size, hidden, dropout=dropout)
    raise ValueError(f"head must be 'linear' or 'bilstm', got {name!r}")


class DomainClassifier(nn.Module):
    """MLP domain classifier for DANN.

    ``level="utterance"``: masked mean pool over valid frames, then MLP: -> logits (B, D).
    ``level="frame"``: MLP on every frame: -> logits (B, T, D) (padded frames are dropped by
    ``domain_loss``).
    """

    def __init__(self, in_dim: int, hidden: int = 256, num_domains: int = 2, level: str = "utterance",
                 dropout: float = 0.0) -> None:
        super().__init__()
        if level not in ("utterance", "frame"):
            raise ValueError(f"DomainClassifier level must be 'utterance' or 'frame', got {level!r}")
        self.level = level
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, num_domains))

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        return self.mlp(masked_mean(x, lengths) if self.level == "utterance" else x)


def valid_frames(logits: Tensor, lengths: Tensor) -> Tensor:
    """Domain logits (B, D) -> unchanged; (B, T, D) -> (N, D) on the N valid frames only."""
    if logits.dim() == 2:
        return logits
    return logits[lengths_to_mask(lengths, logits.shape[1])]


def domain_loss(logits: Sequence[Tensor], lengths: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Cross-entropy and accuracy of per-domain logits; ``logits[d]`` are predictions on domain ``d``.

    Each entry is (B_d, D) (utterance level) or (B_d, T_d, D) (frame level: valid frames only, every
    valid frame counts once).
    """
    flat = [valid_frames(x, n) for x, n in zip(logits, lengths)]
    labels = torch.cat([torch.full((len(x),), d, dtype=torch.long, device=x.device) for d, x in enumerate(flat)])
    flat = torch.cat(flat)
    loss = nn.functional.cross_entropy(flat, labels)
    acc = (flat.argmax(-1) == labels).float().mean()
    return loss, acc
