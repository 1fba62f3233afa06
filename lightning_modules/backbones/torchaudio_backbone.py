"""wav2vec 2.0 / HuBERT / WavLM encoders from ``torchaudio.pipelines`` bundles.

The architecture comes from the bundle's parameters (``bundle._params``, ``bundle._model_type``)
merged with ``config_overrides``, built by ``torchaudio.models.wav2vec2_model`` / ``wavlm_model``;
no weights are touched until :meth:`TorchaudioBackbone.load_pretrained`.

Hidden states (``num_layers = encoder_num_layers + 1``), SUPERB / Hugging Face convention:

- ``hidden_states[0]``: input of the first transformer layer (projected CNN features + convolutional
  positional embedding, plus the transformer's input layer norm for post-LN models such as
  ``WAV2VEC2_BASE``);
- ``hidden_states[i]``: output of transformer layer ``i - 1``; for pre-LN models (``*_LARGE_LV60K``,
  XLS-R, ``HUBERT_LARGE``, ``WAVLM_LARGE``) the last one includes the final layer norm, so it
  equals the encoder output of ``model(audio, lengths)`` (every parameter is used, as DDP needs).

Padding: lengths drive the attention masks (WavLM: key padding mask, which torchaudio's own
``extract_features`` cannot pass), so valid frames do not depend on padding -- EXCEPT with the
``"group_norm"`` CNN extractor (``WAV2VEC2_BASE``, ``HUBERT_BASE``, ``WAVLM_BASE*``, all
``*_BASE``/``WAV2VEC2_LARGE`` bundles): its GroupNorm normalises each channel over the whole
padded sequence, so padding slightly changes those models' features (as in fairseq / HF).
Bundles that normalise the waveform get a per-utterance normalisation over valid samples (the
torchaudio wrapper normalises over the whole padded batch tensor instead).

Air-gapped clusters: ``export_bundle_weights("WAV2VEC2_BASE", "w2v2_base.pt")`` on a machine with
internet, then ``TorchaudioBackbone("WAV2VEC2_BASE", weights_path="w2v2_base.pt")``.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import json
from dataclasses import asdict
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import torchaudio
from torch import Tensor, nn
from torchaudio.models import wav2vec2_model, wavlm_model
from torchaudio.pipelines._wav2vec2.impl import Wav2Vec2Bundle

from datamodules.atomic import torch_save_atomic
from datamodules.batch import lengths_to_mask

from .base import (
    Backbone,
    BackboneOutput,
    file_sha1,
    load_state_dict_checked,
    masked_normalize,
    module_group,
    zero_padding,
)
from .layer_drop import LayerDrop
from .masking import FeatureMasking, MaskConfig, resolve_mask

_FACTORIES = {"Wav2Vec2": wav2vec2_model, "WavLM": wavlm_model}


def available_bundles() -> list[str]:
    """Names of the ``torchaudio.pipelines`` wav2vec2-family bundles this backbone accepts."""
    return sorted(n for n in dir(torchaudio.pipelines) if isinstance(getattr(torchaudio.pipelines, n), Wav2Vec2Bundle))


def get_bundle(name: str) -> Wav2Vec2Bundle:
    bundle = getattr(torchaudio.pipelines, name, None)
    if not isinstance(bundle, Wav2Vec2Bundle):
        raise ValueError(f"unknown torchaudio wav2vec2-family bundle {name!r}; available: {available_bundles()}")
    return bundle


class TorchaudioBackbone(Backbone):
    """A torchaudio wav2vec2-family encoder (see module docstring for the hidden-state layout).

    Args:
        bundle: ``torchaudio.pipelines`` name, e.g. ``WAV2VEC2_BASE``, ``WAV2VEC2_LARGE``,
            ``WAV2VEC2_XLSR53``, ``HUBERT_BASE``, ``HUBERT_LARGE``, ``WAVLM_BASE``,
            ``WAVLM_BASE_PLUS``, ``WAVLM_LARGE`` (ASR bundles work too; their CTC head is dropped).
        weights_path: local state_dict of the torchaudio model (from :func:`export_bundle_weights`
            or :func:`save_backbone_weights`); ``None`` downloads the bundle's weights.
        config_overrides: entries replacing the bundle's ``_params`` (architecture or dropouts),
            e.g. a tiny model for tests.
        layer_drop: LayerDrop probability during training (0 disables; fairseq fine-tuning uses 0.05-0.1).
            Same decisions on every DDP rank and a gradient for every parameter, so plain ``ddp``
            works (no ``find_unused_parameters``); see ``layer_drop.py``.
        layer_drop_seed: seed of the LayerDrop decisions (identical on every rank).
        mask: masking of the projected CNN features before the transformer in training
            (``masking.py``): a preset (``"10min"``, ``"1h"``, ``"10h"``, ``"100h"``, ``"960h"``), a
            dict of ``MaskConfig`` fields, or None (off). Adds the learned mask embedding
            ``masking.embedding`` (group ``feature_projection``).
    """

    def __init__(
        self,
        bundle: str = "WAV2VEC2_BASE",
        weights_path: str | None = None,
        config_overrides: dict[str, Any] | None = None,
        layer_drop: float = 0.0,
        layer_drop_seed: int = 0,
        mask: str | dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.bundle_name = bundle
        self.bundle = get_bundle(bundle)
        self.weights_path = weights_path
        self.config_overrides = json.loads(json.dumps(config_overrides or {}))  # JSON-safe (tuples -> lists)
        self.layer_drop = float(layer_drop)
        mask_config = resolve_mask(mask)
        self._init_args = {
            "bundle": bundle,
            "weights_path": weights_path,
            "config_overrides": self.config_overrides,
            "layer_drop": self.layer_drop,
            "layer_drop_seed": int(layer_drop_seed),
            "mask": None if mask_config is None else asdict(mask_config),
        }
        self.model_type = self.bundle._model_type
        self.model = _FACTORIES[self.model_type](**self.params)
        self.normalize_input = bool(self.bundle._normalize_waveform)
        convs = self.model.feature_extractor.conv_layers
        self._convs = [(int(c.kernel_size), int(c.stride)) for c in convs]
        self.sample_rate = int(self.bundle.sample_rate)
        self.frames_per_second = self.sample_rate / math.prod(s for _, s in self._convs)
        self.output_dim = int(self.params["encoder_embed_dim"])
        self.num_layers = len(self.model.encoder.transformer.layers) + 1
        self.layerdrop = LayerDrop(self.layer_drop, layer_drop_seed) if self.layer_drop > 0 else None
        self.masking = FeatureMasking(self.output_dim, mask_config) if mask_config is not None else None

    def feature_masking(self) -> MaskConfig | None:
        return None if self.masking is None else self.masking.config

    @property
    def params(self) -> dict[str, Any]:
        """The factory arguments: bundle ``_params`` + overrides, without the CTC head (``aux_num_out``)."""
        params = {**self.bundle._params, "aux_num_out": None}
        allowed = set(inspect.signature(_FACTORIES[self.bundle._model_type]).parameters) - {"aux_num_out"}
        for key, value in self.config_overrides.items():
            if key not in allowed or key == "encoder_layer_drop":
                hint = " (use the layer_drop argument)" if key == "encoder_layer_drop" else ""
                raise ValueError(f"config_overrides: {key!r} is not a {self.bundle_name} parameter{hint}; "
                                 f"allowed: {sorted(allowed - {'encoder_layer_drop'})}")
            params[key] = value
        params["encoder_layer_drop"] = 0.0  # applied in forward(), not by torchaudio
        return params

    @cached_property
    def identity(self) -> str:
        overrides = hashlib.sha1(json.dumps(self.config_overrides, sort_keys=True).encode()).hexdigest()[:12]
        weights = file_sha1(self.weights_path) if self.weights_path else "bundle"
        return f"torchaudio:{self.bundle_name}:overrides={overrides}:weights={weights}"

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Frames after the CNN extractor: ``floor((L - k) / s) + 1`` per conv layer."""
        for kernel, stride in self._convs:
            lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
        return lengths.clamp(min=0)

    def forward(self, audio: Tensor, lengths: Tensor) -> BackboneOutput:
        """audio (B, T), lengths (B,) -> ``num_layers`` hidden states (B, T', output_dim), lengths (B,)."""
        lengths = lengths.to(audio.device)
        frames = self.check_output_lengths(lengths)
        if self.normalize_input:
            audio = masked_normalize(audio, lengths)  # per utterance, valid samples only
        features, _ = self.model.feature_extractor(audio, None)  # (B, T', C)
        x, attention_mask = self.model.encoder._preprocess(features, frames)  # zeroes padded frames
        if self.masking is not None:  # training only: time spans -> mask embedding, channel spans -> 0
            x = self.masking(x, frames)
        transformer = self.model.encoder.transformer
        x = transformer._preprocess(x)
        key_padding_mask = None
        if self.model_type == "WavLM":  # WavLM attention takes an additive key padding mask (B, T')
            pad = ~lengths_to_mask(frames, x.size(1))
            attention_mask, key_padding_mask = None, x.new_zeros(pad.shape).masked_fill(pad, float("-inf"))
        hidden, position_bias = [x], None
        drops = self._drops(len(transformer.layers))
        for layer, drop in zip(transformer.layers, drops):
            if drop:  # all-zero gradients for the skipped layer's parameters: DDP needs no unused-parameter search
                x = LayerDrop.touch(x, layer)
                hidden.append(x)
                continue
            x, position_bias = layer(x, attention_mask, position_bias=position_bias, key_padding_mask=key_padding_mask)
            hidden.append(x)
        if not transformer.layer_norm_first:  # pre-LN layers: torchaudio applies the final norm after the stack
            hidden[-1] = transformer.layer_norm(hidden[-1])
        return BackboneOutput(tuple(zero_padding(h, frames) for h in hidden), frames)

    def _drops(self, num_layers: int) -> list[bool]:
        """LayerDrop decisions; WavLM's first layer computes the relative position bias and always runs."""
        if self.layerdrop is None:
            return [False] * num_layers
        return self.layerdrop.decide(num_layers, keep=(0,) if self.model_type == "WavLM" else ())

    def layer_groups(self) -> list[tuple[str, nn.Module]]:
        """feature_extractor, feature_projection (+ mask embedding, positional conv [+ input layer norm]), layer.0 .. layer.N-1."""
        encoder = self.model.encoder
        transformer = encoder.transformer
        norm_in = transformer.layer_norm if transformer.layer_norm_first else None
        norm_out = None if transformer.layer_norm_first else transformer.layer_norm
        layers = list(transformer.layers)
        groups = [
            ("feature_extractor", self.model.feature_extractor),
            ("feature_projection", module_group(encoder.feature_projection, self.masking, transformer.pos_conv_embed,
                                                norm_in)),
        ]
        groups += [(f"layer.{i}", layer) for i, layer in enumerate(layers[:-1])]
        groups.append((f"layer.{len(layers) - 1}", module_group(layers[-1], norm_out)))
        return groups

    def load_pretrained(self) -> None:
        """Load ``weights_path`` if set, else download the bundle's weights (torch hub cache)."""
        if self.weights_path:
            source = str(self.weights_path)
            state = torch.load(self.weights_path, map_location="cpu", weights_only=True)
        else:
            source = f"torchaudio bundle {self.bundle_name} ({self.bundle._path})"
            try:
                state = self.bundle._get_state_dict(None)
            except OSError as err:  # URLError, DNS / connection errors, unwritable hub cache
                raise RuntimeError(
                    f"could not download the weights of {source}: {err}. On an offline machine, run "
                    f"`python -c \"from lightning_modules.backbones import export_bundle_weights; "
                    f"export_bundle_weights('{self.bundle_name}', 'weights.pt')\"` where internet is available "
                    "and pass weights_path='weights.pt'."
                ) from err
        load_state_dict_checked(self.model, _clean_state_dict(state), source)


def _clean_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Drop the ASR head (``aux.*``) and the ``model.`` prefix of torchaudio's normalising wrapper."""
    if state and all(k.startswith("model.") for k in state):
        state = {k[len("model."):]: v for k, v in state.items()}
    return {k: v for k, v in state.items() if not k.startswith("aux.")}


def save_backbone_weights(backbone: Backbone, path: str | Path) -> Path:
    """Atomically write ``backbone``'s weights as a local file that ``weights_path`` can load back.

    For a :class:`TorchaudioBackbone` this is the torchaudio model's state_dict (the same format as
    :func:`export_bundle_weights`); for other backbones the backbone's own state_dict.
    """
    model = backbone.model if isinstance(backbone, TorchaudioBackbone) else backbone
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    torch_save_atomic(state, path)
    return Path(path)


def export_bundle_weights(bundle: str, path: str | Path) -> Path:
    """Download ``bundle``'s pretrained weights (needs internet) and save them for ``weights_path``."""
    model = get_bundle(bundle).get_model()
    torch_save_atomic(_clean_state_dict(model.state_dict()), path)
    return Path(path)
