"""PseudoLabelCTC: the confidence filter, teacher-only labels, exact EMA, rounds, resume, init_from."""

from __future__ import annotations

import copy
import math

import pytest
import pytorch_lightning as pl
import torch

from datamodules.text import CharTokenizer
from lightning_modules import CTCModule, PseudoLabelCTC, load_model
from lightning_modules.backbones import CheckpointBackbone
from lightning_modules.ctc import ctc_losses, greedy_decode
from lightning_modules.pseudo_label import select_confident, teacher_confidence
from tests.conftest import QUIET, TinyDataModule, make_tiny_backbone
from tests.corpus_factory import ALPHABET

pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(tokenizer, **kwargs) -> PseudoLabelCTC:
    settings = dict(lr=3e-3, dropout=0.0, decay="constant", spec_augment=None)
    return PseudoLabelCTC(make_tiny_backbone(), tokenizer.to_dict(), **{**settings, **kwargs})


def paired(tokenizer, target_labels: bool = True, **kwargs) -> TinyDataModule:
    """2 paired batches per epoch (4 + 4 utterances); target labelled so that poisoning them is visible."""
    return TinyDataModule(tokenizer, dann=True, target_labels=target_labels, **kwargs)


class Snapshots(pl.Callback):
    """Teacher and student inference weights at train start and after every optimizer step."""

    def __init__(self) -> None:
        self.teacher: list[dict] = []
        self.student: list[dict] = []

    def _take(self, pl_module: PseudoLabelCTC) -> None:
        self.teacher.append(copy.deepcopy(pl_module.teacher.state_dict()))
        self.student.append(copy.deepcopy(pl_module.student().state_dict()))

    def on_train_start(self, trainer, pl_module) -> None:
        self._take(pl_module)

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self._take(pl_module)


def fit(model, dm, steps: int, callbacks=(), ckpt_path=None, **kwargs) -> pl.Trainer:
    pl.seed_everything(0)
    trainer = pl.Trainer(max_steps=steps, limit_val_batches=0, callbacks=list(callbacks), **{**QUIET, **kwargs})
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return trainer


