"""RunSummary callback, run records (local + W&B offline) and the ``speechxfer compare`` report."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from pytorch_lightning import Callback, Trainer
from pytorch_lightning.demos.boring_classes import BoringDataModule, BoringModel

from callbacks.run_summary import RunSummary
from experiments import compare
from experiments.run_records import discover, load_local_run
from tests.conftest import FixedContract

# --- synthetic run directories --------------------------------------------------------------


def corpus(cls: str, **init_args) -> dict:
    return {"class_path": f"datamodules.{cls}", "init_args": init_args}


LIBRI = corpus("librispeech.LibriSpeechCorpus", root="demo", subsets=["train-clean-100"])
CV_DEV = corpus("commonvoice.CommonVoiceCorpus", root="demo", locale="en", split="dev")


def cv_train(minutes):
    return corpus("commonvoice.CommonVoiceCorpus", root="demo", locale="en", split="train", max_minutes=minutes)


def write_run(run_dir: Path, model: str, data: dict, curves: dict[str, list[float]], summary: dict | None) -> Path:
    """A run dir like ``speechxfer fit`` writes: config.yaml, metrics.csv (train + val rows), summary.json."""
    run_dir.mkdir(parents=True)
    backbone = {"class_path": "lightning_modules.backbones.scratch.ScratchBackbone"}
    config = {"model": {"class_path": f"lightning_modules.{model}", "init_args": {"backbone": backbone}}, "data": data}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    columns = ["epoch", "step", "train/loss", *curves]
    with open(run_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        n = len(next(iter(curves.values())))
        for i in range(n):
            step = 10 * (i + 1)
            writer.writerow({"epoch": i, "step": step - 1, "train/loss": 5.0 - i})
            writer.writerow({"epoch": i, "step": step, **{k: v[i] for k, v in curves.items()}})
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


@pytest.fixture
def three_runs(tmp_path: Path) -> list[Path]:
    runs = tmp_path / "runs"
    finetune = write_run(
        runs / "finetune" / "v1", "finetune.FineTuneCTC",
        corpus("asr.ASRDataModule", domain="target", train=cv_train(10), val={"target": CV_DEV}),
        {"val/target/wer": [0.9, 0.4, 0.5], "val/target/cer": [0.5, 0.2, 0.25]},
        {"method": "finetune", "backbone": {"name": "wav2vec2_base"}, "labelled_target_minutes": 10,
         "data": {"source": "LibriSpeech 100h", "target": "CommonVoice en ≤10 min"},
         "trainable_params": 94_000_000, "wall_time_s": 3725.0, "status": "finished",
         "best": {"val/target/wer": {"value": 0.4, "step": 20}, "val/target/cer": {"value": 0.2, "step": 20}}},
    )
    dann = write_run(  # killed before summary.json: everything derived from config.yaml + metrics.csv
        runs / "dann" / "v1", "dann.DANNCTC",
        corpus("domain.DomainAdaptationDataModule", source_train=LIBRI, target_train=cv_train(None),
               target_labels=False, val={"source": LIBRI, "target": CV_DEV}),
        {"val/source/wer": [0.5, 0.3, 0.2], "val/target/wer": [0.8, 0.6, 0.35]},
        None,
    )
    frozen = write_run(
        runs / "frozen" / "v1", "frozen.FrozenFeatureCTC",
        corpus("asr.ASRDataModule", train=LIBRI, val={"source": LIBRI}),
        {"val/source/wer": [0.7, 0.6, 0.55], "val/source/cer": [0.4, 0.3, 0.31]},
        {"method": "frozen", "backbone": {"name": "wav2vec2_base"}, "trainable_params": 2_000, "wall_time_s": 60,
         "best": {"val/source/wer": {"value": 0.55, "step": 30}, "val/source/cer": {"value": 0.3, "step": 20}}},
    )
    return [finetune, dann, frozen]


def table_rows(report_md: str) -> list[dict[str, str]]:
    lines = [line for line in report_md.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def assert_real_image(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 10  # axes, text, lines: not one colour


# --- records ---------------------------------------------------------------------------------


def test_local_run_without_summary_is_derived_from_metrics_and_config(three_runs):
    record = load_local_run(three_runs[1])
    assert record.method == "DANNCTC" and record.backbone == "ScratchBackbone"
    assert record.best == pytest.approx({"val/source/wer": 0.2, "val/target/wer": 0.35})
    assert record.curves["val/target/wer"] == [(10, 0.8), (20, 0.6), (30, 0.35)]
    assert record.source_data == "LibriSpeech train-clean-100"
    assert record.target_data == "CommonVoice en/train (unlabelled)"  # the datamodule's describe(), as in summary.json
    assert record.labelled_target_minutes == 0.0  # DANN without target labels


def test_summary_takes_precedence_over_derived_values(three_runs):
    record = load_local_run(three_runs[0])
    assert (record.method, record.backbone, record.labelled_target_minutes) == ("finetune", "wav2vec2_base", 10.0)
    assert record.best["val/target/wer"] == 0.4 and record.trainable_params == 94_000_000
    assert record.target_data == "CommonVoice en ≤10 min"


def test_discover_skips_unreadable_runs_and_counts_them(three_runs, tmp_path):
    broken = tmp_path / "runs" / "broken" / "v1"
    broken.mkdir(parents=True)
    (broken / "summary.json").write_text("{not json")
    (tmp_path / "runs" / "dann" / "latest").symlink_to("v1")  # written by experiments.runs: not a second run
    records, skipped = discover([tmp_path / "runs"])
    assert sorted(r.name for r in records) == ["dann/v1", "finetune/v1", "frozen/v1"]
    assert len(skipped) == 1 and skipped[0][0].endswith("broken/v1") and "JSON" in skipped[0][1]


# --- report ------------------------------------------------------------------------------------


def test_compare_writes_table_and_plots(three_runs, tmp_path):
    out = tmp_path / "report"
    assert compare.main([str(p) for p in three_runs] + ["--out", str(out)]) == 0
    rows = table_rows((out / "report.md").read_text())
    assert len(rows) == 3
    by_method = {row["method"]: row for row in rows}
    assert by_method["finetune"]["target WER %"] == "40.00"
    assert by_method["finetune"]["target CER %"] == "20.00"
    assert by_method["finetune"]["wall time"] == "1:02:05"
    assert by_method["finetune"]["trainable params"] == "94.00M"
    assert by_method["DANNCTC"]["target WER %"] == "35.00"
    assert by_method["DANNCTC"]["source WER %"] == "20.00"
    assert by_method["frozen"]["source WER %"] == "55.00" and by_method["frozen"]["target WER %"] == ""
    # runs with a target domain first, each part by best WER
    assert [row["method"] for row in rows] == ["DANNCTC", "finetune", "frozen"]
    html = (out / "report.html").read_text()
    assert html.count("<tr>") == 4 and "wer_curves.png" in html
    with open(out / "runs.csv") as f:
        assert {r["method"]: float(r["target_wer"] or "nan") for r in csv.DictReader(f)}["DANNCTC"] == 0.35
    for name in compare.FIGURES:
        assert_real_image(out / name)


def test_compare_without_runs_fails_clearly(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert compare.main([str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 1
    assert "no runs found" in capsys.readouterr().out
    assert compare.main([str(tmp_path / "missing")]) == 2


def test_wandb_project_needs_credentials_offline(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert compare.main(["--wandb-project", "me/speechxfer", "--out", str(tmp_path / "r")]) == 2
    assert "W&B API needs network" in capsys.readouterr().out


def test_wandb_offline_folder_alone_is_a_counted_skip_inside_a_run_dir_part_of_it(tmp_path, monkeypatch, three_runs):
    """Offline W&B folders are not parsed (run_records docstring): alone, a skip saying where the data is."""
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = wandb.init(project="p", dir=str(tmp_path), name="dann/v7", tags=["method:dann", "backbone:scratch"],
                     config={"lr": 0.001}, settings=wandb.Settings(console="off", x_disable_stats=True))
    run.log({"val/target/wer": 0.5, "trainer/global_step": 10})
    run.finish()
    wandb.teardown()
    (run_dir,) = (tmp_path / "wandb").glob("offline-run-*")
    records, skipped = discover([tmp_path / "wandb"])
    assert records == [] and [path for path, _ in skipped] == [str(run_dir)]
    assert "speechxfer run dir" in skipped[0][1] and "wandb sync" in skipped[0][1]
    shutil.move(str(tmp_path / "wandb"), str(three_runs[1] / "wandb"))  # where `speechxfer fit` puts it
    records, skipped = discover([three_runs[1]])
    assert [r.name for r in records] == ["dann/v1"] and not skipped


# --- RunSummary ----------------------------------------------------------------------------------


class TinyASRLike(BoringModel):
    """BoringModel logging a fake ``val/source/wer`` that is lowest at the 2nd validation; first layer frozen."""

    def __init__(self, fail_at_step: int | None = None):
        super().__init__()
        self.backbone = torch.nn.Linear(32, 32)
        self.backbone.identity = "linear32"
        self.backbone.requires_grad_(False)
        self.fail_at_step = fail_at_step
        self.wers = iter([0.8, 0.3, 0.5, 0.4])  # validations at steps 2, 4, 6, 8

    def forward(self, x):
        return self.layer(self.backbone(x))

    def training_step(self, batch, batch_idx):
        if self.fail_at_step is not None and self.global_step >= self.fail_at_step:
            raise RuntimeError("boom")
        return super().training_step(batch, batch_idx)

    def on_validation_epoch_end(self):
        self.log("val/source/wer", 0.0 if self.trainer.sanity_checking else next(self.wers))
        self.log("val/source/loss", 1.0)


class UnfreezeAt(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            pl_module.backbone.requires_grad_(True)


class LabelledData(FixedContract, BoringDataModule):
    labelled_target_minutes = 7.5
    description = {"source": "boring", "target": None}


def fit_tiny(tmp_path: Path, model: TinyASRLike, max_steps: int = 8) -> Trainer:
    trainer = Trainer(default_root_dir=str(tmp_path), max_steps=max_steps, val_check_interval=2,
                      limit_train_batches=8, limit_val_batches=1, num_sanity_val_steps=1, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[RunSummary(), UnfreezeAt(3)])
    trainer.fit(model, datamodule=LabelledData())
    return trainer


def test_run_summary_records_best_metrics_params_and_data(tmp_path):
    fit_tiny(tmp_path, TinyASRLike())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["global_step"] == 8
    assert summary["method"] == "TinyASRLike"  # the module's class name, as in W&B tags and config-derived records
    assert summary["backbone"]["identity"] == "linear32" and summary["backbone"]["name"] == "Linear"
    assert summary["data"] == {"source": "boring", "target": None}
    assert summary["labelled_target_minutes"] == 7.5
    assert summary["best"]["val/source/wer"] == {"value": pytest.approx(0.3), "step": 4}
    assert "val/source/loss" not in summary["best"]
    assert summary["total_params"] == 32 * 32 + 32 + 32 * 2 + 2
    assert summary["trainable_params"] == summary["max_trainable_params"] == summary["total_params"]
    assert summary["wall_time_s"] > 0


def test_run_summary_exists_after_a_crash(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        fit_tiny(tmp_path, TinyASRLike(fail_at_step=5))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "boom" in summary["error"]
    assert summary["best"]["val/source/wer"] == {"value": pytest.approx(0.3), "step": 4}
    assert summary["max_trainable_params"] == summary["total_params"]  # unfrozen at step 3


def test_run_summary_state_survives_resume():
    callback = RunSummary()
    callback.best = {"val/target/wer": {"value": 0.2, "step": 100}}
    callback.max_trainable_params, callback.previous_wall_time_s = 10, 30.0
    restored = RunSummary()
    restored.load_state_dict(callback.state_dict())
    assert restored.best == callback.best and restored.max_trainable_params == 10
    assert restored.wall_time_s() == pytest.approx(30.0)


def test_test_runs_with_extra_decoders_get_side_by_side_columns(tmp_path):
    """``speechxfer test`` runs with ``eval_decoders``: test (greedy) and test_beam columns, percent, in order."""
    data = corpus("asr.ASRDataModule", domain="target", train=cv_train(1), test={"target": CV_DEV})
    write_run(tmp_path / "runs" / "study" / "c", "finetune.FineTuneCTC", data,
              {"test/target/wer": [0.25], "test/target/cer": [0.1], "test_beam/target/wer": [0.125]}, None)
    write_run(tmp_path / "runs" / "study" / "a", "CTCModule", data, {"test/target/wer": [0.5]}, None)
    records, skipped = discover([tmp_path / "runs"])
    by_name = {r.name: r for r in records}
    assert not skipped and by_name["study/c"].best_of("target", "wer", "test_beam") == 0.125
    written = compare.write_report(records, tmp_path / "report", ["md"])
    table = [line for line in (tmp_path / "report" / "report.md").read_text().splitlines() if line.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[-4:] == ["test target WER %", "test target CER %", "test beam target WER %", "wall time"]
    row_c = next(r for r in table if "study/c" in r)
    assert "| 25.00 | 10.00 | 12.50 |" in row_c
    rows = list(csv.DictReader(open(tmp_path / "report" / "runs.csv")))
    assert {r["run"]: r["test_beam/target/wer"] for r in rows} == {"study/c": "0.125", "study/a": ""}
    assert tmp_path / "report" / "report.md" in written
