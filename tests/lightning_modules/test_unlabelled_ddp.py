"""Self-training and test-time adaptation end to end: 2-rank CPU DDP, and an exact resume after SIGKILL.

- ``PseudoLabelCTC`` under 2-process DDP (``demo_pseudo_label.yaml`` on tiny corpora): each rank pseudo-labels
  its own target utterances (no utterance on both ranks), replicas -- teacher included -- end bitwise equal.
- A ``PseudoLabelCTC`` run SIGKILLed mid-epoch and resumed with ``--ckpt_path last`` ends equal to an
  uninterrupted one: student, EMA teacher, teacher rounds, optimizer; every step saw the same batch.
- ``speechxfer test --tta.method suta`` on 2 ranks reports the same WER/CER/loss as on 1 (each utterance
  is adapted alone, whichever rank holds it).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from experiments.cli import build_cli
from tests.cli_helpers import (
    CPU_DDP,
    EXPERIMENTS,
    REPO,
    callbacks_yaml,
    cli_command,
    in_process_cli,
    load_ckpt,
    read_metrics,
    read_steps,
    run_cli,
    shared_quickstart_run,
    shared_workdir,
    tiny_config,
)
from tests.experiments.test_cli_resume import run_until_killed

pytestmark = pytest.mark.slow

MAX_STEPS = 6
PSEUDO_LABEL = {  # no init_from: the tiny corpora's tokenizer is not the quickstart model's
    "model": {"init_args": {"init_from": None, "ema_decay": 0.5, "refresh_every_n_steps": 3}},
    "trainer": {"max_epochs": -1, "check_val_every_n_epoch": 1000, "log_every_n_steps": 1},
    "data": {"init_args": {"max_duration": 3.0}},
}
DUMP = {"class_path": "tests.cli_helpers.DumpTrainState"}


def mid_epoch(after: int):
    """A ``last.ckpt`` past step ``after``, taken mid-epoch (the paired sampler has consumed batches)."""
    def check(ckpt: dict) -> bool:
        progress = ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]
        batches = ckpt["DomainAdaptationDataModule"]["train_sampler"]["batches"]
        return ckpt["global_step"] > after and not progress["is_last_batch"] and batches > 0
    return check


@pytest.fixture(scope="module")
def quickstart_ckpt(tmp_path_factory) -> Path:
    return shared_quickstart_run(tmp_path_factory) / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def config(quickstart_ckpt, tmp_path_factory) -> Path:
    work = shared_workdir(tmp_path_factory) / "pseudo_label"
    return tiny_config(EXPERIMENTS / "demo_pseudo_label.yaml", work, ckpt=quickstart_ckpt, all_data=True,
                       overrides=PSEUDO_LABEL)


def fit_args(config: Path, runs_dir: Path, name: str, steps: int = MAX_STEPS) -> list:
    return ["fit", "--config", config, "--runs_dir", runs_dir, "--run_name", name, "--wandb", "false",
            "--trainer.max_steps", steps, "--checkpoint_every_n_steps", 1]


def test_pseudo_labels_per_rank_and_identical_replicas(config: Path, tmp_path: Path):
    run_cli([*fit_args(config, tmp_path, "ddp"), *CPU_DDP, "--config", callbacks_yaml(tmp_path / "cb.yaml", [DUMP])],
            cwd=tmp_path)
    run = tmp_path / "demo_pseudo_label" / "ddp"
    rank0, rank1 = (torch.load(run / f"train_state_rank{r}.pt") for r in (0, 1))
    assert any(name.startswith("teacher.") for name in rank0["params"])
    for name, value in rank0["params"].items():
        assert torch.equal(value, rank1["params"][name]), f"replicas diverged at {name}"
    steps0, steps1 = read_steps(run, 0), read_steps(run, 1)
    assert sorted(steps0) == sorted(steps1) == list(range(MAX_STEPS))
    for step in steps0:  # ids = source + target utterances of the step: each rank transcribes its own
        assert not set(steps0[step]["ids"]) & set(steps1[step]["ids"]), f"ranks shared utterances at step {step}"
    metrics = read_metrics(run)
    assert {"train/pl_kept_fraction_step", "train/pl_teacher_confidence_step", "train/pl_loss_step",
            "train/pl_cer", "train/pl_teacher_refreshes"} <= set(metrics)
    ckpt = load_ckpt(run / "checkpoints" / "last.ckpt")
    assert int(ckpt["state_dict"]["teacher_refreshes"]) == MAX_STEPS // 3


def test_resume_mid_epoch_equals_an_uninterrupted_run(config: Path, tmp_path: Path):
    dump = callbacks_yaml(tmp_path / "cb.yaml", [DUMP])
    throttled = callbacks_yaml(tmp_path / "throttle.yaml", [
        DUMP, {"class_path": "tests.cli_helpers.Throttle", "init_args": {"after_step": 3, "seconds": 1.5}}])
    run_cli([*fit_args(config, tmp_path, "a"), "--config", dump], cwd=tmp_path)
    last_b = tmp_path / "demo_pseudo_label" / "b" / "checkpoints" / "last.ckpt"
    killed = run_until_killed([*fit_args(config, tmp_path, "b"), "--config", throttled], tmp_path, last_b,
                              mid_epoch(after=3))
    assert 3 < killed["global_step"] < MAX_STEPS
    run_cli([*fit_args(config, tmp_path, "b"), "--config", dump, "--ckpt_path", "last"], cwd=tmp_path)

    a, b = (load_ckpt(tmp_path / "demo_pseudo_label" / r / "checkpoints" / "last.ckpt") for r in "ab")
    assert a["global_step"] == b["global_step"] == MAX_STEPS
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], value, rtol=0, atol=1e-6, msg=f"weight {name}")
    assert int(a["state_dict"]["teacher_refreshes"]) == MAX_STEPS // 3
    for idx, state in a["optimizer_states"][0]["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(b["optimizer_states"][0]["state"][idx][key], value, rtol=0, atol=1e-6)
    steps_a, steps_b = read_steps(tmp_path / "demo_pseudo_label" / "a"), read_steps(tmp_path / "demo_pseudo_label" / "b")
    assert [steps_a[s]["ids"] for s in range(MAX_STEPS)] == [steps_b[s]["ids"] for s in range(MAX_STEPS)]


def test_tta_under_ddp_equals_one_process(quickstart_ckpt: Path, tmp_path: Path):
    args = ["test", "--config", str(EXPERIMENTS / "quickstart.yaml"), "--ckpt_path", str(quickstart_ckpt),
            "--runs_dir", str(tmp_path), "--wandb", "false", "--tta.method", "suta", "--tta.steps", "2",
            "--tta.lr", "0.001"]
    run_cli([*args, *CPU_DDP, "--run_name", "ddp"], cwd=REPO)
    ddp = read_metrics(tmp_path / "quickstart" / "ddp")
    with in_process_cli(cwd=REPO):
        metrics = build_cli([*args, "--run_name", "single"]).trainer.callback_metrics
        single = {k: float(v) for k, v in metrics.items()}
    for key in [f"test/{d}/{m}" for d in ("source", "target") for m in ("wer", "cer", "loss")]:
        assert ddp[key] == pytest.approx(single[key], rel=1e-5, abs=1e-6), key
    assert ddp["test/tta/utterances"] == single["test/tta/utterances"] == 30  # 15 + 15, each once over the ranks
    assert ddp["test/tta/audio_s"] == pytest.approx(single["test/tta/audio_s"], rel=1e-6)
    assert ddp["test/tta/objective_after"] == pytest.approx(single["test/tta/objective_after"], rel=1e-4)
    assert ddp["test/tta/extra_s_per_audio_s"] > 0
