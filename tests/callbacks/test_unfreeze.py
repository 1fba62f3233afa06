"""GradualUnfreezing: stage resolution, trainable sets, param-group keys, pinned params, exact resume."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
from unfreeze_standin import StandInModule, regression_loader  # noqa: E402

from callbacks import GradualUnfreezing  # noqa: E402
from callbacks.unfreeze import resolve_groups  # noqa: E402

NAMES = ["conv", "layer0", "layer1", "layer2", "featurizer", "head"]
QUIET = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)


class Recorder(pl.Callback):
    """Per training batch (after GradualUnfreezing ran): trainable groups and param-group keys."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.trainable_at_fit_start: list[str] = []

    def on_fit_start(self, trainer, pl_module):  # after the strategy wrapped the model (DDP) + optimizers
        self.trainable_at_fit_start = [n for n, ps in pl_module.layer_groups() if ps[0].requires_grad]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        groups = trainer.optimizers[0].param_groups
        self.rows.append({
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "trainable": [n for n, ps in pl_module.layer_groups() if all(p.requires_grad for p in ps)],
            "lr": {g["name"]: g["lr"] for g in groups},
            "since": {g["name"]: g["active_since_step"] for g in groups},
            "base_lr": {g["name"]: g["base_lr"] for g in groups},
            "warmup": {g["name"]: g["warmup_steps"] for g in groups},
            "layer0": pl_module.layers[0].weight.detach().clone(),
        })


def fit(module, callbacks, loader=None, ckpt_path=None, **kw):
    trainer = pl.Trainer(callbacks=callbacks, **{"enable_checkpointing": False, **QUIET, **kw})
    trainer.fit(module, loader or regression_loader(n=32, batch_size=8), ckpt_path=ckpt_path)
    return trainer


def test_resolve_groups_names_top_and_all():
    assert resolve_groups(["head"], NAMES) == ["head"]
    assert resolve_groups(["top:2"], NAMES) == ["layer1", "layer2", "featurizer", "head"]
    assert resolve_groups(["top:0"], NAMES) == ["featurizer", "head"]
    assert resolve_groups(["all"], NAMES) == NAMES
    assert resolve_groups(["head", "conv"], NAMES) == ["conv", "head"]  # bottom -> top order


@pytest.mark.parametrize("spec, match", [
    (["encoder"], "unknown layer group 'encoder'"),
    (["top:5"], "only 4"),
    (["top:x"], "top:<k>"),
])
def test_resolve_groups_rejects_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        resolve_groups(spec, NAMES)


def test_schedule_needs_a_stage_at_zero():
    with pytest.raises(ValueError, match="key 0"):
        GradualUnfreezing({2: ["all"]})


def test_unknown_group_fails_before_training():
    callback = GradualUnfreezing({0: ["head"], 3: ["decoder"]}, unit="step")
    with pytest.raises(ValueError, match="'decoder'.*layer0"):
        fit(StandInModule(), [callback], max_steps=2)


def test_step_schedule_trainable_sets_param_groups_and_lrs():
    pl.seed_everything(0, verbose=False)
    module, rec = StandInModule(lr=0.05, warmup_steps=0), Recorder()
    unfreeze = GradualUnfreezing({0: ["head"], 2: ["top:1"], 4: ["all"]}, unit="step", lr=0.02, warmup_steps=2)
    fit(module, [unfreeze, rec], max_steps=6)
    trainable = [r["trainable"] for r in rec.rows]
    assert trainable == [["head"]] * 2 + [["layer2", "head"]] * 2 + [["layer0", "layer1", "layer2", "head"]] * 2
    last = rec.rows[-1]
    assert last["since"] == {"layer0": 4, "layer1": 4, "layer2": 2, "head": 0}
    assert last["base_lr"] == {"layer0": 0.02, "layer1": 0.02, "layer2": 0.02, "head": 0.05}
    assert last["warmup"] == {"layer0": 2, "layer1": 2, "layer2": 2, "head": 0}
    # lr of the current step is recomputed at the transition: warmup starts at 1/2, never a wasted lr-0 step
    assert [r["lr"]["layer2"] for r in rec.rows] == pytest.approx([0, 0, 0.01, 0.02, 0.02, 0.02])
    assert [r["lr"]["layer0"] for r in rec.rows] == pytest.approx([0, 0, 0, 0, 0.01, 0.02])
    assert all(r["lr"]["head"] == pytest.approx(0.05) for r in rec.rows)
    # frozen parameters are bit-identical until their stage, then they train
    assert all(torch.equal(r["layer0"], rec.rows[0]["layer0"]) for r in rec.rows if r["step"] <= 4)
    assert not torch.equal(module.layers[0].weight, rec.rows[0]["layer0"])


