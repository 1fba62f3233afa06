"""A larger generated source/target pair of "tone speech" corpora for the benchmarks and the transfer study.

    python benchmarks/tone_pair.py OUT [--train 400] [--dev 40] [--test 40] [--shift 0.2]

Source: ``OUT/LibriSpeech/{train-clean-100,dev-clean,test-clean}`` (16 kHz FLAC, UPPERCASE
transcripts), target: ``OUT/commonvoice/en/{clips/*.mp3, train.tsv, dev.tsv, test.tsv}`` (48 kHz MP3,
sentence case + final period, as Common Voice). Audio is ``tests.corpus_factory.tone_speech``: one
tone per character, so tiny CPU models learn it in minutes; speakers differ in speaking rate
(character duration). The target voice is shifted (``shift``: tone pitch x (1 + 0.25 shift) and
noise, see ``tone_speech``), which is the domain gap. Deterministic for a given seed; a split whose
transcript file / TSV already exists with the requested count is not rewritten.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.corpus_factory import CV_COLUMNS, sentence, tone_speech, write_tsv  # noqa: E402

CHAR_SECONDS = (0.055, 0.06, 0.065)  # speaking rate of speaker k: CHAR_SECONDS[k % 3]
SPEAKERS = 4


def _count_lines(path: Path) -> int:
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip()) if path.is_file() else -1


def write_librispeech_split(root: Path, subset: str, n: int, words: tuple[int, int] = (2, 5), seed: int = 0,
                            speakers: int = SPEAKERS, speaker_base: int = 100) -> list[str]:
    """``n`` source utterances in ``root/LibriSpeech/<subset>/<spk>/<chap>/``; returns the transcripts."""
    rng = random.Random(seed)
    texts = [sentence(rng, words) for _ in range(n)]
    chapters: dict[Path, list[str]] = {}
    for i, text in enumerate(texts):
        spk = speaker_base + i % speakers
        folder = Path(root) / "LibriSpeech" / subset / str(spk) / str(spk + 1)
        uid = f"{spk}-{spk + 1}-{i:04d}"
        chapters.setdefault(folder, []).append(f"{uid} {text.upper()}")
        if not (folder / f"{uid}.flac").is_file():
            folder.mkdir(parents=True, exist_ok=True)
            wave = tone_speech(text, 16000, char_seconds=CHAR_SECONDS[spk % 3], shift=0.0, seed=seed + i)
            sf.write(folder / f"{uid}.flac", wave, 16000)
    for folder, lines in chapters.items():
        trans = folder / f"{folder.parent.name}-{folder.name}.trans.txt"
        if _count_lines(trans) != len(lines):
            trans.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return texts


def write_commonvoice_split(root: Path, split: str, n: int, words: tuple[int, int] = (2, 5), shift: float = 0.5,
                            seed: int = 0, speakers: int = SPEAKERS, sample_rate: int = 48000) -> list[str]:
    """``n`` target clips (MP3) in ``root/en/clips`` + ``root/en/<split>.tsv``; returns the transcripts."""
    rng = random.Random(seed)
    texts = [sentence(rng, words) for _ in range(n)]
    base = Path(root) / "en"
    (base / "clips").mkdir(parents=True, exist_ok=True)
    rows = []
    for i, text in enumerate(texts):
        name = f"common_voice_en_{split}_{i:05d}.mp3"
        if not (base / "clips" / name).is_file():
            wave = tone_speech(text, sample_rate, char_seconds=CHAR_SECONDS[(i + 1) % 3], shift=shift, seed=seed + i)
            sf.write(base / "clips" / name, wave, sample_rate)
        rows.append([f"client{split}{i % speakers}", name, text.capitalize() + ".", "2", "0", "", "", "", "", "en", ""])
    assert len(rows[0]) == len(CV_COLUMNS)
    if _count_lines(base / f"{split}.tsv") != n + 1:
        write_tsv(base / f"{split}.tsv", rows)
    return texts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--dev", type=int, default=40)
    parser.add_argument("--test", type=int, default=40)
    parser.add_argument("--shift", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from benchmarks.bench_common import make_tone_corpus

    make_tone_corpus(args.out, args.train, args.dev, args.test, target_shift=args.shift, seed=args.seed)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
