"""Run directories keep everything (issue 11, items 3, 4, 5, 14, 18): metrics history and one W&B run
across resumes, ``--ckpt_path last`` semantics, ``latest`` only at runs with a checkpoint, atomic
``config.yaml`` and no stale temporary files, ``last.ckpt`` = the final state, best-checkpoint ties."""

from __future__ import annotations

import csv
import json
import os
import resource
import signal
import subprocess
import time

import pytest
import pytorch_lightning as pl
import torch

from experiments.runs import checkpoint_callbacks
from tests.cli_helpers import REPO, callbacks_yaml, cli_command, cli_env, fit_in_process, run_cli, tiny_quickstart

pytestmark = pytest.mark.slow


@pytest.fixture
def config(tmp_path):
    return tiny_quickstart(tmp_path / "work")


def fit(config, tmp_path, *args, run_name="r"):
    base = ["--config", config, "--runs_dir", tmp_path / "runs", "--wandb", "false", "--checkpoint_every_n_steps", 2]
    return fit_in_process([*base, *(["--run_name", run_name] if run_name else []), *args], tmp_path)


def metric_steps(run, column: str) -> list[int]:
    with open(run / "metrics.csv", newline="") as f:
        return [int(float(row["step"])) for row in csv.DictReader(f) if row.get(column)]


@pytest.mark.parametrize("every", [2, 100], ids=["batch-end-checkpoints", "train-end-checkpoints"])
def test_metrics_csv_keeps_the_whole_history_across_resumes(config, tmp_path, every):
    for steps in (2, 4, 6):  # one run, resumed twice, from checkpoints saved at a batch end / at train end
        resume = ["--ckpt_path", "last"] if steps > 2 else []
        assert fit(config, tmp_path, "--trainer.max_steps", steps, "--checkpoint_every_n_steps", every, *resume) == 0
    # every step once, at its own step (an uninterrupted run logs the same), nothing of earlier sessions lost
    assert metric_steps(tmp_path / "runs/quickstart/r", "train/loss_step") == [0, 1, 2, 3, 4, 5]


