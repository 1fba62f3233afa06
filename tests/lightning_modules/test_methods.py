"""The three transfer methods train with a pl.Trainer; frozen stays frozen; the cache; DANN; portability."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from lightning_modules import DANNCTC, FineTuneCTC, FrozenFeatureCTC, ganin_lambda, load_model
from lightning_modules.backbones import CheckpointBackbone, TorchaudioBackbone, save_backbone_weights
from tests.conftest import QUIET, LossRecorder, TinyDataModule, loss_fell, make_tiny_backbone

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL_CNN = [[32, 10, 5], [32, 3, 2], [32, 3, 2], [32, 3, 2], [32, 3, 2], [32, 2, 2], [32, 2, 2]]  # 50 frames/s
TINY_W2V2 = {"encoder_num_layers": 2, "encoder_embed_dim": 32, "encoder_num_heads": 2,
             "encoder_ff_interm_features": 64, "extractor_conv_layer_config": SMALL_CNN,
             "encoder_pos_conv_kernel": 16, "encoder_pos_conv_groups": 4, "extractor_mode": "layer_norm",
             "encoder_dropout": 0.0, "encoder_attention_dropout": 0.0, "encoder_ff_interm_dropout": 0.0,
             "encoder_projection_dropout": 0.0}


def common(tokenizer) -> dict:
    return dict(lr=3e-3, dropout=0.0, decay="constant")


def fit(model, dm, steps: int, **kwargs) -> tuple[pl.Trainer, LossRecorder]:
    pl.seed_everything(0)
    recorder = LossRecorder()
    callbacks = [recorder, *kwargs.pop("callbacks", [])]
    trainer = pl.Trainer(max_steps=steps, limit_val_batches=0, callbacks=callbacks, **{**QUIET, **kwargs})
    trainer.fit(model, datamodule=dm)
    return trainer, recorder


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ------------------------------------------------------------------ fine-tuning
def test_finetune_trains_with_permanently_frozen_feature_encoder(tokenizer, tmp_path):
    torch.manual_seed(0)
    random_init = TorchaudioBackbone("WAV2VEC2_XLSR53", config_overrides=TINY_W2V2)
    pretrained = save_backbone_weights(random_init, tmp_path / "w.pt")  # stands in for downloaded weights
    backbone = TorchaudioBackbone("WAV2VEC2_XLSR53", weights_path=str(pretrained), config_overrides=TINY_W2V2)
    model = FineTuneCTC(backbone, tokenizer.to_dict(), freeze_feature_encoder=True, **common(tokenizer))
    model.backbone.load_pretrained()
    before = snapshot(model.backbone)
    trainer, recorder = fit(model, TinyDataModule(tokenizer), 40)
    assert loss_fell(recorder.losses)
    after = model.backbone.state_dict()
    extractor = [k for k in before if k.startswith("model.feature_extractor.")]
    assert extractor and all(torch.equal(before[k], after[k]) for k in extractor)
    assert not torch.equal(before["model.encoder.transformer.layers.1.attention.k_proj.weight"],
                           after["model.encoder.transformer.layers.1.attention.k_proj.weight"])
    since = {g["name"]: g["active_since_step"] for g in trainer.optimizers[0].param_groups}
    assert since["feature_extractor"] is None and since["layer.0"] == 0 and since["head"] == 0
    with pytest.raises(ValueError, match="no layer group 'cnn'"):
        FineTuneCTC(make_tiny_backbone(), tokenizer.to_dict(), freeze_feature_encoder=True,
                    feature_encoder_group="cnn")


# ------------------------------------------------------------------ frozen features
class TrainingFlags(pl.Callback):
    def __init__(self) -> None:
        self.backbone_training: list[bool] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.backbone_training.append(any(m.training for m in pl_module.backbone.modules()))


def test_frozen_backbone_is_bit_identical_after_training_and_head_learns(tokenizer):
    model = FrozenFeatureCTC(make_tiny_backbone(), tokenizer.to_dict(), head="linear", **common(tokenizer))
    before, weights_before = snapshot(model.backbone), model.featurizer.weights.detach().clone()
    flags = TrainingFlags()
    trainer, recorder = fit(model, TinyDataModule(tokenizer), 40, callbacks=[flags])
    assert loss_fell(recorder.losses)
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())
    assert flags.backbone_training and not any(flags.backbone_training)
    optimised = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
    assert not any(id(p) in optimised for p in model.backbone.parameters())
    assert [g["name"] for g in trainer.optimizers[0].param_groups] == ["featurizer", "head"]
    assert not torch.equal(weights_before, model.featurizer.weights)
    assert {"layer_weights/0", "layer_weights/1"} <= set(trainer.callback_metrics)


@pytest.mark.parametrize("dtype, atol", [("float32", 0.0), ("float16", 2e-2)])
def test_feature_cache_hit_returns_the_recomputed_features(tokenizer, tmp_path, dtype, atol):
    model = FrozenFeatureCTC(make_tiny_backbone(), tokenizer.to_dict(), feature_cache_dir=str(tmp_path),
                             feature_cache_dtype=dtype, **common(tokenizer))
    dm = TinyDataModule(tokenizer, n_train=8, batch_size=4)
    fit(model, dm, 4)  # 2 batches per epoch: epoch 0 computes + stores, epoch 1 reads
    assert model.cache.stats["writes"] == 8 and model.cache.stats["hits"] == 8
    batch = dm.train_batches[1]
    cached, cached_lengths = model.hidden_states(batch["audio"], batch["lengths"], batch["audio_keys"])
    fresh, fresh_lengths = model.hidden_states(batch["audio"], batch["lengths"])
    assert model.cache.stats["hits"] == 12 and torch.equal(cached_lengths, fresh_lengths)
    for c, f in zip(cached, fresh):
        t = c.shape[1]
        assert torch.allclose(c, f[:, :t], atol=atol, rtol=0) and not f[:, t:].any()


def test_feature_cache_is_off_for_training_when_waveforms_are_augmented(tokenizer, tmp_path):
    model = FrozenFeatureCTC(make_tiny_backbone(), tokenizer.to_dict(), feature_cache_dir=str(tmp_path),
                             **common(tokenizer))
    with pytest.warns(UserWarning, match="augments waveforms"):
        fit(model, TinyDataModule(tokenizer, augments_waveform=True), 4)
    assert model.cache.stats["writes"] == 0 and model.cache.stats["hits"] == 0


# ------------------------------------------------------------------ DANN
def test_dann_trains_ctc_on_source_and_logs_domain_terms(tokenizer):
    model = DANNCTC(make_tiny_backbone(), tokenizer.to_dict(), domain_hidden=16, **common(tokenizer))
    dm = TinyDataModule(tokenizer, dann=True, val_domains=("source", "target"))
    trainer, recorder = fit(model, dm, 40)
    assert loss_fell(recorder.losses)
    metrics = trainer.callback_metrics
    assert {"train/ctc_loss", "train/domain_loss", "train/domain_acc", "train/lambda"} <= set(metrics)
    assert metrics["train/lambda"].item() == pytest.approx(ganin_lambda(39 / 40), rel=1e-6)
    assert 0.0 <= metrics["train/domain_acc"].item() <= 1.0
    results = pl.Trainer(**QUIET).validate(model, datamodule=dm, verbose=False)
    assert {"val/source/wer", "val/target/wer", "val/target/cer"} <= {k for r in results for k in r}


def test_dann_never_reads_target_labels(tokenizer):
    """Garbage target labels must give exactly the losses of unlabelled target batches."""
    losses = []
    for labels in (False, True):
        dm = TinyDataModule(tokenizer, dann=True, target_labels=labels)
        for batch in dm.train_batches:
            if labels:  # impossible labels: any use would change (or break) the loss
                batch["target"]["targets"].fill_(tokenizer.vocab_size + 7)
                batch["target"]["target_lengths"].fill_(10_000)
        model = DANNCTC(make_tiny_backbone(), tokenizer.to_dict(), domain_level="frame", domain_hidden=16,
                        **common(tokenizer))
        losses.append(fit(model, dm, 3)[1].losses)
    assert losses[0] == losses[1] and all(torch.isfinite(torch.tensor(losses[0])))


def test_dann_lambda_and_lr_keep_one_horizon_when_a_resume_changes_max_steps(tokenizer, tmp_path):
    """λ's schedule length is the LR scheduler's checkpointed ``total_steps``, not recomputed on resume."""
    args = {**common(tokenizer), "decay": "linear", "domain_hidden": 8}
    model = DANNCTC(make_tiny_backbone(), tokenizer.to_dict(), **args)
    trainer, _ = fit(model, TinyDataModule(tokenizer, dann=True, n_train=16), 4)
    trainer.save_checkpoint(tmp_path / "half.ckpt")
    lambdas = []

    class Lambdas(pl.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            lambdas.append((trainer.global_step, pl_module.grl.lambd, trainer.optimizers[0].param_groups[-1]["lr"]))

    resumed = DANNCTC(make_tiny_backbone(), tokenizer.to_dict(), **args)
    trainer = pl.Trainer(max_steps=6, limit_val_batches=0, callbacks=[Lambdas()], **QUIET)  # was 4
    trainer.fit(resumed, datamodule=TinyDataModule(tokenizer, dann=True, n_train=16), ckpt_path=tmp_path / "half.ckpt")
    assert resumed.total_steps == trainer.lr_scheduler_configs[0].scheduler.total_steps == 4  # the first fit's
    for step, lambd, lr in lambdas:  # both schedules on the same 4-step horizon (past it: λ max, lr 0)
        assert lambd == pytest.approx(ganin_lambda(min((step - 1) / 4, 1.0)), rel=1e-6)
        assert lr == pytest.approx(3e-3 * max(1 - step / 4, 0.0), abs=1e-9)
    assert [s for s, _, _ in lambdas] == [5, 6]


def test_dann_rejects_plain_batches(tokenizer):
    model = DANNCTC(make_tiny_backbone(), tokenizer.to_dict(), **common(tokenizer))
    with pytest.raises(ValueError, match="'source'.*'target'"):
        fit(model, TinyDataModule(tokenizer), 1)


# ------------------------------------------------------------------ checkpoints across methods
@pytest.mark.parametrize("cls, extra", [(FineTuneCTC, {"freeze_feature_encoder": False}),
                                        (FrozenFeatureCTC, {"head": "bilstm", "head_hidden": 8}),
                                        (DANNCTC, {"lambda_max": 0.5, "domain_level": "frame"})])
def test_load_model_rebuilds_every_method(tokenizer, tiny_batch, tmp_path, cls, extra):
    model = cls(make_tiny_backbone(), tokenizer.to_dict(), **extra, **common(tokenizer))
    trainer, _ = fit(model, TinyDataModule(tokenizer, dann=cls is DANNCTC), 2)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = load_model(tmp_path / "m.ckpt")
    assert type(loaded) is cls and all(loaded.hparams[k] == v for k, v in extra.items())
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(tiny_batch["audio"], tiny_batch["lengths"])[0],
                           loaded(tiny_batch["audio"], tiny_batch["lengths"])[0])
    assert loaded.transcribe(tiny_batch["audio"], tiny_batch["lengths"]) == model.transcribe(
        tiny_batch["audio"], tiny_batch["lengths"])


def test_finetuned_checkpoint_is_the_backbone_of_another_method(tokenizer, tmp_path):
    source = FineTuneCTC(make_tiny_backbone(), tokenizer.to_dict(), **common(tokenizer))
    before = snapshot(source.backbone)
    trainer, _ = fit(source, TinyDataModule(tokenizer), 3)
    trainer.save_checkpoint(tmp_path / "ft.ckpt")
    tuned = source.backbone.state_dict()
    assert any(not torch.equal(before[k], tuned[k]) for k in tuned)
    backbone = CheckpointBackbone(str(tmp_path / "ft.ckpt"))
    frozen = FrozenFeatureCTC(backbone, tokenizer.to_dict(), **common(tokenizer))
    trainer, _ = fit(frozen, TinyDataModule(tokenizer), 2)  # setup("fit") loads the checkpoint's backbone.*
    assert frozen.backbone.state_dict().keys() == tuned.keys()
    assert all(torch.equal(v, tuned[k]) for k, v in frozen.backbone.state_dict().items())
    trainer.save_checkpoint(tmp_path / "frozen.ckpt")
    (tmp_path / "ft.ckpt").unlink()  # the new checkpoint stands alone
    loaded = load_model(tmp_path / "frozen.ckpt")
    assert all(torch.equal(v, tuned[k]) for k, v in loaded.backbone.state_dict().items())


def test_gradual_unfreezing_callback_drives_the_param_groups(tokenizer):
    """Integration with callbacks.GradualUnfreezing: late groups start their own warm-up at activation."""
    from callbacks import GradualUnfreezing

    model = FineTuneCTC(make_tiny_backbone(), tokenizer.to_dict(), warmup_steps=2,
                        **{**common(tokenizer), "lr": 1e-3})
    seen = {}

    class Grab(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen[trainer.global_step] = {g["name"]: (g["active_since_step"], g["lr"])
                                         for g in trainer.optimizers[0].param_groups}

    fit(model, TinyDataModule(tokenizer), 4, callbacks=[GradualUnfreezing({0: ["head"], 2: ["all"]}, unit="step"),
                                                        Grab()])
    assert seen[0]["head"] == (0, pytest.approx(5e-4)) and seen[0]["layer.1"] == (None, 0.0)
    assert seen[2]["layer.1"] == (2, pytest.approx(5e-4)) and seen[2]["head"] == (0, pytest.approx(1e-3))
    assert seen[3]["frontend"] == (2, pytest.approx(1e-3))
