"""LoRA / bottleneck adapters: base weights bit-identical, only adapters (+ head) train, groups, summary."""

from __future__ import annotations

import copy
import json

import pytest
import pytorch_lightning as pl
import torch

from callbacks import GradualUnfreezing, RunSummary
from lightning_modules import FineTuneCTC, load_model
from lightning_modules.backbones import TorchaudioBackbone
from tests.cli_helpers import TINY_TORCHAUDIO, tiny_weights
from tests.conftest import QUIET, TinyDataModule, char_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")
OVERRIDES = {**TINY_TORCHAUDIO, "encoder_projection_dropout": 0.0, "encoder_dropout": 0.0}


def model(tmp_path, adapter, bundle="WAV2VEC2_BASE", **kwargs) -> FineTuneCTC:
    weights = tiny_weights(bundle, OVERRIDES, tmp_path)
    torch.manual_seed(0)
    backbone = TorchaudioBackbone(bundle, weights_path=str(weights), config_overrides=OVERRIDES)
    tok = char_tokenizer()
    return FineTuneCTC(backbone, tok.to_dict(), adapter=adapter, lr=3e-3,
                       dropout=0.0, **kwargs)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def fit(module, tmp_path, steps=4, callbacks=()) -> pl.Trainer:
    trainer = pl.Trainer(max_steps=steps, num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=tmp_path,
                         callbacks=[RunSummary(), *callbacks], **QUIET)
    trainer.fit(module, datamodule=TinyDataModule(n_train=8, batch_size=2))
    return trainer


@pytest.mark.parametrize("adapter", [
    {"kind": "lora", "targets": ["q", "k", "v", "out", "ffn_in", "ffn_out"], "rank": 2, "alpha": 4},
    {"kind": "bottleneck", "targets": ["ffn"], "bottleneck": 8},
])
def test_adapters_train_alone_and_base_weights_stay_bit_identical(tmp_path, adapter):
    module = model(tmp_path, adapter)
    module.setup("fit")  # pretrained weights, as Trainer.fit does (it is a no-op to repeat)
    base, head = snapshot(module.backbone), snapshot(module.head)
    adapters_before = snapshot(module.adapters)
    trainer = fit(module, tmp_path)
    after = module.backbone.state_dict()
    assert all(torch.equal(base[k], after[k]) for k in base if "_extra_state" not in k)
    assert any(not torch.equal(adapters_before[k], v) for k, v in module.adapters.state_dict().items())
    assert any(not torch.equal(head[k], v) for k, v in module.head.state_dict().items())
    trainable = {id(p) for p in module.parameters() if p.requires_grad}
    assert trainable == {id(p) for p in [*module.adapters.parameters(), *module.head.parameters()]}
    expected = sum(p.numel() for p in [*module.adapters.parameters(), *module.head.parameters()])
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["trainable_params"] == expected < summary["total_params"] // 2
    grouped = {id(p) for _, ps in module.layer_groups() for p in ps}
    assert trainable <= grouped and trainer.global_step == 4


def test_adapters_start_as_the_pretrained_model_and_sit_in_their_layer_groups(tmp_path):
    plain = model(tmp_path, None).eval()
    lora = model(tmp_path, {"kind": "lora", "targets": ["q", "v"], "rank": 2}).eval()
    audio, lengths = torch.randn(2, 8000), torch.tensor([8000, 6000])
    assert torch.equal(plain(audio, lengths)[0], lora(audio, lengths)[0])  # B = 0: identical outputs
    groups = dict(lora.layer_groups())
    for i in range(2):
        names = {k for k in lora.adapters.adapters if f"layers/{i}/" in k}
        assert names == {f"model/encoder/transformer/layers/{i}/attention/{p}_proj" for p in "qv"}
        ids = {id(p) for k in names for p in lora.adapters.adapters[k].parameters()}
        assert ids <= {id(p) for p in groups[f"layer.{i}"]}


def test_gradual_unfreezing_unfreezes_adapters_but_never_the_base(tmp_path):
    module = model(tmp_path, {"kind": "lora", "targets": ["v"], "rank": 2})
    seen = []

    class Trainable(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, *args):
            seen.append((any(p.requires_grad for p in pl_module.adapters.parameters()),
                         any(p.requires_grad for p in pl_module.backbone.parameters())))

    fit(module, tmp_path, steps=4, callbacks=[GradualUnfreezing({0: ["head"], 2: ["all"]}, unit="step"), Trainable()])
    assert seen == [(False, False), (False, False), (True, False), (True, False)]


def test_checkpoint_round_trip_and_deepcopy_keep_the_adapters(tmp_path):
    module = model(tmp_path, {"kind": "lora", "targets": ["q", "ffn_out"], "rank": 2})
    trainer = fit(module, tmp_path, steps=2)
    trainer.save_checkpoint(tmp_path / "lora.ckpt")
    loaded = load_model(tmp_path / "lora.ckpt")
    audio, lengths = torch.randn(1, 8000), torch.tensor([8000])
    module.eval()
    assert torch.equal(loaded(audio, lengths)[0], module(audio, lengths)[0])
    clone = copy.deepcopy(module)
    with torch.no_grad():
        for p in clone.adapters.parameters():
            p.add_(1.0)
    assert not torch.equal(clone(audio, lengths)[0], module(audio, lengths)[0])  # hooks follow the copy
    assert torch.equal(loaded(audio, lengths)[0], module(audio, lengths)[0])


def test_unusable_targets_are_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"not found"):  # torchaudio WavLM attention is nn.MultiheadAttention
        model(tmp_path, {"kind": "lora", "targets": ["q"]}, bundle="WAVLM_BASE")
    model(tmp_path, {"kind": "lora", "targets": ["ffn_in"]}, bundle="WAVLM_BASE")
    with pytest.raises(ValueError, match="targets must be among"):
        model(tmp_path, {"kind": "lora", "targets": ["query"]})