def equal_states(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ confidence filter
def constructed_log_probs(max_probs: list[float | None], frames: int = 6, vocab: int = 5) -> torch.Tensor:
    """Row b: frames 0-2 argmax token 1 + b % 3 with posterior max_probs[b] (None: every frame blank,
    posterior 0.9), frames 3-5 blank (0.8); every other class shares the rest equally."""
    rows = []
    for b, p in enumerate(max_probs):
        row = torch.full((frames, vocab), 0.0)
        for t in range(frames):
            top, prob = (0, 0.9) if p is None or t >= 3 else (1 + b % 3, p)
            row[t] = (1.0 - prob) / (vocab - 1)
            row[t, top] = prob
        rows.append(row)
    return torch.stack(rows).log()


def test_confidence_is_the_mean_max_posterior_over_valid_nonblank_frames():
    log_probs = constructed_log_probs([0.6, 0.95, None])
    log_probs[0, 5] = torch.tensor([0.01, 0.96, 0.01, 0.01, 0.01]).log()  # padding frame: never counted
    confidence = teacher_confidence(log_probs, torch.tensor([5, 6, 6]))
    torch.testing.assert_close(confidence, torch.tensor([0.6, 0.95, 0.0]))


@pytest.mark.parametrize("keep_fraction, threshold, kept", [
    (1.0, 0.0, [0, 1, 2, 3, 4, 5]),     # every non-empty hypothesis (rows 6, 7 are all blank)
    (0.5, 0.0, [1, 3, 4, 5]),           # ceil(0.5 · 8) = 4 most confident
    (0.3, 0.0, [1, 3, 5]),              # ceil(2.4) = 3; rows 3 and 4 tie at 0.9: the earlier row wins
    (0.125, 0.0, [5]),                  # ceil(1.0) = 1
    (1.0, 0.7, [1, 3, 4, 5]),           # threshold alone
    (0.5, 0.91, [1, 5]),                # fewer eligible than the budget: all eligible
    (0.25, 0.0, [1, 5]),                # ceil(2.0) = 2
])
def test_confidence_filter_keeps_exactly_the_documented_fraction(keep_fraction, threshold, kept):
    probs = [0.5, 0.92, 0.6, 0.9, 0.9, 0.99, None, None]
    log_probs = constructed_log_probs(probs)
    lengths = torch.full((8,), 6)
    confidence = teacher_confidence(log_probs, lengths)
    nonempty = torch.tensor([len(ids) > 0 for ids in greedy_decode(log_probs, lengths)])
    keep = select_confident(confidence, nonempty, threshold, keep_fraction)
    assert keep.nonzero().flatten().tolist() == kept
    assert keep.sum() <= math.ceil(round(keep_fraction * 8, 6))


def test_the_budget_is_rounded_before_the_ceiling():
    confidence, nonempty = torch.linspace(0.1, 1.0, 25), torch.ones(25, dtype=torch.bool)
    assert 0.28 * 25 > 7  # float: 7.000000000000001, a plain ceil would keep 8
    assert select_confident(confidence, nonempty, keep_fraction=0.28).sum() == 7


# ------------------------------------------------------------------ labels come from the teacher only
def loss_and_grads(model: PseudoLabelCTC, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = model.training_step(batch, 0)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_target_labels_never_reach_a_loss_and_pseudo_labels_come_from_the_teacher(tokenizer):
    model = make_model(tokenizer)
    model.train()
    batch = paired(tokenizer).train_batches[0]
    assert "targets" in batch["target"], "the target batch is labelled, so a leak would change the loss"
    loss, grads = loss_and_grads(model, batch)

    poisoned = copy.deepcopy(batch)
    poisoned["target"]["targets"] = torch.randint(1, tokenizer.vocab_size, poisoned["target"]["targets"].shape)
    poisoned["target"]["texts"] = ["zzz"] * len(poisoned["target"]["texts"])
    poisoned["target"]["monitor_texts"] = ["qqq"] * len(poisoned["target"]["texts"])
    loss_poisoned, grads_poisoned = loss_and_grads(model, poisoned)
    assert torch.equal(loss, loss_poisoned)
    assert grads.keys() == grads_poisoned.keys() and all(torch.equal(grads[n], grads_poisoned[n]) for n in grads)

    # the target term is exactly the student's CTC against the teacher's greedy transcripts
    target = batch["target"]
    ids, _, keep = model.pseudo_labels(target)
    with torch.no_grad():
        teacher_ids = greedy_decode(*model.teacher_log_probs(target["audio"], target["lengths"]))
        student, student_lengths = model(target["audio"], target["lengths"])
        source = model(batch["source"]["audio"], batch["source"]["lengths"])
    assert ids == teacher_ids and keep.any()
    rows = keep.nonzero().flatten()
    from datamodules.batch import pad_targets
    targets, target_lengths = pad_targets([ids[i] for i in rows.tolist()])
    expected_pl = ctc_losses(student[rows], student_lengths[rows], targets, target_lengths).mean()
    s = batch["source"]
    expected_source = ctc_losses(*source, s["targets"], s["target_lengths"]).mean()
    torch.testing.assert_close(loss, expected_source + expected_pl, rtol=1e-5, atol=1e-5)

    # another teacher gives other labels and another loss; the student is unchanged
    with torch.no_grad():
        model.teacher["head"].proj.weight.mul_(-1.0)
    assert model.pseudo_labels(target)[0] != ids
    assert not torch.equal(loss_and_grads(model, batch)[0], loss)


def test_training_logs_label_quality_when_transcripts_are_monitored(tokenizer):
    model = make_model(tokenizer, keep_fraction=0.5)
    trainer = fit(model, paired(tokenizer), 2)
    metrics = trainer.callback_metrics
    assert float(metrics["train/pl_kept_fraction"]) <= 0.5
    assert 0.0 <= float(metrics["train/pl_teacher_confidence"]) <= 1.0
    assert {"train/pl_cer", "train/pl_cer_all", "train/pl_loss", "train/source_loss"} <= set(metrics)
    unmonitored = fit(make_model(tokenizer), paired(tokenizer, target_labels=False), 2)
    assert "train/pl_cer_all" not in unmonitored.callback_metrics


# ------------------------------------------------------------------ teacher schedules
def test_ema_teacher_update_is_exact(tokenizer):
    decay = 0.9
    snaps = Snapshots()
    model = make_model(tokenizer, teacher="ema", ema_decay=decay)
    fit(model, paired(tokenizer), 3, callbacks=[snaps])
    params = {name for name, _ in model.teacher.named_parameters()}
    assert equal_states(snaps.teacher[0], snaps.student[0]), "the teacher starts as the student"
    for k in range(1, 4):
        assert not equal_states(snaps.student[k], snaps.student[k - 1])
        for name, teacher in snaps.teacher[k].items():
            previous, student = snaps.teacher[k - 1][name], snaps.student[k][name]
            expected = previous.mul(decay).add(student, alpha=1 - decay) if name in params else student  # buffers
            assert torch.equal(teacher, expected), f"step {k}: {name}"
    assert not equal_states(snaps.teacher[3], snaps.student[3])


def test_frozen_teacher_stays_until_a_round_copies_the_student(tokenizer):
    snaps = Snapshots()
    fit(make_model(tokenizer, teacher="frozen", refresh_every_n_steps=2), paired(tokenizer), 3, callbacks=[snaps])
    start = snaps.teacher[0]
    assert equal_states(snaps.teacher[1], start)
    assert equal_states(snaps.teacher[2], snaps.student[2]) and not equal_states(snaps.teacher[2], start)
    assert equal_states(snaps.teacher[3], snaps.student[2])


def test_epoch_rounds_copy_the_student_at_each_nth_epoch_start(tokenizer):
    snaps = Snapshots()
    model = make_model(tokenizer, teacher="frozen", refresh_every_n_epochs=1)
    fit(model, paired(tokenizer), 5, callbacks=[snaps])  # 2 batches per epoch: epochs start at steps 0, 2, 4
    assert equal_states(snaps.teacher[2], snaps.teacher[0])
    assert equal_states(snaps.teacher[3], snaps.student[2]) and equal_states(snaps.teacher[4], snaps.student[2])
    assert equal_states(snaps.teacher[5], snaps.student[4])
    assert int(model.teacher_refreshes) == 2 and int(model.last_refresh_epoch) == 2


# ------------------------------------------------------------------ checkpoints
def test_init_from_starts_student_and_teacher_as_the_source_model(tokenizer, tmp_path):
    source = CTCModule(make_tiny_backbone(seed=3), tokenizer.to_dict(), lr=3e-3, dropout=0.0)
    trainer = pl.Trainer(max_steps=2, limit_val_batches=0, **QUIET)
    trainer.fit(source, datamodule=TinyDataModule(tokenizer))
    trainer.save_checkpoint(tmp_path / "source.ckpt")
    path = str(tmp_path / "source.ckpt")

    snaps = Snapshots()
    model = PseudoLabelCTC(CheckpointBackbone(path), tokenizer.to_dict(), init_from=path, spec_augment=None)
    fit(model, paired(tokenizer), 1, callbacks=[snaps])
    wanted = {k: v for k, v in source.state_dict().items() if k.split(".")[0] in ("backbone", "featurizer", "head")}
    assert equal_states(snaps.student[0], wanted) and equal_states(snaps.teacher[0], wanted)

    other = CharTokenizer(list(reversed(ALPHABET)))  # same symbols, other ids
    with pytest.raises(ValueError, match="tokenizer differs"):
        fit(PseudoLabelCTC(CheckpointBackbone(path), other.to_dict(), init_from=path), paired(other), 1)


def test_checkpoint_holds_the_teacher_and_its_round_schedule(tokenizer, tmp_path):
    """What a resume restores (an uninterrupted run equals a resumed one: tests/experiments/test_unlabelled_cli.py)."""
    model = make_model(tokenizer, teacher="frozen", refresh_every_n_epochs=1)
    trainer = fit(model, paired(tokenizer), 5)  # rounds at the starts of epochs 1 and 2
    trainer.save_checkpoint(tmp_path / "pl.ckpt")
    state = torch.load(tmp_path / "pl.ckpt", weights_only=False)["state_dict"]
    assert int(state["teacher_refreshes"]) == 2 and int(state["last_refresh_epoch"]) == 2
    assert equal_states({k[len("teacher."):]: v for k, v in state.items() if k.startswith("teacher.")},
                        model.teacher.state_dict())
    loaded = load_model(tmp_path / "pl.ckpt")
    assert isinstance(loaded, PseudoLabelCTC) and equal_states(loaded.state_dict(), model.state_dict())
    assert not any(p.requires_grad for p in loaded.teacher.parameters())
    loaded.train()
    assert not loaded.teacher.training
