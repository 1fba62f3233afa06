"""The backbone contract shared by every encoder: ``BackboneOutput`` and the abstract ``Backbone``.

A backbone maps a padded waveform batch ``audio (B, T)`` + ``lengths (B,)`` to ``num_layers``
hidden states, each ``(B, T', output_dim)``, plus frame lengths ``(B,)``.  ``__init__`` only
builds the architecture (never touches the network); ``load_pretrained()`` is the single place
that reads or downloads weights; ``config()`` returns ``{"class_path", "init_args"}`` that
rebuilds the same architecture offline (see :func:`build_backbone`).

Padding contract: valid frames never depend on padding, and padded frames of every hidden state
are zero (so masked sums downstream need no extra care).
"""

from __future__ import annotations

import copy
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from pytorch_lightning.cli import instantiate_class
from torch import Tensor, nn

from datamodules.batch import SAMPLE_RATE, lengths_to_mask

if TYPE_CHECKING:
    from .masking import MaskConfig


class BackboneOutput(NamedTuple):
    """``hidden_states``: ``num_layers`` tensors ``(B, T', F)`` (bottom -> top); ``lengths``: ``(B,)`` int64."""

    hidden_states: tuple[Tensor, ...]
    lengths: Tensor


class Backbone(nn.Module, ABC):
    """Abstract speech encoder; see the module docstring for the contract.

    Subclasses set ``output_dim``, ``num_layers``, ``frames_per_second`` and ``sample_rate`` in
    ``__init__`` and store their JSON-safe constructor arguments in ``self._init_args``.
    """

    output_dim: int
    num_layers: int
    frames_per_second: float
    sample_rate: int = SAMPLE_RATE
    _init_args: dict[str, Any]

    @property
    @abstractmethod
    def identity(self) -> str:
        """Stable string naming architecture + pretrained weights (feature-cache namespace)."""

    @abstractmethod
    def forward(self, audio: Tensor, lengths: Tensor) -> BackboneOutput:
        """audio (B, T) float, lengths (B,) -> BackboneOutput with hidden states (B, T', F)."""

    @abstractmethod
    def layer_groups(self) -> list[tuple[str, nn.Module]]:
        """(name, module) pairs ordered bottom -> top; together they hold every parameter exactly once."""

    @abstractmethod
    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Exact number of output frames ``(B,)`` for ``lengths (B,)`` input samples."""

    def load_pretrained(self) -> None:
        """Read / download pretrained weights into this module; no-op for from-scratch models."""

    def feature_masking(self) -> MaskConfig | None:
        """The span masking this backbone applies to its features in training mode (None: none)."""
        return None

    def config(self) -> dict[str, Any]:
        """``{"class_path", "init_args"}`` rebuilding this architecture offline (no weights)."""
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": copy.deepcopy(self._init_args)}

    def check_output_lengths(self, lengths: Tensor) -> Tensor:
        """``output_lengths(lengths)``, raising a clear error if any utterance yields no frame."""
        out = self.output_lengths(lengths)
        if bool((out < 1).any()):
            shortest = int(lengths.min())
            raise ValueError(
                f"{type(self).__name__}: an utterance of {shortest} samples "
                f"({shortest / self.sample_rate:.3f} s) is too short to produce a single frame; "
                "filter such utterances in the data layer (min duration)"
            )
        return out


def masked_normalize(x: Tensor, lengths: Tensor, eps: float = 1e-5) -> Tensor:
    """Zero mean, unit variance over the valid steps of each row (dim 1), padding set to 0.

    ``x`` is (B, T) (a waveform: one mean per utterance) or (B, T, F) (features: one mean per bin).
    """
    mask = lengths_to_mask(lengths, x.size(1)).view(*lengths.shape, x.size(1), *([1] * (x.dim() - 2))).to(x.dtype)
    n = lengths.clamp(min=1).to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
    mean = (x * mask).sum(1, keepdim=True) / n
    var = (((x - mean) * mask) ** 2).sum(1, keepdim=True) / n
    return (x - mean) * torch.rsqrt(var + eps) * mask


def zero_padding(x: Tensor, lengths: Tensor) -> Tensor:
    """Zero the padded frames of ``x (B, T, ...)`` (out of place)."""
    mask = lengths_to_mask(lengths, x.size(1))
    return x * mask.view(*mask.shape, *([1] * (x.dim() - 2))).to(x.dtype)


def module_group(*parts: nn.Module | None, **params: nn.Parameter) -> nn.Module:
    """Bundle existing modules / parameters into one (unregistered) module for ``layer_groups``.

    The returned container shares the parameters; it is not attached to the backbone, so it does
    not change the backbone's ``state_dict``.
    """
    group = nn.ModuleList([p for p in parts if p is not None])
    for name, param in params.items():
        group.register_parameter(name, param)
    return group


def build_backbone(config: Mapping[str, Any]) -> Backbone:
    """Instantiate ``{"class_path": "pkg.mod.Class", "init_args": {...}}`` (the output of ``config()``)."""
    init_args = dict(config.get("init_args") or {})
    backbone = instantiate_class((), {"class_path": config["class_path"], "init_args": init_args})
    if not isinstance(backbone, Backbone):
        raise TypeError(f"{config['class_path']} is not a Backbone subclass")
    return backbone


def load_state_dict_checked(module: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Strict ``load_state_dict`` whose error names ``source`` and summarises what did not match."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"weights from {source} do not fit {type(module).__name__}: "
            f"{_few('missing', missing)}{_few('unexpected', unexpected)}{_few('shape mismatch', mismatched)}"
            "(do config_overrides change the architecture?)"
        )
    module.load_state_dict(state, strict=True)


def _few(label: str, items: Iterable[str], n: int = 4) -> str:
    items = list(items)
    if not items:
        return ""
    more = f" ... (+{len(items) - n})" if len(items) > n else ""
    return f"{len(items)} {label} [{', '.join(items[:n])}{more}]; "


def file_sha1(path: str | Path, chunk: int = 1 << 22) -> str:
    """First 16 hex digits of the file's SHA-1 (weights fingerprint for ``identity``)."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()[:16]
