"""MetaCTC: FOMAML / Reptile / learned inner lrs equal hand-computed updates; schedules and unfreezing under
manual optimisation; the inner loop never touches the meta-parameters; resume mid-meta-epoch is exact."""

from __future__ import annotations

import copy
import math

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from callbacks import GradualUnfreezing, RandomState
from datamodules import LibriSpeechCorpus
from datamodules.episodic import EpisodicDataModule
from lightning_modules.ctc import ctc_losses
from lightning_modules.meta import MetaCTC
from lightning_modules.optim import group_lr
from tests.conftest import QUIET, FixedContract, char_tokenizer, make_tiny_backbone, texts, tone_batch
from tests.corpus_factory import make_librispeech

INNER_LR, OUTER_LR, INNER_STEPS = 0.1, 0.05, 2


def episode(tokenizer, i: int) -> dict:
    return {"support": tone_batch(texts(2, seed=10 * i), tokenizer, seed=10 * i),
            "query": tone_batch(texts(2, seed=10 * i + 5), tokenizer, seed=10 * i + 5), "task": f"t{i}", "shots": 2}


class MetaBatches(FixedContract):
    """The same meta-batch (a list of episodes) ``steps`` times."""

    def __init__(self, meta_batch: list[dict], steps: int = 1) -> None:
        super().__init__()
        self.meta_batch, self.batches_per_epoch = meta_batch, steps

    tokenizer = char_tokenizer()

    def train_dataloader(self) -> DataLoader:
        return DataLoader([self.meta_batch] * self.batches_per_epoch, batch_size=None)


def meta_module(tokenizer, **kwargs) -> MetaCTC:
    settings = dict(inner_steps=INNER_STEPS, inner_lr=INNER_LR, inner_groups=["head"], outer_optimizer="sgd",
                    lr=OUTER_LR, weight_decay=0.0, decay="constant", dropout=0.0, meta_grad_clip=None)
    return MetaCTC(make_tiny_backbone(0), tokenizer.to_dict(), **{**settings, **kwargs})


def fit(module, data, max_steps: int = 1, callbacks=()) -> pl.Trainer:
    trainer = pl.Trainer(**QUIET, max_steps=max_steps, limit_val_batches=0, callbacks=list(callbacks))
    trainer.fit(module, datamodule=data)
    return trainer


def loss_of(model, batch) -> torch.Tensor:
    log_probs, lengths = model(batch["audio"], batch["lengths"])
    return ctc_losses(log_probs, lengths, batch["targets"], batch["target_lengths"]).mean()


def adapt_by_hand(model, support, steps: int = INNER_STEPS, lr: float = INNER_LR) -> None:
    """Plain SGD on the head of ``model`` (in place), the way one would write it without fast weights."""
    sgd = torch.optim.SGD(model.head.parameters(), lr=lr)
    for _ in range(steps):
        sgd.zero_grad()
        loss_of(model, support).backward()
        sgd.step()
    model.zero_grad(set_to_none=True)


@pytest.fixture
def meta_batch(tokenizer):
    return [episode(tokenizer, i) for i in range(2)]


def test_fomaml_update_equals_hand_computation(tokenizer, meta_batch, one_thread):
    module = meta_module(tokenizer)
    start = copy.deepcopy(module)
    grads = {n: torch.zeros_like(p) for n, p in start.named_parameters()}
    for ep in meta_batch:
        model = copy.deepcopy(start).train()
        adapt_by_hand(model, ep["support"])
        loss_of(model, ep["query"]).backward()  # first order: the query gradient at the adapted weights
        for n, p in model.named_parameters():
            grads[n] += p.grad / len(meta_batch)
    fit(module, MetaBatches(meta_batch))
    for n, p in start.named_parameters():
        torch.testing.assert_close(dict(module.named_parameters())[n], p - OUTER_LR * grads[n], rtol=1e-4, atol=1e-6)
    assert any(not torch.equal(p, q) for p, q in zip(module.backbone.parameters(), start.backbone.parameters()))


def test_reptile_update_equals_hand_computation(tokenizer, meta_batch, one_thread):
    module = meta_module(tokenizer, algorithm="reptile")
    start = copy.deepcopy(module)
    theta = {n: p.detach().clone() for n, p in start.head.named_parameters()}
    step = {n: torch.zeros_like(p) for n, p in theta.items()}
    for ep in meta_batch:
        model = copy.deepcopy(start).train()
        adapt_by_hand(model, ep["support"])
        for n, p in model.head.named_parameters():
            step[n] += (theta[n] - p.detach()) / len(meta_batch)
    with pytest.warns(UserWarning, match="outside inner_groups"):
        fit(module, MetaBatches(meta_batch))
    for n, p in module.head.named_parameters():
        torch.testing.assert_close(p, theta[n] - OUTER_LR * step[n], rtol=1e-4, atol=1e-6)  # θ + ε·mean(φ − θ)
    for (n, p), q in zip(module.backbone.named_parameters(), start.backbone.parameters()):
        assert torch.equal(p, q), f"{n}: Reptile moved a parameter outside the inner groups"


