"""LayerDrop: decisions per (seed, draw), zero gradients for skipped layers, identical replicas under DDP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightning_modules.backbones import TorchaudioBackbone
from lightning_modules.backbones.layer_drop import LayerDrop
from tests.cli_helpers import TINY_TORCHAUDIO
from tests.corpus_factory import tone_speech

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "ddp_layerdrop.py"
DIST_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GLOBAL_RANK", "RANK")


def test_decisions_are_a_function_of_seed_and_draw_and_resume_from_state():
    a, b = LayerDrop(0.5, seed=3).train(), LayerDrop(0.5, seed=3).train()
    first = [a.decide(12) for _ in range(5)]
    assert first == [b.decide(12) for _ in range(5)]
    assert any(any(d) for d in first) and not all(all(d) for d in first)
    c = LayerDrop(0.5, seed=3).train()
    c.load_state_dict(a.state_dict())  # the draw counter travels in the state dict
    assert c.draws == 5 and c.decide(12) == a.decide(12)
    assert LayerDrop(0.5, seed=4).train().decide(12) != LayerDrop(0.5, seed=3).train().decide(12)
    assert a.eval().decide(12) == [False] * 12 and a.draws == 6  # eval draws nothing
    assert all(d[0] is False for d in (LayerDrop(1.0).train().decide(3, keep=(0,)),))


def test_skipped_layers_get_zero_gradients_not_none():
    torch.manual_seed(0)
    backbone = TorchaudioBackbone("WAV2VEC2_BASE", layer_drop=1.0, config_overrides=TINY_TORCHAUDIO).train()
    audio = torch.from_numpy(tone_speech("cat", seed=1))[None]
    out = backbone(audio, torch.tensor([audio.size(1)]))
    out.hidden_states[-1].sum().backward()
    for layer in backbone.model.encoder.transformer.layers:
        grads = [p.grad for p in layer.parameters()]
        assert all(g is not None and not g.any() for g in grads)  # every layer dropped: all-zero gradients
    assert backbone.model.feature_extractor.conv_layers[0].conv.weight.grad.any()


def test_no_layerdrop_module_and_state_when_disabled():
    backbone = TorchaudioBackbone("WAV2VEC2_BASE", config_overrides=TINY_TORCHAUDIO)
    assert backbone.layerdrop is None and not any("layerdrop" in k for k in backbone.state_dict())
    assert "layerdrop._extra_state" in TorchaudioBackbone("WAV2VEC2_BASE", layer_drop=0.1,
                                                          config_overrides=TINY_TORCHAUDIO).state_dict()


@pytest.mark.slow
def test_layerdrop_under_two_rank_ddp_keeps_replicas_identical(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert rank0["find_unused_parameters"] is False  # the plain "ddp" strategy
    assert rank0["decisions"] == rank1["decisions"] and len(rank0["decisions"]) == 6
    flat = [d for step in rank0["decisions"] for d in step]
    assert any(flat) and not all(flat)  # some layers were skipped, some ran
    for name, value in rank0["params"].items():
        assert torch.equal(value, rank1["params"][name]), f"{name} differs between ranks"
