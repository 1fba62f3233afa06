"""``DomainAdaptationDataModule``: a labelled source corpus paired with an (unlabelled) target corpus.

The generic "labelled + unlabelled" datamodule: DANN trains on it, and any method that needs a
labelled set next to unlabelled audio (e.g. pseudo-labelling) can too. It owns both training
corpora and shares every other setting (loaders, tokenizer, bad-input policy, augmentation) with
``ASRDataModule``, whose subclass it is::

    class_path: datamodules.DomainAdaptationDataModule
    init_args:
      source_train: {class_path: datamodules.LibriSpeechCorpus, init_args: {...}}   # labelled
      target_train: {class_path: datamodules.CommonVoiceCorpus, init_args: {...}}   # unlabelled
      target_labels: false        # or "monitor": transcripts travel for label-quality metrics only
      val: {source: <corpus>, target: <corpus>}
      test: {source: <corpus>, target: <corpus>}
      max_duration: 40.0          # ... and any other ASRDataModule setting, for both sides

Training batches are ``{"source": batch, "target": batch}``.  An epoch is one pass over the
source sampler; the target sampler runs alongside and restarts (reshuffled) whenever it runs
out.  Target cycle ``c`` of source epoch ``e`` uses sampler epoch ``e * CYCLE_STRIDE + c``, so
the whole pairing is a function of (seed, epoch) and a mid-epoch resume replays it exactly.

The vocabulary comes from the SOURCE training text.  With ``target_labels=False`` the target
training batches carry no ``targets``/``target_lengths``/``texts`` and the target transcripts
are never read. With ``target_labels="monitor"`` the target batches are the same (same cuts, no
label keys) plus ``monitor_texts``: the normalised transcripts, for metrics that watch label quality
(pseudo-label CER) and never for a loss; the data still counts as unlabelled (``describe``, 0 labelled
minutes). Val/test sets are always labelled (that is the evaluation). Val/test sets named
"source"/"target" get that batch domain; any other name counts as source.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from lhotse import CutSet
from torch.utils.data import DataLoader

from datamodules.asr import ASRDataModule, minutes
from datamodules.corpus_base import Corpus, describe_training
from datamodules.sampling import DurationBucketingSampler, resolve_rank

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


class DomainAdaptationDataModule(ASRDataModule):
    """Labelled ``source_train`` + ``target_train`` (unlabelled unless ``target_labels``), paired batches.

    Args:
        source_train: labelled source-domain training corpus (its text builds the tokenizer).
        target_train: target-domain training corpus; its transcripts are read only if ``target_labels``.
        target_labels: whether target TRAINING batches carry labels; ``"monitor"``: no labels, but
            ``monitor_texts`` (normalised transcripts for label-quality metrics, never a loss).
        val, test: ``{name: corpus}`` (usually ``{"source": ..., "target": ...}``), as ``ASRDataModule``.
        **settings: every other ``ASRDataModule`` argument (``max_duration``, ``num_workers``,
            ``tokenizer``, ``augment``, ``on_bad_input``, ``seed``, ...), shared by both sides.
    """

    def __init__(self, source_train: Corpus, target_train: Corpus, target_labels: bool | Literal["monitor"] = False,
                 val: Corpus | dict[str, Corpus] | None = None, test: Corpus | dict[str, Corpus] | None = None,
                 **settings: Any) -> None:
        super().__init__(train=source_train, val=val, test=test, predict=None, domain="source", train_labels=True,
                         **settings)
        if target_labels not in (True, False, "monitor"):
            raise ValueError(f"target_labels must be true, false or 'monitor', got {target_labels!r}")
        self.target_train_corpus, self.target_labels = target_train, target_labels
        self.train_loader: PairedLoader | None = None

    def target_train_cuts(self) -> CutSet:
        """Target training cuts: label-checked if ``target_labels``, else as scanned."""
        return self._train_cuts("target_train", self.target_train_corpus, self.target_labels is True)

    def named_corpora(self) -> dict[str, Corpus]:
        return {**super().named_corpora(), "target_train": self.target_train_corpus}

    def describe(self) -> dict[str, str | None]:
        """``{"source": <source train>, "target": <target train, "(unlabelled)" unless target_labels>}``."""
        return {"source": describe_training(self.train_corpus, True),
                "target": describe_training(self.target_train_corpus, self.target_labels is True)}

    @property
    def labelled_target_minutes(self) -> float:
        return minutes(self.target_train_cuts()) if self.target_labels is True else 0.0

    def prepare_data(self) -> None:
        super().prepare_data()
        self.target_train_cuts()

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if stage in (None, "fit"):
            self.target_train_cuts()

    def train_dataloader(self, rank: int | None = None, world_size: int | None = None) -> PairedLoader:
        """Paired loader; ``train_batches_per_epoch`` (inherited) counts the source sampler's batches."""
        rank, world_size = resolve_rank(self.trainer, rank, world_size)
        loader = PairedLoader(
            self._training_loader(self.train_cuts(), True, "source", rank, world_size, "train"),
            self._training_loader(self.target_train_cuts(), self.target_labels is True, "target", rank, world_size,
                                  "target_train", monitor_texts=self.target_labels == "monitor"))
        if (resume := self._take_resume(world_size)) is not None:
            loader.fast_forward(resume["epoch"], resume["batches"])
        self.train_loader, self.train_sampler = loader, loader.sampler
        return loader
