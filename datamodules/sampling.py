"""Duration-bucketed, resumable batch sampling on top of lhotse, in two DDP modes.

Batches hold at most ``max_duration`` seconds of audio (lhotse ``DynamicBucketingSampler``).

- Training (``even_batches=True``): every rank builds the same sampler (same seed + epoch => same
  global batch sequence) and keeps batch ``i`` with ``i % world_size == rank``: ranks see distinct
  utterances and the SAME number of batches (DDP's gradient all-reduce needs that), at the price
  of dropping at most ``world_size - 1`` utterances at the end of an epoch.
- Evaluation (``even_batches=False``): rank ``r`` takes utterances ``r, r + W, r + 2W, ...`` of the
  manifest and batches them alone: every utterance is evaluated exactly once over all ranks (no
  drop, no duplicate), so multi-GPU WER equals single-process WER. Batch counts may differ by
  rank, which evaluation allows (no per-step collectives; torchmetrics states and
  ``self.log(sync_dist=True)`` are reduced at epoch end). A rank with NO batch, however, never
  logs its metrics and Lightning hangs at that reduction (checked with 2-rank gloo DDP, Lightning
  2.6), so a set needs at least ``world_size`` utterances (``check_covers_ranks``).

Trainer contract: use ``Trainer(use_distributed_sampler=False)`` -- these samplers already shard
by rank; Lightning must not wrap them in a ``DistributedSampler``.

Lengths: the samplers have no ``__len__`` (the number of dynamic batches is only known after
sampling an epoch), so Lightning treats the epoch length as unknown and stops at StopIteration.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterable
from itertools import islice
from typing import Any

import torch
from lhotse import CutSet
from lhotse.dataset.sampling.dynamic_bucketing import DynamicBucketingSampler, estimate_duration_buckets
from lhotse.lazy import LazySlicer
from torch.utils.data import DataLoader, Dataset

from datamodules.dataset import LOAD_SKIPS, LoadSkips

log = logging.getLogger(__name__)


def estimate_bins(cuts: Iterable, num_buckets: int, num_cuts: int = 10000, allow_empty: bool = False) -> list[float]:
    """Duration bucket boundaries from the first ``num_cuts`` cuts; safe for tiny sets.

    lhotse asserts ``num_buckets <= len(cuts)``; we clamp so a 3-utterance dev set still works.
    """
    sample = list(islice(iter(cuts), num_cuts))
    if not sample and allow_empty:
        return [1.0]  # an empty evaluation shard: the sampler yields nothing
    if not sample:
        raise ValueError("cannot build a sampler over an empty CutSet")
    n = min(num_buckets, len(sample))
    if n < 2:
        return [max(c.duration for c in sample) + 1.0]
    return list(estimate_duration_buckets(sample, num_buckets=n)) or [max(c.duration for c in sample) + 1.0]


class DurationBucketingSampler(DynamicBucketingSampler):
    """``DynamicBucketingSampler`` with the two fixes the trainer needs.

    1. Uneven end under DDP: lhotse gives every rank the same number of batches by drawing
       ``world_size`` batches per step and, when the data runs out mid-step, re-splitting the
       leftovers; if fewer cuts than ranks remain it DUPLICATES cuts (ids ``<id>_dup<k>``), so two
       ranks would train on the same utterance.  We drop such a final step on all ranks instead
       (identically, since every rank computes the same step) and count the dropped cuts in
       ``dropped_tail_cuts`` -- at most ``world_size - 1`` utterances per epoch.
    2. Mid-epoch resume: lhotse's own ``state_dict`` counts batches *sampled*, which runs ahead of
       the batches *trained on* by the DataLoader/Lightning prefetch.  ``fast_forward(epoch, n)``
       replays the first ``n`` batches of ``epoch`` from metadata only (no audio is read), and the
       next ``iter()`` continues from there; the caller stores ``n`` from the trainer's progress.
       If those ``n`` batches were the whole epoch, the sampler moves to the start of ``epoch + 1``
       instead: on resume Lightning creates the DataLoader iterator BEFORE it calls
       ``set_epoch(epoch + 1)`` and does not re-create it, so an exhausted iterator would silently
       make the next epoch empty.

    With ``even_batches=False`` (evaluation) the sampler batches only this rank's shard of the cuts
    (``rank_shard``): no cut is dropped or duplicated, batch counts may differ between ranks, and
    ``rank``/``world_size`` of the lhotse base class are 0/1 (``self.shard`` holds the real ones).

    Args:
        cuts: lazy or eager ``CutSet``.
        max_duration: seconds of audio per batch (summed over cuts, before padding).
        num_buckets: duration buckets (clamped to the number of cuts).
        max_cuts: at most this many utterances per batch (None: no limit).
        shuffle, seed, drop_last: as lhotse; ``set_epoch(e)`` reshuffles deterministically.
        rank, world_size: pass explicitly (never inferred from environment variables).
        even_batches: True (training): same batch count on every rank, tail dropped; False
            (evaluation): every cut exactly once over the ranks, uneven batch counts.
    """

    def __init__(
        self,
        cuts: CutSet,
        max_duration: float,
        num_buckets: int = 10,
        max_cuts: int | None = None,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        buffer_size: int = 20000,
        even_batches: bool = True,
    ) -> None:
        self.shard = (rank, world_size)
        self.even_batches = even_batches
        if not even_batches:
            cuts, rank, world_size = rank_shard(cuts, rank, world_size), 0, 1
        bins = estimate_bins(cuts, num_buckets, allow_empty=not even_batches)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*eagerly read CutSet.*")
            super().__init__(
                cuts, max_duration=max_duration, max_cuts=max_cuts, duration_bins=bins, shuffle=shuffle, seed=seed,
                drop_last=drop_last, rank=rank, world_size=world_size, buffer_size=buffer_size,
            )
        self.dropped_tail_cuts = 0
        self._step_sizes: list[int] = []
        self._peeked: CutSet | None = None  # one batch read ahead by fast_forward

    def _next_batch(self) -> CutSet:
        batch = super()._next_batch()
        self._step_sizes.append(len(batch))
        return batch

    def __iter__(self) -> DurationBucketingSampler:
        if not self._just_restored_state:
            self._peeked = None
        return super().__iter__()

    def __next__(self) -> CutSet:
        if self._peeked is not None:
            self.allow_iter_to_reset_state()
            batch, self._peeked = self._peeked, None
            return batch
        self._step_sizes = []
        batch = super().__next__()
        if self.world_size > 1 and sum(self._step_sizes) < self.world_size:
            # lhotse padded this final step with duplicated cuts: drop it on every rank instead.
            self.dropped_tail_cuts += sum(self._step_sizes)
            log.info("sampler: dropped the last %d cut(s) of epoch %d (fewer than %d ranks)",
                     sum(self._step_sizes), self.epoch, self.world_size)
            raise StopIteration
        return batch

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._peeked = None
        super().set_epoch(epoch)

    def fast_forward(self, epoch: int, num_batches: int) -> tuple[int, int]:
        """Position the sampler after the first ``num_batches`` batches (of this rank) of ``epoch``.

        Returns the position taken: ``(epoch, num_batches)``, or ``(epoch + 1, 0)`` when those
        batches were the whole epoch.
        """
        self._restart(epoch)
        for done in range(num_batches):
            try:
                next(self)
            except StopIteration:
                raise ValueError(
                    f"cannot resume at batch {num_batches} of epoch {epoch}: the epoch has only {done} "
                    "batches (was the data, seed, max_duration or world size changed?)"
                ) from None
        try:
            peeked = next(self)
        except StopIteration:
            epoch, num_batches = epoch + 1, 0
            self._restart(epoch)
        else:
            self._peeked = peeked
        self._just_restored_state = True  # lhotse: the next iter() continues instead of restarting
        return epoch, num_batches

    def _restart(self, epoch: int) -> None:
        self.set_epoch(epoch)
        self.allow_iter_to_reset_state()
        iter(self)


def rank_shard(cuts: CutSet, rank: int, world_size: int) -> CutSet:
    """Cuts ``rank, rank + world_size, rank + 2 * world_size, ...`` of ``cuts`` (lazy, order kept)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    return cuts if world_size == 1 else CutSet(LazySlicer(cuts, k=rank, n=world_size))


