"""Shared helpers of the benchmark scripts: repo path, tone-speech corpora, data configs, result lines.

Every benchmark prints its results as ``RESULT`` lines (parsed by ``run_all.py``)::

    RESULT | <name> | <value> | <goal> | ok|MISSED|info|smoke | <detail>

where ``value`` is a ratio against a baseline measured in the same run (``1.02x``) or a measure
with its unit. ``ratio_line`` formats one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import yaml  # noqa: E402

from benchmarks.tone_pair import write_commonvoice_split, write_librispeech_split  # noqa: E402

RESULT_PREFIX = "RESULT"


def ratio_line(name: str, ratio: float, goal: float | None, lower_is_better: bool = True, detail: str = "",
               unit: str = "x", quick: bool = False) -> str:
    """``RESULT | name | 1.03x | <= 1.05x | ok | detail``; status ``info`` without a goal, ``smoke`` in quick mode."""
    if goal is None:
        status, goal_text = "info", "-"
    else:
        met = ratio <= goal if lower_is_better else ratio >= goal
        status, goal_text = ("ok" if met else "MISSED"), f"{'<=' if lower_is_better else '>='} {goal:g}{unit}"
    if quick:
        status = "smoke"  # quick runs are too small for the goal to mean anything
    return f"{RESULT_PREFIX} | {name} | {ratio:.3f}{unit} | {goal_text} | {status} | {detail}"


def parse_result_lines(text: str) -> list[dict[str, str]]:
    """The ``RESULT`` lines of a benchmark's output as dicts (name, value, goal, status, detail)."""
    rows = []
    for line in text.splitlines():
        if line.startswith(RESULT_PREFIX + " |"):
            parts = [p.strip() for p in line.split("|")[1:]]
            parts += [""] * (5 - len(parts))
            rows.append(dict(zip(("name", "value", "goal", "status", "detail"), parts[:5])))
    return rows


def set_threads(n: int) -> None:
    """Pin torch (and child processes via OMP_NUM_THREADS) to ``n`` intra-op threads."""
    import torch

    os.environ["OMP_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)


def make_tone_corpus(root: Path, train: int, dev: int = 8, test: int = 8, words: tuple[int, int] = (2, 5),
                     target_shift: float | None = None, seed: int = 0) -> Path:
    """Tone speech in LibriSpeech layout (source); with ``target_shift`` also a Common Voice layout target.

    Returns ``root``; the source is ``root/LibriSpeech/{train-clean-100,dev-clean,test-clean}``, the
    target ``root/commonvoice/en/{clips,train.tsv,dev.tsv,test.tsv}``. Already written corpora are kept.
    """
    root = Path(root)
    splits = {"train-clean-100": train, "dev-clean": dev, "test-clean": test}
    for i, (subset, n) in enumerate(splits.items()):
        write_librispeech_split(root, subset, n, words, seed=seed + 1000 * i, speaker_base=100 + 10 * i)
    if target_shift is not None:
        for i, (split, n) in enumerate({"train": train, "dev": dev, "test": test}.items()):
            write_commonvoice_split(root / "commonvoice", split, n, words, shift=target_shift,
                                    seed=seed + 500 + 1000 * i)
    return root


def librispeech(root: Path, subset: str) -> dict[str, Any]:
    return {"class_path": "datamodules.LibriSpeechCorpus", "init_args": {"root": str(root), "subsets": [subset]}}


def commonvoice(root: Path, split: str, **extra: Any) -> dict[str, Any]:
    return {"class_path": "datamodules.CommonVoiceCorpus",
            "init_args": {"root": str(Path(root) / "commonvoice"), "locale": "en", "split": split, **extra}}


def source_data_config(root: Path, max_duration: float = 20.0, num_workers: int = 0, with_target: bool = False,
                       seed: int = 0, num_buckets: int = 4) -> dict[str, Any]:
    """``ASRDataModule`` config: train on the source; validate/test on source (and target)."""
    val, test = {"source": librispeech(root, "dev-clean")}, {"source": librispeech(root, "test-clean")}
    if with_target:
        val["target"], test["target"] = commonvoice(root, "dev"), commonvoice(root, "test")
    return {"class_path": "datamodules.ASRDataModule", "init_args": {
        "domain": "source", "train": librispeech(root, "train-clean-100"), "val": val, "test": test,
        "max_duration": max_duration, "num_buckets": num_buckets, "num_workers": num_workers,
        "seed": seed, "cache_dir": str(Path(root) / ".cache")}}


def run_cli(args: list[str], log: Path, threads: int | None = None) -> None:
    """``python -m experiments ARGS`` from the repo root with W&B off, its output appended to ``log``;
    ``threads`` sets OMP_NUM_THREADS (the run's torch intra-op threads). A failure raises, naming the log."""
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    env.pop("SPEECHXFER_RUN_DIR", None)
    with open(log, "a", encoding="utf-8") as f:
        f.write("$ python -m experiments " + " ".join(args) + "\n")
        f.flush()
        proc = subprocess.run([sys.executable, "-m", "experiments", *args], cwd=REPO, env=env, stdout=f,
                              stderr=subprocess.STDOUT, text=True)
    if proc.returncode:
        raise RuntimeError(f"`python -m experiments {' '.join(args)}` failed (exit {proc.returncode}); see {log}")


def write_yaml(path: Path, config: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS since start or the last ``reset_peak_rss``) of this process in MB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; False where Linux does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def dump_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)
