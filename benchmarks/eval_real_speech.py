"""WER/CER of a checkpoint on the real recordings in ``tests/fixtures/real_speech`` (LibriSpeech + LJSpeech).

    python benchmarks/eval_real_speech.py --ckpt experiments/models/synth_en_bigru.ckpt

Transcribes every clip with ``speechxfer transcribe``'s code path (the checkpoint alone, 16 kHz mono) and
prints each hypothesis under its reference, then WER/CER over all clips (references normalised by the
checkpoint's tokenizer: lower case, no punctuation). Three utterances of real read speech (one
LibriSpeech speaker, one LJSpeech reader; the LJSpeech clips also as MP3): a smoke check of how far a
model is from real speech, not a benchmark.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from torchmetrics.functional.text import char_error_rate, word_error_rate  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures" / "real_speech"


def references() -> dict[Path, str]:
    """{audio file: transcript} of every fixture clip."""
    refs = {}
    for trans in (FIXTURES / "LibriSpeech").rglob("*.trans.txt"):
        for line in trans.read_text(encoding="utf-8").splitlines():
            uid, text = line.split(" ", 1)
            refs[trans.parent / f"{uid}.flac"] = text
    for line in (FIXTURES / "ljspeech" / "metadata.csv").read_text(encoding="utf-8").splitlines():
        uid, _, normalized = line.split("|")
        for suffix in (".flac", ".mp3"):
            refs[FIXTURES / "ljspeech" / f"{uid}{suffix}"] = normalized
    return refs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, required=True)
    args = parser.parse_args(argv)
    from experiments.transcribe import transcribe_files
    from lightning_modules import load_model

    model = load_model(args.ckpt)
    refs = references()
    texts, errors = transcribe_files(model, sorted(refs))
    if errors:
        raise SystemExit(f"unreadable: {errors}")
    hyps, normalised = [], []
    for path in sorted(refs):
        ref = model.tokenizer.normalize(refs[path])
        hyps.append(texts[path])
        normalised.append(ref)
        print(f"{path.relative_to(FIXTURES)}\n  ref: {ref}\n  hyp: {texts[path]}")
    print(f"real speech ({len(refs)} clips): WER {100 * float(word_error_rate(hyps, normalised)):.1f} %, "
          f"CER {100 * float(char_error_rate(hyps, normalised)):.1f} %")


if __name__ == "__main__":
    main()
