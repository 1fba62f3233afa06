"""Transcribe audio files with a trained checkpoint — the checkpoint alone, no config, no network.

    speechxfer transcribe --ckpt runs/quickstart/<version>/checkpoints/last.ckpt clip.flac more/ other.mp3
    speechxfer transcribe --ckpt model.ckpt clips/ --tta.method suta --tta.steps 10 --tta.lr 2e-5   # + SUTA
    speechxfer transcribe --ckpt CKPT --decoder beam --beam-size 50 --lexicon lm/lexicon.txt --lm lm/lm.arpa \
        --lm-weight 1.0 --word-score 0 clip.flac          # beam search + LM (lexicon/LM: `speechxfer lm`)

``--tta.*`` are the options of ``speechxfer test`` (``lightning_modules.tta.TTASettings``): each file is
transcribed by the model adapted to it, then the weights are restored; the adaptation cost goes to stderr.

Prints one ``<path>\t<text>`` line per file, in the order given (folders are searched recursively
for .flac/.wav/.mp3/.ogg). The audio takes the training path: ``ASRDataModule(predict=[files])``
checks each file like a corpus file and reads it through lhotse and ``SpeechDataset``, so
``speechxfer transcribe`` and ``speechxfer test`` see the same samples (resampled to 16 kHz;
multichannel audio downmixed to mono, counted in a warning on stderr). Unreadable files are
reported on stderr (``error: <path>: <reason>: <detail>``) and make the exit status 1.

Three steps, each one function: :func:`build_datamodule` (files -> predict datamodule),
``load_model`` (checkpoint -> module), :func:`predict` (Lightning's predict loop; every batch is
decoded by ``CTCModule.predict_step`` -> ``CTCModule.decode``, the one decoding call).
"""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from datamodules import errors as E
from datamodules.asr import ASRDataModule
from datamodules.errors import BadInputError
from experiments.commands import tool_parser
from lightning_modules.decoding import add_decoder_arguments, decoder_config_from_args
from lightning_modules.tta import TestTimeAdapter, add_tta_arguments, tta_settings

AUDIO_SUFFIXES = {".flac", ".wav", ".mp3", ".ogg"}


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


def build_datamodule(files: Sequence[Path], max_seconds: float = 60.0) -> ASRDataModule:
    """Predict-only datamodule over ``files`` (cut id = the path as given); bad files are counted skips."""
    return ASRDataModule(predict=[str(f) for f in files], max_duration=max_seconds, shuffle=False, num_workers=0,
                         on_bad_input="skip")


def predict(model, datamodule: ASRDataModule, device: str = "cpu") -> dict[str, str]:
    """``{cut id: transcript}`` from ``Trainer.predict`` (eval mode, no grad, batches moved to ``device``)."""
    from pytorch_lightning import Trainer

    accelerator, _, index = device.partition(":")
    trainer = Trainer(accelerator="cpu" if accelerator == "cpu" else "gpu", devices=[int(index)] if index else 1,
                      logger=False, enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                      use_distributed_sampler=False)
    try:
        outputs = trainer.predict(model, datamodule=datamodule)
    except BadInputError as err:
        if err.reason != E.NO_UTTERANCES:
            raise
        return {}  # every file was bad: each one is in datamodule.predict_errors
    return {cut_id: text for batch in outputs for cut_id, text in zip(batch["ids"], batch["transcripts"])}


def main(argv: Sequence[str] | None = None) -> int:
    parser = tool_parser("transcribe", __doc__)
    parser.add_argument("--ckpt", required=True, help="checkpoint written by speechxfer fit")
    parser.add_argument("inputs", nargs="+", help="audio files or folders")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="audio seconds per batch")
    add_decoder_arguments(parser)
    add_tta_arguments(parser)  # --tta.method suta --tta.steps 10 ... (as speechxfer test)
    args = parser.parse_args(argv)
    try:
        decoding = decoder_config_from_args(args)
    except (OSError, ValueError) as err:
        parser.error(str(err))
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)  # no "GPU available: ..." banner
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")

    from lightning_modules import build_decoder, load_model

    files = expand_inputs(args.inputs)
    datamodule = build_datamodule(files, args.max_seconds)
    model, settings = load_model(args.ckpt), tta_settings(args)
    model.predict_decoder = build_decoder(decoding, model.tokenizer)
    if settings.enabled:
        model.test_time_adaptation = TestTimeAdapter(settings)
    texts = predict(model, datamodule, args.device)
    if settings.enabled:
        stats = model.test_time_adaptation.stats
        print(f"tta: {settings.method}, {settings.steps} steps, params {settings.params}: "
              f"{stats.extra_seconds_per_audio_second:.3f} s of adaptation per audio second "
              f"({stats.utterances} utterances, {stats.audio_seconds:.1f} s)", file=sys.stderr)
    errors = {error.where: error for error in datamodule.predict_errors}
    for path in map(str, files):
        if path in texts:
            print(f"{path}\t{texts[path]}")
        else:
            print(f"error: {errors.get(path, f'{path}: not transcribed')}", file=sys.stderr)
    return 1 if errors else 0
