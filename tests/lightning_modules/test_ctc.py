"""The CTC core: decoding, loss, padding, param groups + lr schedule, metrics, checkpoints, load_model."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import LearningRateMonitor
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.demos.boring_classes import BoringDataModule
from torchmetrics.functional.text import char_error_rate, word_error_rate

from datamodules.text import CharTokenizer

from lightning_modules import CTCModule, load_model
from lightning_modules.ctc import ctc_infeasible, ctc_losses, greedy_decode
from lightning_modules.optim import TransferLRScheduler, base_learning_rates, build_param_groups
from tests.conftest import QUIET, LossRecorder, TinyDataModule, loss_fell, make_tiny_backbone
from tests.corpus_factory import ALPHABET

pytestmark = pytest.mark.usefixtures("one_thread")


def module(tokenizer, **kwargs) -> CTCModule:
    args = dict(lr=3e-3, dropout=0.0, decay="constant")
    return CTCModule(make_tiny_backbone(), tokenizer.to_dict(), **{**args, **kwargs})


def one_hot_log_probs(best: list[int], vocab: int = 4) -> torch.Tensor:
    return torch.log_softmax(10 * torch.nn.functional.one_hot(torch.tensor(best), vocab).float(), -1)


# ------------------------------------------------------------------ decoding and loss
def test_greedy_decode_collapses_repeats_drops_blanks_and_ignores_padding():
    log_probs = torch.stack([one_hot_log_probs([0, 1, 1, 0, 1, 2, 2, 0, 3, 3]),
                             one_hot_log_probs([2, 2, 0, 0, 3, 0, 0, 0, 0, 0])])
    assert greedy_decode(log_probs, torch.tensor([8, 5])) == [[1, 1, 2], [2, 3]]


def test_ctc_loss_is_per_utterance_loss_over_target_length_averaged():
    torch.manual_seed(0)
    log_probs = torch.randn(3, 12, 5).log_softmax(-1)
    lengths, targets = torch.tensor([12, 9, 7]), torch.tensor([[1, 2, 3], [4, 4, 0], [2, 0, 0]])
    target_lengths = torch.tensor([3, 2, 1])
    ours = ctc_losses(log_probs, lengths, targets, target_lengths)
    reference = torch.nn.CTCLoss(blank=0, reduction="mean", zero_infinity=True)(
        log_probs.transpose(0, 1), targets, lengths, target_lengths)
    assert ours.shape == (3,) and ours.mean().item() == pytest.approx(reference.item(), rel=1e-6)


def test_infeasible_alignments_give_zero_loss_and_are_detected():
    log_probs = torch.randn(2, 3, 5).log_softmax(-1)
    targets, target_lengths = torch.tensor([[1, 1, 0], [1, 2, 3]]), torch.tensor([2, 3])
    lengths = torch.tensor([2, 3])  # "1 1" needs a blank in between: 3 frames; "1 2 3" fits in 3
    assert ctc_infeasible(lengths, targets, target_lengths).tolist() == [True, False]
    assert ctc_losses(log_probs, lengths, targets, target_lengths)[0].item() == 0.0


@pytest.mark.parametrize("head, featurizer", [("linear", "last"), ("bilstm", "weighted")])
def test_padding_does_not_change_logits_or_loss(tokenizer, tiny_batch, head, featurizer):
    model = module(tokenizer, head=head, head_hidden=16, featurizer=featurizer).eval()
    with torch.no_grad():
        log_probs, lengths = model(tiny_batch["audio"], tiny_batch["lengths"])
        batch_losses = ctc_losses(log_probs, lengths, tiny_batch["targets"], tiny_batch["target_lengths"])
        for i in range(3):
            n, s = int(tiny_batch["lengths"][i]), int(tiny_batch["target_lengths"][i])
            alone, alone_len = model(tiny_batch["audio"][i:i + 1, :n], tiny_batch["lengths"][i:i + 1])
            assert alone_len.item() == lengths[i].item()
            assert torch.allclose(alone[0], log_probs[i, : alone.shape[1]], atol=1e-5)
            targets, target_lengths = tiny_batch["targets"][i:i + 1, :s], tiny_batch["target_lengths"][i:i + 1]
            loss = ctc_losses(alone, alone_len, targets, target_lengths)
            assert loss.item() == pytest.approx(batch_losses[i].item(), rel=1e-5)


def test_spec_augment_masks_in_training_only(tokenizer, tiny_batch):
    model = module(tokenizer, spec_augment={"time_masks": 2, "time_width": 0.3, "feature_masks": 2,
                                            "feature_width": 8})
    feats, lengths = model.encode(tiny_batch["audio"], tiny_batch["lengths"])
    model.eval()
    assert torch.equal(model.classify(feats, lengths), model.head(feats, lengths).log_softmax(-1))
    model.train()
    assert not torch.equal(model.classify(feats, lengths), model.head(feats, lengths).log_softmax(-1))


def test_vocabulary_follows_the_tokenizer_and_mismatches_raise_clear_errors(tokenizer, tiny_batch):
    model = module(tokenizer)
    assert model.head.proj.out_features == tokenizer.vocab_size == 29  # the vocabulary is the tokenizer's
    with pytest.raises(TypeError, match="tokenizer"):
        CTCModule(make_tiny_backbone())  # no tokenizer: no vocabulary
    with pytest.raises(ValueError, match="no 'targets'"):
        model.ctc_loss(*model(tiny_batch["audio"], tiny_batch["lengths"]), {"ids": ["x"]})
    other = CharTokenizer(list(ALPHABET) + ["0"])  # another vocabulary: 30 symbols with the blank
    with pytest.raises(ValueError, match=r"tokenizer \(30 symbols\) is not the one .* \(29 symbols\)"):
        pl.Trainer(max_steps=1, **QUIET).fit(model, datamodule=TinyDataModule(other))


def test_a_non_speech_datamodule_is_one_clear_error(tokenizer):
    with pytest.raises(TypeError, match="BoringDataModule is not a datamodules.SpeechDataModule"):
        pl.Trainer(max_steps=1, **QUIET).fit(module(tokenizer), datamodule=BoringDataModule())


# ------------------------------------------------------------------ param groups and schedule
def test_layer_groups_and_discriminative_param_groups(tokenizer):
    model = module(tokenizer, featurizer="weighted", lr=1e-2, backbone_lr=1e-3, layer_decay=0.5, warmup_steps=3,
                   weight_decay=0.1)
    names = [n for n, _ in model.layer_groups()]
    assert names == ["frontend", "layer.0", "layer.1", "featurizer", "head"]
    model.backbone.layers[0].requires_grad_(False)  # as a freezing callback would
    seen = []

    class Grab(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            seen.extend({k: v for k, v in g.items() if k != "params"} for g in trainer.optimizers[0].param_groups)

    trainer = pl.Trainer(max_steps=1, limit_val_batches=0, callbacks=[Grab()], **QUIET)
    trainer.fit(model, datamodule=TinyDataModule(tokenizer))
    groups = seen
    assert [g["name"] for g in groups] == names
    assert [g["base_lr"] for g in groups] == pytest.approx([2.5e-4, 5e-4, 1e-3, 1e-2, 1e-2])
    assert [g["active_since_step"] for g in groups] == [0, None, 0, 0, 0]
    assert all(g["warmup_steps"] == 3 and g["weight_decay"] == 0.1 for g in groups)
    assert [g["lr"] for g in groups] == pytest.approx([2.5e-4 / 3, 0.0, 1e-3 / 3, 1e-2 / 3, 1e-2 / 3])


def test_parameters_outside_layer_groups_are_an_error(tokenizer):
    model = module(tokenizer)
    model.extra = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="extra.weight"):
        model._check_covered(model.layer_groups())


def test_scheduler_warmup_decay_late_activation_and_exact_resume():
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(3)]
    groups = build_param_groups([("a", [params[0]]), ("b", [params[1]]), ("head", [params[2]])],
                                base_learning_rates(3, 2, lr=1.0, backbone_lr=0.5), warmup_steps=4)
    groups[1]["active_since_step"] = None
    opt = torch.optim.AdamW(groups)
    sched = TransferLRScheduler(opt, total_steps=20, decay="linear", min_lr_ratio=0.1)
    lrs = [[g["lr"] for g in opt.param_groups]]
    for step in range(1, 12):
        opt.step()
        sched.step()
        if step == 10:  # a callback activates group "b" at step 10
            opt.param_groups[1]["active_since_step"] = 10
            sched.refresh()
        lrs.append([g["lr"] for g in opt.param_groups])

    def decay(s):
        return 0.1 + 0.9 * (1 - s / 20)
    assert lrs[0] == pytest.approx([0.5 * 0.25 * decay(0), 0.0, 0.25 * decay(0)])
    assert lrs[2] == pytest.approx([0.5 * 0.75 * decay(2), 0.0, 0.75 * decay(2)])
    assert lrs[6][2] == pytest.approx(decay(6))
    assert lrs[10][1] == pytest.approx(0.5 * 0.25 * decay(10))
    assert lrs[11][1] == pytest.approx(0.5 * 0.5 * decay(11))
    # resume: fresh optimizer + scheduler loaded from state dicts continue identically
    opt2 = torch.optim.AdamW(build_param_groups([("a", [params[0]]), ("b", [params[1]]), ("head", [params[2]])],
                                                [9.0, 9.0, 9.0]))
    sched2 = TransferLRScheduler(opt2, total_steps=20, decay="linear", min_lr_ratio=0.1)
    opt2.load_state_dict(opt.state_dict())
    sched2.load_state_dict(sched.state_dict())
    for o, s in ((opt, sched), (opt2, sched2)):
        o.step()
        s.step()
    assert [g["lr"] for g in opt2.param_groups] == [g["lr"] for g in opt.param_groups]
    opt3 = torch.optim.AdamW(build_param_groups([("head", [params[2]])], [1.0]))
    cosine = TransferLRScheduler(opt3, 10, "cosine", 0.2)
    for _ in range(5):
        opt3.step()
        cosine.step()
    assert cosine.get_last_lr() == pytest.approx([0.2 + 0.8 * 0.5])


# ------------------------------------------------------------------ training, validation, checkpoints
def test_trains_logs_lrs_and_per_domain_metrics(tokenizer, tmp_path):
    pl.seed_everything(0)
    model = module(tokenizer, featurizer="weighted", decay="linear", warmup_steps=5)
    dm = TinyDataModule(tokenizer, val_domains=("source", "target"))
    recorder = LossRecorder()
    lrs = LearningRateMonitor(logging_interval="step")  # what the CLI adds
    trainer = pl.Trainer(max_steps=40, limit_val_batches=0, callbacks=[recorder, lrs], log_every_n_steps=1,
                         **{**QUIET, "logger": CSVLogger(tmp_path)})
    trainer.fit(model, datamodule=dm)
    assert loss_fell(recorder.losses)
    assert model.lr_schedulers().last_epoch == trainer.global_step == 40
    metrics = trainer.callback_metrics
    assert {"layer_weights/0", "layer_weights/1", "train/ctc_infeasible"} <= set(metrics)
    assert metrics["train/ctc_infeasible"].item() == 0.0
    assert {"lr/head", "lr/frontend"} <= set(lrs.lrs)
    assert len(lrs.lrs["lr/head"]) == 40 and lrs.lrs["lr/head"][-1] == pytest.approx(3e-3 * (1 - 39 / 40))
    per_loader = pl.Trainer(**QUIET).validate(model, datamodule=dm, verbose=False)
    results = {k: v for r in per_loader for k, v in r.items()}
    for d, domain in enumerate(("source", "target")):
        batch = dm.val_batches[d][0]
        hyps = model.transcribe(batch["audio"], batch["lengths"])
        with torch.no_grad():
            log_probs, lengths = model(batch["audio"], batch["lengths"])
        loss = ctc_losses(log_probs, lengths, batch["targets"], batch["target_lengths"]).mean()
        assert results[f"val/{domain}/wer"] == pytest.approx(word_error_rate(hyps, batch["texts"]).item())
        assert results[f"val/{domain}/cer"] == pytest.approx(char_error_rate(hyps, batch["texts"]).item())
        assert results[f"val/{domain}/loss"] == pytest.approx(loss.item(), rel=1e-5)


def test_setup_loads_pretrained_weights_only_for_fresh_fits(tokenizer, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(type(make_tiny_backbone()), "load_pretrained", lambda self: calls.append(1))
    model = module(tokenizer)
    trainer = pl.Trainer(max_steps=2, limit_val_batches=0, **QUIET)
    trainer.fit(model, datamodule=TinyDataModule(tokenizer))
    assert calls == [1]
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    restored = load_model(tmp_path / "a.ckpt")
    trainer = pl.Trainer(max_steps=1, limit_val_batches=0, **QUIET)
    trainer.fit(restored.train(), datamodule=TinyDataModule(tokenizer))
    assert calls == [1]


def test_checkpoint_metadata_and_load_model_reproduce_predictions(tokenizer, tiny_batch, tmp_path):
    model = CTCModule(make_tiny_backbone(), tokenizer.to_dict(), head="bilstm", head_hidden=16, lr=3e-3)
    dm = TinyDataModule(tokenizer)
    trainer = pl.Trainer(max_steps=3, limit_val_batches=0, **QUIET)
    trainer.fit(model, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    checkpoint = torch.load(tmp_path / "m.ckpt", weights_only=False)
    info = checkpoint["speechxfer"]
    assert info == {"module_class": "lightning_modules.ctc.CTCModule", "backbone_config": model.backbone.config()}
    assert checkpoint["hyper_parameters"]["tokenizer"] == tokenizer.to_dict()  # stored once, where load_model reads it
    loaded = load_model(tmp_path / "m.ckpt")
    assert type(loaded) is CTCModule and not loaded.training and loaded.hparams.head == "bilstm"
    model.eval()
    with torch.no_grad():
        expected, _ = model(tiny_batch["audio"], tiny_batch["lengths"])
        got, _ = loaded(tiny_batch["audio"], tiny_batch["lengths"])
    assert torch.equal(expected, got)
    assert loaded.transcribe(tiny_batch["audio"], tiny_batch["lengths"]) == model.transcribe(
        tiny_batch["audio"], tiny_batch["lengths"])


def test_load_model_rejects_foreign_checkpoints(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "x.ckpt")
    with pytest.raises(ValueError, match="not a speechxfer checkpoint"):
        load_model(tmp_path / "x.ckpt")


def test_resume_from_checkpoint_continues_exactly(tokenizer, tmp_path):
    """8 steps interrupted after 4 + resume == 8 straight steps (weights and lrs), val results included."""
    class StopAt4(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 4:
                trainer.should_stop = True

    def run(callbacks=(), ckpt_path=None) -> CTCModule:
        pl.seed_everything(0)
        model = module(tokenizer, decay="cosine", warmup_steps=3, featurizer="weighted")
        trainer = pl.Trainer(max_steps=8, num_sanity_val_steps=0, callbacks=list(callbacks), **QUIET)
        trainer.fit(model, datamodule=TinyDataModule(tokenizer, val_domains=("source", "target")), ckpt_path=ckpt_path)
        if callbacks:
            assert trainer.global_step == 4
            trainer.save_checkpoint(tmp_path / "half.ckpt")
        return model

    straight = run()
    run([StopAt4()])
    resumed = run(ckpt_path=tmp_path / "half.ckpt")
    assert [g["lr"] for g in resumed.optimizers().param_groups] == [g["lr"] for g in straight.optimizers().param_groups]
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


@pytest.mark.slow
def test_ddp_validation_metrics_equal_single_process(tokenizer):
    """2 CPU processes (gloo), one val batch each per domain: WER/CER/loss equal the 1-process values."""
    model = module(tokenizer, featurizer="weighted")
    dm = TinyDataModule(tokenizer, val_domains=("source", "target"), n_val_batches=2)
    single = pl.Trainer(**QUIET).validate(model, datamodule=dm, verbose=False)
    ddp = pl.Trainer(strategy="ddp_spawn", devices=2, **QUIET).validate(model, datamodule=dm, verbose=False)
    flat = [{k: v for r in results for k, v in r.items()} for results in (single, ddp)]
    assert set(flat[0]) == {f"val/{d}/{m}" for d in ("source", "target") for m in ("wer", "cer", "loss")}
    assert flat[1] == pytest.approx(flat[0], rel=1e-6)
