"""``speechxfer compare``: one table + two figures comparing runs.

    speechxfer compare runs/quickstart runs/dann/* --out report/
    speechxfer compare runs/*/ --format md
    speechxfer compare --wandb-project me/speechxfer --out report/        # online W&B runs

Inputs: local run dirs (or folders holding them; a run's offline W&B folder is part of its run dir,
``experiments/run_records.py`` says why it is not read on its own), and with ``--wandb-project`` the
runs of a W&B project (needs network + credentials). Writes to ``--out``:
``report.md`` and/or ``report.html`` (table: method, backbone, source/target data, labelled target
minutes, trainable params, best source/target WER and CER, wall time), ``runs.csv`` (the same
numbers, unformatted), ``wer_curves.png`` and ``target_wer_vs_minutes.png``. Rows: runs with a
target domain first, sorted by best target WER, then source-only runs by best source WER.
Runs with a few-shot test (``speechxfer test`` on an ``EpisodicDataModule`` with ``test_shots``) also
give the adaptation curve: ``adaptation_curve.png`` (query WER vs k shots, one line per run), a
"Few-shot adaptation" table in the report and ``fewshot.csv``.

Runs of ``speechxfer validate`` / ``test`` add their metric families as columns when present:
``test`` (greedy) and one family per extra decoder (``test_beam``, ``val_beam``, ...; see
``CTCModule(eval_decoders=...)``), e.g. "test target WER %" next to "test beam target WER %", so
greedy and beam-search + LM results of the same checkpoints sit side by side.
"""

from __future__ import annotations

import argparse
import csv
import html
import logging
import math
from collections.abc import Sequence
from pathlib import Path

from experiments.commands import tool_parser
from experiments.report_plots import plot_adaptation_curve, plot_target_wer_vs_minutes, plot_wer_curves
from experiments.run_records import RunRecord, discover, load_wandb_project

log = logging.getLogger(__name__)
COLUMNS = [
    ("run", "run"), ("method", "method"), ("backbone", "backbone"), ("source_data", "source data"),
    ("target_data", "target data"), ("minutes", "labelled target min"), ("params", "trainable params"),
    ("source_wer", "source WER %"), ("source_cer", "source CER %"),
    ("target_wer", "target WER %"), ("target_cer", "target CER %"), ("headline", "headline"),
    ("wall_time", "wall time"),
]
FIGURES = ("wer_curves.png", "target_wer_vs_minutes.png")  # always written
ADAPTATION_FIGURE = "adaptation_curve.png"  # runs with a few-shot test
PERCENT = ("source_wer", "source_cer", "target_wer", "target_cer")


def family_columns(records: list[RunRecord]) -> list[tuple[str, str]]:
    """(metric name, title) of every non-"val" family/domain/kind any record has: test, test_beam, ..."""
    names = {k for r in records for k in r.best if not k.startswith("val/")}
    families = sorted({k.split("/")[0] for k in names}, key=lambda f: (f.split("_")[0] != "test", f))
    return [(f"{f}/{d}/{kind}", f"{f.replace('_', ' ')} {d} {kind.upper()} %") for f in families
            for d in ("target", "source") for kind in ("wer", "cer") if f"{f}/{d}/{kind}" in names]


def columns(records: list[RunRecord]) -> list[tuple[str, str]]:
    return COLUMNS[:-1] + family_columns(records) + COLUMNS[-1:]


def sort_key(record: RunRecord) -> tuple:
    """Runs with a target headline metric first, by its best value; then the others by the source's.

    The headline is WER, or CER for languages written without spaces (``summary.json``'s ``headline_metric``).
    """
    kind = record.headline_kind
    target, source = record.best_of("target", kind), record.best_of("source", kind)
    wer = source if target is None else target
    return (target is None, math.inf if wer is None else wer, record.name)


def raw_row(record: RunRecord) -> dict[str, object]:
    """Unformatted values of one table row (``runs.csv``); other metric families under their names."""
    return {**{k: v for k, v in record.best.items() if not k.startswith("val/")},
        "run": record.name, "method": record.method, "backbone": record.backbone,
        "source_data": record.source_data, "target_data": record.target_data,
        "minutes": record.labelled_target_minutes, "params": record.trainable_params,
        "source_wer": record.best_of("source", "wer"), "source_cer": record.best_of("source", "cer"),
        "target_wer": record.best_of("target", "wer"), "target_cer": record.best_of("target", "cer"),
        "headline": record.headline_kind.upper(), "wall_time": record.wall_time_s,
    }


def _params(n: object) -> str:
    if n is None:
        return ""
    n = int(n)
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)


def _duration(seconds: object) -> str:
    if seconds is None:
        return ""
    s = int(round(float(seconds)))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def format_row(record: RunRecord) -> dict[str, str]:
    """Display strings of one table row (WER/CER in percent, 2 decimals)."""
    raw = raw_row(record)
    out = {k: "" if v is None else str(v) for k, v in raw.items()}
    for key in [*PERCENT, *(k for k in raw if "/" in k)]:
        out[key] = "" if raw[key] is None else f"{100 * float(raw[key]):.2f}"
    out["minutes"] = "" if raw["minutes"] is None else f"{float(raw['minutes']):.3g}"
    out["params"], out["wall_time"] = _params(raw["params"]), _duration(raw["wall_time"])
    return out