def check_covers_ranks(cuts: Iterable, world_size: int, name: str) -> None:
    """Raise unless ``cuts`` has at least ``world_size`` utterances (reads at most that many)."""
    n = sum(1 for _ in islice(iter(cuts), world_size))
    if n < world_size:
        raise ValueError(
            f"{name} has {n} utterance(s) for {world_size} ranks: exact evaluation gives every rank its own "
            "utterances, and a rank with none never syncs its metrics (Lightning waits for it forever). "
            f"Use a set of at least {world_size} utterances or fewer devices."
        )


def resolve_rank(trainer: Any = None, rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world_size): explicit values, else the attached trainer, else torch.distributed, else (0, 1)."""
    if rank is not None and world_size is not None:
        return rank, world_size
    if trainer is not None:
        connector = getattr(trainer, "_accelerator_connector", None)
        if trainer.world_size > 1 and getattr(connector, "use_distributed_sampler", False):
            raise RuntimeError(
                "speechxfer samplers already give each rank its own batches: create the Trainer with "
                "use_distributed_sampler=False (otherwise Lightning shards the batches a second time)"
            )
        return trainer.global_rank, trainer.world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class CountingDataLoader(DataLoader):
    """``DataLoader`` that sums the load-time skips every batch reports and drops batches left empty.

    ``SpeechDataset`` puts a ``LoadSkips`` record under ``batch["load_skips"]`` (it comes from the
    worker process that built the batch); this loader removes it from the batch, adds it to
    ``self.load_skips`` (which the datamodule reads) and does not yield a batch whose every utterance
    was skipped. Under DDP a dropped batch shortens that rank's epoch by one: the ranks then wait
    for each other at the epoch end, so prefer ``on_bad_input: error`` or clean data for multi-GPU runs.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.load_skips = LoadSkips()

    def __iter__(self):
        for batch in super().__iter__():
            record = batch.pop(LOAD_SKIPS, None) if isinstance(batch, dict) else None
            if record is not None:
                self.load_skips.merge(record)
                if not batch.get("ids"):
                    log.warning("dropped a batch: every utterance of it was skipped (%s)",
                                ", ".join(f"{r}={n}" for r, n in sorted(record.counts.items())))
                    continue
            yield batch


def make_loader(dataset: Dataset, sampler: DurationBucketingSampler, num_workers: int = 0,
                pin_memory: bool = False, loader_class: type[CountingDataLoader] = CountingDataLoader
                ) -> CountingDataLoader:
    """lhotse-style loader: the sampler yields CutSets, the dataset turns each into a batch dict
    (``loader_class``: a ``CountingDataLoader`` subclass, e.g. ``datamodules.episodic.EpisodeLoader``)."""
    return loader_class(
        dataset, sampler=sampler, batch_size=None, num_workers=num_workers,
        persistent_workers=num_workers > 0, pin_memory=pin_memory,
        # worker seeds come from this generator, not the global RNG, so resuming a run
        # (callbacks.RandomState) continues the global stream exactly
        generator=torch.Generator().manual_seed(0),
    )