def test_epoch_schedule_applies_at_epoch_starts():
    rec = Recorder()
    unfreeze = GradualUnfreezing({0: ["head"], 1: ["layer2"], 2: ["all"]}, unit="epoch")
    fit(StandInModule(), [unfreeze, rec], loader=regression_loader(n=16, batch_size=8), max_epochs=3)
    by_epoch = {r["epoch"]: r for r in rec.rows}
    assert [len(by_epoch[e]["trainable"]) for e in range(3)] == [1, 2, 4]
    assert by_epoch[2]["since"] == {"layer0": 4, "layer1": 4, "layer2": 2, "head": 0}


def test_params_the_module_froze_itself_stay_frozen():
    module = StandInModule()
    module.layers[0].requires_grad_(False)  # e.g. a permanently frozen conv feature encoder
    before = module.layers[0].weight.detach().clone()
    rec = Recorder()
    fit(module, [GradualUnfreezing({0: ["head"], 2: ["all"]}, unit="step"), rec], max_steps=4)
    assert rec.rows[-1]["trainable"] == ["layer1", "layer2", "head"]
    assert rec.rows[-1]["since"]["layer0"] is None and rec.rows[-1]["lr"]["layer0"] == 0
    assert torch.equal(module.layers[0].weight, before)


def _trainable(module) -> list[str]:
    return [n for n, p in module.named_parameters() if p.requires_grad]


