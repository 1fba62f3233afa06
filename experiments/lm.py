"""``speechxfer lm``: build a word n-gram LM (ARPA) and a lexicon for beam-search decoding, offline.

    speechxfer lm --ckpt runs/quickstart/latest/checkpoints/last.ckpt --data experiments/data/demo_source.yaml
    speechxfer lm --ckpt model.ckpt --text train_text.txt --text domain_text.txt --order 4 --out lm/
    speechxfer lm --data experiments/data/demo_source.yaml --out lm/      # tokenizer: the datamodule's
    speechxfer lm --ckpt model.ckpt --data source.yaml --data target.yaml --out lm/   # both training texts

Text: ``--text`` files (one sentence per line) and/or ``--data`` (repeatable), a datamodule config (the file
``speechxfer fit --data`` takes): its labelled training transcripts (domain adaptation: the source's).
Every line is normalised with the model tokenizer's normaliser, as training targets are. Tokenizer
(spellings are in its units): from ``--ckpt`` (every checkpoint carries it), else ``--tokenizer``
(a saved tokenizer JSON), else the first ``--data`` datamodule's.

Writes ``OUT/lm.arpa`` (interpolated modified Kneser-Ney, ``datamodules/ngram.py``), ``OUT/lexicon.txt``
(``word<TAB>spelling``, ``datamodules/lexicon.py``; words with characters outside the model's
vocabulary are left out and reported) and ``OUT/lm.json`` (sources, counts, discounts). ``--out``
defaults to ``<run dir>/lm/`` for a checkpoint in a run's ``checkpoints/`` folder. Then decode with
``speechxfer transcribe --decoder beam --lexicon OUT/lexicon.txt --lm OUT/lm.arpa`` or the
``eval_decoders`` of ``speechxfer test`` (README, "Decoding").
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

from datamodules.atomic import write_json_atomic
from datamodules.lexicon import build_lexicon, write_lexicon
from datamodules.ngram import estimate_kneser_ney, write_arpa
from experiments.commands import tool_parser


def load_datamodule(config: str | Path):
    """The datamodule of a datamodule config (what ``speechxfer fit --data`` takes) or of an experiment /
    run config (its ``data:`` entry, inline or a file relative to the config), built as the CLI builds it."""
    import yaml
    from jsonargparse import ArgumentParser

    from datamodules.base import SpeechDataModule

    config = Path(config)
    if not config.is_file():
        raise FileNotFoundError(f"{config}: no such config file")
    raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    data = raw.get("data", config) if isinstance(raw, dict) and "class_path" not in raw else config
    if isinstance(data, str) and (config.parent / data).is_file():
        data = config.parent / data
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(SpeechDataModule, "data")
    parsed = parser.parse_object({"data": data}) if isinstance(data, dict) else parser.parse_args(["--data", str(data)])
    return parser.instantiate_classes(parsed).data


def training_texts(datamodule) -> Iterator[str]:
    """Raw transcripts of an ``ASRDataModule``'s labelled training corpus (domain adaptation: ``source_train``)."""
    from datamodules.asr import ASRDataModule
    from datamodules.dataset import iter_texts

    if not isinstance(datamodule, ASRDataModule) or datamodule.train_corpus is None:
        raise ValueError(f"{type(datamodule).__name__} has no labelled training corpus to read transcripts from "
                         "(pass --text)")
    return iter_texts(datamodule.train_corpus.cuts(datamodule.cache_dir))


def text_lines(paths: Sequence[Path]) -> Iterator[str]:
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"--text {path}: no such file")
        with open(path, encoding="utf-8") as f:
            yield from f


def default_out(ckpt: Path | None) -> Path | None:
    """``<run dir>/lm`` for ``<run dir>/checkpoints/<name>.ckpt``."""
    return ckpt.parent.parent / "lm" if ckpt is not None and ckpt.parent.name == "checkpoints" else None


