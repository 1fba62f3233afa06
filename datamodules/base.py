"""The datamodule <-> model contract: ``SpeechDataModule``.

Every datamodule a speechxfer module trains, validates or tests on subclasses ``SpeechDataModule``
(ARCHITECTURE.md, "Datamodule contract", is the checklist for writing a new one). Modules, callbacks
and the CLI read these members directly -- never through ``getattr(dm, name, default)`` -- and
:func:`speech_datamodule` is the one place that checks what is attached to a trainer:

- a ``SpeechDataModule``: used as is;
- no datamodule (``trainer.fit(model, train_dataloaders=...)``): ``None``; readers then use the
  documented no-datamodule values (tokenizer from the model, val/test loader ``i`` named
  :func:`eval_domain_name`'s fallback, ``SAMPLE_RATE``, no waveform augmentation);
- anything else: one ``TypeError`` naming the class and what to subclass.

Members (abstract ones must be implemented; the others have the defaults shown):

    tokenizer                                   abstract  CharTokenizer | SentencePieceTokenizer
    vocab_size                                  derived   tokenizer.vocab_size (blank included)
    val_domains, test_domains                   abstract  list[str]: names of the val/test loaders, in order
    sample_rate                                 SAMPLE_RATE (16000): rate of batch["audio"]
    augments_waveform                           False     True when training audio changes every epoch
    train_batches_per_epoch(rank, world_size)   abstract  int: training batches per epoch on that rank
    describe()                                  abstract  {"source": str | None, "target": str | None}
    labelled_target_minutes                     abstract  float: labelled target-domain training audio
    val_languages                               unknown   {val domain: locale | None}; CER headline for
                                                          languages without spaces (datamodules/locales.py)
    state_dict() / load_state_dict(state)       abstract  resumable sampler position ({} if nothing to resume)
    load_skip_counts()                          Counter() {reason: n} skipped at load time by this process's loaders
    bad_input_report()                          {}        every bad-input count, for summary.json ("data_report")
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from typing import Any, Literal

import pytorch_lightning as pl

from datamodules.batch import SAMPLE_RATE
from datamodules.text import CharTokenizer, SentencePieceTokenizer

Tokenizer = CharTokenizer | SentencePieceTokenizer


class SpeechDataModule(pl.LightningDataModule, ABC):
    """Base of every speechxfer datamodule; see the module docstring for the members."""

    sample_rate: int = SAMPLE_RATE  # rate of batch["audio"] (the batch contract: 16 kHz mono)

    @property
    @abstractmethod
    def tokenizer(self) -> Tokenizer:
        """The tokenizer that encodes this datamodule's targets (the model decodes with the same one)."""

    @property
    def vocab_size(self) -> int:
        """CTC classes, blank included: derived from the tokenizer, never stored separately."""
        return self.tokenizer.vocab_size

    @property
    @abstractmethod
    def val_domains(self) -> list[str]:
        """Name of each val dataloader, in order (metrics: ``val/<name>/wer``)."""

    @property
    @abstractmethod
    def test_domains(self) -> list[str]:
        """Name of each test dataloader, in order (metrics: ``test/<name>/wer``)."""

    @property
    def val_languages(self) -> dict[str, str | None]:
        """Language (locale) of each val domain's transcripts; None where unknown (headline metric: WER)."""
        return {name: None for name in self.val_domains}

    @property
    def augments_waveform(self) -> bool:
        """True when training waveforms change from epoch to epoch (the feature cache is then off)."""
        return False

    @abstractmethod
    def train_batches_per_epoch(self, rank: int | None = None, world_size: int | None = None) -> int:
        """Training batches one epoch yields on ``rank`` (the LR and DANN schedules size epoch-bounded runs by it)."""

    @abstractmethod
    def describe(self) -> dict[str, str | None]:
        """Training data per domain for run summaries and reports: ``{"source": ..., "target": ...}``."""

    @property
    @abstractmethod
    def labelled_target_minutes(self) -> float:
        """Minutes of labelled target-domain training audio (0.0 when the target is unlabelled or absent)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """The training sampler's position (Lightning checkpoints it); ``{}`` when there is none to resume."""

    @abstractmethod
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the next ``train_dataloader()`` continues from that position."""

    def load_skip_counts(self) -> Counter:
        """``{reason: n}`` of the utterances skipped when their audio was loaded (this process's loaders)."""
        return Counter()

    def bad_input_report(self) -> dict[str, Any]:
        """Every bad-input count (scan, checks, load, text policy) for ``summary.json``; ``{}`` if none kept."""
        return {}

    def eval_domain(self, stage: Literal["val", "test"], dataloader_idx: int) -> str:
        """Name of val/test dataloader ``dataloader_idx``."""
        names = self.val_domains if stage == "val" else self.test_domains
        if not 0 <= dataloader_idx < len(names):
            raise IndexError(f"{type(self).__name__} names {len(names)} {stage} dataloader(s) ({names}), "
                             f"got dataloader index {dataloader_idx}")
        return names[dataloader_idx]


def speech_datamodule(trainer: pl.Trainer | None) -> SpeechDataModule | None:
    """The ``SpeechDataModule`` attached to ``trainer``; None without a trainer or datamodule."""
    datamodule = trainer.datamodule if trainer is not None else None
    if datamodule is None or isinstance(datamodule, SpeechDataModule):
        return datamodule
    raise TypeError(f"{type(datamodule).__name__} is not a datamodules.SpeechDataModule: speechxfer modules and "
                    "callbacks read the datamodule contract (tokenizer, val/test domain names, batches per epoch, "
                    "...); subclass datamodules.SpeechDataModule (see ARCHITECTURE.md, 'Datamodule contract')")


def eval_domain_name(trainer: pl.Trainer | None, stage: Literal["val", "test"], dataloader_idx: int) -> str:
    """The datamodule's name for a val/test loader; without a datamodule "source", then "dataloader<i>"."""
    datamodule = speech_datamodule(trainer)
    if datamodule is not None:
        return datamodule.eval_domain(stage, dataloader_idx)
    return "source" if dataloader_idx == 0 else f"dataloader{dataloader_idx}"
