"""``speechxfer compare`` ranks and labels runs by their headline metric (CER for no-space languages)."""

from __future__ import annotations

import json

from experiments import compare
from experiments.run_records import load_local_run


def summary_run(path, name: str, headline: str, best: dict[str, float]):
    run = path / name / "v1"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({
        "status": "finished", "method": "finetune", "headline_metric": headline,
        "best": {k: {"value": v, "step": 10} for k, v in best.items()}}))
    return load_local_run(run)


def test_cer_headline_runs_are_ranked_by_cer_and_labelled(tmp_path):
    ja_a = summary_run(tmp_path, "ja_a", "val/target/cer", {"val/target/wer": 0.9, "val/target/cer": 0.30})
    ja_b = summary_run(tmp_path, "ja_b", "val/target/cer", {"val/target/wer": 0.5, "val/target/cer": 0.40})
    en = summary_run(tmp_path, "en", "val/target/wer", {"val/target/wer": 0.2, "val/target/cer": 0.5})
    assert ja_a.headline_kind == "cer" and en.headline_kind == "wer"
    ordered = sorted([ja_b, en, ja_a], key=compare.sort_key)
    assert [r.name for r in ordered] == ["en/v1", "ja_a/v1", "ja_b/v1"]  # ja by CER (0.30 < 0.40), not WER
    out = tmp_path / "report"
    compare.write_report([ja_a, ja_b, en], out, formats=["md"])
    rows = [line for line in (out / "report.md").read_text().splitlines() if line.startswith("| ja_a")]
    assert rows and [c.strip() for c in rows[0].split("|")[1:-1]][-2] == "CER"
