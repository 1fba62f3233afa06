"""``SpeechDataset`` (CutSet -> batch dict, lhotse style) and the manifest-time label checks.

The sampler yields a ``CutSet`` per batch; ``dataset[cuts]`` loads the audio at ``SAMPLE_RATE``
(multichannel cuts downmixed to mono: the mean of the channels, the one place this happens), applies
waveform augmentation (training only), normalises + tokenises the text (labelled mode only) and
returns the batch dict of ARCHITECTURE.md (see ``datamodules.batch``).

Bad input (``on_bad_input``): ``"error"`` raises ``BadInputError`` naming the utterance/file and
the reason; ``"skip"`` drops the utterance, counts it per reason (``.skipped``) and logs it.
Label problems (and clips too short for their CTC label, counted with the model backbone's exact
frames, ``ctc_check``), clips longer than a batch (``max_duration``) and implausible speaking rates are
found before sampling by ``check_labels`` so the sampler never builds a batch around an unusable
utterance; audio that fails to decode (or decodes to NaN/inf) can only be found at load time. Load-time
skips travel with the batch (``batch["load_skips"]``, a :class:`LoadSkips` record, so counts from
DataLoader workers reach the main process); ``sampling.CountingDataLoader`` removes the record, sums it
and drops a batch whose every utterance was skipped: a skip-mode run never stops on bad audio.
"""

from __future__ import annotations

import logging
import random
import zlib
from collections import Counter
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np
import torch
from lhotse import CutSet
from lhotse.utils import compute_num_samples
from lhotse.audio.backend import (LibsndfileBackend, get_current_audio_backend, get_default_audio_backend,
                                  set_current_audio_backend)
from torch.utils.data import Dataset

from datamodules.augment import WaveformAugmentation
from datamodules.batch import SAMPLE_RATE, audio_key, make_batch
from datamodules.ctc_check import FrameCounter, frames_and_needs
from datamodules.errors import DUPLICATE_ID, NON_FINITE_AUDIO, BadInputError, check_on_bad_input
from datamodules.manifest_cache import derive_manifest, ids_digest, raw_cut_dicts
from datamodules.probe import first_line

log = logging.getLogger(__name__)

OOV = "oov_character"
EMPTY_LABEL = "empty_label"
TOO_SHORT = "too_short_for_ctc"
TOO_LONG = "longer_than_max_duration"
FAST_SPEECH = "implausible_speaking_rate"
DECODE_FAILED = "audio_decode_failed"
LOAD_SKIPS = "load_skips"
# Read speech runs at ~15 normalised characters (spaces included) per second, fast speakers ~20: a clip
# with more is almost surely cut short (e.g. an MP3 truncated after the frame its header counts from)
# or paired with the wrong transcript.
MAX_CHARS_PER_SECOND = 25.0
# Not errors of the data but of a batch (too long for ``max_duration``) or a suspicion (speaking rate):
# counted skips with a warning under either ``on_bad_input``.
ALWAYS_SKIPPED = (TOO_LONG, FAST_SPEECH)