def fewshot_table(records: list[RunRecord]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the few-shot test: query WER % after adapting on k shots, one row per run."""
    shots = sorted({k for r in records for k in r.fewshot})
    rows = [[r.name, r.method or ""] + [f"{100 * r.fewshot[k]['wer']:.2f}" if "wer" in r.fewshot.get(k, {}) else ""
                                        for k in shots] for r in records if r.fewshot]
    return ["run", "method"] + [f"k={k:g} WER %" for k in shots], rows


def caption(records: list[RunRecord]) -> str:
    extra = " Test / per-decoder columns: values logged by `speechxfer test` / `validate` runs." \
        if family_columns(records) else ""
    return f"{len(records)} runs. Best validation values over training.{extra}"


def markdown_report(records: list[RunRecord], skipped: list[tuple[str, str]]) -> str:
    rows, cols = [format_row(r) for r in records], columns(records)
    lines = ["# speechxfer run comparison", "", caption(records), ""]
    lines.append("| " + " | ".join(title for _, title in cols) + " |")
    lines.append("|" + "|".join("---" for _ in cols) + "|")
    for row in rows:
        lines.append("| " + " | ".join(row.get(key, "").replace("|", "\\|") for key, _ in cols) + " |")
    lines += ["", "![validation WER curves](wer_curves.png)", ""]
    lines += ["![target WER vs labelled minutes](target_wer_vs_minutes.png)"]
    header, rows = fewshot_table(records)
    if rows:
        lines += ["", "## Few-shot adaptation (test: query WER after adapting on k utterances per held-out task)", "",
                  "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines += ["", "![adaptation curve](adaptation_curve.png)"]
    if skipped:
        lines += ["", f"## Skipped ({len(skipped)})", ""] + [f"- `{path}`: {reason}" for path, reason in skipped]
    return "\n".join(lines) + "\n"


def html_report(records: list[RunRecord], skipped: list[tuple[str, str]]) -> str:
    esc, cols = html.escape, columns(records)
    head = "".join(f"<th>{esc(title)}</th>" for _, title in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(row.get(key, ''))}</td>" for key, _ in cols) + "</tr>"
        for row in (format_row(r) for r in records)
    )
    figures = "".join(f'<p><img src="{name}" alt="{name}"></p>' for name in FIGURES)
    header, rows = fewshot_table(records)
    if rows:
        figures += ("<h2>Few-shot adaptation</h2><table><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header)
                    + "</tr></thead><tbody>" + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
                                                       for row in rows)
                    + f'</tbody></table><p><img src="{ADAPTATION_FIGURE}" alt="{ADAPTATION_FIGURE}"></p>')
    skips = "".join(f"<li><code>{esc(p)}</code>: {esc(r)}</li>" for p, r in skipped)
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>speechxfer run comparison</title>"
        "<style>table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}</style></head><body>"
        f"<h1>speechxfer run comparison</h1><p>{esc(caption(records))}</p>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{figures}"
        + (f"<h2>Skipped ({len(skipped)})</h2><ul>{skips}</ul>" if skipped else "")
        + "</body></html>\n"
    )


def write_report(records: list[RunRecord], out: Path, formats: Sequence[str] = ("md", "html"),
                 skipped: Sequence[tuple[str, str]] = ()) -> list[Path]:
    """Write the report files for ``records`` (sorted here) into ``out``; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    records = sorted(records, key=sort_key)
    written = [plot_wer_curves(records, out / FIGURES[0]), plot_target_wer_vs_minutes(records, out / FIGURES[1])]
    if any(r.fewshot for r in records):
        written.append(plot_adaptation_curve(records, out / ADAPTATION_FIGURE))
        with open(out / "fewshot.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["run", "method", "shots", "wer", "cer"])
            for r in records:
                for k, values in sorted(r.fewshot.items()):
                    writer.writerow([r.name, r.method, f"{k:g}", values.get("wer"), values.get("cer")])
        written.append(out / "fewshot.csv")
    with open(out / "runs.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=[key for key, _ in columns(records)] + ["origin", "path", "status"],
                                extrasaction="ignore")
        writer.writeheader()
        for r in records:
            writer.writerow({**raw_row(r), "origin": r.origin, "path": r.path, "status": r.status})
    written.append(out / "runs.csv")
    renderers = {"md": markdown_report, "html": html_report}
    for fmt in formats:
        path = out / f"report.{fmt}"
        path.write_text(renderers[fmt](records, list(skipped)), encoding="utf-8")
        written.append(path)
    return written


def build_parser() -> argparse.ArgumentParser:
    parser = tool_parser("compare", __doc__)
    parser.add_argument("runs", nargs="*", type=Path, help="run dirs or folders of run dirs")
    parser.add_argument("--out", type=Path, default=Path("report"), help="output folder (default: report/)")
    parser.add_argument("--wandb-project", help="also read the runs of this W&B project (entity/project)")
    parser.add_argument("--format", nargs="+", choices=["md", "html"], default=["md", "html"], dest="formats")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        records, skipped = discover(args.runs)
        if args.wandb_project:
            records += load_wandb_project(args.wandb_project)
    except (FileNotFoundError, RuntimeError) as err:
        print(f"error: {err}")
        return 2
    for path, reason in skipped:
        log.warning("skipped run %s: %s", path, reason)
    if not records:
        print("error: no runs found in " + (", ".join(map(str, args.runs)) or "(no paths given)"))
        return 1
    written = write_report(records, args.out, args.formats, skipped)
    print(f"compared {len(records)} runs ({len(skipped)} skipped); wrote " + ", ".join(str(p) for p in written))
    return 0
