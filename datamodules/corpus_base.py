"""``Corpus``: scan once (headers only), cache the manifest, subset deterministically.

Subclasses implement three small hooks:

- ``_check_layout(policy) -> state``: structural checks (root, subset, TSV present) run on every
  call, cheap;
- ``_fingerprint_entries(state)``: what the cache key hashes (stat of every source file);
- ``_scan(state, policy) -> list[DataCut]``: the expensive part, run only on a cache miss; its
  skip/note counts are cached next to the manifest so a cache hit reports them too.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from lhotse import CutSet, Recording, SupervisionSegment
from lhotse.cut.data import DataCut

from datamodules import errors as E
from datamodules.batch import SAMPLE_RATE
from datamodules.manifest_cache import (ManifestCache, default_cache_dir, derive_manifest, fingerprint, ids_digest,
                                        raw_cut_dicts)
from datamodules.probe import recording_cut

logger = logging.getLogger(__name__)


def make_cut(rec: Recording, text: str, speaker: str, language: str, custom: dict) -> DataCut:
    """One cut (id = recording id, see ``recording_cut``) with one supervision over all its channels."""
    cut = recording_cut(rec)
    cut.supervisions = [SupervisionSegment(
        id=rec.id,
        recording_id=rec.id,
        start=0.0,
        duration=rec.duration,
        channel=cut.channel,
        text=text,
        speaker=speaker,
        language=language,
        custom=custom,
    )]
    return cut


def describe_training(corpus: Corpus | None, labelled: bool) -> str | None:
    """``corpus.describe()`` of a training corpus, marked "(unlabelled)" when its text is not used."""
    if corpus is None:
        return None
    return corpus.describe() + ("" if labelled else " (unlabelled)")


def read_text_lines(path: Path) -> list[tuple[int, str, str | None]]:
    """``(line number, line, problem)`` for each non-blank line; ``problem`` names undecodable bytes.

    Decoding with ``surrogateescape`` lets one bad line be reported (or skipped) with its line
    number instead of failing the whole file.
    """
    out = []
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.rstrip("\r\n")
            if line.strip():
                out.append((lineno, line, utf8_problem(line)))
    return out


def utf8_problem(text: str) -> str | None:
    """``None`` for valid UTF-8 text read with ``surrogateescape``, else which byte is bad."""
    for col, ch in enumerate(text):
        if "\udc80" <= ch <= "\udcff":
            return f"not valid UTF-8 (byte 0x{ord(ch) - 0xDC00:02x} at column {col + 1})"
    return None


class KeepIds:
    """Picklable ``CutSet.filter`` predicate keeping the given cut ids."""

    def __init__(self, ids: Iterable[str]) -> None:
        self.ids = frozenset(ids)

    def __call__(self, cut) -> bool:
        return cut.id in self.ids


def minutes_subset_ids(cuts: CutSet, max_minutes: float, seed: int) -> set[str]:
    """Ids of a deterministic random subset of at most ``max_minutes`` of audio (one metadata pass).

    Utterances are sorted by id, shuffled with ``random.Random(seed)`` and taken in that order
    while the total stays within budget; the first utterance that does not fit ends the subset.
    Taking a prefix makes budgets nested: with one seed, the 10-minute subset is contained in the
    60-minute one. Only ``(id, duration)`` pairs are held (~40 MB for 280k utterances).
    """
    if max_minutes <= 0:
        raise ValueError(f"max_minutes must be > 0, got {max_minutes}")
    raw = raw_cut_dicts(cuts)  # streaming raw JSON is ~10x faster than building cuts
    pairs = ((d["id"], d["duration"]) for d in raw) if raw is not None else ((c.id, c.duration) for c in cuts)
    order = sorted(pairs)
    if not order:
        raise ValueError("cannot take a max_minutes subset of an empty CutSet")
    random.Random(seed).shuffle(order)
    budget, total, chosen = max_minutes * 60.0, 0.0, set()
    for cut_id, duration in order:
        if total + duration > budget:
            break
        total += duration
        chosen.add(cut_id)
    if not chosen:
        raise ValueError(
            f"max_minutes={max_minutes} is shorter than the first sampled utterance "
            f"({order[0][0]}, {order[0][1]:.2f} s)"
        )
    return chosen


def subset_by_minutes(cuts: CutSet, max_minutes: float, seed: int) -> CutSet:
    """The ``minutes_subset_ids`` subset of ``cuts``, in the input order (manifests are sorted by id).

    A lazily opened manifest gives a lazily opened subset manifest written next to it
    (``manifest_cache.derive_manifest``); an eager CutSet gives an eager one.
    """
    chosen = minutes_subset_ids(cuts, max_minutes, seed)
    return derive_manifest(cuts, f"minutes-{ids_digest(chosen)}", KeepIds(chosen))


class Corpus:
    """Base of the corpora; ``cuts()`` is the only public entry point.

    Args:
        on_bad_input: ``"error"`` raises :class:`~datamodules.errors.BadInputError` at the first
            problem; ``"skip"`` drops bad items, counts them per reason in ``self.skipped`` and logs
            one summary line. ``self.notes`` counts kept-but-fixed items (resampled odd rates).
        max_minutes: keep a deterministic random subset of at most this many minutes.
        seed: seed of that subset.
    """

    corpus_name = "corpus"
    expected_sample_rates: tuple[int, ...] = (SAMPLE_RATE,)
    language: str | None = None  # locale of the transcripts, e.g. "en", "ja" (None: unknown)

    def __init__(self, on_bad_input: str = "error", max_minutes: float | None = None, seed: int = 0):
        self.on_bad_input = E.check_on_bad_input(on_bad_input)
        if max_minutes is not None and max_minutes <= 0:
            raise ValueError(f"max_minutes must be > 0 or None, got {max_minutes}")
        self.max_minutes, self.seed = max_minutes, seed
        self.skipped: Counter[str] = Counter()
        self.notes: Counter[str] = Counter()
        self.root = Path(".")

    # -- hooks ---------------------------------------------------------------------------------
    def config(self) -> dict:
        """JSON-safe settings that change the scanned manifest (part of the cache key)."""
        return {"class": type(self).__name__, "on_bad_input": self.on_bad_input}

    def cache_name(self) -> str:
        return self.corpus_name

    def describe(self) -> str:
        """Short human-readable name for reports, e.g. ``CommonVoice en/train (≤2 min)``."""
        limit = f" (≤{self.max_minutes:g} min)" if self.max_minutes is not None else ""
        return self.display_name() + limit

    def display_name(self) -> str:
        return self.cache_name()

    def _check_layout(self, policy: E.BadInputPolicy):
        raise NotImplementedError

    def _fingerprint_entries(self, state) -> Iterable:
        raise NotImplementedError

    def _scan(self, state, policy: E.BadInputPolicy) -> list[DataCut]:
        raise NotImplementedError

    # -- public ----------------------------------------------------------------------------------
    def cuts(self, cache_dir: str | Path | None = None) -> CutSet:
        """All usable utterances as ``SAMPLE_RATE`` cuts (sorted by id), from cache when sources are unchanged.

        The CutSet is LAZY: it streams the cached ``jsonl.gz`` (a 280k-utterance index is never held
        in memory). Iterate it, ``len()`` it, ``cuts[i]``, or look cuts up with
        ``cuts.subset(cut_ids=[...])``; lhotse 1.33 cannot index a lazy CutSet by id (``cuts["id"]``),
        and ``.to_eager()`` loads everything (~2 kB per utterance).

        Raises :class:`~datamodules.errors.BadInputError` under ``on_bad_input="error"`` at the first
        problem, and under either mode when no usable utterance is left.
        """
        policy = E.BadInputPolicy(self.on_bad_input, repr(self))
        state = self._check_layout(policy)
        cuts = CutSet.from_cuts([])
        if state is not None:
            cuts = self._cached_scan(state, policy, cache_dir)
        self.skipped, self.notes = Counter(policy.skipped), Counter(policy.notes)
        policy.log_summary(logger)
        if next(iter(cuts), None) is None:  # reads one line, not the whole manifest
            why = policy.summary() or "no audio file with a transcript was found"
            raise E.BadInputError(self.root, E.NO_UTTERANCES, f"no usable utterances; {why}")
        if self.max_minutes is not None:
            cuts = subset_by_minutes(cuts, self.max_minutes, self.seed)
        return cuts

    def _cached_scan(self, state, policy: E.BadInputPolicy, cache_dir) -> CutSet:
        cache = ManifestCache(cache_dir if cache_dir is not None else default_cache_dir(self.root))
        key = fingerprint(self.config(), self._fingerprint_entries(state))
        hit = cache.load(self.cache_name(), key)
        if hit is not None:
            cuts, meta = hit
            logger.debug("%r: manifest from cache %s", self, cache.paths(self.cache_name(), key)[0])
        else:
            scan_policy = E.BadInputPolicy(self.on_bad_input, repr(self))
            scanned = CutSet.from_cuts(sorted(self._scan(state, scan_policy), key=lambda c: c.id))
            meta = scan_policy.state()
            path = cache.save(self.cache_name(), key, scanned, meta)
            logger.info("%r: scanned %d utterances, manifest cached at %s", self, len(scanned), path)
            cuts, _ = cache.load(self.cache_name(), key)  # lazy, like a cache hit: the scan is freed
        policy.merge(meta["skipped"], meta["notes"], meta["examples"])
        return cuts

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "class")
        return f"{type(self).__name__}({args})"
