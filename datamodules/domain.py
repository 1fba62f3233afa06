"""``DomainAdaptationDataModule``: paired source/target training batches for DANN.

Training batches are ``{"source": batch, "target": batch}``.  An epoch is one pass over the
source sampler; the target sampler runs alongside and restarts (reshuffled) whenever it runs
out.  Target cycle ``c`` of source epoch ``e`` uses sampler epoch ``e * CYCLE_STRIDE + c``, so
the whole pairing is a function of (seed, epoch) and a mid-epoch resume replays it exactly.

The vocabulary comes from the SOURCE training text.  With ``target_labels=False`` the target
training batches carry no ``targets``/``target_lengths``/``texts`` and the target transcripts
are never read; target val/test sets are always labelled (that is the evaluation).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from datamodules.asr import ASRDataModule, check_resume, progress_state
from datamodules.sampling import DurationBucketingSampler, resolve_rank

log = logging.getLogger(__name__)
CYCLE_STRIDE = 1 << 20  # target cycles per source epoch never get near this


class PairedLoader:
    """Iterable of ``{"source": b, "target": b}``: one source epoch, target batches cycled.

    ``sampler`` is the source sampler, so Lightning's per-epoch ``set_epoch`` reaches it.
    """

    def __init__(self, source: DataLoader, target: DataLoader) -> None:
        self.source, self.target = source, target
        self._target_start: tuple[int, bool] = (0, False)  # (cycle, sampler already positioned)

    @property
    def sampler(self) -> DurationBucketingSampler:
        return self.source.sampler

    def fast_forward(self, epoch: int, num_batches: int) -> None:
        """Position both samplers after ``num_batches`` paired batches of ``epoch`` (metadata only)."""
        epoch, num_batches = self.source.sampler.fast_forward(epoch, num_batches)
        target: DurationBucketingSampler = self.target.sampler
        cycle, left = 0, num_batches
        while left > 0:
            n = sum(1 for _ in _epoch_batches(target, epoch * CYCLE_STRIDE + cycle))
            if n == 0:
                raise ValueError("the target sampler yields no batches")
            if left < n:
                break
            left, cycle = left - n, cycle + 1
        target_epoch, _ = target.fast_forward(epoch * CYCLE_STRIDE + cycle, left)
        self._target_start = (target_epoch - epoch * CYCLE_STRIDE, True)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        targets = self._target_batches(self.source.sampler.epoch)
        for batch in self.source:
            yield {"source": batch, "target": next(targets)}

    def _target_batches(self, epoch: int) -> Iterator[dict[str, Any]]:
        cycle, positioned = self._target_start
        self._target_start = (0, False)
        while True:
            if not positioned:
                self.target.sampler.set_epoch(epoch * CYCLE_STRIDE + cycle)
            positioned, count = False, 0
            for batch in self.target:
                count += 1
                yield batch
            if count == 0:
                raise ValueError("the target loader yields no batches (every target utterance filtered?)")
            cycle += 1


def _epoch_batches(sampler: DurationBucketingSampler, epoch: int) -> Iterator:
    sampler.set_epoch(epoch)
    sampler.allow_iter_to_reset_state()
    return iter(sampler)


class DomainAdaptationDataModule(pl.LightningDataModule):
    """Source (labelled) + target (unlabelled unless ``target_labels``) datamodules for DANN.

    Args:
        source: the labelled source-domain datamodule (domain name forced to "source").
        target: the target-domain datamodule (domain name forced to "target"); its tokenizer is
            the source's.
        target_labels: whether target TRAINING batches carry labels.
    """

    def __init__(self, source: ASRDataModule, target: ASRDataModule, target_labels: bool = False) -> None:
        super().__init__()
        for dm, name in ((source, "source"), (target, "target")):
            if dm.domain != name:
                log.info("domain adaptation: renaming datamodule domain %r -> %r", dm.domain, name)
                dm.rename_domain(name)
        self.source, self.target, self.target_labels = source, target, target_labels
        target.train_labels = target_labels
        target.share_tokenizer(source)
        self.train_loader: PairedLoader | None = None
        self._resume: dict[str, int] | None = None

    @property
    def tokenizer(self):
        return self.source.tokenizer

    @property
    def vocab_size(self) -> int:
        return self.source.vocab_size

    @property
    def val_domains(self) -> list[str]:
        return self.source.val_domains + self.target.val_domains

    @property
    def test_domains(self) -> list[str]:
        return self.source.test_domains + self.target.test_domains

    @property
    def augments_waveform(self) -> bool:
        return self.source.augments_waveform or self.target.augments_waveform

    @property
    def sample_rate(self) -> int:
        return self.source.sample_rate

    def describe(self) -> dict[str, str | None]:
        """``{"source": <source train>, "target": <target train, "(unlabelled)" unless target_labels>}``."""
        return {"source": self.source.describe()["source"], "target": self.target.describe()["target"]}

    @property
    def labelled_target_minutes(self) -> float:
        return self.target.labelled_target_minutes

    def load_skip_counts(self) -> Counter:
        return self.source.load_skip_counts() + self.target.load_skip_counts()

    def bad_input_report(self) -> dict[str, Any]:
        """``{"source": ..., "target": ...}`` of ``ASRDataModule.bad_input_report``."""
        return {"source": self.source.bad_input_report(), "target": self.target.bad_input_report()}

    def prepare_data(self) -> None:
        self.source.prepare_data()
        self.target.prepare_data()

    def setup(self, stage: str | None = None) -> None:
        self.source.setup(stage)
        self.target.setup(stage)

    def train_dataloader(self, rank: int | None = None, world_size: int | None = None) -> PairedLoader:
        rank, world_size = resolve_rank(self.trainer, rank, world_size)
        loader = PairedLoader(self.source.train_dataloader(rank, world_size),
                              self.target.train_dataloader(rank, world_size))
        if self._resume is not None:
            check_resume(self._resume, world_size, self.source.seed)
            loader.fast_forward(self._resume["epoch"], self._resume["batches"])
            self._resume = None
        self.train_loader = loader
        return loader

    def train_batches_per_epoch(self, rank: int | None = None, world_size: int | None = None) -> int:
        """Paired batches per epoch on this rank = the source sampler's (an epoch is one source pass)."""
        return self.source.train_batches_per_epoch(*resolve_rank(self.trainer, rank, world_size))

    def val_dataloader(self, rank: int | None = None, world_size: int | None = None) -> list[DataLoader]:
        return self.source.val_dataloader(rank, world_size) + self.target.val_dataloader(rank, world_size)

    def test_dataloader(self, rank: int | None = None, world_size: int | None = None) -> list[DataLoader]:
        return self.source.test_dataloader(rank, world_size) + self.target.test_dataloader(rank, world_size)

    def state_dict(self) -> dict[str, Any]:
        sampler = self.train_loader.sampler if self.train_loader is not None else None
        return progress_state(self.trainer, sampler, self.source.seed)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume = dict(state_dict["train_sampler"]) if state_dict.get("train_sampler") else None
