"""SIGKILL ``speechxfer fit`` and resume with ``--ckpt_path last``: the result equals a run that never stopped.

Run A trains uninterrupted to ``MAX_STEPS``. Run B is the same command (``--run_name b``), SIGKILLed
twice and resumed each time:

1. once its ``last.ckpt`` is past the first unfreeze and was written after the LAST batch of an epoch
   (the trickiest resume point: the loaders have no length, so Lightning learned ``is_last_batch``);
2. at the next mid-epoch checkpoint (the epoch right after that resume: its batch counters must be
   right, or this second resume would replay the wrong batches);

then runs to ``MAX_STEPS``. GradualUnfreezing runs in step units, one stage before the kills and one
after. Final checkpoints must agree: step, epoch, weights, AdamW state, param groups
(``active_since_step``), callback state; and every step must have seen the same batch (utterance ids),
epoch, batch index and trainable set. Dropout is 0: Lightning does not checkpoint RNG states, so
dropout masks after a resume differ from an uninterrupted run (statistically equivalent, not equal).
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from tests.cli_helpers import (
    EXPERIMENTS,
    callbacks_yaml,
    cli_command,
    cli_env,
    load_ckpt,
    read_steps,
    run_cli,
    shared_workdir,
    tiny_config,
    wait_for,
)

pytestmark = pytest.mark.slow

MAX_STEPS = 12
UNFREEZE_1, UNFREEZE_2 = 3, 8
SCHEDULE = {0: ["head"], UNFREEZE_1: ["top:1"], UNFREEZE_2: ["all"]}
TINY_MODEL = {
    "model": {"init_args": {
        "backbone": {"init_args": {"n_mels": 40, "conv_channels": 8, "hidden": 32, "num_layers": 2,
                                   "kind": "bilstm", "subsampling": 4, "dropout": 0.0}},
        "dropout": 0.0, "warmup_steps": 2,
    }},
    "data": {"init_args": {"max_duration": 4.0, "num_buckets": 2}},  # ~4 batches per epoch
    "trainer": {"max_epochs": -1, "check_val_every_n_epoch": 1000, "log_every_n_steps": 1},
}


def callbacks(throttle_after: int | None = None) -> list[dict]:
    out = [{"class_path": "callbacks.GradualUnfreezing",
            "init_args": {"unit": "step", "schedule": SCHEDULE, "warmup_steps": 2}},
           {"class_path": "tests.cli_helpers.DumpTrainState"}]
    if throttle_after is not None:  # a kill window: sleep before every step from then on
        out.append({"class_path": "tests.cli_helpers.Throttle",
                    "init_args": {"after_step": throttle_after, "seconds": 1.5}})
    return out


def loop_position(ckpt: dict) -> tuple[int, bool, int]:
    """(global_step, is_last_batch, batches of the epoch the datamodule has consumed)."""
    progress = ckpt["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    return ckpt["global_step"], bool(progress["is_last_batch"]), ckpt["ASRDataModule"]["train_sampler"]["batches"]


def at_epoch_end(after: int) -> Callable[[dict], bool]:
    return lambda ckpt: loop_position(ckpt)[0] >= after and loop_position(ckpt)[1]


def mid_epoch(after: int) -> Callable[[dict], bool]:
    return lambda ckpt: loop_position(ckpt)[0] > after and not loop_position(ckpt)[1] and loop_position(ckpt)[2] > 0


def run_until_killed(args: list[str], cwd: Path, last: Path, condition: Callable[[dict], bool]) -> dict:
    """Start ``speechxfer ARGS``; SIGKILL it once ``last`` satisfies ``condition``; the checkpoint then."""
    proc = subprocess.Popen(cli_command(args), cwd=cwd, env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: last.is_file() and condition(load_ckpt(last)), proc=proc, timeout=450)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return load_ckpt(last)  # loads fine: last.ckpt is replaced atomically, never left partial


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    work = shared_workdir(tmp_path_factory) / "resume"
    config = tiny_config(EXPERIMENTS / "scratch_demo.yaml", work, all_data=True, overrides=TINY_MODEL)
    runs_dir = tmp_path_factory.mktemp("resume_runs")
    common = ["fit", "--config", config, "--runs_dir", runs_dir, "--trainer.max_steps", MAX_STEPS,
              "--checkpoint_every_n_steps", 1, "--wandb", "false"]
    plain = ["--config", callbacks_yaml(work / "callbacks.yaml", callbacks())]

    run_a = subprocess.Popen(cli_command([*common, *plain, "--run_name", "a"]), cwd=runs_dir, env=cli_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last_b = runs_dir / "scratch_demo" / "b" / "checkpoints" / "last.ckpt"
    kill_1 = run_until_killed(
        [*common, "--config", callbacks_yaml(work / "throttle_1.yaml", callbacks(UNFREEZE_1 + 1)), "--run_name", "b"],
        runs_dir, last_b, at_epoch_end(after=UNFREEZE_1 + 1))
    step_1 = kill_1["global_step"]
    kill_2 = run_until_killed(
        [*common, "--config", callbacks_yaml(work / "throttle_2.yaml", callbacks(step_1)), "--run_name", "b",
         "--ckpt_path", "last"],
        runs_dir, last_b, mid_epoch(after=step_1))
    run_cli([*common, *plain, "--run_name", "b", "--ckpt_path", "last"], cwd=runs_dir)
    out_a, _ = run_a.communicate(timeout=500)
    assert run_a.returncode == 0, out_a[-6000:]
    return {"kills": [kill_1, kill_2], "a": runs_dir / "scratch_demo" / "a", "b": runs_dir / "scratch_demo" / "b"}


def final(run_dir: Path) -> dict:
    return load_ckpt(run_dir / "checkpoints" / "last.ckpt")


def unfreeze_state(ckpt: dict) -> dict:
    return next(v for k, v in ckpt["callbacks"].items() if k.startswith("GradualUnfreezing"))


def test_kills_hit_an_epoch_end_then_mid_epoch_between_the_unfreezes(runs):
    (step_1, last_1, _), (step_2, last_2, batches_2) = map(loop_position, runs["kills"])
    assert UNFREEZE_1 < step_1 < step_2 < MAX_STEPS, (step_1, step_2)
    assert last_1 and not last_2 and batches_2 > 0
    for ckpt in runs["kills"]:
        assert {"state_dict", "optimizer_states", "loops", "callbacks", "lr_schedulers"} <= set(ckpt)
        assert unfreeze_state(ckpt)["applied"] == [k for k in sorted(SCHEDULE) if k < ckpt["global_step"]]
    assert step_1 < UNFREEZE_2, "a stage must remain to be unfrozen after the resumes"


def test_every_step_saw_the_same_batch_epoch_and_trainable_set(runs):
    a, b = read_steps(runs["a"]), read_steps(runs["b"])
    assert sorted(a) == sorted(b) == list(range(MAX_STEPS))
    for step in range(MAX_STEPS):
        for key in ("ids", "epoch", "batch_idx", "trainable"):
            assert b[step][key] == a[step][key], f"step {step}: {key} differs after resume"
    assert a[0]["epoch"] < a[MAX_STEPS - 1]["epoch"], "the run must cross epochs"
    head_only, top_1, everything = (set(a[s]["trainable"]) for s in (0, UNFREEZE_1, UNFREEZE_2))
    assert head_only < top_1 < everything


def test_resumed_run_equals_uninterrupted_run(runs):
    a, b = final(runs["a"]), final(runs["b"])
    assert (a["global_step"], a["epoch"]) == (b["global_step"], b["epoch"])
    assert a["global_step"] == MAX_STEPS
    assert a["ASRDataModule"] == b["ASRDataModule"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for name, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], value, rtol=0, atol=1e-6, msg=f"weight {name}")
    assert unfreeze_state(a) == unfreeze_state(b)
    assert unfreeze_state(a)["applied"] == sorted(SCHEDULE)


def test_optimizer_and_schedule_state_equal(runs):
    a, b = final(runs["a"]), final(runs["b"])
    opt_a, opt_b = a["optimizer_states"][0], b["optimizer_states"][0]
    keys = ("name", "lr", "base_lr", "active_since_step", "warmup_steps", "params")
    assert [{k: g[k] for k in keys} for g in opt_a["param_groups"]] == \
        [{k: g[k] for k in keys} for g in opt_b["param_groups"]]
    since = {g["name"]: g["active_since_step"] for g in opt_a["param_groups"]}
    assert since["head"] == 0 and sorted(set(since.values())) == [0, UNFREEZE_1, UNFREEZE_2], since
    assert opt_a["state"].keys() == opt_b["state"].keys()
    for idx, state in opt_a["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(opt_b["state"][idx][key], value, rtol=0, atol=1e-6, msg=f"param {idx} {key}")
    assert a["lr_schedulers"] == b["lr_schedulers"]


def test_trainable_set_after_the_last_resume(runs):
    a = torch.load(runs["a"] / "train_state_rank0.pt")
    b = torch.load(runs["b"] / "train_state_rank0.pt")  # written by the last resumed process
    assert a["global_step"] == b["global_step"] == MAX_STEPS
    assert a["requires_grad"] == b["requires_grad"] and all(a["requires_grad"].values())


def saved_after_last_batch(is_last_batch: bool = True) -> dict:
    """The loop state Lightning checkpoints in ``on_train_batch_end`` of batch 4 of epoch 0 (4 batches)."""
    batches = {"ready": 4, "completed": 3, "started": 4, "processed": 4}
    epochs = {"ready": 1, "completed": 0, "started": 1, "processed": 0}
    return {"epoch": 0, "ASRDataModule": {"train_sampler": {"epoch": 0, "batches": 4, "world_size": 1, "seed": 0}},
            "loops": {"fit_loop": {
                "epoch_loop.state_dict": {"_batches_that_stepped": 3},
                "epoch_loop.batch_progress": {"total": dict(batches), "current": dict(batches),
                                              "is_last_batch": is_last_batch},
                "epoch_progress": {"total": dict(epochs), "current": dict(epochs)}}}}


def test_epoch_end_checkpoint_resumes_as_next_epoch_start():
    from types import SimpleNamespace

    from callbacks import ResumeAtEpochEnd

    trainer = SimpleNamespace(datamodule=type("ASRDataModule", (), {})())
    ckpt = saved_after_last_batch()
    ResumeAtEpochEnd().on_load_checkpoint(trainer, None, ckpt)
    loops = ckpt["loops"]["fit_loop"]
    assert loops["epoch_progress"]["total"] == {"ready": 2, "started": 1, "processed": 1, "completed": 1}
    assert loops["epoch_progress"]["current"] == loops["epoch_progress"]["total"]
    batches = loops["epoch_loop.batch_progress"]
    assert batches["current"] == {"ready": 0, "completed": 0, "started": 0, "processed": 0}
    assert batches["total"]["completed"] == 4 and batches["is_last_batch"] is False
    assert loops["epoch_loop.state_dict"]["_batches_that_stepped"] == 3  # Lightning adds 1 when it restarts

    for untouched, datamodule in ((saved_after_last_batch(is_last_batch=False), trainer.datamodule),  # mid-epoch
                                  (saved_after_last_batch(), object())):  # a datamodule without sampler state
        before = repr(untouched)
        ResumeAtEpochEnd().on_load_checkpoint(SimpleNamespace(datamodule=datamodule), None, untouched)
        assert repr(untouched) == before
