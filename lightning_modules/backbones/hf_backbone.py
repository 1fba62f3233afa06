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
``mask="100h"`` (a preset of ``masking.py``, or a dict of ``MaskConfig`` fields) writes the
recipe's masking into that config in HF's convention (``mask_time_prob = p × mask_time_length``):
HF's default ``mask_time_prob=0.05`` is ~13× less masking than the wav2vec 2.0 recipe. HF's own
LayerDrop (``layerdrop``) draws per rank: under DDP with ``layerdrop > 0`` use
``strategy: ddp_find_unused_parameters_true`` (the torchaudio backbone's LayerDrop needs no such thing).
The mask embedding (``masked_spec_embed``) exists only when HF masking is on; ``load_pretrained``
keeps a fresh one when the pretrained model has none and ignores the pretrained one when masking is off.
"""

from __future__ import annotations

import math
from functools import cached_property
from typing import Any

from torch import Tensor, nn

from datamodules.batch import lengths_to_mask

from .base import Backbone, BackboneOutput, load_state_dict_checked, masked_normalize, module_group, zero_padding
from .masking import MaskConfig, resolve_mask


MASK_EMBEDDING = "masked_spec_embed"


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
        mask: masking preset / settings written into the HF config (see module docstring); None keeps
            the config's own ``mask_*`` values.
    """

    def __init__(
        self,
        name_or_path: str,
        hf_config: dict[str, Any] | None = None,
        config_overrides: dict[str, Any] | None = None,
        normalize_waveform: bool = True,
        revision: str | None = None,
        mask: str | dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        transformers = require_transformers()
        if hf_config is None:
            cfg = transformers.AutoConfig.from_pretrained(name_or_path, revision=revision)
        else:
            cfg = transformers.CONFIG_MAPPING[hf_config["model_type"]].from_dict(dict(hf_config))
        mask_config = resolve_mask(mask)
        overrides = {**(mask_config.to_hf() if mask_config is not None else {}), **(config_overrides or {})}
        for key, value in overrides.items():
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
            "mask": None,  # already merged into hf_config
        }
        self.output_dim = int(cfg.hidden_size)
        self.num_layers = int(cfg.num_hidden_layers) + 1
        self.frames_per_second = self.sample_rate / math.prod(cfg.conv_stride)

    @cached_property
    def identity(self) -> str:
        return f"hf:{self.name_or_path}@{self.revision or 'default'}"

    def output_lengths(self, lengths: Tensor) -> Tensor:
        return self.model._get_feat_extract_output_lengths(lengths).long()

    def feature_masking(self) -> MaskConfig | None:
        """The HF config's masking, in the paper's convention (probabilities / span)."""
        cfg = self.hf_config
        if not cfg.apply_spec_augment or (cfg.mask_time_prob <= 0 and cfg.mask_feature_prob <= 0):
            return None
        return MaskConfig(time_prob=cfg.mask_time_prob / cfg.mask_time_length, time_span=cfg.mask_time_length,
                          channel_prob=cfg.mask_feature_prob / cfg.mask_feature_length,
                          channel_span=cfg.mask_feature_length, time_min_spans=cfg.mask_time_min_masks)

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
        state = dict(pretrained.state_dict())
        own = self.model.state_dict()
        if MASK_EMBEDDING not in own:
            state.pop(MASK_EMBEDDING, None)  # masking off here: the pretrained mask embedding is unused
        elif MASK_EMBEDDING not in state:
            state[MASK_EMBEDDING] = own[MASK_EMBEDDING]  # masking on, none pretrained: keep the fresh one
        load_state_dict_checked(self.model, state, f"{self.name_or_path} (Hugging Face)")
