"""``ASRDataModule``: corpora -> label checks -> duration-bucketed loaders, for one domain.

Trainer requirement: ``Trainer(use_distributed_sampler=False)``.  The samplers shard by rank
themselves (``datamodules.sampling``) and are built inside ``*_dataloader()``, i.e. after the
process group exists; ``rank``/``world_size`` can also be passed explicitly (tests, custom loops).
Training batches are even over ranks (the epoch tail, < world_size utterances, is dropped);
val/test/predict evaluate every utterance exactly once over the ranks (uneven batch counts), so
multi-GPU WER equals single-process WER. A val/test set needs >= world_size utterances.

Manifests stay lazy end to end (``Corpus.cuts`` streams the cached jsonl.gz; label checks write
their filtered manifest next to it), so a 280k-utterance index costs tens of MB, not ~600 MB.

Resume: ``state_dict()`` stores the training sampler's epoch and the number of batches the
trainer has processed in it; after ``load_state_dict`` the next ``train_dataloader()`` yields
exactly the remaining batches of that epoch (Lightning only restores DataLoaders that define
``state_dict``; a torch DataLoader does not, so the datamodule hooks carry the state).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from lhotse import CutSet, Recording
from torch.utils.data import DataLoader

from datamodules.augment import WaveformAugmentation
from datamodules.batch import DOMAIN_IDS, domain_id
from datamodules.corpora import Corpus
from datamodules.dataset import SpeechDataset, check_labels, iter_texts
from datamodules.errors import BadInputError, check_on_bad_input
from datamodules.manifest_cache import USER_CACHE_DIR
from datamodules.sampling import DurationBucketingSampler, check_covers_ranks, make_loader, resolve_rank
from datamodules.text import CharTokenizer, SentencePieceTokenizer, TextNormalizer, load_tokenizer

log = logging.getLogger(__name__)
SAMPLE_RATE = 16000


class ASRDataModule(pl.LightningDataModule):
    """Train/val/test/predict loaders over LibriSpeech / Common Voice corpora for one domain.

    Args:
        train: training corpus (its text also builds the tokenizer).
        val: one corpus (named after ``domain``) or ``{name: corpus}``; one val loader per name.
        test: as ``val``.
        predict: a corpus or a list of audio file paths (batches without labels).
        domain: name of this datamodule's domain ("source" -> batch domain 0, "target" -> 1); val/test
            sets named "source"/"target" get that domain id, any other name gets this one's.
        train_labels: False = training batches carry no targets/texts (transcripts never read).
        tokenizer: "char" or "sentencepiece"; ``tokenizer_path`` loads a saved one instead.
        sentencepiece_vocab_size: upper bound on sentencepiece pieces.
        normalizer: text normalisation used to build the tokenizer (default ``TextNormalizer()``).
        max_duration: seconds of audio per batch; ``num_buckets`` duration buckets.
        max_cuts: at most this many utterances per TRAINING batch (None: only ``max_duration``
            limits it). Without it short clips make huge batches and few optimizer steps per epoch
            (1,800 clips of 0.45 s in 60 s batches: 14 steps per epoch; with 32: 57); raise it (or set
            None) for GPU-sized batches of short clips.
        shuffle, drop_last, seed: training sampler settings (``set_epoch`` reshuffles).
        num_workers: DataLoader workers per loader; ``pin_memory`` defaults to CUDA availability.
        augment: training-only waveform augmentation (off by default).
        frames_per_second: encoder frame rate for the "clip too short for its CTC label" check
            (default: the ScratchEncoder's 25/s; 50 for wav2vec2-style encoders).
        on_bad_input: "error" raises ``BadInputError``; "skip" drops, counts and logs.
        cache_dir: corpus manifest + tokenizer cache; default: manifests next to the data (else
            ``~/.cache/speechxfer``), tokenizers in ``~/.cache/speechxfer``.
    """

    def __init__(
        self,
        train: Corpus | None = None,
        val: Corpus | dict[str, Corpus] | None = None,
        test: Corpus | dict[str, Corpus] | None = None,
        predict: Corpus | list[str] | None = None,
        domain: str = "source",
        train_labels: bool = True,
        tokenizer: Literal["char", "sentencepiece"] = "char",
        tokenizer_path: str | None = None,
        sentencepiece_vocab_size: int = 256,
        normalizer: TextNormalizer | None = None,
        max_duration: float = 60.0,
        num_buckets: int = 10,
        max_cuts: int | None = 32,
        shuffle: bool = True,
        drop_last: bool = False,
        num_workers: int = 2,
        pin_memory: bool | None = None,
        seed: int = 0,
        augment: WaveformAugmentation | None = None,
        frames_per_second: float = 25.0,
        on_bad_input: Literal["error", "skip"] = "error",
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.train_corpus, self.predict_source = train, predict
        self.domain, self.train_labels = domain, train_labels
        self.val_corpora = _named(val, domain)
        self.test_corpora = _named(test, domain)
        self._bare = {"val": val is not None and not isinstance(val, dict),
                      "test": test is not None and not isinstance(test, dict)}
        self.tokenizer_kind, self.tokenizer_path = tokenizer, tokenizer_path
        self.sentencepiece_vocab_size = sentencepiece_vocab_size
        self.normalizer = normalizer or TextNormalizer()
        self.max_duration, self.num_buckets, self.max_cuts = max_duration, num_buckets, max_cuts
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.augment = augment
        self.frames_per_second = frames_per_second
        self.on_bad_input = check_on_bad_input(on_bad_input)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None  # None: corpora pick
        self._tokenizer: Any = None
        self._tokenizer_owner: ASRDataModule | None = None
        self._raw: dict[str, CutSet] = {}
        self._checked: dict[str, CutSet] = {}
        self.skipped: dict[str, dict[str, int]] = {}
        self.train_sampler: DurationBucketingSampler | None = None
        self._resume: dict[str, int] | None = None
        self._batch_counts: dict[tuple[int, int], int] = {}

    # -- contract properties -------------------------------------------------------------------
    @property
    def tokenizer(self) -> CharTokenizer | SentencePieceTokenizer:
        """Built from the training text on first access (cached on disk), or loaded from ``tokenizer_path``."""
        if self._tokenizer_owner is not None:
            return self._tokenizer_owner.tokenizer
        if self._tokenizer is None:
            self._tokenizer = self._load_or_build_tokenizer()
        return self._tokenizer

    def rename_domain(self, name: str) -> None:
        """Change ``domain``; val/test corpora given bare (named after the domain) follow it."""
        for split in ("val", "test"):
            corpora = getattr(self, f"{split}_corpora")
            if self._bare[split]:
                setattr(self, f"{split}_corpora", {name: corpora[self.domain]})
        self.domain = name

    def share_tokenizer(self, owner: ASRDataModule) -> None:
        """Use ``owner``'s tokenizer (domain adaptation: the source text defines the vocabulary)."""
        self._tokenizer_owner = owner

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def val_domains(self) -> list[str]:
        return list(self.val_corpora)

    @property
    def test_domains(self) -> list[str]:
        return list(self.test_corpora)

    @property
    def augments_waveform(self) -> bool:
        return self.augment is not None and self.augment.enabled

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATE

    # -- Lightning hooks -------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Scan corpora and build the tokenizer once (rank 0); other ranks then hit the caches."""
        if self.train_corpus is not None:
            self.train_cuts()
        for name in self.val_corpora:
            self.eval_cuts("val", name)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_corpus is not None:
            self.train_cuts()
        if stage in (None, "fit", "validate"):
            for name in self.val_corpora:
                self.eval_cuts("val", name)
        if stage in (None, "test"):
            for name in self.test_corpora:
                self.eval_cuts("test", name)

    def train_dataloader(self, rank: int | None = None, world_size: int | None = None) -> DataLoader:
        rank, world_size = resolve_rank(self.trainer, rank, world_size)
        sampler = self._sampler(self.train_cuts(), True, rank, world_size)
        if self._resume is not None:
            check_resume(self._resume, world_size, self.seed)
            sampler.fast_forward(self._resume["epoch"], self._resume["batches"])
            self._resume = None
        self.train_sampler = sampler
        dataset = SpeechDataset(self.tokenizer if self.train_labels else None, labels=self.train_labels,
                                domain=domain_id(self.domain), augment=self.augment,
                                on_bad_input=self.on_bad_input, seed=self.seed)
        return self._loader(dataset, sampler)

    def train_batches_per_epoch(self, rank: int | None = None, world_size: int | None = None) -> int:
        """Training batches per epoch on this rank, counted by a dry pass of the sampler (metadata only).

        The samplers have no ``__len__``, so Lightning cannot estimate the number of optimizer steps
        of an epoch-bounded run; LR and lambda schedules ask here instead
        (``lightning_modules.optim.total_optimizer_steps``). Epoch 0's count (later epochs differ by a
        batch or two: reshuffled buckets fill differently). Cached per (rank, world_size); costs about
        as much as the label checks (a 280k-utterance index: 30 s on a 2-core Xeon, measured). Only
        called for epoch-bounded runs: with ``trainer.max_steps`` set and ``max_epochs: -1`` the total is known.
        """
        rank, world_size = resolve_rank(self.trainer, rank, world_size)
        if (rank, world_size) not in self._batch_counts:
            start = time.perf_counter()
            sampler = self._sampler(self.train_cuts(), True, rank, world_size)
            self._batch_counts[rank, world_size] = sum(1 for _ in sampler)
            log.info("%s: %d training batches per epoch on rank %d/%d (counted in %.1f s)", self.domain,
                     self._batch_counts[rank, world_size], rank, world_size, time.perf_counter() - start)
        return self._batch_counts[rank, world_size]

    def val_dataloader(self, rank: int | None = None, world_size: int | None = None) -> list[DataLoader]:
        return [self._eval_loader("val", name, rank, world_size) for name in self.val_corpora]

    def test_dataloader(self, rank: int | None = None, world_size: int | None = None) -> list[DataLoader]:
        return [self._eval_loader("test", name, rank, world_size) for name in self.test_corpora]

    def predict_dataloader(self, rank: int | None = None, world_size: int | None = None) -> DataLoader:
        if self.predict_source is None:
            raise ValueError("ASRDataModule(predict=...) was not given")
        rank, world_size = resolve_rank(self.trainer, rank, world_size)
        cuts = self._raw.get("predict")
        if cuts is None:
            cuts = self._raw["predict"] = self._predict_cuts()
        dataset = SpeechDataset(labels=False, domain=domain_id(self.domain), on_bad_input=self.on_bad_input)
        return self._loader(dataset, self._sampler(cuts, False, rank, world_size))

    def state_dict(self) -> dict[str, Any]:
        return progress_state(self.trainer, self.train_sampler, self.seed)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume = dict(state_dict["train_sampler"]) if state_dict.get("train_sampler") else None

    # -- cuts ------------------------------------------------------------------------------------
    def describe(self) -> dict[str, str | None]:
        """Training data per domain for run summaries/reports: ``{"source": ..., "target": ...}``."""
        train = self.train_corpus.describe() if self.train_corpus is not None else None
        if train is not None and not self.train_labels:
            train += " (unlabelled)"
        return {"source": train if self.domain != "target" else None,
                "target": train if self.domain == "target" else None}

    @property
    def labelled_target_minutes(self) -> float:
        """Minutes of labelled target-domain training audio (0 when training on the source domain)."""
        if self.domain != "target" or not self.train_labels or self.train_corpus is None:
            return 0.0
        return sum(cut.duration for cut in self.train_cuts()) / 60.0

    def train_cuts(self) -> CutSet:
        """Training cuts after the label checks (labelled mode) -- what the sampler draws from."""
        if "train" not in self._checked:
            if self.train_corpus is None:
                raise ValueError("ASRDataModule(train=...) was not given")
            raw = self._corpus_cuts("train", self.train_corpus)
            max_speed = self.augment.max_speed if self.augments_waveform else 1.0
            self._checked["train"] = self._check(raw, "train", max_speed) if self.train_labels else raw
        return self._checked["train"]

    def eval_cuts(self, split: Literal["val", "test"], name: str) -> CutSet:
        """Labelled val/test cuts of domain ``name`` (always labelled: that is the evaluation)."""
        key = f"{split}/{name}"
        if key not in self._checked:
            corpora = self.val_corpora if split == "val" else self.test_corpora
            self._checked[key] = self._check(self._corpus_cuts(key, corpora[name]), key, 1.0)
        return self._checked[key]

    def _corpus_cuts(self, key: str, corpus: Corpus) -> CutSet:
        if key not in self._raw:
            self._raw[key] = corpus.cuts(self.cache_dir)
        return self._raw[key]

    def _check(self, cuts: CutSet, name: str, max_speed: float) -> CutSet:
        kept, skipped = check_labels(cuts, self.tokenizer, self.frames_per_second, self.on_bad_input,
                                     max_speed=max_speed, name=f"{self.domain}/{name}")
        self.skipped[name] = dict(skipped)
        if not any(True for _ in kept):
            raise BadInputError(name, "no_usable_utterances", f"every utterance was skipped: {dict(skipped)}")
        return kept

    def _predict_cuts(self) -> CutSet:
        if isinstance(self.predict_source, Corpus):
            return self.predict_source.cuts(self.cache_dir)
        cuts = []
        for path in self.predict_source:
            try:
                cuts.append(Recording.from_file(path).to_cut().resample(SAMPLE_RATE))
            except Exception as e:  # unreadable header / missing file
                error = BadInputError(path, "unreadable_audio", f"{type(e).__name__}: {e}")
                if self.on_bad_input == "error":
                    raise error from e
                self.skipped.setdefault("predict", {}).setdefault(error.reason, 0)
                self.skipped["predict"][error.reason] += 1
                log.warning("predict: skipped %s", error)
        if not cuts:
            raise BadInputError("predict", "no_usable_utterances", "no readable audio file given")
        return CutSet.from_cuts(cuts)

    # -- tokenizer -------------------------------------------------------------------------------
    def _load_or_build_tokenizer(self) -> CharTokenizer | SentencePieceTokenizer:
        if self.tokenizer_path is not None:
            return load_tokenizer(self.tokenizer_path)
        if self.train_corpus is None:
            raise ValueError("no training corpus to build the tokenizer from: pass train=... or tokenizer_path=...")
        cuts = self._corpus_cuts("train", self.train_corpus)
        texts = _Texts(cuts)  # streamed twice (hash, build): fine for lazy 280k-utterance manifests
        settings = {"kind": self.tokenizer_kind, "normalizer": self.normalizer.to_dict(),
                    "vocab": self.sentencepiece_vocab_size if self.tokenizer_kind == "sentencepiece" else None}
        path = (self.cache_dir or USER_CACHE_DIR) / f"tokenizer-{_hash(settings, texts)}.json"
        if path.is_file():
            return load_tokenizer(path)
        if self.tokenizer_kind == "char":
            tok = CharTokenizer.build(texts, self.normalizer)
        else:
            tok = SentencePieceTokenizer.build(texts, self.normalizer, vocab_size=self.sentencepiece_vocab_size)
        tok.save(path)  # atomic: concurrent ranks write identical content
        log.info("%s: built %s tokenizer (%d classes) -> %s", self.domain, self.tokenizer_kind, tok.vocab_size, path)
        return tok

    # -- loaders ---------------------------------------------------------------------------------
    def _sampler(self, cuts: CutSet, train: bool, rank: int, world_size: int) -> DurationBucketingSampler:
        """Training: shuffled, even batch counts over ranks. Else: each utterance once over the ranks."""
        return DurationBucketingSampler(
            cuts, max_duration=self.max_duration, num_buckets=self.num_buckets,
            max_cuts=self.max_cuts if train else None, shuffle=self.shuffle and train, seed=self.seed, drop_last=self.drop_last and train,
            rank=rank, world_size=world_size, even_batches=train,
        )

    def _eval_loader(self, split: Literal["val", "test"], name: str, rank: int | None, world_size: int | None) -> DataLoader:
        rank, world_size = resolve_rank(self.trainer, rank, world_size)
        domain = domain_id(name) if name in DOMAIN_IDS else domain_id(self.domain)
        dataset = SpeechDataset(self.tokenizer, labels=True, domain=domain, on_bad_input=self.on_bad_input)
        cuts = self.eval_cuts(split, name)
        check_covers_ranks(cuts, world_size, f"{self.domain}/{split}/{name}")
        return self._loader(dataset, self._sampler(cuts, False, rank, world_size))

    def _loader(self, dataset: SpeechDataset, sampler: DurationBucketingSampler) -> DataLoader:
        pin = self.pin_memory if self.pin_memory is not None else torch.cuda.is_available()
        return make_loader(dataset, sampler, num_workers=self.num_workers, pin_memory=pin)


def progress_state(trainer: Any, sampler: DurationBucketingSampler | None, seed: int) -> dict[str, Any]:
    """``{"train_sampler": {epoch, batches, world_size, seed}}`` from the trainer's batch progress.

    ``batches`` is the number of training batches the loop has *processed* in the current epoch
    (not the number the DataLoader has prefetched), so resuming skips exactly those.
    """
    if trainer is None or sampler is None:
        return {}
    progress = trainer.fit_loop.epoch_loop.batch_progress.current.processed
    return {"train_sampler": {"epoch": sampler.epoch, "batches": int(progress),
                              "world_size": sampler.world_size, "seed": seed}}


def check_resume(state: dict[str, int], world_size: int, seed: int) -> None:
    if state["world_size"] != world_size or state["seed"] != seed:
        raise ValueError(
            f"cannot resume mid-epoch: the checkpoint was written with world_size={state['world_size']}, "
            f"seed={state['seed']}, this run has world_size={world_size}, seed={seed} (the batches would differ)"
        )


def _named(corpora: dict[str, Corpus] | Corpus | None, domain: str) -> dict[str, Corpus]:
    if corpora is None:
        return {}
    return dict(corpora) if isinstance(corpora, dict) else {domain: corpora}


class _Texts:
    """Re-iterable view of the raw transcripts of a CutSet (streamed: lazy manifests stay lazy)."""

    def __init__(self, cuts: CutSet) -> None:
        self.cuts = cuts

    def __iter__(self):
        return iter_texts(self.cuts)


def _hash(settings: dict, texts: Iterable[str]) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for text in texts:
        h.update(text.encode("utf-8", "surrogatepass") + b"\n")
    return h.hexdigest()[:16]
