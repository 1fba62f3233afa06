"""``load_model``: rebuild any speechxfer module from its checkpoint alone (offline); ``load_tokenizer``."""

from __future__ import annotations

from pathlib import Path

import torch
from pytorch_lightning.cli import instantiate_class

from datamodules.text import tokenizer_from_dict
from lightning_modules.backbones.base import build_backbone
from lightning_modules.checkpoint_io import read_checkpoint
from lightning_modules.ctc import CTCModule


def load_model(ckpt_path: str | Path, map_location: str | torch.device = "cpu", trusted: bool = False) -> CTCModule:
    """Module class, backbone architecture, hyper-parameters (tokenizer included) and weights from ``ckpt_path``.

    ``checkpoint["speechxfer"]`` names the module class and the backbone architecture;
    ``checkpoint["hyper_parameters"]`` holds every other init argument, the tokenizer among them.
    Returns the module in eval mode; ``model.transcribe(audio (B, T), lengths (B,)) -> list[str]``.
    Never calls ``backbone.load_pretrained()`` (the checkpoint holds every weight). The file is read
    weights-only (``lightning_modules.checkpoint_io.read_checkpoint``); ``trusted=True`` allows full
    unpickling of this file.
    """
    checkpoint = read_checkpoint(ckpt_path, map_location=map_location, trusted=trusted)
    info = checkpoint.get("speechxfer")
    if info is None:
        raise ValueError(f"{ckpt_path}: not a speechxfer checkpoint (no 'speechxfer' entry; "
                         "was it saved by a CTCModule through a Trainer?)")
    # LightningCLI adds "_class_path" / "_instantiator" entries: not init arguments
    hparams = {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if not k.startswith("_")}
    if "vocab_size" in hparams:
        raise ValueError(f"{ckpt_path}: written by an older speechxfer (a 'vocab_size' hyper-parameter; the "
                         "vocabulary is now the tokenizer's): retrain, or load it with that version")
    backbone = build_backbone(info["backbone_config"])
    model = instantiate_class((backbone,), {"class_path": info["module_class"], "init_args": hparams})
    model.load_state_dict(checkpoint["state_dict"], strict=True)
    model.on_load_checkpoint(checkpoint)
    return model.to(torch.device(map_location)).eval()


def load_tokenizer(ckpt_path: str | Path):
    """The tokenizer a speechxfer checkpoint carries (its ``tokenizer`` hyper-parameter); the weights are
    memory-mapped, not read."""
    checkpoint = read_checkpoint(ckpt_path, mmap=True)  # weights only
    tokenizer = checkpoint.get("hyper_parameters", {}).get("tokenizer")
    if "speechxfer" not in checkpoint or tokenizer is None:
        raise ValueError(f"{ckpt_path}: no tokenizer in this checkpoint (not saved by speechxfer fit?)")
    return tokenizer_from_dict(tokenizer)