class LoadSkips:
    """Load-time skips: ``counts`` per reason, the first ``examples`` per reason, batches left ``empty``."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()
        self.examples: dict[str, str] = {}
        self.empty_batches = 0

    def add(self, error: BadInputError) -> None:
        self.counts[error.reason] += 1
        self.examples.setdefault(error.reason, str(error))

    def merge(self, other: LoadSkips) -> None:
        self.counts.update(other.counts)
        for reason, example in other.examples.items():
            self.examples.setdefault(reason, example)
        self.empty_batches += other.empty_batches

    def total(self) -> int:
        return sum(self.counts.values())

    def to_dict(self) -> dict[str, Any]:
        return {"skipped": dict(self.counts), "empty_batches": self.empty_batches, "examples": dict(self.examples)}


class Tokenizer(Protocol):
    """What the dataset needs from ``datamodules.text`` tokenizers."""

    def normalize(self, text: str) -> str: ...

    def encode_normalized(self, text: str, utt_id: str | None = None) -> list[int]: ...


def cut_text(cut: Any) -> str:
    """Raw transcript of a cut (its supervisions' texts joined by a space)."""
    return " ".join(s.text for s in cut.supervisions if s.text)


def iter_texts(cuts: CutSet) -> Iterator[str]:
    """``cut_text`` of every cut, streamed (from the raw JSON when ``cuts`` reads a manifest file)."""
    raw = raw_cut_dicts(cuts)
    if raw is None:
        return (cut_text(c) for c in cuts)
    return (" ".join(s["text"] for s in d.get("supervisions", ()) if s.get("text")) for d in raw)


def cut_path(cut: Any) -> str:
    """The audio source a cut reads (file path, URL, ...), for error messages."""
    recording = getattr(cut, "recording", None)
    return recording.sources[0].source if recording is not None else f"<{type(cut).__name__} {cut.id}>"


def encode_label(cut: Any, tokenizer: Tokenizer) -> tuple[str, list[int]]:
    """(normalised text, token ids); raises ``BadInputError`` naming the utterance and its file.

    The transcript is normalised once: the reference text and the ids come from the same string.
    """
    text = tokenizer.normalize(cut_text(cut))
    try:
        ids = tokenizer.encode_normalized(text, utt_id=cut.id)
    except BadInputError as e:
        raise BadInputError(f"utterance {cut.id!r} ({cut_path(cut)})", OOV, e.detail or str(e)) from e
    if not ids:
        raise BadInputError(f"utterance {cut.id!r} ({cut_path(cut)})", EMPTY_LABEL, "transcript is empty after normalisation")
    return text, ids


_LIBSNDFILE = LibsndfileBackend()


def load_audio(cut: Any) -> np.ndarray:
    """``cut.load_audio()``, read by libsndfile directly while lhotse uses its default backend.

    lhotse's default backend probes every file for special cases before reading it (0.1-0.8 ms a
    file, up to 10 % of a FLAC decode); libsndfile is what the corpora validated every file with at
    scan time, so it reads them all. A backend chosen by the user (``LHOTSE_AUDIO_BACKEND``,
    ``set_current_audio_backend``) is respected, and whatever libsndfile fails on is retried with
    lhotse's default backend (whose error, if any, is the one reported).
    """
    default = get_current_audio_backend()
    if default is not get_default_audio_backend():
        return cut.load_audio()
    set_current_audio_backend(_LIBSNDFILE)
    try:
        return cut.load_audio()
    except Exception:
        pass
    finally:
        set_current_audio_backend(default)
    return cut.load_audio()


def duration_problem(cut: Any, max_duration: float | None, max_speed: float = 1.0) -> BadInputError | None:
    """``cut`` is longer than a whole batch (``max_duration`` seconds, after speed perturbation), or ``None``.

    Such a clip cannot be batched within ``max_duration`` (on a GPU sized for it: out of memory).
    """
    if max_duration is None or cut.duration / min(max_speed, 1.0) <= max_duration:
        return None
    return BadInputError(f"utterance {cut.id!r} ({cut_path(cut)})", TOO_LONG,
                         f"{cut.duration:.2f} s is longer than max_duration={max_duration:g} s (a batch's audio): "
                         "raise max_duration or cut the recording")


def rate_problem(cut: Any, text: str, max_chars_per_second: float | None) -> BadInputError | None:
    """More than ``max_chars_per_second`` normalised characters per second of audio (None: no check): an
    implausible speaking rate -- truncated audio (e.g. an MP3 cut short without an Info/Xing tag) or the
    wrong transcript."""
    rate = len(text) / max(cut.duration, 1e-6)
    if max_chars_per_second is None or rate <= max_chars_per_second:
        return None
    return BadInputError(f"utterance {cut.id!r} ({cut_path(cut)})", FAST_SPEECH,
                         f"{len(text)} characters in {cut.duration:.2f} s = {rate:.1f}/s > max_chars_per_second="
                         f"{max_chars_per_second:g} (audio cut short, or the wrong transcript?)")


def too_short(cut: Any, ids: list[int], frames: int, needed: int, max_speed: float) -> BadInputError:
    """The error of a clip whose encoder frames (exact, from the backbone) cannot hold its CTC label."""
    speed = f" at speed {max_speed:g}" if max_speed != 1.0 else ""
    return BadInputError(f"utterance {cut.id!r} ({cut_path(cut)})", TOO_SHORT,
                         f"{cut.duration:.3f} s gives {frames} encoder frames{speed} but its {len(ids)}-token "
                         f"label needs {needed}")


class ExcludeIds:
    """Picklable ``CutSet.filter`` predicate dropping the given cut ids."""

    def __init__(self, ids: set[str]) -> None:
        self.ids = frozenset(ids)

    def __call__(self, cut: Any) -> bool:
        return cut.id not in self.ids


def check_labels(cuts: CutSet, tokenizer: Tokenizer | None, output_lengths: FrameCounter | None,
                 on_bad_input: str = "error", max_speed: float = 1.0, name: str = "cuts",
                 chunk: int = 2048, max_duration: float | None = None,
                 max_chars_per_second: float | None = None) -> tuple[CutSet, Counter, dict[str, str]]:
    """One metadata pass before sampling: drop (``"skip"``) or raise on (``"error"``) unusable utterances.

    Every cut: longer than ``max_duration``, or an id seen twice (``duplicate_id``). With a ``tokenizer``
    (labelled data): labels that do not encode (OOV, empty), implausible speaking rates
    (``max_chars_per_second``) and, when ``output_lengths`` (the model backbone's exact frame count,
    ``ctc_check``) is given, clips too short for their CTC label (at the fastest speed perturbation
    ``max_speed``); the frames of ``chunk`` utterances are counted in one call. Too long and too fast
    (``ALWAYS_SKIPPED``) are counted skips under either policy.

    Returns the kept cuts, the per-reason skip counts and the first skip message per reason. Nothing
    dropped: ``cuts`` itself. Else a lazily opened manifest written next to the one ``cuts`` reads
    (``derive_manifest``; it keeps ``len()``), or an in-memory filter of a CutSet not read from a file.
    """
    check_on_bad_input(on_bad_input)
    bad: set[str] = set()
    seen: set[str] = set()
    skipped: Counter = Counter()
    examples: dict[str, str] = {}

    def report(cut: Any, problem: BadInputError) -> None:
        if on_bad_input == "error" and problem.reason not in ALWAYS_SKIPPED:
            raise problem
        bad.add(cut.id)
        skipped[problem.reason] += 1
        examples.setdefault(problem.reason, str(problem))
        log.debug("%s: skipped %s", name, problem)

    def check_lengths(pending: list[tuple[Any, str, list[int]]]) -> None:
        """Too short for CTC (exact frames) first: the precise reason wins over the speaking-rate suspicion."""
        samples = [compute_num_samples(cut.duration, SAMPLE_RATE) for cut, _, _ in pending]
        frames, needs = frames_and_needs(samples, [ids for _, _, ids in pending], output_lengths, max_speed)
        for (cut, text, ids), n, need in zip(pending, frames, needs):
            problem = too_short(cut, ids, n, need, max_speed) if n < need else rate_problem(cut, text,
                                                                                           max_chars_per_second)
            if problem is not None:
                report(cut, problem)

    pending: list[tuple[Any, str, list[int]]] = []
    for cut in cuts:
        problem = duration_problem(cut, max_duration, max_speed)
        if problem is None and cut.id in seen:
            problem = BadInputError(f"utterance {cut.id!r} ({cut_path(cut)})", DUPLICATE_ID,
                                    "the manifest holds this utterance id more than once")
        seen.add(cut.id)
        if problem is None and tokenizer is not None:
            try:
                text, ids = encode_label(cut, tokenizer)
            except BadInputError as error:
                problem = error
            else:
                if output_lengths is not None:
                    pending.append((cut, text, ids))
                    if len(pending) == chunk:
                        check_lengths(pending)
                        pending = []
                    continue
                problem = rate_problem(cut, text, max_chars_per_second)
        if problem is not None:
            report(cut, problem)
    if pending:
        check_lengths(pending)
    if skipped:
        log.warning("%s: skipped %d utterance(s) (%s) - first of each: %s", name, sum(skipped.values()),
                    ", ".join(f"{r}={n}" for r, n in sorted(skipped.items())),
                    "; ".join(examples[r] for r in sorted(examples)))
    kept = derive_manifest(cuts, f"labels-{ids_digest(bad)}", ExcludeIds(bad)) if bad else cuts
    return kept, skipped, examples


class SpeechDataset(Dataset):
    """``dataset[cuts: CutSet] -> batch dict`` (see ``datamodules.batch``).

    Args:
        tokenizer: normalises and encodes the transcript; used only when ``labels`` is True
            (labels-off mode never reads the transcript, so target-domain labels cannot leak or fail).
        labels: emit ``targets``/``target_lengths``/``texts``.
        domain: value of ``batch["domain"]`` (0 source, 1 target).
        augment: waveform augmentation (pass only for training).
        on_bad_input: "error" | "skip" for audio that fails to decode (and labels, as a safety net).
        seed: augmentation seed; each batch's RNG is derived from it and the batch's cut ids.
        monitor_texts: unlabelled mode only: batches also carry ``monitor_texts`` (list[str], the
            ``tokenizer``-normalised transcripts, never encoded or checked) for label-quality metrics;
            they are not labels (no ``targets``), so no loss can use them and the batches are otherwise
            those of plain unlabelled mode.
    """

    def __init__(self, tokenizer: Tokenizer | None = None, labels: bool = True,
                 domain: int = 0, augment: WaveformAugmentation | None = None, on_bad_input: str = "error",
                 sample_rate: int = SAMPLE_RATE, seed: int = 0, monitor_texts: bool = False) -> None:
        if (labels or monitor_texts) and tokenizer is None:
            raise ValueError("a labelled (or monitor_texts) SpeechDataset needs a tokenizer")
        if labels and monitor_texts:
            raise ValueError("monitor_texts is for unlabelled batches (labelled ones carry texts)")
        self.tokenizer = tokenizer if labels or monitor_texts else None
        self.labels, self.domain, self.monitor_texts = labels, domain, monitor_texts
        self.augment = augment if augment is not None and augment.enabled else None
        self.on_bad_input = check_on_bad_input(on_bad_input)
        self.sample_rate, self.seed = sample_rate, seed
        self.skipped: Counter = Counter()  # per process (DataLoader workers count their own)
        self._batch_skips: LoadSkips | None = None

    def __getitem__(self, cuts: CutSet) -> dict[str, Any]:
        """The batch dict; with skips, ``batch["load_skips"]`` (:class:`LoadSkips`). Every utterance
        skipped: ``{"ids": [], "load_skips": ...}`` (dropped by ``CountingDataLoader``)."""
        self._batch_skips = LoadSkips()
        batch = self._build(cuts)
        if self._batch_skips.total():
            batch[LOAD_SKIPS] = self._batch_skips
        return batch

    def _build(self, cuts: CutSet) -> dict[str, Any]:
        cuts = cuts.map(self._resampled) if any(c.sampling_rate != self.sample_rate for c in cuts) else cuts
        keys = {c.id: audio_key(c) for c in cuts}
        paths = {c.id: cut_path(c) for c in cuts}
        rng = random.Random(zlib.crc32(f"{self.seed}|{'|'.join(keys)}".encode()))
        if self.augment is not None:
            cuts = self.augment.apply_to_cuts(cuts, rng)
        kept, waves, texts, token_ids = [], [], [], []
        for cut in cuts:
            label = self._label(cut) if self.labels else None
            wave = self._load(cut, paths[cut.id]) if label is not False else None
            if wave is None:
                continue
            kept.append(cut.id)
            waves.append(wave)
            if label is not None:
                texts.append(label[0])
                token_ids.append(label[1])
        if not kept:  # (skip mode: under "error" the first bad utterance raised)
            self._batch_skips.empty_batches += 1
            return {"ids": []}
        if self.augment is not None:
            waves = self.augment.apply_to_waves(waves, rng)
        batch = make_batch(waves, kept, [keys[i] for i in kept], self.domain,
                           texts=texts if self.labels else None, token_ids=token_ids if self.labels else None)
        if self.monitor_texts:
            by_id = {cut.id: cut for cut in cuts}
            batch["monitor_texts"] = [self.tokenizer.normalize(cut_text(by_id[i])) for i in kept]
        return batch

    def _resampled(self, cut: Any) -> Any:
        return cut.resample(self.sample_rate) if cut.sampling_rate != self.sample_rate else cut

    def _label(self, cut: Any) -> tuple[str, list[int]] | bool:
        try:
            return encode_label(cut, self.tokenizer)
        except BadInputError as e:
            return self._bad(e)

    def _load(self, cut: Any, path: str) -> torch.Tensor | None:
        """(T,) float32 mono waveform (channels averaged), or None when skipped."""
        try:
            audio = torch.from_numpy(load_audio(cut)).to(torch.float32)
        except Exception as e:  # any decoder failure: name the file
            return self._bad(BadInputError(path, DECODE_FAILED, f"utterance {cut.id!r}: {first_line(e)}")) or None
        if audio.dim() == 2:  # (channels, T): a MonoCut loads (1, T), a MultiCut (C, T)
            audio = audio[0] if audio.shape[0] == 1 else audio.mean(dim=0)
        finite = torch.isfinite(audio)
        if not bool(finite.all()):
            n = int((~finite).sum())
            return self._bad(BadInputError(path, NON_FINITE_AUDIO, f"utterance {cut.id!r}: {n} of {audio.numel()} "
                                           "samples are NaN or infinite")) or None
        return audio

    def _bad(self, error: BadInputError) -> bool:
        if self.on_bad_input == "error":
            raise error
        self.skipped[error.reason] += 1
        if self._batch_skips is not None:
            self._batch_skips.add(error)
        log.warning("skipped %s", error)
        return False
