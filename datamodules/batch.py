"""The batch dict contract (see ARCHITECTURE.md) and the helpers that build and check it.

A batch is a plain ``dict`` so Lightning moves every tensor to the device for us::

    audio           float32 (B, T)   ``SAMPLE_RATE`` (16 kHz) mono, zero padded on the right
    lengths         int64   (B,)     valid samples per row
    targets         int64   (B, S)   token ids (no blank), padded with 0     } absent when labels
    target_lengths  int64   (B,)     valid tokens per row                    } are unavailable
    texts           list[str]        normalised reference text               }
    ids             list[str]        lhotse cut ids
    audio_keys      list[str]        ``path|size|mtime_ns|offset|duration`` (feature-cache key)
    domain          int64   (B,)     0 = source, 1 = target
    monitor_texts   list[str]        optional, unlabelled batches only: normalised transcripts for
                                     label-quality metrics, never a training target
                                     (``DomainAdaptationDataModule(target_labels="monitor")``)
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import get_worker_info

SAMPLE_RATE = 16000  # Hz of every batch["audio"]; corpora, datasets and backbones all read it from here
LABEL_KEYS = ("targets", "target_lengths", "texts")
REQUIRED_KEYS = ("audio", "lengths", "ids", "audio_keys", "domain")
DOMAIN_IDS = {"source": 0, "target": 1}


def domain_id(name: str) -> int:
    """Integer domain of ``"source"`` (0) or ``"target"`` (1); any other name is an error."""
    if name not in DOMAIN_IDS:
        raise ValueError(f"domain must be one of {sorted(DOMAIN_IDS)}, got {name!r}")
    return DOMAIN_IDS[name]


def lengths_to_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """(B,) lengths -> (B, max_len) bool mask, True on valid positions (default max_len: the longest)."""
    max_len = int(lengths.max()) if max_len is None else max_len
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def empty_for_transfer(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Uninitialised tensor; in a DataLoader worker it is allocated in shared memory.

    A batch leaves a worker through shared memory: a tensor allocated elsewhere is copied there
    first (~10 ms for a 200 s batch). torch's ``default_collate`` avoids that copy the same way.
    """
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(math.prod(shape), device="cpu")
    return torch.empty(0, dtype=dtype).set_(storage).view(shape)


def pad_audio(waves: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """List of (T_i,) float waveforms -> ``audio`` (B, max T_i) float32 zero padded, ``lengths`` (B,) int64."""
    lengths = torch.tensor([w.shape[0] for w in waves], dtype=torch.int64)
    audio = empty_for_transfer((len(waves), int(lengths.max())), torch.float32)
    for row, (wave, n) in enumerate(zip(waves, lengths.tolist())):
        audio[row, :n] = wave
        audio[row, n:] = 0.0
    return audio, lengths


def pad_targets(token_ids: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """List of token-id lists -> ``targets`` (B, max S_i) int64 padded with 0, ``target_lengths`` (B,)."""
    target_lengths = torch.tensor([len(t) for t in token_ids], dtype=torch.int64)
    rows = [torch.as_tensor(list(t), dtype=torch.int64) for t in token_ids]
    targets = pad_sequence(rows, batch_first=True, padding_value=0)
    return targets, target_lengths


def audio_key(cut: Any) -> str:
    """Content key ``path|size|mtime_ns|offset|duration`` of the recording a (Mono)Cut reads.

    Size and mtime come from ``os.stat`` so an edited file gets a new key; non-file sources
    (memory, url, command) use ``-1`` for both.  Offset/duration are the cut's window in seconds.
    """
    recording = cut.recording
    source = recording.sources[0]
    size, mtime = -1, -1
    if source.type == "file":
        st = os.stat(source.source)
        size, mtime = st.st_size, st.st_mtime_ns
    return f"{source.source}|{size}|{mtime}|{cut.start:.6f}|{cut.duration:.6f}"


def make_batch(
    waves: Sequence[torch.Tensor],
    ids: Sequence[str],
    audio_keys: Sequence[str],
    domain: int,
    texts: Sequence[str] | None = None,
    token_ids: Sequence[Sequence[int]] | None = None,
) -> dict[str, Any]:
    """Assemble the batch dict; label keys are added only when ``texts``/``token_ids`` are given."""
    audio, lengths = pad_audio(waves)
    batch: dict[str, Any] = {
        "audio": audio,
        "lengths": lengths,
        "ids": list(ids),
        "audio_keys": list(audio_keys),
        "domain": torch.full((len(waves),), int(domain), dtype=torch.int64),
    }
    if token_ids is not None:
        batch["targets"], batch["target_lengths"] = pad_targets(token_ids)
        batch["texts"] = list(texts if texts is not None else [])
    return batch


def check_batch(batch: dict[str, Any], labels: bool | None = None) -> None:
    """Raise ``ValueError`` if ``batch`` breaks the contract (keys, dtypes, shapes, padding).

    ``labels``: True requires the label keys, False forbids them, None accepts either.
    """
    missing = [k for k in REQUIRED_KEYS if k not in batch]
    if missing:
        raise ValueError(f"batch lacks keys {missing}")
    audio, lengths = batch["audio"], batch["lengths"]
    b = audio.shape[0]
    _expect(audio.dtype == torch.float32 and audio.dim() == 2, f"audio must be float32 (B, T), got {audio.dtype} {tuple(audio.shape)}")
    _expect(lengths.dtype == torch.int64 and tuple(lengths.shape) == (b,), "lengths must be int64 (B,)")
    _expect(int(lengths.max()) == audio.shape[1], "audio is padded beyond the longest row")
    _expect(len(batch["ids"]) == b and len(batch["audio_keys"]) == b, "ids/audio_keys must have B entries")
    _expect(batch["domain"].dtype == torch.int64 and tuple(batch["domain"].shape) == (b,), "domain must be int64 (B,)")
    has = [k in batch for k in LABEL_KEYS]
    _expect(all(has) or not any(has), f"label keys {LABEL_KEYS} must be present together")
    if labels is not None:
        _expect(all(has) == labels, f"labels {'required' if labels else 'forbidden'} in this batch")
    if all(has):
        targets, tl = batch["targets"], batch["target_lengths"]
        _expect(targets.dtype == torch.int64 and targets.shape[0] == b, "targets must be int64 (B, S)")
        _expect(tl.dtype == torch.int64 and tuple(tl.shape) == (b,), "target_lengths must be int64 (B,)")
        _expect(len(batch["texts"]) == b, "texts must have B entries")
        valid = lengths_to_mask(tl, targets.shape[1])
        _expect(bool((targets[~valid] == 0).all()), "targets must be padded with 0")
        _expect(bool((targets[valid] > 0).all()), "targets must not contain the blank id 0")


def _expect(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)
