"""Featurizers: turn the selected backbone layers into one feature sequence.

Both take ``layers``: a sequence of L hidden states, each ``(B, T, F)`` (already selected by the
module, see ``resolve_layers``) and return ``(B, T, F)``. Neither mixes frames, so padding is
irrelevant here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LastLayer(nn.Module):
    """The last selected layer, unchanged (no parameters)."""

    def forward(self, layers: Sequence[Tensor]) -> Tensor:
        return layers[-1]


class WeightedLayerSum(nn.Module):
    """SUPERB featurizer: ``sum_l softmax(w)_l · h_l`` with one learnable scalar per layer.

    ``normalize=True`` layer-normalises every hidden state (no affine) before the sum, as s3prl
    does for upstreams whose layers have very different scales. Weights start uniform.
    """

    def __init__(self, num_layers: int, normalize: bool = False) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"WeightedLayerSum needs at least one layer, got {num_layers}")
        self.weights = nn.Parameter(torch.zeros(num_layers))
        self.normalize = normalize

    def layer_weights(self) -> Tensor:
        """(L,) softmax-normalised weights."""
        return torch.softmax(self.weights, dim=0)

    def forward(self, layers: Sequence[Tensor]) -> Tensor:
        if len(layers) != self.weights.numel():
            raise ValueError(f"WeightedLayerSum built for {self.weights.numel()} layers, got {len(layers)}")
        stacked = torch.stack(list(layers), dim=0)  # (L, B, T, F)
        if self.normalize:
            stacked = F.layer_norm(stacked, stacked.shape[-1:])
        w = self.layer_weights().to(stacked.dtype)
        return torch.einsum("l,lbtf->btf", w, stacked)


def resolve_layers(layers: Sequence[int] | None, num_layers: int, featurizer: str) -> list[int]:
    """Absolute, validated layer indices. ``None``: last layer for "last", all layers for "weighted"."""
    if layers is None:
        return [num_layers - 1] if featurizer == "last" else list(range(num_layers))
    out = []
    for i in layers:
        j = i + num_layers if i < 0 else i
        if not 0 <= j < num_layers:
            raise ValueError(f"layer index {i} out of range for a backbone with {num_layers} layers")
        out.append(j)
    if not out:
        raise ValueError("layers must select at least one backbone layer")
    return out


def build_featurizer(name: str, num_layers: int, normalize: bool = False) -> nn.Module:
    """``name`` in {"last", "weighted"}; ``num_layers`` = number of *selected* layers."""
    if name == "last":
        return LastLayer()
    if name == "weighted":
        return WeightedLayerSum(num_layers, normalize=normalize)
    raise ValueError(f"featurizer must be 'last' or 'weighted', got {name!r}")
