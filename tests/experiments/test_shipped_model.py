"""The shipped source model (experiments/models/synth_en_bigru.ckpt, see its README) loads everywhere it should.

Weights-only file (tensors and plain types), fp16 storage restored to fp32 by every loader; usable as a
backbone (``CheckpointBackbone``), by ``load_model`` and by ``speechxfer transcribe``, whose transcript of
a demo clip is recognisable (character error rate against the reference well under 50 %).
"""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from pathlib import Path

import pytest
import torch
from torchmetrics.functional.text import char_error_rate

from experiments.cli import main
from lightning_modules import load_model
from lightning_modules.backbones import CheckpointBackbone, ScratchEncoder
from tests.cli_helpers import REPO

MODEL = REPO / "experiments" / "models" / "synth_en_bigru.ckpt"
DEMO = REPO / "experiments" / "demo_corpus" / "LibriSpeech" / "test-clean" / "3001" / "7001"
CLIPS = {f"3001-7001-000{i}": None for i in range(3)}


def references() -> dict[str, str]:
    lines = (DEMO / "3001-7001.trans.txt").read_text().splitlines()
    return {uid: text.lower() for uid, text in (line.split(" ", 1) for line in lines) if uid in CLIPS}


def test_weights_only_small_and_complete():
    assert MODEL.stat().st_size < 10e6
    checkpoint = torch.load(MODEL, map_location="cpu", weights_only=True)
    assert set(checkpoint) <= {"state_dict", "hyper_parameters", "speechxfer", "global_step", "epoch",
                               "pytorch-lightning_version"}
    assert {v.dtype for v in checkpoint["state_dict"].values()} == {torch.float16}
    assert checkpoint["speechxfer"]["module_class"] == "lightning_modules.ctc.CTCModule"


def test_checkpoint_backbone_restores_fp32_weights():
    backbone = CheckpointBackbone(str(MODEL))
    backbone.load_pretrained()
    assert isinstance(backbone.inner, ScratchEncoder) and backbone.output_dim == 384
    stored = torch.load(MODEL, map_location="cpu", weights_only=True)["state_dict"]
    for name, param in backbone.named_parameters():
        assert param.dtype == torch.float32
        assert torch.equal(param.detach(), stored[f"backbone.{name}"].float())


def test_transcribe_prints_recognisable_transcripts(capsys):
    files = [DEMO / f"{uid}.flac" for uid in CLIPS]
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["transcribe", "--ckpt", str(MODEL), *map(str, files)]) == 0
    lines = dict(line.split("\t", 1) for line in out.getvalue().splitlines())
    refs = references()
    hyps = {Path(path).stem: text for path, text in lines.items()}
    assert set(hyps) == set(refs)
    cer = float(char_error_rate([hyps[u] for u in refs], list(refs.values())))
    assert cer < 0.25, f"CER {cer:.2f}: {hyps}"


@pytest.mark.usefixtures("one_thread")
def test_load_model_equals_transcribe_path():
    model = load_model(MODEL)
    assert next(model.parameters()).dtype == torch.float32
    assert model.tokenizer.to_dict() == model.hparams.tokenizer
