"""2-process CPU DDP through the real CLI: fine-tuning with GradualUnfreezing, DANN, synced validation metrics.

Each training run dumps every rank's parameters and per-step batches (``tests.cli_helpers.DumpTrainState``):
replicas must end bitwise identical although each rank trained on different utterances and parameter
groups were unfrozen after DDP wrapped the model. A 2-process ``validate`` must report the same WER,
CER and loss as a single process on the same data (torchmetrics states summed across ranks).
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
    in_process_cli,
    load_ckpt,
    read_metrics,
    read_steps,
    run_cli,
    shared_quickstart_run,
    shared_workdir,
    tiny_config,
)

pytestmark = pytest.mark.slow

MAX_STEPS = 6
SHORT_RUN = {
    "trainer": {"max_epochs": -1, "check_val_every_n_epoch": 1000, "log_every_n_steps": 1},
    "data": {"init_args": {"max_duration": 3.0}},
}
DUMP = {"class_path": "tests.cli_helpers.DumpTrainState"}


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory) -> Path:
    return shared_quickstart_run(tmp_path_factory)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return shared_workdir(tmp_path_factory)


def ddp_fit(config: Path, runs_dir: Path, name: str) -> Path:
    """``speechxfer fit`` on 2 CPU processes; returns the run dir."""
    run_cli(["fit", "--config", config, *CPU_DDP, "--runs_dir", runs_dir, "--run_name", name, "--wandb", "false",
             "--trainer.max_steps", MAX_STEPS, "--checkpoint_every_n_steps", MAX_STEPS], cwd=runs_dir)
    return next(runs_dir.glob(f"*/{name}"))


def assert_replicas_identical(run: Path) -> tuple[dict, dict]:
    rank0, rank1 = (torch.load(run / f"train_state_rank{r}.pt") for r in (0, 1))
    assert rank0["global_step"] == rank1["global_step"] == MAX_STEPS
    assert rank0["params"].keys() == rank1["params"].keys()
    for name, value in rank0["params"].items():
        assert torch.equal(value, rank1["params"][name]), f"replicas diverged at {name}"
    steps0, steps1 = read_steps(run, 0), read_steps(run, 1)
    assert sorted(steps0) == sorted(steps1) == list(range(MAX_STEPS))
    for step in steps0:
        assert not set(steps0[step]["ids"]) & set(steps1[step]["ids"]), f"ranks shared utterances at step {step}"
        assert steps0[step]["trainable"] == steps1[step]["trainable"]
    return rank0, steps0


def test_finetune_with_gradual_unfreezing(quickstart_run: Path, work: Path, tmp_path: Path):
    source = quickstart_run / "checkpoints" / "last.ckpt"
    unfreeze = {"class_path": "callbacks.GradualUnfreezing",
                "init_args": {"unit": "step", "schedule": {0: ["head"], 2: ["top:1"], 4: ["all"]}}}
    config = tiny_config(EXPERIMENTS / "demo_finetune.yaml", work / "ddp_finetune", ckpt=source, all_data=True,
                         overrides={**SHORT_RUN, "callbacks": [unfreeze, DUMP]})
    run = ddp_fit(config, tmp_path, "ft")
    rank0, steps = assert_replicas_identical(run)

    head, top1, everything = (set(steps[s]["trainable"]) for s in (0, 2, 4))
    assert head < top1 < everything == set(rank0["params"])
    start = {k[len("backbone."):]: v for k, v in load_ckpt(source)["state_dict"].items() if k.startswith("backbone.")}
    late = [n for n in everything - top1 if n.startswith("backbone.")]
    assert late and all(not torch.equal(rank0["params"][n], start[n[len("backbone."):]]) for n in late), \
        "groups unfrozen at step 4 must have trained (their gradients synced by the callback)"


def test_dann(quickstart_run: Path, work: Path, tmp_path: Path):
    overrides = {**SHORT_RUN, "callbacks": [DUMP], "data": {"init_args": {"max_duration": 3.0}}}  # both sides
    source = quickstart_run / "checkpoints" / "last.ckpt"
    config = tiny_config(EXPERIMENTS / "demo_dann.yaml", work / "ddp_dann", ckpt=source, all_data=True,
                         overrides=overrides)
    run = ddp_fit(config, tmp_path, "dann")
    rank0, steps = assert_replicas_identical(run)
    assert any(n.startswith("domain_classifier.") for n in rank0["params"])
    assert all(len(s["ids"]) >= 2 for s in steps.values()), "each step pairs source and target utterances"
    metrics = read_metrics(run)
    assert {"train/domain_loss_step", "train/ctc_loss_step", "train/lambda"} <= set(metrics)
    assert load_ckpt(run / "checkpoints" / "last.ckpt")["global_step"] == MAX_STEPS


def test_validation_metrics_synced_across_ranks(quickstart_run: Path, tmp_path: Path):
    ckpt = quickstart_run / "checkpoints" / "last.ckpt"
    args = ["validate", "--config", str(EXPERIMENTS / "quickstart.yaml"), "--ckpt_path", str(ckpt),
            "--runs_dir", str(tmp_path), "--wandb", "false"]
    run_cli([*args, *CPU_DDP, "--run_name", "ddp"], cwd=REPO)
    ddp = read_metrics(tmp_path / "quickstart" / "ddp")

    with in_process_cli(cwd=REPO):  # the demo corpus paths are relative to the repository
        metrics = build_cli([*args, "--run_name", "single"]).trainer.callback_metrics
        single = {k: float(v) for k, v in metrics.items()}

    keys = [f"val/{d}/{m}" for d in ("source", "target") for m in ("wer", "cer", "loss")]
    for key in keys:
        assert ddp[key] == pytest.approx(single[key], rel=1e-5, abs=1e-6), key
    assert all(0.0 < single[f"val/{d}/cer"] < 1.0 for d in ("source", "target")), \
        f"a degenerate model (empty or perfect output) would not test the sync: {single}"
