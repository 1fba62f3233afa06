"""``EpisodicDataModule``: tasks (speakers, accents, locales, corpora) and few-shot episodes.

The corpora are scanned and label-checked exactly as by ``ASRDataModule`` (same manifests, same
``on_bad_input`` rules; it is the base class), pooled, grouped into tasks by ``task_key``
(``datamodules.tasks``) and split into disjoint meta-train / meta-val / meta-test tasks (named, or
drawn by ``seed``). Tasks too small for their episodes, and utterances without a value for the key,
are counted skips (``task_skips``), logged once. An episode is::

    {"support": batch | None, "query": batch, "task": str, "shots": int, "adapt": {...}}

``support`` and ``query`` are ordinary batch dicts (``datamodules.batch``: they carry ``lengths``)
of disjoint utterances of one task; ``support`` is None for k = 0; ``shots`` is its utterance count;
``adapt`` (val/test episodes only) is the evaluation protocol ``{"steps", "lr", "groups"}`` (None
entries: the model's own, see ``lightning_modules.adaptation``).

- Training, ``train_mode="episodes"``: a batch is a LIST of episodes, this rank's share of a meta-batch
  of ``tasks_per_step`` distinct meta-train tasks (``shots`` support + ``queries`` query each, in
  ``unit`` utterances or seconds). The meta-batch of step ``s`` of epoch ``e`` is a function of
  (seed, e, s); rank ``r`` of ``W`` gets episodes ``r, r + W, ...`` of it, so W ranks together see
  exactly what one process sees (``tasks_per_step`` must be a multiple of W). An epoch is
  ``steps_per_epoch`` batches; ``state_dict`` stores the position, a resume replays the rest exactly.
- Training, ``train_mode="pooled"``: ordinary batches over the meta-train tasks' utterances (joint
  multi-task training on the same tasks, the meta-learning baseline), as ``ASRDataModule``.
- Validation: one loader (named ``eval_name``, default the ``domain``) of one fixed episode per meta-val
  task (``eval_shots`` + ``eval_queries``). Test: the same over meta-test tasks, or with ``test_shots``
  (few-shot mode) one loader per k named ``fewshot/k<k>``: per task one query set and nested support
  sets (``tasks.eval_episode``), so ``test/fewshot/k5/wer`` is the query WER after adapting on 5 shots,
  averaged over the utterances of all meta-test tasks. Eval tasks go to ranks round robin (>= W each).

The vocabulary: ``tokenizer_path`` (a tokenizer JSON, or a ``.ckpt`` of this framework: the tokenizer
it was trained with), else built from the text of all corpora. The pool's cut metadata is held in
memory (about 2 kB per utterance).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from functools import partial
from typing import Any, Literal

import torch
from lhotse import CutSet
from torch.utils.data import DataLoader, Dataset, Sampler

from datamodules import errors as E
from datamodules.asr import ASRDataModule, minutes
from datamodules.base import Tokenizer
from datamodules.batch import domain_id
from datamodules.corpus_base import Corpus
from datamodules.dataset import LOAD_SKIPS, LoadSkips, SpeechDataset
from datamodules.sampling import CountingDataLoader, make_loader, resolve_rank
from datamodules.tasks import (EpisodePlan, TaskSplit, Unit, drop_small, eval_episode, fits, group_tasks,
                               resolve_names, split_tasks, train_episodes)

log = logging.getLogger(__name__)
FEWSHOT_DOMAIN = "fewshot/k{k:g}"  # few-shot test loader names: metrics test/fewshot/k<k>/{wer,cer,loss}
FEWSHOT_METRIC = re.compile(r"^test/fewshot/k([0-9.]+)/(wer|cer)$")


class PooledCorpus(Corpus):
    """Several corpora as one (eager) CutSet; a cut id found twice is bad input (``duplicate_id``)."""

    def __init__(self, corpora: list[Corpus], on_bad_input: str = "error") -> None:
        super().__init__(on_bad_input=on_bad_input)
        if not corpora:
            raise ValueError("EpisodicDataModule needs at least one corpus")
        self.corpora, self.root = list(corpora), corpora[0].root

    def config(self) -> dict:
        return {**super().config(), "corpora": [c.config() for c in self.corpora]}

    def describe(self) -> str:
        return " + ".join(c.describe() for c in self.corpora)

    def cuts(self, cache_dir=None) -> CutSet:
        policy = E.BadInputPolicy(self.on_bad_input, "pooled corpora")
        owner: dict[str, str] = {}
        kept = []
        for corpus in self.corpora:
            for cut in corpus.cuts(cache_dir):
                if cut.id in owner:
                    policy.bad(f"{corpus.describe()}: {cut.id}", E.DUPLICATE_ID, f"also in {owner[cut.id]}")
                    continue
                owner[cut.id] = corpus.describe()
                kept.append(cut)
        self.skipped = Counter(policy.skipped)
        policy.log_summary(log)
        return CutSet.from_cuts(kept)


class EpisodeSampler(Sampler):
    """This rank's share of each training meta-batch: ``steps`` lists of ``EpisodePlan`` per epoch.

    ``plans(epoch, step)`` gives the whole meta-batch (identical on every rank). ``set_epoch`` is
    called by Lightning each epoch; ``fast_forward(epoch, n)`` makes the next iteration start at batch
    ``n`` (the start of ``epoch + 1`` when ``n`` is the whole epoch, see ``DurationBucketingSampler``).
    """

    def __init__(self, plans: Any, steps: int, tasks_per_step: int, rank: int, world_size: int) -> None:
        if tasks_per_step % world_size:
            raise ValueError(f"tasks_per_step={tasks_per_step} is not a multiple of the {world_size} ranks: each "
                             "rank adapts its own share of every meta-batch, and the shares must be equal")
        self.plans, self.steps, self.rank, self.world_size = plans, steps, rank, world_size
        self.epoch, self._start = 0, 0

    def __len__(self) -> int:
        return self.steps

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self._start = 0
        self.epoch = epoch

    def fast_forward(self, epoch: int, num_batches: int) -> tuple[int, int]:
        if num_batches >= self.steps:
            epoch, num_batches = epoch + 1, 0
        self.epoch, self._start = epoch, num_batches
        return epoch, num_batches

    def __iter__(self):
        start, self._start = self._start, 0
        for step in range(start, self.steps):
            yield self.plans(self.epoch, step)[self.rank::self.world_size]


class EpisodeDataset(Dataset):
    """``dataset[plan]`` -> episode dict; ``dataset[[plan, ...]]`` -> list of episode dicts (module docstring)."""

    def __init__(self, cuts: dict[str, Any], speech: SpeechDataset, adapt: dict | None = None) -> None:
        self.cuts, self.speech, self.adapt = cuts, speech, adapt

    def __getitem__(self, item: EpisodePlan | list[EpisodePlan]) -> dict | list[dict]:
        return [self.episode(p) for p in item] if isinstance(item, list) else self.episode(item)

    def episode(self, plan: EpisodePlan) -> dict[str, Any]:
        episode = {"support": self._batch(plan.support) if plan.support else None, "query": self._batch(plan.query),
                   "task": plan.task, "shots": len(plan.support)}
        if self.adapt is not None:
            episode["adapt"] = dict(self.adapt)
        return episode

    def _batch(self, ids: tuple[str, ...]) -> dict[str, Any]:
        return self.speech[CutSet.from_cuts([self.cuts[i] for i in ids])]


class EpisodeLoader(CountingDataLoader):
    """``CountingDataLoader`` for episodes (one, or a list: this rank's share of a meta-batch): the load-time
    skips of every support and query batch add up in ``load_skips``; an episode whose query lost every
    utterance is dropped (logged, counted in ``empty_batches``), a support that lost them all becomes None
    (k = 0) and ``shots`` counts the support utterances actually loaded. Under DDP a rank left without an
    episode drops its batch (see ``CountingDataLoader``): prefer ``on_bad_input: error`` or clean data there."""

    def __iter__(self):
        for item in DataLoader.__iter__(self):
            episodes = [e for e in (item if isinstance(item, list) else [item]) if self._counted(e)]
            if episodes:
                yield episodes if isinstance(item, list) else episodes[0]

    def _counted(self, episode: dict[str, Any]) -> bool:
        """Take the skip records out of ``episode``; False when its query is empty."""
        for part in ("support", "query"):
            batch = episode[part]
            record = batch.pop(LOAD_SKIPS, None) if batch is not None else None
            if record is None:
                continue
            self.load_skips.merge(record)
            if not batch.get("ids"):
                if part == "query":
                    self.load_skips.empty_batches += 1
                    log.warning("dropped an episode of task %s: every query utterance was skipped (%s)",
                                episode["task"], ", ".join(f"{r}={n}" for r, n in sorted(record.counts.items())))
                    return False
                episode["support"] = None
        episode["shots"] = 0 if episode["support"] is None else len(episode["support"]["ids"])
        return True


class EpisodicDataModule(ASRDataModule):
    """Few-shot episodes over tasks of pooled corpora (module docstring).

    Args:
        corpora: one corpus or a list (LibriSpeech / Common Voice ...), pooled.
        task_key: what a task is (``datamodules.tasks.task_of``): speaker, accent, locale, corpus, ...
        meta_val, meta_test: task names (or unique prefixes), or how many tasks to draw by ``seed``.
        shots, queries, unit: training episode sizes, in utterances or seconds.
        tasks_per_step: episodes per training batch over all ranks (the meta-batch).
        steps_per_epoch: training batches (outer steps) per epoch.
        train_mode: "episodes" (meta-learning) or "pooled" (joint training on the meta-train tasks).
        eval_shots, eval_queries: val (and default test) episode sizes; default ``shots`` / ``queries``.
        test_shots: few-shot test mode: one test loader per k (e.g. ``[0, 1, 5, 20]``).
        adapt_steps, adapt_lr, adapt_groups: evaluation adaptation protocol put in every val/test
            episode; None: the model's own (``CTCModule.adaptation_recipe``).
        eval_name: name of the val/test loader (metrics ``val/<eval_name>/wer``); default ``domain``.
        domain: batch domain of the episodes, "source" or "target".
        **settings: every other ``ASRDataModule`` argument (tokenizer, tokenizer_path, max_duration,
            num_workers, seed, on_bad_input, augment, cache_dir, ...).
    """

    def __init__(self, corpora: Corpus | list[Corpus], task_key: str = "speaker", meta_val: int | list[str] = 1,
                 meta_test: int | list[str] = 1, shots: float = 5, queries: float = 5, unit: Unit = "utterances",
                 tasks_per_step: int = 4, steps_per_epoch: int = 50,
                 train_mode: Literal["episodes", "pooled"] = "episodes", eval_shots: float | None = None,
                 eval_queries: float | None = None, test_shots: list[float] | None = None,
                 adapt_steps: int | None = None, adapt_lr: float | None = None, adapt_groups: list[str] | None = None,
                 eval_name: str | None = None, domain: Literal["source", "target"] = "target",
                 **settings: Any) -> None:
        super().__init__(train=None, val=None, test=None, predict=None, domain=domain, train_labels=True, **settings)
        if unit not in ("utterances", "seconds"):
            raise ValueError(f"unit must be 'utterances' or 'seconds', got {unit!r}")
        if train_mode not in ("episodes", "pooled"):
            raise ValueError(f"train_mode must be 'episodes' or 'pooled', got {train_mode!r}")
        if shots <= 0 or queries <= 0 or tasks_per_step < 1 or steps_per_epoch < 1:
            raise ValueError("shots, queries, tasks_per_step and steps_per_epoch must be > 0")
        self.train_corpus = PooledCorpus([corpora] if isinstance(corpora, Corpus) else list(corpora),
                                         self.on_bad_input)
        self.task_key, self.meta_val, self.meta_test = task_key, meta_val, meta_test
        self.shots, self.queries, self.unit = shots, queries, unit
        self.tasks_per_step, self.steps_per_epoch, self.train_mode = tasks_per_step, steps_per_epoch, train_mode
        self.eval_shots = shots if eval_shots is None else eval_shots
        self.eval_queries = queries if eval_queries is None else eval_queries
        self.test_shots = None if test_shots is None else sorted(set(test_shots))
        self.adapt = {"steps": adapt_steps, "lr": adapt_lr, "groups": adapt_groups}
        self.eval_name = eval_name or domain
        self.task_skips: Counter[str] = Counter()
        self._tasks: tuple[dict, TaskSplit, dict[str, Any]] | None = None

    # -- contract --------------------------------------------------------------------------------
    @property
    def val_domains(self) -> list[str]:
        return [self.eval_name]

    @property
    def test_domains(self) -> list[str]:
        return [FEWSHOT_DOMAIN.format(k=k) for k in self.test_shots] if self.test_shots else [self.eval_name]

    def train_batches_per_epoch(self, rank: int | None = None, world_size: int | None = None) -> int:
        if self.train_mode == "pooled":
            return super().train_batches_per_epoch(rank, world_size)
        return self.steps_per_epoch

    def describe(self) -> dict[str, str | None]:
        mode = "episodes" if self.train_mode == "episodes" else "pooled"
        return {"source": None, "target": None,
                self.domain: f"{self.train_corpus.describe()}, {self.task_key} tasks ({mode})"}

    @property
    def labelled_target_minutes(self) -> float:
        return minutes(self.train_cuts()) if self.domain == "target" else 0.0

    # -- tasks -----------------------------------------------------------------------------------
    def tasks(self) -> tuple[dict, TaskSplit]:
        """``({task: [Utterance]}, TaskSplit)`` after the label checks, the split and the size checks."""
        if self._tasks is None or self._stale("train", True):  # rebuilt once a model's frame counts exist
            self._tasks = self._build_tasks()
        return self._tasks[0], self._tasks[1]

    def _build_tasks(self) -> tuple[dict, TaskSplit, dict[str, Any]]:
        pool = super().train_cuts()  # label-checked pooled corpora
        cuts = {cut.id: cut for cut in pool}
        tasks, missing = group_tasks(cuts.values(), self.task_key)
        skips: Counter[str] = Counter()
        if missing:
            skips["utterances_without_task_key"] = missing
        eval_need = max([self.eval_shots, *(self.test_shots or [])])
        eval_ok = {n: fits(u, eval_need, self.eval_queries, self.unit) for n, u in tasks.items()}
        split = split_tasks(tasks, self.meta_val, self.meta_test, self.seed, eval_ok)
        train, small_train = drop_small(split.train, tasks, self.shots, self.queries, self.unit, skips, "meta_train")
        val, small_val = drop_small(split.val, tasks, self.eval_shots, self.eval_queries, self.unit, skips, "meta_val")
        test, small_test = drop_small(split.test, tasks, eval_need, self.eval_queries, self.unit, skips, "meta_test")
        self.task_skips = skips
        if skips:
            small = sorted(small_train + small_val + small_test)
            log.warning("%s tasks: skipped %s%s", self.task_key, dict(skips),
                        f" (too small: {', '.join(s[:16] for s in small)})" if small else "")
        if not train:
            raise E.BadInputError(self.train_corpus.describe(), E.NO_UTTERANCES,
                                  f"no meta-train task is big enough for {self.shots:g} + {self.queries:g} "
                                  f"{self.unit}; skipped: {dict(skips)}")
        log.info("%s tasks: %d meta-train, %d meta-val, %d meta-test", self.task_key, len(train), len(val), len(test))
        return tasks, TaskSplit(train, val, test), cuts

    def train_cuts(self) -> CutSet:
        """The meta-train tasks' utterances (``train_mode="pooled"`` trains on them)."""
        tasks, split = self.tasks()
        cuts = self._tasks[2]
        return CutSet.from_cuts([cuts[u.id] for name in split.train for u in tasks[name]])

    # -- loaders ---------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        self.tasks()

    def train_dataloader(self, rank: int | None = None, world_size: int | None = None) -> DataLoader:
        if self.train_mode == "pooled":
            return super().train_dataloader(rank, world_size)
        rank, world_size = resolve_rank(self.trainer, rank, world_size)
        tasks, split = self.tasks()
        plans = partial(train_episodes, tasks, split.train, tasks_per_step=self.tasks_per_step, shots=self.shots,
                        queries=self.queries, unit=self.unit, seed=self.seed)
        if self.tasks_per_step > len(split.train):
            raise ValueError(f"tasks_per_step={self.tasks_per_step} but only {len(split.train)} meta-train tasks")
        sampler = EpisodeSampler(plans, self.steps_per_epoch, self.tasks_per_step, rank, world_size)
        if (resume := self._take_resume(world_size)) is not None:
            sampler.fast_forward(resume["epoch"], resume["batches"])
        self.train_sampler = sampler
        return self._episode_loader(sampler, None, "train")

    def val_dataloader(self, rank: int | None = None, world_size: int | None = None) -> list[DataLoader]:
        return [self._eval_loader_for("val", self.eval_shots, rank, world_size)]

    def test_dataloader(self, rank: int | None = None, world_size: int | None = None) -> list[DataLoader]:
        shots = self.test_shots or [self.eval_shots]
        return [self._eval_loader_for("test", k, rank, world_size) for k in shots]

    def eval_episodes(self, split: Literal["val", "test"], shots: float) -> list[EpisodePlan]:
        """The fixed evaluation episode of every meta-val / meta-test task with ``shots`` support."""
        tasks, task_split = self.tasks()
        names = task_split.val if split == "val" else task_split.test
        return [eval_episode(n, tasks[n], shots, self.eval_queries, self.unit, self.seed) for n in names]

    def task_episode(self, task: str, shots: float) -> EpisodePlan:
        """The fixed evaluation episode (``eval_queries`` query, ``shots`` support) of any task (name or
        unique prefix): the one the few-shot test uses for a meta-test task."""
        tasks = self.tasks()[0]
        name = resolve_names([task], sorted(tasks), f"{self.task_key} task")[0]
        return eval_episode(name, tasks[name], shots, self.eval_queries, self.unit, self.seed)

    def cuts_of(self, ids: Sequence[str]) -> CutSet:
        """The pool's cuts with these ids, in this order."""
        self.tasks()
        return CutSet.from_cuts([self._tasks[2][i] for i in ids])

    def _eval_loader_for(self, split: Literal["val", "test"], shots: float, rank: int | None,
                         world_size: int | None) -> DataLoader:
        rank, world_size = resolve_rank(self.trainer, rank, world_size)
        plans = self.eval_episodes(split, shots)
        if len(plans) < world_size:
            raise ValueError(f"meta-{split} has {len(plans)} task(s) for {world_size} ranks: every rank needs at least "
                             "one task (a rank without one never syncs its metrics); name more tasks or use fewer devices")
        name = self.eval_name if split == "val" or not self.test_shots else FEWSHOT_DOMAIN.format(k=shots)
        return self._episode_loader(plans[rank::world_size], self.adapt, f"{split}/{name}")

    def _episode_loader(self, sampler: Any, adapt: dict | None, name: str) -> DataLoader:
        """An ``EpisodeLoader`` named ``name`` ("train", "val/<eval_name>", "test/fewshot/k5", ...): its
        load-time skips accumulate in ``self.load_skips[name]`` (the bad-input report)."""
        train = name == "train"
        speech = SpeechDataset(self.tokenizer, labels=True, domain=domain_id(self.domain),
                               augment=self.augment if train else None, on_bad_input=self.on_bad_input, seed=self.seed)
        pin = self.pin_memory if self.pin_memory is not None else torch.cuda.is_available()
        loader = make_loader(EpisodeDataset(self._tasks[2], speech, adapt), sampler, num_workers=self.num_workers,
                             pin_memory=pin, loader_class=EpisodeLoader)
        loader.load_skips = self.load_skips.setdefault(name, LoadSkips())
        return loader

    # -- tokenizer -------------------------------------------------------------------------------
    def _load_or_build_tokenizer(self) -> Tokenizer:
        if self.tokenizer_path is not None and str(self.tokenizer_path).endswith(".ckpt"):
            from lightning_modules.checkpoint import load_tokenizer  # weights-only read of the checkpoint

            return load_tokenizer(self.tokenizer_path)
        return super()._load_or_build_tokenizer()
