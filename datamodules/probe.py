"""Cheap validation of one audio file: header read + a decode of its last few frames.

A full decode of every file of a corpus at scan time is too slow (LibriSpeech 960 h), but a
header read alone misses truncated files: a FLAC or MP3 cut short keeps its header frame count
and only fails (or comes up short) when the missing end is decoded, i.e. in the middle of
training. So we seek to the end and decode the last ``TAIL_SECONDS``: that finds truncation for
the price of one block decode.

Policies (documented in ``datamodules/corpora.py``), the same for corpora and for the audio files
given to ``ASRDataModule(predict=...)`` / ``speechxfer transcribe`` (:func:`audio_file_cut`):
- multichannel audio is kept as a lhotse ``MultiCut`` and downmixed to mono (mean of the channels)
  when ``SpeechDataset`` loads it; counted as a note (``multichannel_audio``);
- an unexpected sample rate is kept, resampled lazily to ``SAMPLE_RATE`` and counted as a note;
- NaN/inf samples in the decoded tail (float WAV/FLAC) are bad input (``non_finite_audio``); NaN/inf
  elsewhere in the file is found when the audio is loaded for training (``SpeechDataset``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import soundfile as sf
from lhotse import Recording
from lhotse.cut.data import DataCut

from datamodules import errors as E
from datamodules.batch import SAMPLE_RATE

TAIL_SECONDS = 0.25
# lhotse tolerates this much length mismatch at load time (LHOTSE_AUDIO_DURATION_MISMATCH_TOLERANCE
# default 0.025 s); a file missing more than that would fail when loaded.
TAIL_TOLERANCE_SECONDS = 0.02
# libsndfile reports SF_COUNT_MAX frames for a FLAC whose header has no length (streamed encoders).
UNKNOWN_LENGTH = 2**62


_BACKEND_ERROR = re.compile(r"^Exception #\d+ \(<class '[^']*'>\): <class '([^']*)'>: (.*)$")


def first_line(exc: BaseException) -> str:
    """The decoder's reason for ``exc``: lhotse's "failed. Details:" messages list one exception per
    audio backend; the first backend's message is the informative one (libsndfile's)."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    for line in text.splitlines():
        match = _BACKEND_ERROR.match(line.strip())
        if match and match.group(2).strip():
            return f"{match.group(1).rsplit('.', 1)[-1]}: {match.group(2).strip()}"
    return text.splitlines()[0]


def tail_problem(path: Path, num_frames: int, sample_rate: int) -> tuple[str, str] | None:
    """Decode the last ``TAIL_SECONDS`` of ``path``; ``None`` if fine, else ``(reason, detail)``."""
    want = min(num_frames, max(1, int(TAIL_SECONDS * sample_rate)))
    try:
        with sf.SoundFile(str(path)) as f:
            f.seek(num_frames - want)
            tail = f.read(want, dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile raises on a FLAC whose frames stop early
        return E.TRUNCATED_AUDIO, f"decoding its last {want} frames failed ({first_line(exc)})"
    got = tail.shape[0]
    if got < want - int(TAIL_TOLERANCE_SECONDS * sample_rate):
        return E.TRUNCATED_AUDIO, f"header says {num_frames} frames but only {num_frames - want + got} decode"
    finite = np.isfinite(tail)
    if not finite.all():
        return E.NON_FINITE_AUDIO, f"{int((~finite).sum())} of its last {tail.size} samples are NaN or infinite"
    return None


def has_no_audio(path: Path) -> bool:
    """True when libsndfile opens the header but the file holds no audio frame: a header count of 0, or
    an unknown count (a FLAC STREAMINFO total of 0) with no frame that decodes. False when it has audio
    or is not a libsndfile format (lhotse's probe then reports it)."""
    try:
        f = sf.SoundFile(str(path))
    except Exception:
        return False
    with f:
        if f.frames == 0:
            return True
        if f.frames < UNKNOWN_LENGTH:
            return False
        try:
            return f.read(1, dtype="float32", always_2d=True).shape[0] == 0
        except Exception:
            return True


def probe_recording(
    path: Path,
    recording_id: str,
    policy: E.BadInputPolicy,
    expected_sample_rates: tuple[int, ...] | None,
) -> Recording | None:
    """A lhotse ``Recording`` (native rate and channels) for a valid audio file, else ``None`` after ``policy.bad``.

    Under ``on_bad_input="error"`` the policy raises :class:`~datamodules.errors.BadInputError`. A rate
    outside ``expected_sample_rates`` is a note (``None``: any rate is expected; either way the cut is
    resampled to ``SAMPLE_RATE``).
    """
    if not os.access(path, os.R_OK):
        policy.bad(path, E.UNREADABLE_FILE, "permission denied")
        return None
    if path.stat().st_size == 0:
        policy.bad(path, E.EMPTY_FILE, "file has 0 bytes")
        return None
    if has_no_audio(path):  # a valid header with no audio: lhotse reports NoBackendError instead
        policy.bad(path, E.EMPTY_AUDIO, "audio has 0 samples")
        return None
    try:
        rec = Recording.from_file(path, recording_id=recording_id)
        if rec.num_samples >= UNKNOWN_LENGTH:
            # Header without a frame count: count by decoding (lhotse's force_read_audio).
            rec = Recording.from_file(path, recording_id=recording_id, force_read_audio=True)
    except Exception as exc:  # lhotse wraps every backend's failure in AudioLoadingError
        policy.bad(path, E.UNREADABLE_AUDIO, first_line(exc))
        return None
    if rec.num_samples == 0:
        policy.bad(path, E.EMPTY_AUDIO, "audio has 0 samples")
        return None
    problem = tail_problem(path, rec.num_samples, rec.sampling_rate)
    if problem is not None:
        policy.bad(path, *problem)
        return None
    if expected_sample_rates is not None and rec.sampling_rate not in expected_sample_rates:
        policy.note(
            path,
            E.UNEXPECTED_SAMPLE_RATE,
            f"{rec.sampling_rate} Hz (expected {'/'.join(map(str, expected_sample_rates))}), resampled",
        )
    if rec.num_channels != 1:
        policy.note(path, E.MULTICHANNEL_AUDIO, f"{rec.num_channels} channels, downmixed to mono")
    return rec


def recording_cut(rec: Recording) -> DataCut:
    """The whole recording as one cut (``MultiCut`` for multichannel audio), lazily resampled to ``SAMPLE_RATE``.

    Multichannel cuts are downmixed when ``SpeechDataset`` loads them (the probe counted a note).
    """
    cut = rec.to_cut()
    return cut.resample(SAMPLE_RATE) if rec.sampling_rate != SAMPLE_RATE else cut


def audio_file_cut(path: str, policy: E.BadInputPolicy) -> DataCut | None:
    """One cut (id = ``path`` as given, no supervision) of an audio file, checked like a corpus file.

    Any sample rate is expected here (user files; resampled like every cut); multichannel is a note.
    """
    if not Path(path).is_file():
        policy.bad(path, E.MISSING_FILE, "no such file")
        return None
    rec = probe_recording(Path(path), path, policy, None)
    return None if rec is None else recording_cut(rec)
