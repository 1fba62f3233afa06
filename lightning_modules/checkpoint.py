"""``load_model``: rebuild any speechxfer module from its checkpoint alone (offline)."""

from __future__ import annotations

from pathlib import Path

import torch

from lightning_modules.backbones.base import build_backbone
from lightning_modules.checkpoint_io import read_checkpoint
from lightning_modules.ctc import CTCModule, import_class


def load_model(ckpt_path: str | Path, map_location: str | torch.device = "cpu", trusted: bool = False) -> CTCModule:
    """Module class, backbone architecture, hyper-parameters, tokenizer and weights from ``ckpt_path``.

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
    cls = import_class(info["module_class"])
    # LightningCLI adds "_class_path" / "_instantiator" entries: not init arguments
    hparams = {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if not k.startswith("_")}
    hparams["tokenizer"] = info.get("tokenizer") or hparams.get("tokenizer")
    model = cls(backbone=build_backbone(info["backbone_config"]), **hparams)
    model.load_state_dict(checkpoint["state_dict"], strict=True)
    model.on_load_checkpoint(checkpoint)
    return model.to(torch.device(map_location)).eval()
