"""Tiny corpora in the real on-disk layouts, generated in milliseconds for tests.

The audio is "tone speech": every character of the transcript becomes a short tone whose
frequency encodes the character, so a CTC model on CPU can learn it in a few dozen steps and
its loss and WER really fall.  ``shift`` changes the voice (pitch scale + noise) to build a
second domain.

    make_librispeech(root, {"train-clean-100": 12, "dev-clean": 4})
        -> root/LibriSpeech/<subset>/<speaker>/<chapter>/<spk>-<chap>-<utt>.flac + .trans.txt
    make_commonvoice(root, "en", {"train": 12, "dev": 4, "test": 4}, sample_rate=48000)
        -> root/en/clips/*.mp3 + root/en/{train,dev,test,validated}.tsv
"""

from __future__ import annotations

import random
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
