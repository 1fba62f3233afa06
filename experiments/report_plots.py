"""The comparison report's figures (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments.run_records import RunRecord  # noqa: E402


def _empty(ax, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, wrap=True)


def _save(fig, ax, path: Path) -> Path:
    """Grid, tight layout, write ``path`` (100 dpi), free the figure."""
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_wer_curves(records: list[RunRecord], path: Path) -> Path:
    """Validation WER vs step, one line per run (target WER if logged, else source)."""
    fig, ax = plt.subplots(figsize=(8, 5))
    drawn = 0
    for record in records:
        curve = record.primary_curve()
        if curve is None:
            continue
        name, points = curve
        steps, values = zip(*points)
        domain = name.split("/")[1]
        ax.plot(steps, values, marker="o", markersize=3, label=f"{record.name} ({record.method}, {domain})")
        drawn += 1
    if drawn:
        ax.legend(fontsize="small")
    else:
        _empty(ax, "no validation WER logged by these runs")
    ax.set(xlabel="training step", ylabel="validation WER", title="Validation WER (target if present, else source)")
    return _save(fig, ax, path)


def plot_target_wer_vs_minutes(records: list[RunRecord], path: Path) -> Path:
    """Best target WER vs labelled target minutes, one line + markers per method."""
    by_method: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for record in records:
        wer = record.best_of("target")
        if wer is not None and record.labelled_target_minutes is not None:
            by_method[record.method or "?"].append((record.labelled_target_minutes, wer))
    fig, ax = plt.subplots(figsize=(7, 5))
    for method, points in sorted(by_method.items()):
        minutes, wers = zip(*sorted(points))
        ax.plot(minutes, wers, marker="o", label=method)
    if by_method:
        ax.legend()
        positive = [m for pts in by_method.values() for m, _ in pts if m > 0]
        if positive and max(positive) / min(positive) > 20:
            ax.set_xscale("symlog", linthresh=min(positive))
    else:
        _empty(ax, "no run has both a target WER and labelled target minutes")
    ax.set(xlabel="labelled target-domain minutes", ylabel="best target WER",
           title="Target WER vs labelled target data")
    return _save(fig, ax, path)


def plot_adaptation_curve(records: list[RunRecord], path: Path) -> Path:
    """Few-shot test WER vs support shots k (adapted on k utterances per held-out task), one line per run."""
    fig, ax = plt.subplots(figsize=(7, 5))
    drawn = [r for r in records if any("wer" in v for v in r.fewshot.values())]
    for record in drawn:
        points = sorted((k, v["wer"]) for k, v in record.fewshot.items() if "wer" in v)
        ax.plot([k for k, _ in points], [w for _, w in points], marker="o", label=f"{record.name} ({record.method})")
    if drawn:
        ax.legend(fontsize="small")
        ax.set_xscale("symlog", linthresh=1)
        shots = sorted({k for r in drawn for k in r.fewshot})
        ax.set_xticks(shots, [f"{k:g}" for k in shots])
    else:
        _empty(ax, "no few-shot test results (speechxfer test with EpisodicDataModule test_shots)")
    ax.set(xlabel="support utterances per held-out task (k shots)", ylabel="query WER after adaptation",
           title="Adaptation curve (few-shot test)")
    return _save(fig, ax, path)
