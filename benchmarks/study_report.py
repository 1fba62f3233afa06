"""``report.md`` of ``transfer_study.py``: test table, expected orderings, compare table, commands."""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path

EXPECTED = [  # (better, worse, claim) on target WER, from the literature
    ("c_finetune", "a_scratch", "fine-tuning the source model beats training from scratch on the same target subset"),
    ("e_dann", "b_source_only", "DANN with unlabelled target beats the source-only model on the target"),
    ("g_self_train", "b_source_only", "pseudo-label self-training on unlabelled target beats the source-only model"),
    ("h_dann_self_train", "e_dann", "self-training after DANN beats DANN alone"),
    ("i_source_tta", "b_source_only", "test-time adaptation (SUTA) lowers the source-only model's target WER"),
]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def pct(value: float | None) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def test_table(results: dict) -> list[str]:
    """Greedy test WER/CER per method, plus beam search + LM WER/CER (``test_beam/*``) when logged."""
    beam = any("test_beam/target/wer" in r["test"] for r in results.values())
    extra = " target WER % beam+LM | target CER % beam+LM | source WER % beam+LM |" if beam else ""
    lines = [f"| method | target WER % | target CER % | source WER % | source CER % |{extra} steps | "
             "trainable params | fit wall s | TTA s per audio s |", "|---" * (9 + 3 * beam) + "|"]
    for r in results.values():
        t = r["test"]
        params, wall = r.get("trainable_params"), r.get("fit_wall_s")
        params = "" if params is None else f"{params / 1e3:.0f}k"
        wall = "" if wall is None else f"{wall:.0f}"
        cells = [pct(t.get(f"test/{d}/{k}")) for d in ("target", "source") for k in ("wer", "cer")]
        if beam:
            cells += [pct(t.get(f"test_beam/{m}")) for m in ("target/wer", "target/cer", "source/wer")]
        tta = r.get("tta_s_per_audio_s")
        tta = "" if tta is None else f"{tta:.3f}"
        lines.append(f"| {r['label']} | " + " | ".join(cells) + f" | {r.get('steps', '')} | {params} | {wall} | {tta} |")
    return lines


def orderings(results: dict) -> list[str]:
    """One line per expected ordering: shown / not shown, with WER and CER."""
    lines = []
    for better, worse, claim in EXPECTED:
        if better not in results or worse not in results:
            continue
        b, w = results[better]["test"], results[worse]["test"]
        verdicts = []
        for family, kind in (("test", "wer"), ("test", "cer"), ("test_beam", "wer")):
            key = f"{family}/target/{kind}"
            if key in b and key in w:
                name = f"target {kind.upper()}" + (" beam+LM" if family == "test_beam" else "")
                shown = "shown" if b[key] < w[key] else "NOT shown"
                verdicts.append(f"{name} {pct(b[key])} vs {pct(w[key])} ({shown})")
        lines.append(f"- {results[better]['label']} < {results[worse]['label']}: {claim}. " + "; ".join(verdicts))
    return lines


def compare_table(out: Path, folder: str = "compare") -> list[str]:
    report = out / folder / "report.md"
    if not report.is_file():
        return ["(compare report missing)"]
    return [line for line in report.read_text(encoding="utf-8").splitlines() if line.startswith("|")]


def write_study_report(out: Path, study: dict) -> Path:
    s = study["settings"]
    corpus = ("generated tone-speech pair (`benchmarks/tone_pair.py`): source LibriSpeech layout, FLAC 16 kHz; "
              f"target Common Voice layout, MP3 48 kHz, voice shift {s['shift']} (pitch x{1 + 0.25 * s['shift']:.3f}"
              f" + noise); {s['train']}/{s['dev']}/{s['test']} train/dev/test utterances per domain"
              if study["corpus"] == "tone" else "experiments/demo_corpus (espeak-ng source vs flite target)")
    lines = [
        "# speechxfer transfer study", "",
        f"- corpus: {corpus}",
        f"- labelled target subset for (a), (c), (d): {s['target_minutes']:g} min "
        f"(`CommonVoiceCorpus(max_minutes=...)`); (e) sees the whole target train split WITHOUT labels",
        f"- budgets: about {s['source_steps']} optimizer steps for (b), (e) and {s['target_steps']} for (a), (c), (d), "
        f"in whole epochs (exact counts in the table); batches of <= {s['max_duration']:g} s audio; training "
        f"batches per epoch {study['epoch_steps']}; lr decay {s.get('decay', 'cosine')}; (e) from "
        f"{'the source model (b)' if s.get('dann_init') == 'source' else 'random init'}, "
        f"lambda_max {s.get('dann_lambda', 0.5)} (ganin schedule), {s.get('dann_level', 'utterance')}-level "
        "domain classifier",
        "- models: demo configs (scratch_demo.yaml ScratchEncoder 2xBiGRU-256 CTC; demo_finetune.yaml with its "
        "unfreezing schedule stretched to the budget; demo_frozen.yaml; demo_dann.yaml; demo_pseudo_label.yaml for "
        "(g) from (b) and (h) from (e), budget of (e); (i) = (b)'s checkpoint tested with SUTA, "
        f"{s.get('tta_steps')} steps, lr {s.get('tta_lr')}), seed 0",
        "- evaluation: `speechxfer test` on the LAST checkpoint of each run (fixed budget, no model selection), "
        "greedy CTC decoding" + (f"; and beam search (beam {s['beam_size']}) with the lexicon and a "
                                 f"{s.get('lm_order')}-gram LM of the source training transcripts (`OUT/lm/`), "
                                 f"lm_weight {s.get('lm_weight')}, word_score {s.get('word_score')}, same checkpoints"
                                 if s.get("beam_size", 0) > 0 else ""),
        f"- machine: {cpu_model()}, {os.cpu_count()} cores; total wall time {study['wall_s'] / 60:.1f} min", "",
        "## Test set results", "",
        *test_table(study["results"]), "",
        "## Expected orderings (target WER)", "",
        *(orderings(study["results"]) or ["- (not all methods were run)"]), "",
        "## `speechxfer compare` (best validation values during training)", "",
        *compare_table(out), "",
        *(["## `speechxfer compare` of the test runs (greedy and beam search + LM)", "",
           *compare_table(out, "compare_test"), ""] if (out / "compare_test").is_dir() else []),
        "Figures: [compare/wer_curves.png](compare/wer_curves.png), "
        "[compare/target_wer_vs_minutes.png](compare/target_wer_vs_minutes.png)", "",
    ]
    if study.get("notes"):
        lines += ["## Notes", "", *study["notes"], ""]
    lines += ["## Commands", "", "```bash", *study["commands"], "```", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
