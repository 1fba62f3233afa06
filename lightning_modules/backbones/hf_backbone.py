"""Hugging Face wav2vec2-family encoders (wav2vec2, HuBERT, WavLM, data2vec-audio, ...): optional extra.

``transformers`` is imported lazily, so the framework works without it; using this backbone without
it raises an ImportError saying ``pip install 'speechxfer[hf]'``.

Offline rebuilds: ``__init__`` reads ``config.json`` through ``AutoConfig`` (a local directory, the
HF cache, or the hub) only when ``hf_config`` is not given; ``config()`` embeds the full HF config
dict in ``init_args["hf_config"]``, so checkpoints rebuild the architecture with no file or network.
``load_pretrained()`` is the only place reading weights (``AutoModel.from_pretrained``).

Hidden states follow HF's ``output_hidden_states``: ``num_hidden_layers + 1`` tensors (transformer
input, then every layer; stable-layer-norm models' last state includes the final layer norm).
The attention mask is always passed (padding does not leak through attention); HF training-time
SpecAugment / LayerDrop follow the HF config (``config_overrides={"mask_time_prob": 0.0, ...}``).
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Any

from torch import Tensor, nn

from datamodules.batch import lengths_to_mask

from .base import Backbone, BackboneOutput, load_state_dict_checked, masked_normalize, module_group, zero_padding


def require_transformers():
    """Import ``transformers`` or raise an ImportError with the install command."""
    try:
        import transformers
    except ImportError as err:
        raise ImportError(
            "HFBackbone needs Hugging Face transformers, which is an optional extra: "
            "pip install 'speechxfer[hf]'  (or: pip install 'transformers>=4.40')"
        ) from err
    return transformers


class HFBackbone(Backbone):
    """A Hugging Face audio encoder loaded with ``AutoModel``.

    Args:
        name_or_path: hub id (``facebook/wav2vec2-base``) or local directory.
        hf_config: full HF config dict (``config.to_dict()``); set by ``config()`` for offline rebuilds.
        config_overrides: entries replacing ``hf_config`` values (e.g. ``{"layerdrop": 0.0}``).
        normalize_waveform: per-utterance zero-mean unit-variance input (the feature extractors'
            ``do_normalize``; True for most wav2vec2 / WavLM checkpoints).
        revision: hub revision (branch, tag or commit) for config and weights.
    """

    def __init__(
        self,
        name_or_path: str,
        hf_config: dict[str, Any] | None = None,
        config_overrides: dict[str, Any] | None = None,
        normalize_waveform: bool = True,
        revision: str | None = None,
    ) -> None:
        super().__init__()
        transformers = require_transformers()
        if hf_config is None:
            cfg = transformers.AutoConfig.from_pretrained(name_or_path, revision=revision)
        else:
            cfg = transformers.CONFIG_MAPPING[hf_config["model_type"]].from_dict(dict(hf_config))
        for key, value in (config_overrides or {}).items():
            if not hasattr(cfg, key):
                raise ValueError(f"config_overrides: {type(cfg).__name__} has no attribute {key!r}")
            setattr(cfg, key, value)
        self.hf_config = cfg
        self.model = transformers.AutoModel.from_config(cfg)
        self.name_or_path, self.revision, self.normalize_input = name_or_path, revision, normalize_waveform
        self._init_args = {
            "name_or_path": name_or_path,
            "hf_config": cfg.to_dict(),
            "config_overrides": None,  # already merged into hf_config
            "normalize_waveform": normalize_waveform,
            "revision": revision,
        }
        self.output_dim = int(cfg.hidden_size)
        self.num_layers = int(cfg.num_hidden_layers) + 1
        self.frames_per_second = self.sample_rate / math.prod(cfg.conv_stride)

    @cached_property
    def identity(self) -> str:
        return f"hf:{self.name_or_path}@{self.revision or 'default'}"

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return self.model._get_feat_extract_output_lengths(lengths).long()

    def forward(self, audio: Tensor, lengths: Tensor) -> BackboneOutput:
        """audio (B, T), lengths (B,) -> ``num_layers`` hidden states (B, T', hidden_size), lengths (B,)."""
        lengths = lengths.to(audio.device)
        frames = self.check_output_lengths(lengths)
        if self.normalize_input:
            audio = masked_normalize(audio, lengths)
        mask = lengths_to_mask(lengths, audio.size(1)).long()
        out = self.model(audio, attention_mask=mask, output_hidden_states=True)
        return BackboneOutput(tuple(zero_padding(h, frames) for h in out.hidden_states), frames)

    def layer_groups(self) -> list[tuple[str, nn.Module]]:
        """feature_extractor, feature_projection (everything else below the layers), layer.0 .. layer.N-1."""
        layers = list(self.model.encoder.layers)
        final_norm = self.model.encoder.layer_norm if getattr(self.hf_config, "do_stable_layer_norm", False) else None
        taken = {id(p) for m in [self.model.feature_extractor, *layers, final_norm] if m is not None
                 for p in m.parameters()}
        rest = {n.replace(".", "_"): p for n, p in self.model.named_parameters() if id(p) not in taken}
        groups = [("feature_extractor", self.model.feature_extractor), ("feature_projection", module_group(**rest))]
        groups += [(f"layer.{i}", layer) for i, layer in enumerate(layers[:-1])]
        return groups + [(f"layer.{len(layers) - 1}", module_group(layers[-1], final_norm))]

    def load_pretrained(self) -> None:
        transformers = require_transformers()
        pretrained = transformers.AutoModel.from_pretrained(self.name_or_path, revision=self.revision)
        load_state_dict_checked(self.model, pretrained.state_dict(), f"{self.name_or_path} (Hugging Face)")
