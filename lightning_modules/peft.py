"""Parameter-efficient adaptation of a transformer backbone: LoRA or bottleneck adapters.

``Adapters(backbone, kind="lora", targets=["q", "v"], rank=8)`` attaches small trainable modules to
the linears of every transformer layer (found by their path inside the layer, the same for the
torchaudio and Hugging Face wav2vec2 / HuBERT / WavLM implementations) through forward hooks:

- ``kind="lora"`` (Hu et al., 2021): ``y = W x + b + (alpha / rank) · B A dropout(x)`` on each target
  linear, ``A`` Kaiming-uniform, ``B`` zero (the model starts exactly as pretrained);
- ``kind="bottleneck"`` (Houlsby et al., 2019): ``y + up(gelu(down(y)))`` on the output of each
  target (use ``targets=["ffn"]``: the feed-forward block), ``up`` zero-initialised.

The backbone's own modules and ``state_dict`` keys are untouched (the adapters live in this module),
so pretrained weights load as before. ``FineTuneCTC(adapter={...})`` freezes every backbone weight
(they stay bit-identical; ``GradualUnfreezing`` treats them as pinned) and trains the adapters in the
layer group of the layer they sit in, plus the head. ``summary.json``'s ``trainable_params`` is then
the adapters + head count.

Targets: ``q``, ``k``, ``v``, ``out`` (attention projections), ``ffn_in``, ``ffn_out`` (feed-forward
linears), ``ffn`` (the feed-forward block; bottleneck adapters). A target whose module is never called
as a module (torchaudio's and HF's WavLM attention pass the projection weights to
``multi_head_attention_forward``) is rejected at construction: a dry forward checks every hook fires.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_modules.backbones.base import Backbone

TARGETS = {"q": "attention.q_proj", "k": "attention.k_proj", "v": "attention.v_proj",
           "out": "attention.out_proj", "ffn_in": "feed_forward.intermediate_dense",
           "ffn_out": "feed_forward.output_dense", "ffn": "feed_forward"}
LAYER_PATH = re.compile(r"(?:^|\.)layers\.(\d+)\.(.+)$")  # <...>.layers.<i>.<path inside the layer>


@dataclass(frozen=True)
class AdapterConfig:
    """``kind``, ``targets`` (keys of ``TARGETS``), LoRA ``rank``/``alpha``/``dropout``, ``bottleneck`` width."""

    kind: Literal["lora", "bottleneck"] = "lora"
    targets: tuple[str, ...] = field(default=("q", "v"))
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    bottleneck: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(self.targets))
        if self.kind not in ("lora", "bottleneck"):
            raise ValueError(f"adapter kind must be 'lora' or 'bottleneck', got {self.kind!r}")
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets:
            raise ValueError(f"adapter targets must be among {sorted(TARGETS)}, got {list(self.targets)}")
        if self.rank < 1 or self.bottleneck < 1:
            raise ValueError(f"adapter rank and bottleneck must be >= 1, got {self.rank}, {self.bottleneck}")


class LoRA(nn.Module):
    """Low-rank update ``(alpha / rank) · B A x`` added to the output of one ``nn.Linear``."""

    def __init__(self, linear: nn.Linear, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, linear.in_features))
        self.B = nn.Parameter(torch.zeros(linear.out_features, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.scale, self.dropout = alpha / rank, nn.Dropout(dropout)
        self.calls = 0

    def hook(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        self.calls += 1
        x = self.dropout(inputs[0])
        return output + self.scale * F.linear(F.linear(x, self.A.to(x.dtype)), self.B.to(x.dtype))


class Bottleneck(nn.Module):
    """Residual bottleneck ``y + up(gelu(down(y)))`` on a module's output ``y (..., D)``."""

    def __init__(self, dim: int, width: int) -> None:
        super().__init__()
        self.down, self.up = nn.Linear(dim, width), nn.Linear(width, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.calls = 0

    def hook(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        self.calls += 1
        return output + self.up(F.gelu(self.down(output)))


class Adapters(nn.Module):
    """The adapters of one backbone (see module docstring); ``params_by_group()`` feeds the optimizer."""

    def __init__(self, backbone: Backbone, config: AdapterConfig) -> None:
        super().__init__()
        self.config = config
        self.adapters = nn.ModuleDict()  # "<backbone module path with / for .>" -> LoRA | Bottleneck
        self.group_of: dict[str, str] = {}  # same key -> layer-group name
        groups = {id(m): name for name, group in backbone.layer_groups() for m in group.modules()}
        wanted = {TARGETS[t]: t for t in config.targets}
        found: dict[str, int] = {}
        for path, module in backbone.named_modules():
            match = LAYER_PATH.search(path)
            if match is None or match.group(2) not in wanted:
                continue
            adapter = self._build(module, path)
            key = path.replace(".", "/")
            self.adapters[key], self.group_of[key] = adapter, groups[id(module)]
            module.register_forward_hook(adapter.hook)
            found[wanted[match.group(2)]] = found.get(wanted[match.group(2)], 0) + 1
        missing = [t for t in config.targets if not found.get(t)]
        if missing:
            raise ValueError(f"adapter targets {missing} ({[TARGETS[t] for t in missing]}) not found in the "
                             f"transformer layers of {type(backbone).__name__}")
        self._check_hooks_fire(backbone)

    def _build(self, module: nn.Module, path: str) -> nn.Module:
        cfg = self.config
        if cfg.kind == "lora":
            if not isinstance(module, nn.Linear):
                raise ValueError(f"LoRA needs an nn.Linear; {path} is a {type(module).__name__}")
            return LoRA(module, cfg.rank, cfg.alpha, cfg.dropout)
        dim = next((m.out_features for m in reversed(list(module.modules())) if isinstance(m, nn.Linear)), None)
        if dim is None:
            raise ValueError(f"bottleneck adapter: {path} has no nn.Linear to size its output")
        return Bottleneck(dim, cfg.bottleneck)

    @torch.no_grad()
    def _check_hooks_fire(self, backbone: Backbone) -> None:
        """One eval forward on 1 s of silence: every hooked module must be called as a module."""
        was_training = backbone.training
        backbone.eval()
        try:
            backbone(torch.zeros(1, backbone.sample_rate), torch.tensor([backbone.sample_rate]))
        finally:
            backbone.train(was_training)
        silent = [k.replace("/", ".") for k, a in self.adapters.items() if a.calls == 0]
        if silent:
            raise ValueError(f"{type(backbone).__name__} uses the weights of {silent[:4]} without calling the "
                             "module (fused attention), so an adapter there would do nothing; choose other targets "
                             "(e.g. ffn_in/ffn_out)")

    def params_by_group(self) -> dict[str, list[nn.Parameter]]:
        """Layer-group name -> the adapter parameters attached inside that group."""
        out: dict[str, list[nn.Parameter]] = {}
        for key, adapter in self.adapters.items():
            out.setdefault(self.group_of[key], []).extend(adapter.parameters())
        return out
