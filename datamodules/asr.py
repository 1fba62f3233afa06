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
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import torch
from lhotse import CutSet
from torch.utils.data import DataLoader

from datamodules import errors as E
from datamodules.atomic import write_json_atomic
from datamodules.augment import WaveformAugmentation
from datamodules.base import SpeechDataModule, Tokenizer
from datamodules.batch import DOMAIN_IDS, domain_id
from datamodules.charset import CharPolicy, count_chars, describe_excluded
from datamodules.corpus_base import Corpus, describe_training
from datamodules.ctc_check import FrameCounter
from datamodules.dataset import MAX_CHARS_PER_SECOND, LoadSkips, SpeechDataset, check_labels, iter_texts
from datamodules.errors import BadInputError, check_on_bad_input
from datamodules.manifest_cache import USER_CACHE_DIR
from datamodules.probe import audio_file_cut
from datamodules.replay import mix, replay_slice, total_seconds
from datamodules.sampling import DurationBucketingSampler, check_covers_ranks, make_loader, resolve_rank
from datamodules.text import CharTokenizer, SentencePieceTokenizer, TextNormalizer, load_tokenizer

log = logging.getLogger(__name__)


class ASRDataModule(SpeechDataModule):
    """Train/val/test/predict loaders over LibriSpeech / Common Voice corpora for one domain.

    Args:
        train: training corpus (its text also builds the tokenizer).
        val: one corpus (named after ``domain``) or ``{name: corpus}``; one val loader per name.
        test: as ``val``.
        predict: a corpus, or audio file paths (batches without labels; cut id = the path as given;
            each file is checked like a corpus file: missing, empty, unreadable or truncated files are
            bad input, multichannel audio is downmixed (a counted note) and any rate resampled).
        domain: "source" (batch domain 0) or "target" (1); val/test sets named "source"/"target" get
            that domain id, any other name (e.g. "dev-other") gets this datamodule's.
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
        replay: a source corpus to replay while training on this one (``replay.py``): the training cuts
            become ``CutSet.mux`` of these and a seeded slice of ``replay`` holding ``replay_ratio`` of
            the mixed audio. Validate on "source" too, to see the forgetting it prevents.
        on_bad_input: "error" raises ``BadInputError``; "skip" drops, counts and logs. Covers the
            corpus scan, the label checks (OOV characters, too short for CTC) and audio that fails to
            decode or decodes to NaN/inf at load time; ``bad_input_report()`` has every count. Clips
            longer than ``max_duration`` (they cannot be batched) and faster than
            ``max_chars_per_second`` are counted skips (with a warning) under either policy.
        cache_dir: corpus manifest + tokenizer cache; default: manifests next to the data (else
            ``~/.cache/speechxfer``), tokenizers in ``~/.cache/speechxfer``.
        max_chars_per_second: labelled utterances with more normalised characters per second of
            audio are skipped and counted (truncated audio / wrong transcript); None disables the check.
        charset, min_char_count: the training-text character policy of a char tokenizer (see
            ``datamodules.charset``): ``"letters"`` (default), a locale (``"en"``), explicit characters,
            or None (every character); characters seen fewer than ``min_char_count`` times are excluded.
    """

    def __init__(
        self,
        train: Corpus | None = None,
        val: Corpus | dict[str, Corpus] | None = None,
        test: Corpus | dict[str, Corpus] | None = None,
        predict: Corpus | list[str] | None = None,
        domain: Literal["source", "target"] = "source",
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
        replay: Corpus | None = None,
        replay_ratio: float = 0.2,
        on_bad_input: Literal["error", "skip"] = "error",
        cache_dir: str | None = None,
        max_chars_per_second: float | None = MAX_CHARS_PER_SECOND,
        charset: str | None = "letters",
        min_char_count: int = 1,
    ) -> None:
        super().__init__()
        domain_id(domain)  # "source" | "target", checked now
        self.train_corpus, self.predict_source = train, predict
        self.domain, self.train_labels = domain, train_labels
        self.val_corpora = _named(val, domain)
        self.test_corpora = _named(test, domain)
        self.tokenizer_kind, self.tokenizer_path = tokenizer, tokenizer_path
        self.sentencepiece_vocab_size = sentencepiece_vocab_size
        self.normalizer = normalizer or TextNormalizer()
        self.max_duration, self.num_buckets, self.max_cuts = max_duration, num_buckets, max_cuts
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.augment = augment
        if replay is not None and not train_labels:
            raise ValueError("replay needs labelled training (train_labels=True): replayed source cuts are trained with CTC")
        self.replay, self.replay_ratio = replay, replay_ratio
        self.output_lengths: FrameCounter | None = None  # set: overrides the trainer's model (encoder_frames)
        self.on_bad_input = check_on_bad_input(on_bad_input)
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None  # None: corpora pick
        self.max_chars_per_second = max_chars_per_second
        self.char_policy = CharPolicy(charset, min_char_count, self.normalizer.keep_chars)
        self.text_report: dict[str, Any] = {}  # the training-text character policy's outcome
        self.skip_examples: dict[str, dict[str, str]] = {}  # first skip message per reason, per split
        self.load_skips: dict[str, LoadSkips] = {}  # load-time skips per loader name
        self._tokenizer: Tokenizer | None = None
        self._raw: dict[str, CutSet] = {}
        self._checked: dict[str, CutSet] = {}
        self._checked_frames: dict[str, bool] = {}  # key -> checked with encoder frame counts
        self.skipped: dict[str, dict[str, int]] = {}
        self.notes: dict[str, dict[str, int]] = {}  # kept-but-fixed items per split (predict files)
        self.predict_errors: list[BadInputError] = []  # the predict files skipped, in the order given
        self.train_sampler: DurationBucketingSampler | None = None
        self._resume: dict[str, int] | None = None
        self._batch_counts: dict[tuple[int, int], int] = {}

    # -- contract (datamodules.base.SpeechDataModule) --------------------------------------------
    @property
    def tokenizer(self) -> Tokenizer:
        """Built from the training text on first access (cached on disk), or loaded from ``tokenizer_path``."""
        if self._tokenizer is None:
            self._tokenizer = self._load_or_build_tokenizer()
        return self._tokenizer

    @property
    def val_domains(self) -> list[str]:
        return list(self.val_corpora)

    @property
    def test_domains(self) -> list[str]:
        return list(self.test_corpora)

    @property
    def val_languages(self) -> dict[str, str | None]:
        """Language of each validation domain's corpus (decides the headline metric, see ``locales.py``)."""
        return {name: corpus.language for name, corpus in self.val_corpora.items()}

    @property
    def augments_waveform(self) -> bool:
        return self.augment is not None and self.augment.enabled

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
        loader = self._training_loader(self.train_cuts(), self.train_labels, self.domain, rank, world_size, "train")
        if (resume := self._take_resume(world_size)) is not None:
            loader.sampler.fast_forward(resume["epoch"], resume["batches"])
        self.train_sampler = loader.sampler
        return loader

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
        return self._loader(dataset, self._sampler(cuts, False, rank, world_size), "predict")

    def state_dict(self) -> dict[str, Any]:
        return progress_state(self.trainer, self.train_sampler, self.seed)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._resume = dict(state_dict["train_sampler"]) if state_dict.get("train_sampler") else None

    def describe(self) -> dict[str, str | None]:
        """``{"source": ..., "target": ...}``: the training corpus under this datamodule's domain."""
        train = describe_training(self.train_corpus, self.train_labels)
        if train is not None and self.replay is not None:
            train += f" + {100 * self.replay_ratio:g} % replay of {self.replay.describe()}"
        return {"source": None, "target": None, self.domain: train}

    @property
    def labelled_target_minutes(self) -> float:
        """Minutes of labelled target-domain training audio (0 when training on the source domain)."""
        if self.domain != "target" or not self.train_labels or self.train_corpus is None:
            return 0.0
        return minutes(self._train_cuts("train", self.train_corpus, True))  # without replayed source cuts

    # -- cuts ------------------------------------------------------------------------------------
    def train_cuts(self) -> CutSet:
        """Training cuts after the label checks (labelled mode) -- what the sampler draws from; with
        ``replay``, muxed with the replayed source slice."""
        cuts = self._train_cuts("train", self.train_corpus, self.train_labels)
        if self.replay is None:
            return cuts
        self._replay_cuts()  # the slice, as the raw cuts of key "replay"
        replayed = self._train_cuts("replay", self.replay, True)
        return mix(cuts, replayed, self.seed)

    def _train_cuts(self, key: str, corpus: Corpus | None, labels: bool) -> CutSet:
        """Cuts of training corpus ``key``: label-checked when ``labels``, else as scanned (text never read)."""
        if self._stale(key, labels):
            if corpus is None:
                raise ValueError(f"{type(self).__name__}: no training corpus was given ({key}=...)")
            raw = self._corpus_cuts(key, corpus)
            max_speed = self.augment.max_speed if self.augments_waveform else 1.0
            self._checked[key] = self._check(raw, key, max_speed, labels)
            self._checked_frames[key] = self.encoder_frames() is not None or not labels
            self._batch_counts.clear()  # counted over the previous check's cuts
        return self._checked[key]

    def eval_cuts(self, split: Literal["val", "test"], name: str) -> CutSet:
        """Labelled val/test cuts of domain ``name`` (always labelled: that is the evaluation)."""
        key = f"{split}/{name}"
        if self._stale(key, True):
            corpora = self.val_corpora if split == "val" else self.test_corpora
            self._checked[key] = self._check(self._corpus_cuts(key, corpora[name]), key, 1.0)
            self._checked_frames[key] = self.encoder_frames() is not None
        return self._checked[key]

    def encoder_frames(self) -> FrameCounter | None:
        """Exact encoder frames per sample count: ``self.output_lengths`` if set, else the backbone of the
        CTC model this datamodule is attached to (``model_output_lengths``); None without either (the
        "too short for CTC" check then waits until a model is attached)."""
        return self.output_lengths if self.output_lengths is not None else model_output_lengths(self.trainer)

    def _stale(self, key: str, labels: bool) -> bool:
        """True until ``key`` was checked, or when labelled cuts were checked without frame counts that now exist."""
        if key not in self._checked:
            return True
        return labels and not self._checked_frames[key] and self.encoder_frames() is not None

    def _replay_cuts(self) -> CutSet:
        """The seeded slice of the replay corpus sized by ``replay_ratio`` against the target's audio."""
        if "replay" not in self._raw:
            target = total_seconds(self._corpus_cuts("train", self.train_corpus))
            self._raw["replay"] = replay_slice(self.replay.cuts(self.cache_dir), target, self.replay_ratio, self.seed)
        return self._raw["replay"]

    def _corpus_cuts(self, key: str, corpus: Corpus) -> CutSet:
        if key not in self._raw:
            self._raw[key] = corpus.cuts(self.cache_dir)
        return self._raw[key]

    def _check(self, cuts: CutSet, name: str, max_speed: float, labels: bool = True) -> CutSet:
        """Drop (or raise on) unusable utterances before sampling: durations always, labels when ``labels``."""
        frames = self.encoder_frames() if labels else None
        if labels and frames is None and name not in self.skipped:
            log.info("%s/%s: no model attached yet; clips too short for their CTC label are checked once one is "
                     "(set .output_lengths to a backbone's output_lengths to check now)", self.domain, name)
        kept, skipped, examples = check_labels(
            cuts, self.tokenizer if labels else None, frames, self.on_bad_input, max_speed=max_speed,
            name=f"{self.domain}/{name}", max_duration=self.max_duration,
            max_chars_per_second=self.max_chars_per_second)
        self.skipped[name], self.skip_examples[name] = dict(skipped), examples
        if not any(True for _ in kept):
            raise BadInputError(name, E.NO_UTTERANCES,
                                f"every utterance was skipped: {dict(skipped)}; first: {'; '.join(examples.values())}")
        return kept

    # -- bad-input report --------------------------------------------------------------------------
    def named_corpora(self) -> dict[str, Corpus]:
        """Every corpus of this datamodule by split name (``train``, ``val/<name>``, ``test/<name>``)."""
        corpora = {"train": self.train_corpus, **{f"val/{n}": c for n, c in self.val_corpora.items()},
                   **{f"test/{n}": c for n, c in self.test_corpora.items()}}
        return {name: corpus for name, corpus in corpora.items() if corpus is not None}

    def load_skip_counts(self) -> Counter:
        """``{reason: n}`` of the utterances this process's loaders skipped at load time."""
        return sum((Counter(rec.counts) for rec in self.load_skips.values()), Counter())

    def bad_input_report(self) -> dict[str, Any]:
        """Every bad-input count of this datamodule's data, for ``summary.json``.

        ``scan``: per corpus, the files skipped/noted while scanning (``Corpus.skipped``/``notes``);
        ``checks``: per split, utterances dropped before sampling (labels, durations, speaking rate);
        ``load``: per loader, utterances skipped when their audio was decoded (this process);
        ``text``: the training-text character policy and its outcome.
        """
        scan = {name: {"skipped": dict(c.skipped), "notes": dict(c.notes)}
                for name, c in self.named_corpora().items() if c.skipped or c.notes}
        checks = {name: {"skipped": counts, "examples": self.skip_examples.get(name, {})}
                  for name, counts in self.skipped.items() if counts}
        load = {name: rec.to_dict() for name, rec in self.load_skips.items() if rec.total()}
        return {"on_bad_input": self.on_bad_input, "scan": scan, "checks": checks, "load": load,
                "text": self.text_report}

    def _predict_cuts(self) -> CutSet:
        """The predict corpus's cuts, or one cut per audio file (duplicates once), checked by ``audio_file_cut``."""
        if isinstance(self.predict_source, Corpus):
            return self.predict_source.cuts(self.cache_dir)
        policy = E.BadInputPolicy(self.on_bad_input, "predict")
        cuts = [cut for path in dict.fromkeys(map(str, self.predict_source))
                if (cut := audio_file_cut(path, policy)) is not None]
        self.skipped["predict"], self.notes["predict"] = dict(policy.skipped), dict(policy.notes)
        self.predict_errors = list(policy.errors)
        policy.log_summary(log)
        if not cuts:
            raise BadInputError("predict", E.NO_UTTERANCES, f"no usable audio file given; {policy.summary()}")
        return CutSet.from_cuts(cuts)

    # -- tokenizer -------------------------------------------------------------------------------
    def _load_or_build_tokenizer(self) -> Tokenizer:
        if self.tokenizer_path is not None:
            return load_tokenizer(self.tokenizer_path)
        if self.train_corpus is None:
            raise ValueError("no training corpus to build the tokenizer from: pass train=... or tokenizer_path=...")
        cuts = [self._corpus_cuts("train", self.train_corpus)]
        if self.replay is not None:  # the replayed source text is trained on too
            cuts.append(self._replay_cuts())
        texts = _Texts(*cuts)  # streamed 2-3 times (hash, count, build): fine for lazy 280k-utterance manifests
        settings = {"kind": self.tokenizer_kind, "normalizer": self.normalizer.to_dict(),
                    "vocab": self.sentencepiece_vocab_size if self.tokenizer_kind == "sentencepiece" else None,
                    "chars": self.char_policy.settings()}
        key = _hash(settings, texts)
        path = (self.cache_dir or USER_CACHE_DIR) / f"tokenizer-{key}.json"
        report_path = path.with_name(f"text-policy-{key}.json")
        if path.is_file() and report_path.is_file():
            self.text_report = json.loads(report_path.read_text(encoding="utf-8"))
            return load_tokenizer(path)
        chars, excluded = self.char_policy.split(count_chars(self.normalizer(t) for t in texts))
        if self.tokenizer_kind == "char":
            tok = CharTokenizer(chars, self.normalizer)
        else:  # texts using an excluded character do not train the pieces (those characters stay OOV)
            allowed = set(chars)
            kept = (t for t in texts if all(ch in allowed for ch in self.normalizer(t)))
            tok = SentencePieceTokenizer.build(kept, self.normalizer, vocab_size=self.sentencepiece_vocab_size)
        self.text_report = {**self.char_policy.settings(), "vocabulary": "".join(chars),
                            "excluded": describe_excluded(excluded), "excluded_total": sum(excluded.values())}
        write_json_atomic(report_path, self.text_report)
        tok.save(path)  # atomic: concurrent ranks write identical content
        log.info("%s: built %s tokenizer (%d classes) -> %s", self.domain, self.tokenizer_kind, tok.vocab_size, path)
        if excluded:
            log.warning("%s: training-text character policy %s excluded %d character(s) from the vocabulary: %s; "
                        "utterances using them are bad input (oov_character)", self.domain,
                        self.char_policy.settings(), len(excluded), self.text_report["excluded"])
        return tok

    # -- loaders ---------------------------------------------------------------------------------
    def _sampler(self, cuts: CutSet, train: bool, rank: int, world_size: int) -> DurationBucketingSampler:
        """Training: shuffled, even batch counts over ranks. Else: each utterance once over the ranks."""
        return DurationBucketingSampler(
            cuts, max_duration=self.max_duration, num_buckets=self.num_buckets,
            max_cuts=self.max_cuts if train else None, shuffle=self.shuffle and train, seed=self.seed,
            drop_last=self.drop_last and train,
            rank=rank, world_size=world_size, even_batches=train,
        )

    def _training_loader(self, cuts: CutSet, labels: bool, domain: str, rank: int, world_size: int,
                         name: str, monitor_texts: bool = False) -> DataLoader:
        """Shuffled training loader over ``cuts`` (``labels``: batches carry targets/texts;
        ``monitor_texts``: unlabelled batches carry ``monitor_texts``, see ``SpeechDataset``), named ``name``."""
        tokenizer = self.tokenizer if labels or monitor_texts else None
        dataset = SpeechDataset(tokenizer, labels=labels, domain=domain_id(domain), augment=self.augment,
                                on_bad_input=self.on_bad_input, seed=self.seed, monitor_texts=monitor_texts)
        return self._loader(dataset, self._sampler(cuts, True, rank, world_size), name)

    def _take_resume(self, world_size: int) -> dict[str, int] | None:
        """The sampler position restored by ``load_state_dict`` (checked against this run), once."""
        resume, self._resume = self._resume, None
        if resume is not None:
            check_resume(resume, world_size, self.seed)
        return resume

    def _eval_loader(self, split: Literal["val", "test"], name: str, rank: int | None, world_size: int | None) -> DataLoader:
        rank, world_size = resolve_rank(self.trainer, rank, world_size)
        domain = domain_id(name if name in DOMAIN_IDS else self.domain)  # "dev-other" etc.: this datamodule's
        dataset = SpeechDataset(self.tokenizer, labels=True, domain=domain, on_bad_input=self.on_bad_input)
        cuts = self.eval_cuts(split, name)
        check_covers_ranks(cuts, world_size, f"{self.domain}/{split}/{name}")
        return self._loader(dataset, self._sampler(cuts, False, rank, world_size), f"{split}/{name}")

    def _loader(self, dataset: SpeechDataset, sampler: DurationBucketingSampler, name: str) -> DataLoader:
        """A ``CountingDataLoader`` whose load-time skips accumulate in ``self.load_skips[name]``."""
        pin = self.pin_memory if self.pin_memory is not None else torch.cuda.is_available()
        loader = make_loader(dataset, sampler, num_workers=self.num_workers, pin_memory=pin)
        loader.load_skips = self.load_skips.setdefault(name, LoadSkips())
        return loader