def test_learned_inner_lr_gets_its_first_order_gradient(tokenizer, meta_batch, one_thread):
    module = meta_module(tokenizer, inner_steps=1, learn_inner_lr=True, inner_lr_lr=0.5)
    start = copy.deepcopy(module)
    dlog = 0.0
    for ep in meta_batch:
        model = copy.deepcopy(start).train()
        model.zero_grad()
        loss_of(model, ep["support"]).backward()
        g_support = [p.grad.clone() for p in model.head.parameters()]
        adapt_by_hand(model, ep["support"], steps=1)
        loss_of(model, ep["query"]).backward()
        inner = sum(float((p.grad * g).sum()) for p, g in zip(model.head.parameters(), g_support))
        dlog += -INNER_LR * inner / len(meta_batch)  # d L_query / d log α = −α ⟨∇L_query(φ), ∇L_support(θ)⟩
    trainer = fit(module, MetaBatches(meta_batch))
    assert module.inner_group_names == ["head"]
    assert float(module.inner_log_lr[0]) == pytest.approx(math.log(INNER_LR) - 0.5 * dlog, rel=1e-4)
    assert "train/inner_lr/head" in trainer.callback_metrics
    assert module.adaptation_recipe().group_lrs["head"] == pytest.approx(float(module.inner_log_lr[0].exp()))


def test_inner_loop_never_touches_the_meta_parameters(tokenizer, meta_batch):
    module = meta_module(tokenizer, inner_groups=["all"])
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    meta = {n: p for n, p in module.named_parameters() if p.requires_grad}
    grads, loss = module.meta_gradient(meta_batch[0], meta)
    assert set(grads) == set(meta) and torch.isfinite(loss)
    for n, p in module.named_parameters():
        assert torch.equal(p, before[n]) and p.grad is None, n


def test_schedule_and_gradual_unfreezing_count_outer_steps(tokenizer, meta_batch, one_thread):
    module = meta_module(tokenizer, decay="linear", warmup_steps=2, outer_optimizer="adamw", inner_groups=["top:1"])
    start = {n: p.detach().clone() for n, p in module.backbone.named_parameters()}
    seen = []

    class Record(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            groups = {g["name"]: g for g in trainer.optimizers[0].param_groups}
            moved = any(not torch.equal(p, start[n]) for n, p in pl_module.backbone.named_parameters())
            seen.append((trainer.global_step, groups["head"]["lr"], groups["layer.1"]["lr"], moved))

    trainer = fit(module, MetaBatches(meta_batch, steps=4), max_steps=4,
                  callbacks=[GradualUnfreezing({0: ["head"], 2: ["all"]}, unit="step"), Record()])
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert [s[0] for s in seen] == [1, 2, 3, 4] and scheduler.last_epoch == trainer.global_step == 4
    head = {"base_lr": OUTER_LR, "active_since_step": 0, "warmup_steps": 2}
    assert [s[1] for s in seen] == pytest.approx([group_lr(head, step, 4.0, "linear") for step in (1, 2, 3, 4)])
    layer1 = {"base_lr": OUTER_LR, "active_since_step": 2, "warmup_steps": 2}  # unfrozen before the batch of step 2
    assert [s[2] for s in seen] == pytest.approx([0.0, 0.0] + [group_lr(layer1, step, 4.0, "linear") for step in (3, 4)])
    assert seen[2][2] > 0
    assert [s[3] for s in seen] == [False, False, True, True]


def test_reptile_refuses_learned_inner_lrs(tokenizer):
    with pytest.raises(ValueError, match="learn_inner_lr needs a query loss"):
        meta_module(tokenizer, algorithm="reptile", learn_inner_lr=True)


def test_resume_mid_meta_epoch_is_exact(tmp_path, one_thread):
    make_librispeech(tmp_path / "corpus", {"train-clean-100": 24}, speakers=4)

    def run(max_steps: int, ckpt_path=None, callbacks=()):
        pl.seed_everything(0, verbose=False)
        data = EpisodicDataModule(LibriSpeechCorpus(tmp_path / "corpus", ["train-clean-100"]), meta_val=0, meta_test=0,
                                  shots=2, queries=2, tasks_per_step=2, steps_per_epoch=3, num_workers=0,
                                  cache_dir=str(tmp_path / "cache"))
        module = MetaCTC(make_tiny_backbone(0), data.tokenizer.to_dict(), inner_groups=["top:1"], lr=0.01)
        ids = {}

        class Ids(pl.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                ids[trainer.global_step] = [e["query"]["ids"] for e in batch]

        trainer = pl.Trainer(**{**QUIET, "enable_checkpointing": True}, max_steps=max_steps, limit_val_batches=0,
                             use_distributed_sampler=False, default_root_dir=tmp_path,
                             callbacks=[Ids(), RandomState(), *callbacks])  # RandomState: as the CLI (dropout)
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
        return module, ids

    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=2, save_top_k=-1, filename="{step}")
    whole, whole_ids = run(5, callbacks=[saver])
    resumed, resumed_ids = run(5, ckpt_path=tmp_path / "ckpt" / "step=2.ckpt")
    assert sorted(resumed_ids) == [2, 3, 4] and all(resumed_ids[s] == whole_ids[s] for s in resumed_ids)
    for (n, p), q in zip(whole.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), n
