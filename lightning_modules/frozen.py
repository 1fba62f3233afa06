"""Frozen features (SUPERB protocol): a fixed pretrained backbone, a learned layer mix, a light head.

The backbone never trains: ``requires_grad=False``, outside the optimizer, always in ``eval()``
(``train()`` is overridden, so dropout / LayerDrop stay off) and run under ``torch.no_grad``.
The default featurizer is ``WeightedLayerSum`` over ``layers`` (all by default); its softmax
weights are logged every epoch as ``layer_weights/<layer>``.

Feature cache: with ``feature_cache_dir`` set, the selected hidden states are looked up by
``batch["audio_keys"]`` in a ``FeatureCache`` (namespace: backbone identity, layers, sample rate)
and computed + stored on a miss (a batch is served from the cache only if every utterance is
cached). If the datamodule augments waveforms (``augments_waveform``), features change every
epoch, so the cache is disabled for training batches (warning logged) and used for val/test only;
without a datamodule (plain dataloaders) training batches are cached.
``feature_cache_dtype="float16"`` halves disk use; "float32" stores exact features.
"""

from __future__ import annotations

from typing import Literal

import torch
from pytorch_lightning.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn

from datamodules.base import speech_datamodule
from lightning_modules.backbones.base import Backbone
from lightning_modules.ctc import CTCModule
from lightning_modules.feature_cache import FeatureCache, pad_features


class FrozenFeatureCTC(CTCModule):
    """``CTCModule`` on a frozen backbone; other args as ``CTCModule`` (default featurizer "weighted")."""

    frozen_backbone = True

    def __init__(self, backbone: Backbone, tokenizer: dict, featurizer: Literal["last", "weighted"] = "weighted",
                 feature_cache_dir: str | None = None,
                 feature_cache_dtype: Literal["float16", "float32"] = "float16", **kwargs) -> None:
        super().__init__(backbone, tokenizer, featurizer=featurizer, **kwargs)
        if feature_cache_dtype not in ("float16", "float32"):
            raise ValueError(f"feature_cache_dtype must be 'float16' or 'float32', got {feature_cache_dtype!r}")
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        self.cache: FeatureCache | None = None
        self._train_cache = False  # False while the datamodule augments waveforms

    def train(self, mode: bool = True) -> FrozenFeatureCTC:
        super().train(mode)
        self.backbone.eval()
        return self

    def backbone_layer_groups(self) -> list[tuple[str, list[nn.Parameter]]]:
        return []  # never optimised

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.hparams.feature_cache_dir and self.cache is None:
            datamodule = speech_datamodule(self._trainer)
            self._train_cache = datamodule is None or not datamodule.augments_waveform
            if not self._train_cache:
                rank_zero_warn("FrozenFeatureCTC: the datamodule augments waveforms, so the feature cache is "
                               "disabled for training batches (used for validation/test only)")
            dtype = getattr(torch, self.hparams.feature_cache_dtype)
            self.cache = FeatureCache.for_backbone(self.hparams.feature_cache_dir, self.backbone, self.layers,
                                                   self.backbone.sample_rate, dtype=dtype)
            rank_zero_info(f"FrozenFeatureCTC: feature cache at {self.cache.dir}")

    def hidden_states(self, audio: Tensor, lengths: Tensor, keys: list[str] | None = None
                      ) -> tuple[list[Tensor], Tensor]:
        """Selected layers (B, T', F) from the cache when every key is cached, else computed (no grad)."""
        cache = self.cache if keys is not None and (self._train_cache or not self.training) else None
        if cache is not None:
            cached = cache.get(keys)
            if cached is not None:
                feats, out_lengths = pad_features(cached)  # (B, T', L, F), (B,)
                return list(feats.to(audio.device).unbind(2)), out_lengths.to(audio.device)
        with torch.no_grad():
            layers, out_lengths = super().hidden_states(audio, lengths)
        if cache is not None:
            cache.put(keys, torch.stack(layers, dim=2), out_lengths)
        return layers, out_lengths