def model_output_lengths(trainer: Any) -> FrameCounter | None:
    """``backbone.output_lengths`` of the ``CTCModule`` the trainer fits; None without one."""
    from lightning_modules.ctc import CTCModule  # the model side of the contract; imported when asked

    module = trainer.lightning_module if trainer is not None else None
    return module.backbone.output_lengths if isinstance(module, CTCModule) else None


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


def minutes(cuts: CutSet) -> float:
    """Total audio of ``cuts`` in minutes (one metadata pass)."""
    return sum(cut.duration for cut in cuts) / 60.0


def _named(corpora: dict[str, Corpus] | Corpus | None, domain: str) -> dict[str, Corpus]:
    if corpora is None:
        return {}
    return dict(corpora) if isinstance(corpora, dict) else {domain: corpora}


class _Texts:
    """Re-iterable view of the raw transcripts of CutSets, one after the other (streamed: lazy stays lazy)."""

    def __init__(self, *cutsets: CutSet) -> None:
        self.cutsets = cutsets

    def __iter__(self):
        return (text for cuts in self.cutsets for text in iter_texts(cuts))


def _hash(settings: dict, texts: Iterable[str]) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for text in texts:
        h.update(text.encode("utf-8", "surrogatepass") + b"\n")
    return h.hexdigest()[:16]
