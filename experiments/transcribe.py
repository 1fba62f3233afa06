"""Transcribe audio files with a trained checkpoint — the checkpoint alone, no config, no network.

    speechxfer transcribe --ckpt runs/quickstart/<version>/checkpoints/last.ckpt clip.flac more/ other.mp3
    speechxfer transcribe --ckpt CKPT --decoder beam --beam-size 50 --lexicon lm/lexicon.txt --lm lm/lm.arpa \
        --lm-weight 1.0 --word-score 0 clip.flac          # beam search + LM (lexicon/LM: `speechxfer lm`)

Prints one ``<path>\t<text>`` line per file, in the order given (folders are searched recursively
for .flac/.wav/.mp3/.ogg). Audio is downmixed to mono and resampled to the model's 16 kHz.
Unreadable files are reported on stderr by name and reason and make the exit status 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import soundfile as sf
import torch
import torchaudio.functional as AF

from lightning_modules.decoding import add_decoder_arguments, decoder_config_from_args

AUDIO_SUFFIXES = {".flac", ".wav", ".mp3", ".ogg"}
SAMPLE_RATE = 16000


def expand_inputs(paths: Sequence[str]) -> list[Path]:
    """Files as given; folders expanded to their audio files, sorted."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        else:
            files.append(path)
    return files


def read_audio(path: Path, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """(T,) float32 mono waveform at ``sample_rate``; raises ValueError naming the file."""
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as err:
        raise ValueError(f"{path}: cannot decode audio ({err})") from err
    if data.shape[0] == 0:
        raise ValueError(f"{path}: zero-length audio")
    wave = torch.from_numpy(data).mean(dim=1)
    return AF.resample(wave, sr, sample_rate) if sr != sample_rate else wave


def batches(waves: list[torch.Tensor], max_seconds: float) -> Iterator[list[int]]:
    """Indices grouped so each padded batch holds at most ``max_seconds`` of audio (longest × count)."""
    order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
    group: list[int] = []
    for i in order:
        longest = max(len(waves[j]) for j in group + [i])
        if group and longest * (len(group) + 1) > max_seconds * SAMPLE_RATE:
            yield group
            group = []
        group.append(i)
    if group:
        yield group


@torch.inference_mode()
def transcribe_files(model, files: list[Path], max_seconds: float = 60.0,
                     decoder=None) -> tuple[dict[Path, str], dict[Path, str]]:
    """Returns ({path: text}, {path: error}) for ``files``."""
    waves, errors, readable = [], {}, []
    for path in files:
        try:
            waves.append(read_audio(path))
            readable.append(path)
        except ValueError as err:
            errors[path] = str(err)
    texts: dict[Path, str] = {}
    device = next(model.parameters()).device
    for group in batches(waves, max_seconds):
        lengths = torch.tensor([len(waves[i]) for i in group])
        audio = torch.nn.utils.rnn.pad_sequence([waves[i] for i in group], batch_first=True)
        for i, text in zip(group, model.transcribe(audio.to(device), lengths.to(device), decoder)):
            texts[readable[i]] = text
    return texts, errors


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="speechxfer transcribe", description=__doc__.split("\n")[0])
    parser.add_argument("--ckpt", required=True, help="checkpoint written by speechxfer fit")
    parser.add_argument("inputs", nargs="+", help="audio files or folders")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="audio seconds per batch")
    add_decoder_arguments(parser)
    args = parser.parse_args(argv)
    try:
        decoding = decoder_config_from_args(args)
    except (OSError, ValueError) as err:
        parser.error(str(err))

    from lightning_modules import build_decoder, load_model

    model = load_model(args.ckpt, map_location=args.device).eval()
    decoder = build_decoder(decoding, model.tokenizer)
    files = expand_inputs(args.inputs)
    texts, errors = transcribe_files(model, files, args.max_seconds, decoder)
    for path in files:
        if path in texts:
            print(f"{path}\t{texts[path]}")
        else:
            print(f"error: {errors.get(path, 'not transcribed')}", file=sys.stderr)
    return 1 if errors else 0
