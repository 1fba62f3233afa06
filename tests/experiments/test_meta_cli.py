"""End to end on the demo corpus: speechxfer fit (MetaCTC, joint baseline) -> test (few-shot curve into
summary.json) -> compare (adaptation curve) -> adapt (a held-out voice)."""

from __future__ import annotations

import csv
import json
import os

import pytest
import torch

from experiments.adapt import main as adapt_main
from experiments.compare import main as compare_main
from tests.cli_helpers import EXPERIMENTS, REPO, run_cli, shared_quickstart_run, shared_workdir, tiny_config

pytestmark = pytest.mark.slow
SHORT = {"trainer": {"max_epochs": -1, "max_steps": 2, "check_val_every_n_epoch": None, "val_check_interval": 2,
                     "log_every_n_steps": 1},
         "data": {"init_args": {"steps_per_epoch": 2, "test_shots": [0, 2], "num_workers": 0}}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    work, quickstart = shared_workdir(tmp_path_factory), shared_quickstart_run(tmp_path_factory)
    ckpt = quickstart / "checkpoints" / "last.ckpt"
    root = tmp_path_factory.mktemp("meta_runs")
    out = {}
    for name in ("demo_meta", "demo_meta_joint"):
        config = tiny_config(EXPERIMENTS / f"{name}.yaml", work / f"e2e_{name}", ckpt=ckpt, overrides=SHORT)
        run_cli(["fit", "--config", config, "--runs_dir", root, "--run_name", "r"])
        run = root / name / "r"
        run_cli(["test", "--config", run / "config.yaml", "--ckpt_path", run / "checkpoints" / "last.ckpt"])
        out[name] = run
    return out


def test_test_writes_the_fewshot_curve_into_the_fit_summary(runs):
    for name, run in runs.items():
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "finished" and "val/target/wer" in summary["best"]  # the fit's entries kept
        assert {"test/fewshot/k0/wer", "test/fewshot/k2/wer", "test/fewshot/k2/cer"} <= set(summary["test"]), name
        assert summary["method"] == ("MetaCTC" if name == "demo_meta" else "FineTuneCTC")


def test_compare_draws_the_adaptation_curve(runs, tmp_path):
    assert compare_main([*map(str, runs.values()), "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader(open(tmp_path / "fewshot.csv")))
    assert sorted((r["method"], r["shots"]) for r in rows) == [("FineTuneCTC", "0"), ("FineTuneCTC", "2"),
                                                              ("MetaCTC", "0"), ("MetaCTC", "2")]
    assert (tmp_path / "adaptation_curve.png").stat().st_size > 1000
    assert "## Few-shot adaptation" in (tmp_path / "report.md").read_text()


def test_adapt_a_held_out_voice_from_the_demo_data(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the data YAML names experiments/demo_corpus relative to the repository
    out = tmp_path / "voice.ckpt"
    ckpt = runs["demo_meta"] / "checkpoints" / "last.ckpt"
    assert adapt_main(["--ckpt", str(ckpt), "--data", "experiments/data/demo_meta.yaml", "--task", "e6176ecb",
                       "--shots", "2", "--out", str(out)]) == 0
    record = torch.load(out, weights_only=True)["speechxfer"]["adaptation"]
    assert record["task"].startswith("e6176ecb") and len(record["support"]) == 2 and record["groups"] == ["all"]
    assert os.path.getsize(out) < os.path.getsize(ckpt)  # no optimizer state
