"""Fault sweep: every fault of issue 11 through the datamodules and ``speechxfer fit``; one table row per case.

    python tests/scripts/fault_sweep.py            # every case (~3 min on a 2-core VM)
    python tests/scripts/fault_sweep.py --quick    # two data cases and two run cases (the smoke test)

Data cases build a tiny corpus (``tests/corpus_factory.py``), damage one thing, and load it through
``ASRDataModule`` (scan, label/duration checks, one training epoch of batches) under
``on_bad_input: error`` and ``skip``. Run cases drive ``speechxfer fit`` in-process on the tiny quickstart
(``tests/cli_helpers.py``) or the CLI's checkpoint IO. Outcomes:

- ``clear error``: raised naming the file (or run/checkpoint) and the reason / exit status 2 with <= 5 lines;
- ``counted skip`` / ``counted note``: dropped (kept) and counted under its reason in the datamodule's report;
- ``handled``: the guarantee named in the detail column holds (nothing lost, nothing half-written);
- ``SILENT``, ``UNCLEAR``, ``TRAINED ON NaN``: failures. The exit status is 1 if any row has one.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from datamodules import ASRDataModule, CommonVoiceCorpus, LibriSpeechCorpus  # noqa: E402
from datamodules.errors import BadInputError  # noqa: E402
from tests.cli_helpers import callbacks_yaml, fit_in_process, tiny_quickstart  # noqa: E402
from tests.corpus_factory import (break_mid_file, make_commonvoice, make_librispeech, tone_speech,  # noqa: E402
                                  unreadable, write_cut_short_mp3, write_non_finite_wav, write_tsv)

FAILURES = ("SILENT", "UNCLEAR", "TRAINED ON NaN")
LS = "LibriSpeech/train-clean-100"


# ---------------------------------------------------------------- data cases
@dataclass
class DataCase:
    name: str
    corpus: str                                        # "ls" | "cv"
    reason: str                                        # the reason the error / count must carry
    damage: Callable[[Path], tuple[Path, object]]      # damages the corpus; (path to be named, context)
    note: bool = False                                 # a kept-and-counted oddity, not bad input


def ls_flac(root: Path, i: int = 0) -> Path:
    return sorted((root / LS).rglob("*.flac"))[i]


def cv_row(root: Path, i: int = 0) -> list[str]:
    return (root / "en/train.tsv").read_text().splitlines()[i + 1].split("\t")


def cv_rows(root: Path) -> list[list[str]]:
    return [line.split("\t") for line in (root / "en/train.tsv").read_text().splitlines()[1:]]


def _set_transcript(flac: Path, text: str) -> None:
    trans = next(flac.parent.glob("*.trans.txt"))
    lines = [f"{flac.stem} {text}" if ln.startswith(flac.stem + " ") else ln for ln in trans.read_text().splitlines()]
    trans.write_text("\n".join(lines) + "\n")


def _rewrite(path: Path, fn) -> tuple[Path, object]:
    path.write_bytes(fn(path.read_bytes()))
    return path, None


def _nan(root, where="everywhere"):
    return write_non_finite_wav(ls_flac(root), "the cat sat", where=where), None


def _long_mid_break(root):
    flac = ls_flac(root)
    sf.write(flac, tone_speech("a " * 13, seed=1), 16000)
    _set_transcript(flac, "A " * 13)
    return break_mid_file(flac), None


def _long_clip(root):
    flac, text = ls_flac(root), "the cat sat on a mat " * 25
    sf.write(flac, tone_speech(text), 16000)
    _set_transcript(flac, text.strip().upper())
    return flac, None


def _odd_text(root, text):
    flac = ls_flac(root)
    _set_transcript(flac, text)
    return Path(flac.stem), None


def _drop_line(root):
    flac = ls_flac(root)
    trans = next(flac.parent.glob("*.trans.txt"))
    trans.write_text("".join(ln + "\n" for ln in trans.read_text().splitlines() if not ln.startswith(flac.stem)))
    return flac, None


def _dup_subsets(root):
    other = make_librispeech(root.parent / "other", {"train-clean-360": 2})
    (root / "LibriSpeech/train-clean-360").symlink_to(other / "LibriSpeech/train-clean-360")
    return root / "LibriSpeech/train-clean-360", None


def _cv_edit(root, fn):
    rows = cv_rows(root)
    where = fn(rows)
    write_tsv(root / "en/train.tsv", rows)
    return where, None


def _cv_twin(root):
    row = cv_row(root)
    twin = row[1].replace(".mp3", ".wav")
    sf.write(root / "en/clips" / twin, tone_speech("cat"), 16000)
    return _cv_edit(root, lambda rows: rows.append([row[0], twin, "Cat."] + row[3:]) or Path(twin))


def _cv_short(root):
    row, text = cv_row(root), "the big dog ran far and the old man sat on a red mat"
    write_cut_short_mp3(root / "en/clips" / row[1], text, keep=0.5)
    return _cv_edit(root, lambda rows: rows[0].__setitem__(2, text.capitalize() + ".") or Path(row[1]).with_suffix(""))


def _stereo(root):
    flac = ls_flac(root)
    mono = tone_speech("cat")
    sf.write(flac, np.stack([mono, mono], 1), 16000)
    return flac, None


DATA_CASES = [
    DataCase("NaN/inf float WAV named .flac", "ls", "non_finite_audio", _nan),
    DataCase("NaN only mid-file (load time)", "ls", "non_finite_audio", lambda r: _nan(r, "middle")),
    DataCase("corrupt FLAC", "ls", "unreadable_audio", lambda r: _rewrite(ls_flac(r), lambda b: b[:4] + bytes(len(b)))),
    DataCase("truncated FLAC", "ls", "truncated_audio", lambda r: _rewrite(ls_flac(r), lambda b: b[: len(b) // 2])),
    DataCase("0-byte FLAC", "ls", "empty_file", lambda r: _rewrite(ls_flac(r), lambda b: b"")),
    DataCase("stereo FLAC (downmixed)", "ls", "multichannel_audio", _stereo, note=True),
    DataCase("8 kHz FLAC (resampled)", "ls", "unexpected_sample_rate",
             lambda r: (sf.write(ls_flac(r), tone_speech("cat", 8000), 8000) or ls_flac(r), None), note=True),
    DataCase("FLAC decodes at scan, fails mid-file", "ls", "audio_decode_failed", _long_mid_break),
    DataCase("FLAC without transcript line", "ls", "audio_without_transcript", _drop_line),
    DataCase("unreadable chapter folder", "ls", "unreadable_directory",
             lambda r: (ls_flac(r).parent, unreadable(ls_flac(r).parent))),
    DataCase("unreadable transcript file", "ls", "unreadable_file",
             lambda r: (next(ls_flac(r).parent.glob("*.trans.txt")),
                        unreadable(next(ls_flac(r).parent.glob("*.trans.txt"))))),
    DataCase("unreadable FLAC", "ls", "unreadable_file", lambda r: (ls_flac(r), unreadable(ls_flac(r)))),
    DataCase("same utterance ids in two subsets", "ls", "duplicate_id", _dup_subsets),
    DataCase("emoji in a training transcript", "ls", "oov_character", lambda r: _odd_text(r, "THE DOG 😀 RAN")),
    DataCase("digits in a training transcript", "ls", "oov_character", lambda r: _odd_text(r, "THE 7 DOGS")),
    DataCase("30 s clip among 0.5 s clips, max_duration 3", "ls", "longer_than_max_duration", _long_clip),
    DataCase("corrupt MP3", "cv", "unreadable_audio",
             lambda r: _rewrite(r / "en/clips" / cv_row(r)[1], lambda b: np.random.default_rng(0).bytes(len(b)))),
    DataCase("truncated MP3 (mid-frame)", "cv", "truncated_audio",
             lambda r: _rewrite(r / "en/clips" / cv_row(r)[1], lambda b: b[: len(b) // 2])),
    DataCase("MP3 cut short, no Xing tag", "cv", "implausible_speaking_rate", _cv_short),
    DataCase("x.mp3 + x.wav in one TSV", "cv", "duplicate_id", _cv_twin),
    DataCase("TSV row with a stray tab", "cv", "malformed_row",
             lambda r: _cv_edit(r, lambda rows: rows[1].__setitem__(2, "Sat\ton a mat.") or r / "en/train.tsv")),
    DataCase("TSV row without its clip", "cv", "transcript_without_audio",
             lambda r: (os.remove(r / "en/clips" / cv_row(r, 2)[1]) or r / "en/train.tsv", None)),
    DataCase("unreadable TSV", "cv", "unreadable_file",
             lambda r: (r / "en/train.tsv", unreadable(r / "en/train.tsv"))),
    DataCase("empty TSV", "cv", "empty_tsv", lambda r: _rewrite(r / "en/train.tsv", lambda b: b"")),
]


def report_counts(dm: ASRDataModule, corpus) -> dict[str, int]:
    counts: dict[str, int] = {}
    report = dm.bad_input_report()
    for section in ("checks", "load"):
        for entry in report[section].values():
            for reason, n in entry["skipped"].items():
                counts[reason] = counts.get(reason, 0) + n
    for reason, n in {**corpus.skipped, **corpus.notes}.items():
        counts[reason] = counts.get(reason, 0) + n
    return counts


def run_data_case(case: DataCase, policy: str, work: Path) -> tuple[str, str]:
    root = work / "data"
    if case.corpus == "ls":
        make_librispeech(root, {"train-clean-100": 6})
        corpus = LibriSpeechCorpus(root, ["train-clean-100"] + (["train-clean-360"] if "subsets" in case.name else []),
                                   on_bad_input=policy)
    else:
        make_commonvoice(root, "en", {"train": 6})
        corpus = CommonVoiceCorpus(root, "en", "train", on_bad_input=policy)
    where, context = case.damage(root)
    dm = ASRDataModule(train=corpus, on_bad_input=policy, num_workers=0, cache_dir=str(work / "cache"),
                       max_duration=3.0, num_buckets=2)
    try:
        with context or contextlib.nullcontext():
            dm.setup("fit")
            sum(len(batch["ids"]) for batch in dm.train_dataloader())
    except BadInputError as err:
        named = str(where) in str(err) or where.name in str(err)
        if case.reason in str(err) and named:
            return "clear error", f"{err.reason}: {str(err)[:90]}"
        return "UNCLEAR", str(err)[:120]
    except Exception as err:  # noqa: BLE001 - anything else is not a clear error
        return "UNCLEAR", f"{type(err).__name__}: {str(err)[:100]}"
    counts = report_counts(dm, corpus)
    if counts.get(case.reason):
        return ("counted note" if case.note else "counted skip"), f"{case.reason}={counts[case.reason]}"
    return "SILENT", f"no error, counts {counts}"


# ---------------------------------------------------------------- run / checkpoint cases
def _finite(path: Path) -> bool:
    state = torch.load(path, weights_only=True)["state_dict"]
    return all(bool(v.isfinite().all()) for v in state.values() if v.is_floating_point())


def _fit(work: Path, *args) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = fit_in_process(["--config", tiny_quickstart(work / "w"), "--runs_dir", work / "runs", "--run_name", "r",
                               "--wandb", "false", *args], work)
    return code, err.getvalue()


def _short(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.startswith(("speechxfer:", "  "))]


def case_nan_loss(work: Path, policy: str) -> tuple[str, str]:
    items = [{"class_path": "tests.cli_helpers.PoisonBatch", "init_args": {"step": 3}}]
    if policy == "skip":
        items.append({"class_path": "callbacks.NonFiniteGuard", "init_args": {"policy": "skip"}})
    code, err = _fit(work, "--config", callbacks_yaml(work / "cb.yaml", items), "--trainer.max_steps", 5,
                     "--checkpoint_every_n_steps", 1)
    last = work / "runs/quickstart/r/checkpoints/last.ckpt"
    if last.is_file() and not _finite(last):
        return "TRAINED ON NaN", "last.ckpt holds NaN/inf weights"
    if policy == "stop":
        lines = _short(err)
        ok = code == 2 and lines and "non-finite" in lines[0] and "batch utterances" in lines[0]
        return ("clear error", lines[0][:100]) if ok else ("SILENT" if code == 0 else "UNCLEAR", err[-100:])
    summary = json.loads((work / "runs/quickstart/r/summary.json").read_text())
    n = summary["nonfinite"]["skipped_steps"]
    return ("counted skip", f"skipped_steps={n}") if code == 0 and n == 1 else ("SILENT", f"rc {code}, {n} skipped")


def case_resume_keeps_history(work: Path, policy: str) -> tuple[str, str]:
    for steps in (2, 4):
        code, _ = _fit(work, "--trainer.max_steps", steps, *(["--ckpt_path", "last"] if steps == 4 else []))
        if code:
            return "UNCLEAR", f"fit exited {code}"
    with open(work / "runs/quickstart/r/metrics.csv", newline="") as f:
        steps = [int(float(r["step"])) for r in csv.DictReader(f) if r.get("train/loss_step")]
    ok = steps == [0, 1, 2, 3]
    return ("handled", f"metrics.csv steps {steps} after 1 resume") if ok else ("SILENT", f"history {steps}")


def case_last_without_run(work: Path, policy: str) -> tuple[str, str]:
    code, err = _fit(work, "--ckpt_path", "last", "--trainer.max_steps", 2)
    lines = _short(err)
    ok = code == 2 and lines and "no checkpoint to resume from" in lines[0]
    return ("clear error", lines[0][:100]) if ok else ("SILENT" if code == 0 else "UNCLEAR", err[-100:])


def case_final_last_ckpt(work: Path, policy: str) -> tuple[str, str]:
    code, _ = _fit(work, "--trainer.max_steps", 5, "--checkpoint_every_n_steps", 2)
    step = torch.load(work / "runs/quickstart/r/checkpoints/last.ckpt", weights_only=True)["global_step"]
    return ("handled", "last.ckpt at step 5 of 5") if code == 0 and step == 5 else ("SILENT", f"last.ckpt at {step}")


def _checkpoint_io(work: Path):
    from experiments.cli import checkpoint_io

    return checkpoint_io({}, work / "run")[-1]


def case_disk_full_save(work: Path, policy: str) -> tuple[str, str]:
    import errno

    io_ = _checkpoint_io(work)
    last = work / "run/checkpoints/last.ckpt"
    io_.save_checkpoint({"state_dict": {"w": torch.zeros(1000)}, "global_step": 1}, last)
    real = torch.save

    def full(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    torch.save = full
    try:
        io_.save_checkpoint({"state_dict": {"w": torch.ones(1000)}, "global_step": 2}, last)
    except OSError:
        pass
    finally:
        torch.save = real
    step = torch.load(last, weights_only=True)["global_step"]
    temps = [p.name for p in last.parent.iterdir() if p.name != "last.ckpt"]
    ok = step == 1 and not temps
    return ("handled", "last.ckpt intact, no temp file") if ok else ("SILENT", f"step {step}, temps {temps}")


def case_pickled_object(work: Path, policy: str) -> tuple[str, str]:
    import pathlib

    from lightning_modules.checkpoint_io import CheckpointLoadError, read_checkpoint

    marker = work / "code-ran"

    class Payload:
        def __reduce__(self):
            return pathlib.Path.touch, (marker,)

    path = work / "shared.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": Payload()}, path)
    try:
        read_checkpoint(path)
    except CheckpointLoadError as err:
        if not marker.exists() and "refused" in str(err) and str(path) in str(err):
            return "clear error", "refused, nothing executed"
    return "SILENT", "loaded" + (" and executed code" if marker.exists() else "")


def case_corrupt_checkpoint(work: Path, policy: str) -> tuple[str, str]:
    from lightning_modules.checkpoint_io import CheckpointLoadError, read_checkpoint

    path = work / "broken.ckpt"
    buffer = io.BytesIO()
    torch.save({"state_dict": {"w": torch.zeros(50_000)}}, buffer)
    path.write_bytes(buffer.getvalue()[:30_000])
    try:
        read_checkpoint(path)
    except CheckpointLoadError as err:
        return ("clear error", str(err)[-60:]) if str(path) in str(err) else ("UNCLEAR", str(err))
    return "SILENT", "loaded"


RUN_CASES: list[tuple[str, str, Callable[[Path, str], tuple[str, str]]]] = [
    ("non-finite loss / gradient", "stop", case_nan_loss),
    ("non-finite loss / gradient", "skip", case_nan_loss),
    ("disk full while saving last.ckpt", "-", case_disk_full_save),
    ("resume keeps metrics.csv history", "-", case_resume_keeps_history),
    ("--ckpt_path last, no earlier run", "-", case_last_without_run),
    ("last.ckpt = final state", "-", case_final_last_ckpt),
    ("checkpoint with a pickled object", "-", case_pickled_object),
    ("truncated checkpoint", "-", case_corrupt_checkpoint),
]


def sweep(quick: bool, out: Path) -> list[tuple[str, str, str, str]]:
    data = DATA_CASES[:2] if quick else DATA_CASES
    runs = [RUN_CASES[0], RUN_CASES[2]] if quick else RUN_CASES
    rows = []
    for i, case in enumerate(data):
        for policy in ("error", "skip"):
            work = out / f"d{i}-{policy}"
            work.mkdir(parents=True)
            rows.append((case.name, policy, *run_data_case(case, policy, work)))
    for i, (name, policy, fn) in enumerate(runs):
        work = out / f"r{i}"
        work.mkdir(parents=True)
        rows.append((name, policy, *fn(work, policy)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few cases only (smoke test)")
    parser.add_argument("--keep", default=None, help="keep the generated cases in this folder")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="fault_sweep-"))
    start = time.perf_counter()
    import logging

    logging.disable(logging.WARNING)  # the table is the output
    try:
        rows = sweep(args.quick, out)
    finally:
        logging.disable(logging.NOTSET)
        if not args.keep:
            shutil.rmtree(out, ignore_errors=True)
    print("| case | on_bad_input / policy | outcome | detail |\n|---|---|---|---|")
    for case, policy, outcome, detail in rows:
        print(f"| {case} | {policy} | {outcome} | {detail.replace('|', '/')} |")
    bad = sum(outcome in FAILURES for _, _, outcome, _ in rows)
    silent = sum(outcome == "SILENT" for _, _, outcome, _ in rows)
    nan = sum(outcome == "TRAINED ON NaN" for _, _, outcome, _ in rows)
    print(f"\n{len(rows)} rows in {time.perf_counter() - start:.0f} s: {silent} silent, {nan} trained on NaN, "
          f"{bad - silent - nan} unclear")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