def build_lm(sentences: Sequence[str], tokenizer, order: int, out: Path, sources: list[str]) -> dict:
    """Write ``out/lm.arpa``, ``out/lexicon.txt``, ``out/lm.json`` from normalised ``sentences``; return the json."""
    model = estimate_kneser_ney(sentences, order)
    write_arpa(model, out / "lm.arpa")
    words = model.vocabulary()
    lexicon = build_lexicon(words, tokenizer)
    if not lexicon.entries:
        examples = list(lexicon.unspellable.values())[:3]
        raise ValueError(f"no word of the text can be spelled with the model's tokens: {examples}")
    write_lexicon(lexicon, out / "lexicon.txt")
    info = {"sources": sources, "order": order, "sentences": len(sentences),
            "words": sum(len(s.split()) for s in sentences), "vocabulary": len(words),
            "ngrams": [len(p) for p in model.logprobs], "discounts": model.discounts,
            "lexicon_words": len(lexicon.entries), "unspellable_words": len(lexicon.unspellable),
            "unspellable_examples": list(lexicon.unspellable.values())[:10],
            "tokenizer": type(tokenizer).__name__}
    write_json_atomic(out / "lm.json", info)
    return info


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser("lm", __doc__, epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--text", type=Path, action="append", default=[], help="text file, one sentence per line")
    parser.add_argument("--data", type=Path, action="append", default=[],
                        help="datamodule config: its training transcripts (and tokenizer); repeatable")
    parser.add_argument("--ckpt", type=Path, help="checkpoint whose tokenizer spells the lexicon")
    parser.add_argument("--tokenizer", type=Path, help="saved tokenizer JSON (instead of --ckpt)")
    parser.add_argument("--order", type=int, default=3, help="n-gram order (default 3)")
    parser.add_argument("--out", type=Path, help="output folder (default: <run dir>/lm for a run's checkpoint)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.text and not args.data:
        parser.error("give the LM text: --text FILE and/or --data DATA_CONFIG")
    out = args.out or default_out(args.ckpt)
    if out is None:
        parser.error("--out is needed (no run directory to write next to)")
    try:
        datamodules = [load_datamodule(config) for config in args.data]
        datamodule = datamodules[0] if datamodules else None
        if args.ckpt is not None:
            from lightning_modules.checkpoint import load_tokenizer

            tokenizer = load_tokenizer(args.ckpt)
        elif args.tokenizer is not None:
            from datamodules.text import load_tokenizer

            tokenizer = load_tokenizer(args.tokenizer)
        elif datamodule is not None:
            tokenizer = datamodule.tokenizer
        else:
            parser.error("no tokenizer: pass --ckpt, --tokenizer or --data")
        raw = list(text_lines(args.text)) + [text for dm in datamodules for text in training_texts(dm)]
        sentences = [s for s in (tokenizer.normalize(line) for line in raw) if s]
        sources = [str(p) for p in args.text] + [f"{config} (training transcripts)" for config in args.data]
        info = build_lm(sentences, tokenizer, args.order, out, sources)
    except (OSError, ValueError) as err:
        print(f"error: {err}")
        return 2
    print(f"wrote {out / 'lm.arpa'} ({args.order}-gram: {info['sentences']} sentences, {info['words']} words, "
          f"vocabulary {info['vocabulary']}) and {out / 'lexicon.txt'} ({info['lexicon_words']} words)")
    if info["unspellable_words"]:
        print(f"warning: {info['unspellable_words']} words cannot be spelled with the model's tokens and are not "
              f"in the lexicon, e.g. {info['unspellable_examples'][:3]}")
    ckpt = args.ckpt or "MODEL.ckpt"
    beam = json.dumps({"beam": {"lexicon": str(out / "lexicon.txt"), "lm": str(out / "lm.arpa")}})
    print(f"decode with:\n  speechxfer transcribe --ckpt {ckpt} --decoder beam --lexicon {out / 'lexicon.txt'} "
          f"--lm {out / 'lm.arpa'} AUDIO ...\n  speechxfer test --config CONFIG --ckpt_path {ckpt} "
          f"--model.init_args.eval_decoders '{beam}'")
    return 0
