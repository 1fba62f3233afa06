"""On-disk cache of frozen-backbone features, keyed by audio content and backbone namespace.

Layout::

    root/<sha1(namespace)[:16]>/namespace.json          # what these features are (human readable)
    root/<sha1(namespace)[:16]>/<h[:2]>/<h>.pt           # h = sha1(audio_key): one utterance, (T', L, F)

The namespace (backbone identity, layer indices, sample rate, plus the storage dtype and format
version) selects the folder; the batch's ``audio_keys`` (``path|size|mtime_ns|offset|duration``,
built by ``datamodules.batch.audio_key``) select the entry, so editing a file or changing backbone,
layers or sample rate misses.  Only valid frames are stored, as float16 (float32 for an entry
whose values overflow float16).  Writes are atomic (temp file + ``os.replace``), so concurrent DDP
ranks and killed jobs never leave partial entries; an unreadable entry is logged, counted
(``stats["corrupt"]``), deleted and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from datamodules.atomic import torch_save_atomic, write_text_atomic

from .backbones.base import Backbone, BackboneOutput

log = logging.getLogger(__name__)
FORMAT_VERSION = 1


def stack_hidden(hidden_states: Sequence[Tensor], layers: Sequence[int]) -> Tensor:
    """Select ``layers`` of ``L_all × (B, T', F)`` hidden states -> (B, T', L, F)."""
    return torch.stack([hidden_states[i] for i in layers], dim=2)


def pad_features(features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """List of (T_i, L, F) -> zero-padded (B, T', L, F) and lengths (B,) int64."""
    lengths = torch.tensor([f.size(0) for f in features], dtype=torch.long)
    return pad_sequence(list(features), batch_first=True), lengths


def to_backbone_output(features: Tensor, lengths: Tensor) -> BackboneOutput:
    """(B, T', L, F) + lengths (B,) -> BackboneOutput with L hidden states (B, T', F)."""
    return BackboneOutput(tuple(features.unbind(2)), lengths)


class FeatureCache:
    """Per-utterance feature store; ``get`` serves a whole batch or nothing.

    Args:
        root: cache root folder (created).
        namespace: JSON-safe dict naming the features, e.g. ``{"backbone": identity,
            "layers": [0, 3, 12], "sample_rate": 16000}``; see :meth:`for_backbone`.
        dtype: storage dtype (float16 halves disk and IO; features come back as float32).
    """

    def __init__(self, root: str | Path, namespace: Mapping[str, Any], dtype: torch.dtype = torch.float16) -> None:
        self.namespace = dict(namespace)
        self.dtype = dtype
        full = {"namespace": self.namespace, "dtype": str(dtype), "format": FORMAT_VERSION}
        text = json.dumps(full, sort_keys=True, indent=1)  # TypeError here: namespace is not JSON-safe
        self.dir = Path(root) / hashlib.sha1(text.encode()).hexdigest()[:16]
        self.dir.mkdir(parents=True, exist_ok=True)
        if not (self.dir / "namespace.json").is_file():
            write_text_atomic(self.dir / "namespace.json", text + "\n")
        self.stats: Counter[str] = Counter(hits=0, misses=0, writes=0, corrupt=0, fp32_entries=0)

    @classmethod
    def for_backbone(
        cls, root: str | Path, backbone: Backbone, layers: Sequence[int], sample_rate: int, **kwargs: Any
    ) -> FeatureCache:
        """Namespace from a backbone's ``identity``, the cached layer indices and the sample rate."""
        namespace = {"backbone": backbone.identity, "layers": [int(i) for i in layers], "sample_rate": int(sample_rate)}
        return cls(root, namespace, **kwargs)

    def path(self, key: str) -> Path:
        digest = hashlib.sha1(key.encode()).hexdigest()
        return self.dir / digest[:2] / f"{digest}.pt"

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def get(self, keys: Sequence[str]) -> list[Tensor] | None:
        """float32 (T'_i, L, F) per key, or None (counted as misses) unless every key is cached and readable."""
        paths = [self.path(k) for k in keys]
        if not all(p.is_file() for p in paths):
            self.stats["misses"] += len(keys)
            return None
        features = []
        for key, path in zip(keys, paths):
            entry = self._load(key, path)
            if entry is None:
                self.stats["misses"] += len(keys)
                return None
            features.append(entry)
        self.stats["hits"] += len(keys)
        return features

    def _load(self, key: str, path: Path) -> Tensor | None:
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(entry, Tensor) or entry.dim() != 3:
                raise ValueError(f"expected a (T', L, F) tensor, got {type(entry).__name__}")
            return entry.float()
        except Exception as err:  # truncated / foreign file: recompute instead of failing the run
            self.stats["corrupt"] += 1
            log.warning("feature cache: dropping unreadable entry %s for %s (%s)", path, key, err)
            path.unlink(missing_ok=True)
            return None

    def put(self, keys: Sequence[str], hidden: Tensor | Sequence[Tensor], lengths: Tensor | None = None) -> None:
        """Store each utterance's valid frames.

        Args:
            keys: the batch's ``audio_keys`` (B,).
            hidden: (B, T', L, F) padded, or a list of (T'_i, L, F).
            lengths: (B,) valid frames; required for a padded tensor.
        """
        if isinstance(hidden, Tensor):
            if lengths is None:
                raise ValueError("put(): lengths are required with a padded (B, T', L, F) tensor")
            if hidden.dim() != 4:
                raise ValueError(f"put(): expected (B, T', L, F), got shape {tuple(hidden.shape)}")
        if len(hidden) != len(keys):
            raise ValueError(f"put(): {len(keys)} keys but {len(hidden)} feature rows")
        for i, key in enumerate(keys):
            entry = hidden[i] if lengths is None else hidden[i][: int(lengths[i])]
            torch_save_atomic(self._storable(entry), self.path(key))
            self.stats["writes"] += 1

    def _storable(self, entry: Tensor) -> Tensor:
        """Detached CPU copy (never a view of the batch storage) in the storage dtype, or float32 on overflow."""
        entry = entry.detach().to("cpu")
        stored = entry.to(self.dtype)
        if not bool(torch.isfinite(stored).all()) and bool(torch.isfinite(entry).all()):
            self.stats["fp32_entries"] += 1
            stored = entry.float()
        return stored.contiguous().clone()

    def hit_rate(self) -> float:
        total = self.stats["hits"] + self.stats["misses"]
        return self.stats["hits"] / total if total else 0.0
