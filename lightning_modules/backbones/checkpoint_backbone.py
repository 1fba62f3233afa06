"""Start from the backbone of a checkpoint written by this framework (e.g. fine-tuned on another domain).

Checkpoint contract: ``checkpoint["speechxfer"]["backbone_config"]`` rebuilds the architecture and
``checkpoint["state_dict"]`` holds its weights under ``backbone.``.  The inner backbone's modules are
registered directly on this module, so ``state_dict()`` / ``named_parameters()`` keys are exactly
the inner backbone's, and ``config()`` returns the inner config: a model fine-tuned from here is
rebuilt later without the source checkpoint.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .base import Backbone, BackboneOutput, build_backbone, file_sha1, load_state_dict_checked

PREFIX = "backbone."


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Memory-mapped, weights-only ``torch.load`` of a checkpoint (``CheckpointLoadError`` names the file)."""
    from lightning_modules.checkpoint_io import read_checkpoint as read

    return read(path, map_location="cpu", mmap=True)


class CheckpointBackbone(Backbone):
    """The backbone stored in a speechxfer checkpoint; ``load_pretrained()`` loads its ``backbone.*`` weights."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = str(path)
        self._init_args = {"path": self.path}
        ckpt = read_checkpoint(path)
        meta = ckpt.get("speechxfer")
        if not isinstance(meta, dict) or "backbone_config" not in meta:
            raise ValueError(f"{path}: not a speechxfer checkpoint (no checkpoint['speechxfer']['backbone_config'])")
        inner = build_backbone(meta["backbone_config"])
        if inner._parameters or inner._buffers:
            raise TypeError(f"{type(inner).__name__} keeps tensors outside submodules; cannot wrap it")
        self.__dict__["_inner"] = inner  # not a registered submodule: no "inner." key prefix
        for name, child in inner.named_children():
            self.add_module(name, child)
        self.output_dim, self.num_layers = inner.output_dim, inner.num_layers
        self.frames_per_second, self.sample_rate = inner.frames_per_second, inner.sample_rate

    @property
    def inner(self) -> Backbone:
        return self.__dict__["_inner"]

    @cached_property
    def identity(self) -> str:
        return f"checkpoint:{type(self.inner).__name__}:{file_sha1(self.path)}"

    def config(self) -> dict[str, Any]:
        return self.inner.config()

    def train(self, mode: bool = True) -> CheckpointBackbone:
        super().train(mode)
        self.inner.train(mode)  # the inner module's own ``training`` flag (its children are shared)
        return self

    def forward(self, audio: Tensor, lengths: Tensor) -> BackboneOutput:
        return self.inner(audio, lengths)

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return self.inner.output_lengths(lengths)

    def layer_groups(self) -> list[tuple[str, nn.Module]]:
        return self.inner.layer_groups()

    def feature_masking(self):
        return self.inner.feature_masking()

    def load_pretrained(self) -> None:
        state = read_checkpoint(self.path).get("state_dict", {})
        weights = {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
        if not weights:
            raise ValueError(f"{self.path}: checkpoint['state_dict'] has no '{PREFIX}*' weights")
        load_state_dict_checked(self, weights, self.path)