def _assert_same_optimizer_state(a: dict, b: dict) -> None:
    assert a["param_groups"] == b["param_groups"]  # lr, base_lr, active_since_step, warmup_steps, ...
    assert a["state"].keys() == b["state"].keys()
    for idx, state in a["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["state"][idx][key]), (idx, key)


@pytest.mark.parametrize("unit, schedule, resume_epoch", [
    ("step", {0: ["head"], 3: ["top:1"], 6: ["all"]}, 0),   # ckpt at step 4: after 1st unfreeze
    ("epoch", {0: ["head"], 1: ["top:1"], 2: ["all"]}, 1),  # ckpt after epoch 1: after 1st unfreeze
])
def test_resume_after_unfreeze_continues_identically(tmp_path, unit, schedule, resume_epoch):
    def run(ckpt_path=None, checkpoint=None):
        pl.seed_everything(0, verbose=False)
        module, rec = StandInModule(warmup_steps=2), Recorder()
        callbacks = [GradualUnfreezing(schedule, unit=unit, lr=0.02, warmup_steps=2), rec]
        callbacks += [checkpoint] if checkpoint else []
        trainer = fit(module, callbacks, ckpt_path=ckpt_path, max_epochs=3, enable_checkpointing=bool(checkpoint))
        return module, trainer, rec

    saver = ModelCheckpoint(dirpath=tmp_path, every_n_epochs=1, save_top_k=-1, save_on_train_epoch_end=True)
    module_a, trainer_a, rec_a = run(checkpoint=saver)  # run A: uninterrupted, checkpoints every epoch
    ckpt = tmp_path / f"epoch={resume_epoch}-step={4 * (resume_epoch + 1)}.ckpt"
    assert torch.load(ckpt, weights_only=False)["callbacks"]["GradualUnfreezing"]["applied"] == sorted(schedule)[:2]
    module_b, trainer_b, rec_b = run(ckpt_path=ckpt)  # run B: a fresh process-equivalent resumes from it

    assert trainer_b.global_step == trainer_a.global_step == 12
    # restored before the model is wrapped / the optimizer built, not at the first batch
    assert rec_b.trainable_at_fit_start == ["layer2", "head"]
    assert _trainable(module_b) == _trainable(module_a)
    for (name, a), (_, b) in zip(module_a.named_parameters(), module_b.named_parameters()):
        assert torch.equal(a, b), name
    _assert_same_optimizer_state(trainer_a.optimizers[0].state_dict(), trainer_b.optimizers[0].state_dict())
    # the resumed run saw the same trainable sets and lrs step by step
    tail_a = [(r["step"], r["trainable"], r["lr"]) for r in rec_a.rows if r["step"] >= rec_b.rows[0]["step"]]
    assert tail_a == [(r["step"], r["trainable"], r["lr"]) for r in rec_b.rows]


# ---------------------------------------------------------------------- the real CTC core
def _finetune(**kw):
    from lightning_modules.finetune import FineTuneCTC
    from tests.conftest import char_tokenizer, make_tiny_backbone

    return FineTuneCTC(make_tiny_backbone(), char_tokenizer().to_dict(), lr=3e-3, dropout=0.0, **kw)


class GroupRecorder(pl.Callback):
    """Per batch: trainable layer groups and each param group's (lr, active_since_step)."""

    def __init__(self) -> None:
        self.rows: list[tuple[int, list[str], dict]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        trainable = [n for n, ps in pl_module.layer_groups() if any(p.requires_grad for p in ps)]
        groups = {g["name"]: (g["lr"], g["active_since_step"]) for g in trainer.optimizers[0].param_groups}
        self.rows.append((trainer.global_step, trainable, groups))


def test_finetune_ctc_gradual_unfreezing_keeps_pinned_feature_encoder(one_thread):
    from tests.conftest import TinyDataModule

    pl.seed_everything(0, verbose=False)
    module = _finetune(freeze_feature_encoder=True, feature_encoder_group="frontend", decay="constant")
    assert [n for n, _ in module.layer_groups()] == ["frontend", "layer.0", "layer.1", "head"]
    frontend = [p.detach().clone() for p in module.backbone.layer_groups()[0][1].parameters()]
    layer0 = [p.detach().clone() for p in module.backbone.layers[0].parameters()]
    rec = GroupRecorder()
    unfreeze = GradualUnfreezing({0: ["head"], 2: ["top:1"], 3: ["all"]}, unit="step", lr=1e-3, warmup_steps=2)
    fit(module, [unfreeze, rec], loader=TinyDataModule(n_train=8, batch_size=4).train_dataloader(), max_steps=4)

    assert [r[1] for r in rec.rows] == [["head"], ["head"], ["layer.1", "head"], ["layer.0", "layer.1", "head"]]
    step2, step3 = rec.rows[2][2], rec.rows[3][2]
    assert step2["layer.1"] == (pytest.approx(5e-4), 2)  # lr 1e-3 × warmup 1/2 from its first step
    assert step3["layer.0"] == (pytest.approx(5e-4), 3) and step3["layer.1"] == (pytest.approx(1e-3), 2)
    assert step3["frontend"] == (0.0, None)  # pinned by freeze_feature_encoder: never unfrozen
    assert all(torch.equal(a, b) for a, b in zip(frontend, module.backbone.layer_groups()[0][1].parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(layer0, module.backbone.layers[0].parameters()))


def test_finetune_ctc_resume_after_unfreeze_is_exact(tmp_path, one_thread):
    from tests.conftest import TinyDataModule

    def run(ckpt_path=None, checkpoint=None):
        pl.seed_everything(0, verbose=False)
        module, rec = _finetune(warmup_steps=1), GroupRecorder()
        callbacks = [GradualUnfreezing({0: ["head"], 1: ["top:1"], 2: ["all"]}, unit="epoch"), rec]
        callbacks += [checkpoint] if checkpoint else []
        trainer = fit(module, callbacks, loader=TinyDataModule(n_train=8, batch_size=4).train_dataloader(),
                      ckpt_path=ckpt_path, max_epochs=3, enable_checkpointing=bool(checkpoint))
        return module, trainer, rec

    saver = ModelCheckpoint(dirpath=tmp_path, every_n_epochs=1, save_top_k=-1, save_on_train_epoch_end=True)
    module_a, trainer_a, rec_a = run(checkpoint=saver)
    module_b, trainer_b, rec_b = run(ckpt_path=tmp_path / "epoch=1-step=4.ckpt")
    assert trainer_b.global_step == trainer_a.global_step == 6
    assert rec_b.rows == [r for r in rec_a.rows if r[0] >= 4]
    assert _trainable(module_b) == _trainable(module_a)
    for (name, a), (_, b) in zip(module_a.state_dict().items(), module_b.state_dict().items()):
        assert torch.equal(a, b), name
    _assert_same_optimizer_state(trainer_a.optimizers[0].state_dict(), trainer_b.optimizers[0].state_dict())


def test_first_stage_frozen_by_the_module_is_an_error():
    module = StandInModule()
    module.head.requires_grad_(False)
    with pytest.raises(ValueError, match=r"nothing is trainable at the first stage \['head'\]"):
        fit(module, [GradualUnfreezing({0: ["head"], 2: ["all"]}, unit="step")], max_steps=2)
