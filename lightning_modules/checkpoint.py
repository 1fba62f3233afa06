"""``load_model``: rebuild any speechxfer module from its checkpoint alone (offline); ``load_tokenizer``."""

from __future__ import annotations

from pathlib import Path

import torch

from datamodules.text import tokenizer_from_dict
from lightning_modules.backbones.base import build_backbone
from lightning_modules.ctc import CTCModule, import_class


def load_model(ckpt_path: str | Path, map_location: str | torch.device = "cpu") -> CTCModule:
    """Module class, backbone architecture, hyper-parameters, tokenizer and weights from ``ckpt_path``.

    Returns the module in eval mode; ``model.transcribe(audio (B, T), lengths (B,)) -> list[str]``.
    Never calls ``backbone.load_pretrained()`` (the checkpoint holds every weight).
    """
    checkpoint = torch.load(ckpt_path, map_location=map_location, weights_only=False)
    info = checkpoint.get("speechxfer")
    if info is None:
        raise ValueError(f"{ckpt_path}: not a speechxfer checkpoint (no 'speechxfer' entry; "
                         "was it saved by a CTCModule through a Trainer?)")
    cls = import_class(info["module_class"])
    # LightningCLI adds "_class_path" / "_instantiator" entries: not init arguments
    hparams = {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if not k.startswith("_")}
    hparams["tokenizer"] = _tokenizer_dict(checkpoint)
    model = cls(backbone=build_backbone(info["backbone_config"]), **hparams)
    model.load_state_dict(checkpoint["state_dict"], strict=True)
    model.on_load_checkpoint(checkpoint)
    return model.to(torch.device(map_location)).eval()


def _tokenizer_dict(checkpoint: dict) -> dict | None:
    """The tokenizer's ``to_dict()`` a checkpoint carries (``speechxfer`` entry, else the hyper-parameters)."""
    return checkpoint["speechxfer"].get("tokenizer") or checkpoint.get("hyper_parameters", {}).get("tokenizer")


def load_tokenizer(ckpt_path: str | Path):
    """The tokenizer stored in a speechxfer checkpoint (the weights are memory-mapped, not read)."""
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True)
    if "speechxfer" not in checkpoint or _tokenizer_dict(checkpoint) is None:
        raise ValueError(f"{ckpt_path}: no tokenizer in this checkpoint (not saved by speechxfer fit?)")
    return tokenizer_from_dict(_tokenizer_dict(checkpoint))
