"""Tiny corpora in the real on-disk layouts, generated in milliseconds for tests.

The audio is "tone speech": every character of the transcript becomes a short tone whose
frequency encodes the character, so a CTC model on CPU can learn it in a few dozen steps and
its loss and WER really fall.  ``shift`` changes the voice (pitch scale + noise) to build a
second domain.

    make_librispeech(root, {"train-clean-100": 12, "dev-clean": 4})
        -> root/LibriSpeech/<subset>/<speaker>/<chapter>/<spk>-<chap>-<utt>.flac + .trans.txt
    make_commonvoice(root, "en", {"train": 12, "dev": 4, "test": 4}, sample_rate=48000)
        -> root/en/clips/*.mp3 + root/en/{train,dev,test,validated}.tsv

Damaged inputs for the fault tests: ``write_non_finite_wav`` (NaN/inf samples), ``break_mid_file``
(decodes at scan time, fails at load time), ``write_cut_short_mp3`` (audio shorter than its
transcript), ``unreadable(...)`` (permission denied, also simulated for root).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import soundfile as sf

WORDS = "the cat sat on a mat red box big dog ran far sun hot old man".split()
ALPHABET = "abcdefghijklmnopqrstuvwxyz '"
CV_COLUMNS = [
    "client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender",
    "accents", "variant", "locale", "segment",
]


def sentence(rng: random.Random, n_words: tuple[int, int] = (1, 3)) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(*n_words)))


def tone_speech(
    text: str,
    sample_rate: int = 16000,
    char_seconds: float = 0.06,
    shift: float = 0.0,
    seed: int = 0,
) -> np.ndarray:
    """(T,) float32 waveform: one tone per character; ``shift`` in [0, 1] moves pitch and adds noise."""
    rng = np.random.default_rng(seed)
    n = int(char_seconds * sample_rate)
    t = np.arange(n) / sample_rate
    envelope = np.hanning(n)
    pieces = [np.zeros(int(0.05 * sample_rate))]
    for ch in text.lower():
        idx = ALPHABET.index(ch) if ch in ALPHABET else len(ALPHABET)
        freq = (300.0 + 110.0 * idx) * (1.0 + 0.25 * shift)
        pieces.append(0.3 * envelope * np.sin(2 * np.pi * freq * t))
    pieces.append(np.zeros(int(0.05 * sample_rate)))
    wave = np.concatenate(pieces)
    wave = wave + (0.003 + 0.05 * shift) * rng.standard_normal(len(wave))
    return wave.astype(np.float32)


def make_librispeech(
    root: Path,
    subsets: dict[str, int],
    speakers: int = 2,
    shift: float = 0.0,
    seed: int = 0,
) -> Path:
    """Write ``root/LibriSpeech/<subset>/...`` with ``subsets[name]`` utterances each; returns root."""
    rng = random.Random(seed)
    root = Path(root)
    for s_idx, (subset, count) in enumerate(subsets.items()):
        for i in range(count):
            spk, chap = 100 + s_idx * 10 + i % speakers, 200 + s_idx
            d = root / "LibriSpeech" / subset / str(spk) / str(chap)
            d.mkdir(parents=True, exist_ok=True)
            uid = f"{spk}-{chap}-{i:04d}"
            text = sentence(rng)
            sf.write(d / f"{uid}.flac", tone_speech(text, shift=shift, seed=seed + i), 16000)
            with open(d / f"{spk}-{chap}.trans.txt", "a", encoding="utf-8") as f:
                f.write(f"{uid} {text.upper()}\n")
    return root


def make_commonvoice(
    root: Path,
    locale: str = "en",
    splits: dict[str, int] | None = None,
    sample_rate: int = 48000,
    shift: float = 0.5,
    seed: int = 1,
    accents: tuple[str, ...] = (),
) -> Path:
    """Write a Common Voice release folder ``root/<locale>/clips/*.mp3`` + split TSVs; returns root.

    Clip ``i`` of a split is read by ``client<i % 3>``; ``accents`` (cycled by client) fills the accents column.
    """
    splits = splits or {"train": 12, "dev": 4, "test": 4}
    rng = random.Random(seed)
    base = Path(root) / locale
    (base / "clips").mkdir(parents=True, exist_ok=True)
    validated = []
    for split, count in splits.items():
        rows = []
        for i in range(count):
            name = f"common_voice_{locale}_{split}_{i:05d}.mp3"
            text = sentence(rng)
            sf.write(base / "clips" / name, tone_speech(text, sample_rate, shift=shift, seed=seed + i), sample_rate)
            accent = accents[i % 3 % len(accents)] if accents else ""
            row = [f"client{i % 3}", name, text.capitalize() + ".", "2", "0", "", "", accent, "", locale, ""]
            rows.append(row)
        write_tsv(base / f"{split}.tsv", rows)
        validated += rows
    write_tsv(base / "validated.tsv", validated)
    return Path(root)


def write_tsv(path: Path, rows: list[list[str]]) -> None:
    lines = ["\t".join(CV_COLUMNS)] + ["\t".join(r) for r in rows]
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- damaged files (fault tests, benchmarks/fault_sweep.py)
def write_non_finite_wav(path: Path, text: str, where: str = "everywhere", seed: int = 0) -> Path:
    """A float32 WAV of ``text`` with NaN and ±inf samples: every 97th sample (``"everywhere"``, found by
    the scan's tail probe) or only in the middle fifth (``"middle"``, found when the audio is loaded).
    Any file name works (libsndfile reads the content): ``x.flac`` gives a WAV renamed ``.flac``."""
    wave = tone_speech(text, seed=seed).astype(np.float32)
    n = len(wave)
    idx = np.arange(0, n, 97) if where == "everywhere" else np.arange(2 * n // 5, 3 * n // 5, 97)
    wave[idx] = np.nan
    wave[idx[::3]] = np.inf
    wave[idx[1::3]] = -np.inf
    sf.write(str(path), wave, 16000, format="WAV", subtype="FLOAT")
    return Path(path)


def break_mid_file(path: Path, n_bytes: int = 2000) -> Path:
    """Zero ``n_bytes`` in the middle of an audio file: header and tail still decode (the scan passes),
    decoding the middle fails (``flac decoder lost sync``) when the audio is loaded."""
    data = bytearray(Path(path).read_bytes())
    start = len(data) // 2
    data[start:start + n_bytes] = bytes(min(n_bytes, len(data) - start))
    Path(path).write_bytes(bytes(data))
    return Path(path)


def write_cut_short_mp3(path: Path, text: str, keep: float = 0.3, sample_rate: int = 48000, seed: int = 0) -> Path:
    """What a truncated MP3 without an Info/Xing tag decodes to: only the first ``keep`` of the speech of
    ``text``, complete and valid (the header's length agrees with it). Only the transcript gives it away."""
    wave = tone_speech(text, sample_rate, shift=0.5, seed=seed)
    sf.write(str(path), wave[: int(len(wave) * keep)], sample_rate)
    return Path(path)


@contextmanager
def unreadable(*paths: Path) -> Iterator[None]:
    """``chmod 000`` the given files/folders for the duration; permissions restored afterwards.

    Root ignores permissions, so for root (CI containers) the same refusal is simulated: listing such a
    folder (``os.scandir``, what ``os.walk`` uses), ``open``-ing or ``os.access``-ing such a file raises /
    answers as for a user without permission.
    """
    import builtins
    import errno
    import os

    targets = {str(Path(p).resolve()) for p in paths}
    modes = {p: Path(p).stat().st_mode for p in targets}
    for p in targets:
        os.chmod(p, 0)

    def refused(path) -> bool:
        try:
            return str(Path(os.fsdecode(path)).resolve()) in targets
        except (TypeError, ValueError):
            return False

    def denied(path):
        return PermissionError(errno.EACCES, "Permission denied", os.fsdecode(path))

    real_scandir, real_open, real_access = os.scandir, builtins.open, os.access

    def scandir(path="."):
        if refused(path):
            raise denied(path)
        return real_scandir(path)

    def open_(file, *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)) and refused(file):
            raise denied(file)
        return real_open(file, *args, **kwargs)

    def access(path, mode, *args, **kwargs):
        return False if refused(path) else real_access(path, mode, *args, **kwargs)

    as_root = os.geteuid() == 0
    if as_root:
        os.scandir, builtins.open, os.access = scandir, open_, access
    try:
        yield
    finally:
        if as_root:
            os.scandir, builtins.open, os.access = real_scandir, real_open, real_access
        for p, mode in modes.items():
            os.chmod(p, mode)