def test_one_wandb_run_across_resumes(config, tmp_path):
    """Separate processes, as real resumes and SLURM requeues are (W&B offline)."""
    base = ["fit", "--config", config, "--runs_dir", tmp_path / "runs", "--run_name", "r"]
    run_cli([*base, "--trainer.max_steps", 2], cwd=tmp_path)
    time.sleep(1.0)  # W&B names offline folders by the second
    run_cli([*base, "--ckpt_path", "last", "--trainer.max_steps", 4], cwd=tmp_path)
    run = tmp_path / "runs/quickstart/r"
    offline = sorted((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 2  # one folder per process, one W&B run id: `wandb sync` continues the same run
    ids = {p.name.rsplit("-", 1)[-1] for p in offline}
    assert len(ids) == 1 and ids == {(run / "wandb_id").read_text().strip()}


def test_ckpt_path_last_without_a_checkpoint_is_an_error(config, tmp_path, capsys):
    assert fit(config, tmp_path, "--ckpt_path", "last", "--trainer.max_steps", 2, run_name=None) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("speechxfer: --ckpt_path last: no checkpoint to resume from") and len(err) <= 5
    assert "last_if_any" in err[0]
    assert not list((tmp_path / "runs").rglob("*.ckpt"))


def test_last_if_any_starts_fresh_then_resumes(config, tmp_path):
    assert fit(config, tmp_path, "--ckpt_path", "last_if_any", "--trainer.max_steps", 2) == 0
    assert fit(config, tmp_path, "--ckpt_path", "last_if_any", "--trainer.max_steps", 4) == 0
    last = torch.load(tmp_path / "runs/quickstart/r/checkpoints/last.ckpt", weights_only=True)
    assert last["global_step"] == 4
    assert metric_steps(tmp_path / "runs/quickstart/r", "train/loss_step") == [0, 1, 2, 3]  # resumed, not restarted


def test_latest_is_repointed_only_at_a_run_with_a_checkpoint(config, tmp_path):
    assert fit(config, tmp_path, "--trainer.max_steps", 2, run_name="good") == 0
    fail = callbacks_yaml(tmp_path / "fail.yaml", [{"class_path": "tests.cli_helpers.RaiseAtStep",
                                                    "init_args": {"step": 1}}])
    with pytest.raises(RuntimeError, match="RaiseAtStep"):  # fails before its first checkpoint (step 2)
        fit(config, tmp_path, "--config", fail, "--trainer.max_steps", 2, run_name="failed")
    assert os.readlink(tmp_path / "runs/quickstart/latest") == "good"
    assert fit(config, tmp_path, "--trainer.max_steps", 2, run_name="next") == 0
    assert os.readlink(tmp_path / "runs/quickstart/latest") == "next"


def test_last_ckpt_holds_the_final_state(config, tmp_path):
    assert fit(config, tmp_path, "--trainer.max_steps", 5) == 0  # checkpoint every 2 steps: 2, 4 ... and 5
    run = tmp_path / "runs/quickstart/r"
    assert torch.load(run / "checkpoints/last.ckpt", weights_only=True)["global_step"] == 5
    assert json.loads((run / "summary.json").read_text())["global_step"] == 5


def _limit_file_size(limit: int):
    def preexec() -> None:  # writes past `limit` bytes fail with EFBIG, as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def test_disk_full_keeps_config_yaml_and_leaves_no_temp_files(config, tmp_path):
    assert fit(config, tmp_path, "--trainer.max_steps", 2) == 0
    run = tmp_path / "runs/quickstart/r"
    before = (run / "config.yaml").read_text()
    (run / ".summary.json.k1l2m3n4.tmp.json").write_text("{")  # left by a writer killed earlier
    (run / "checkpoints/.last.ckpt.a1b2c3d4.tmp.ckpt").write_bytes(b"PK")
    args = ["fit", "--config", config, "--runs_dir", tmp_path / "runs", "--run_name", "r", "--wandb", "false",
            "--ckpt_path", "last", "--trainer.max_steps", 4]
    proc = subprocess.run(cli_command(args), cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=300,
                          preexec_fn=_limit_file_size(len(before) - 400))  # config.yaml cannot be written
    assert proc.returncode != 0
    assert (run / "config.yaml").read_text() == before  # not 0 bytes, not half a file
    leftovers = [p.name for p in [*run.iterdir(), *(run / "checkpoints").iterdir()] if p.name.startswith(".")]
    assert leftovers == []
    summary = json.loads((run / "summary.json").read_text())  # not the previous session's "finished"
    assert summary["status"] == "failed" and "File too large" in summary["error"]


class ScriptedMetrics(pl.LightningModule):
    """Each validation logs the next (wer, cer, loss) of ``script`` for the target domain."""

    def __init__(self, script):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.script, self.calls = script, 0

    def training_step(self, batch, batch_idx):
        return (self.w - 1).pow(2).sum()

    def validation_step(self, batch, batch_idx):
        wer, cer, loss = self.script[min(self.calls, len(self.script) - 1)]
        self.log_dict({"val/target/wer": wer, "val/target/cer": cer, "val/target/loss": loss})

    def on_validation_epoch_end(self):
        self.calls += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_best_checkpoint_breaks_wer_ties_by_cer_then_loss(tmp_path):
    script = [(1.0, 1.0, 5.0), (1.0, 0.8, 4.0), (1.0, 0.54, 3.0), (1.0, 0.54, 2.0), (1.0, 0.6, 1.0)]
    data = torch.utils.data.DataLoader(torch.zeros(4, 1), batch_size=2)
    trainer = pl.Trainer(max_steps=10, val_check_interval=2, check_val_every_n_epoch=None, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=checkpoint_callbacks(tmp_path, "val/target/wer", 100), accelerator="cpu")
    trainer.fit(ScriptedMetrics(script), data, data)
    best = sorted(p.name for p in tmp_path.glob("checkpoints/best-*.ckpt"))
    assert best == ["best-8.ckpt"]  # WER ties throughout; CER 0.54 twice; then the lower loss


def test_latest_follows_a_run_under_a_relative_runs_dir(tmp_path, monkeypatch):
    from pathlib import Path

    from experiments.cli import checkpoint_io

    monkeypatch.chdir(tmp_path)
    run = Path("runs/quickstart/v1")  # the default --runs_dir is relative; Lightning saves to absolute paths
    (io,) = checkpoint_io({}, run)
    io.save_checkpoint({"state_dict": {"w": torch.zeros(1)}}, tmp_path / run / "checkpoints" / "last.ckpt")
    assert os.readlink(tmp_path / "runs/quickstart/latest") == "v1"
