"""Tasks for meta-learning: utterances grouped by a key, disjoint task splits, episode plans.

Pure functions over cut metadata (id, duration, task name); ``datamodules.episodic`` turns their
plans into batches. Everything is a function of the seed (and of the epoch and step for training
episodes), so every DDP rank computes the same plans and a resumed run replays them exactly.

Task keys (``task_of``): ``"speaker"`` (``supervision.speaker``; LibriSpeech speaker id, Common
Voice ``client_id``), ``"language"`` / ``"locale"`` (``supervision.language``; a Common Voice
locale, ``"en"`` for LibriSpeech), ``"corpus"`` / ``"domain"`` (``custom["corpus"]``), ``"accent"``
(``custom["accents"]``, Common Voice), and any other ``supervision.custom`` field by its name
(``"subset"``, ``"gender"``, ``"age"``, ``"variant"``, ``"sentence_domain"``, ``"chapter"``).

Episode sizes are counted in utterances or in seconds of audio (``unit``). A task can serve an
episode of ``shots`` support + ``queries`` query when it has at least that many utterances (or
seconds, and two utterances): :func:`fits`.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Unit = Literal["utterances", "seconds"]
KEY_ALIASES = {"accent": "accents", "domain": "corpus", "locale": "language"}
SUPERVISION_FIELDS = ("speaker", "language")


@dataclass(frozen=True)
class Utterance:
    """One utterance of a task: its cut id and duration in seconds."""

    id: str
    duration: float


@dataclass(frozen=True)
class EpisodePlan:
    """Which utterances one episode uses: ``support`` (may be empty: k = 0) and ``query`` cut ids."""

    task: str
    support: tuple[str, ...]
    query: tuple[str, ...]


@dataclass(frozen=True)
class TaskSplit:
    """Disjoint task names for meta-training, meta-validation and meta-testing (sorted)."""

    train: list[str]
    val: list[str]
    test: list[str]


def task_of(cut: Any, key: str) -> str | None:
    """The task a cut belongs to under ``key`` (first supervision), or None when it has no value."""
    key = KEY_ALIASES.get(key, key)
    if not cut.supervisions:
        return None
    sup = cut.supervisions[0]
    value = getattr(sup, key) if key in SUPERVISION_FIELDS else (sup.custom or {}).get(key)
    text = "" if value is None else str(value).strip()
    return text or None


def group_tasks(cuts: Iterable[Any], key: str) -> tuple[dict[str, list[Utterance]], int]:
    """``{task: utterances sorted by id}`` and the number of cuts without a value for ``key``."""
    tasks: dict[str, list[Utterance]] = {}
    missing = 0
    for cut in cuts:
        name = task_of(cut, key)
        if name is None:
            missing += 1
            continue
        tasks.setdefault(name, []).append(Utterance(cut.id, float(cut.duration)))
    return {name: sorted(utts, key=lambda u: u.id) for name, utts in sorted(tasks.items())}, missing


def fits(utterances: Sequence[Utterance], shots: float, queries: float, unit: Unit) -> bool:
    """Whether a task can give an episode of ``shots`` support + ``queries`` query."""
    if unit == "utterances":
        return len(utterances) >= int(shots) + int(queries)
    return len(utterances) >= (2 if shots > 0 else 1) and sum(u.duration for u in utterances) >= shots + queries


def take(utterances: Sequence[Utterance], amount: float, unit: Unit) -> tuple[list[Utterance], list[Utterance]]:
    """The first utterances up to ``amount`` (a count, or seconds: until the total reaches it), and the rest."""
    if unit == "utterances":
        n = int(amount)
    else:
        n, total = 0, 0.0
        while n < len(utterances) and total < amount:
            total += utterances[n].duration
            n += 1
    return list(utterances[:n]), list(utterances[n:])


def resolve_names(given: Sequence[str], available: Sequence[str], what: str) -> list[str]:
    """Task names as given, each an exact name or a unique prefix (Common Voice client ids are 128 hex digits)."""
    out = []
    for name in given:
        matches = [name] if name in available else [a for a in available if a.startswith(name)]
        if len(matches) != 1:
            problem = "matches no task" if not matches else f"is ambiguous ({len(matches)} tasks start with it)"
            shown = ", ".join(list(available)[:12]) + (" ..." if len(available) > 12 else "")
            raise ValueError(f"{what}: {name!r} {problem}; tasks: {shown}")
        out.append(matches[0])
    if len(set(out)) != len(out):
        raise ValueError(f"{what}: a task is listed twice: {out}")
    return out


def split_tasks(tasks: dict[str, list[Utterance]], val: int | Sequence[str], test: int | Sequence[str],
                seed: int, eval_ok: dict[str, bool]) -> TaskSplit:
    """Disjoint meta-train / meta-val / meta-test task names.

    ``val`` / ``test`` are task names (or unique prefixes), or how many tasks to draw: the tasks
    ``eval_ok`` marks as big enough for evaluation episodes, shuffled with ``random.Random(seed)``
    from sorted order, give the test tasks first, then the val tasks. Every other task trains.
    """
    names = sorted(tasks)
    test_names = resolve_names(test, names, "meta_test") if not isinstance(test, int) else []
    val_names = resolve_names(val, names, "meta_val") if not isinstance(val, int) else []
    if set(test_names) & set(val_names):
        raise ValueError(f"meta_val and meta_test share tasks: {sorted(set(test_names) & set(val_names))}")
    pool = [n for n in names if eval_ok[n] and n not in test_names and n not in val_names]
    random.Random(seed).shuffle(pool)
    for count, chosen, what in ((test, test_names, "meta_test"), (val, val_names, "meta_val")):
        if isinstance(count, int):
            if count > len(pool):
                raise ValueError(f"{what}={count} tasks asked for, but only {len(pool)} task(s) left are big enough "
                                 "for evaluation episodes (lower eval_shots/eval_queries/test_shots, or name tasks)")
            chosen += pool[:count]
            del pool[:count]
    held_out = set(test_names) | set(val_names)
    return TaskSplit([n for n in names if n not in held_out], sorted(val_names), sorted(test_names))


def eval_episode(task: str, utterances: Sequence[Utterance], shots: float, queries: float, unit: Unit,
                 seed: int) -> EpisodePlan:
    """The fixed evaluation episode of a task: a seeded order; the query first, the support after it.

    The query does not depend on ``shots``, and the support of k shots is a prefix of the support of
    any larger k: a few-shot curve compares nested support sets on one query set.
    """
    order = list(utterances)
    random.Random(f"{seed}|eval|{task}").shuffle(order)
    query, rest = take(order, queries, unit)
    support, _ = take(rest, shots, unit)
    return EpisodePlan(task, tuple(u.id for u in support), tuple(u.id for u in query))


def train_episodes(tasks: dict[str, list[Utterance]], names: Sequence[str], epoch: int, step: int,
                   tasks_per_step: int, shots: float, queries: float, unit: Unit, seed: int) -> list[EpisodePlan]:
    """The meta-batch of training step ``step`` of ``epoch``: ``tasks_per_step`` distinct tasks, each with
    disjoint random support and query sets (a function of seed, epoch and step only)."""
    rng = random.Random(f"{seed}|train|{epoch}|{step}")
    plans = []
    for task in rng.sample(sorted(names), tasks_per_step):
        order = list(tasks[task])
        rng.shuffle(order)
        support, rest = take(order, shots, unit)
        query, _ = take(rest, queries, unit)
        plans.append(EpisodePlan(task, tuple(u.id for u in support), tuple(u.id for u in query)))
    return plans


def drop_small(names: Sequence[str], tasks: dict[str, list[Utterance]], shots: float, queries: float, unit: Unit,
               skipped: Counter, what: str) -> tuple[list[str], list[str]]:
    """(tasks big enough for ``shots`` + ``queries``, those that are not); the latter counted in ``skipped``."""
    kept = [n for n in names if fits(tasks[n], shots, queries, unit)]
    small = [n for n in names if n not in kept]
    if small:
        skipped[f"{what}_too_few_utterances"] += len(small)
    return kept, small
