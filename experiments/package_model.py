"""Strip a training checkpoint down to a model to ship: weights, hyper-parameters, tokenizer, backbone config.

    python experiments/package_model.py runs/source_model/v2/checkpoints/best-1983.ckpt experiments/models/synth_en_bigru.ckpt

Keeps ``state_dict`` (stored as float16 unless ``--fp32``; every loader copies it into the model's
float32 parameters), ``hyper_parameters``, ``checkpoint["speechxfer"]``, ``global_step`` / ``epoch`` and
the Lightning version string (an older ``vocab_size`` hyper-parameter is dropped: the tokenizer
stored next to it owns the vocabulary); drops optimizer, scheduler, loop and callback state (about
two thirds of a training checkpoint). The result holds only tensors and plain Python types, so ``torch.load(path,
weights_only=True)`` reads it, and it loads through ``lightning_modules.load_model``,
``CheckpointBackbone(path)``, ``speechxfer transcribe --ckpt path`` and ``speechxfer validate|test
--ckpt_path path``. It cannot resume training.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from datamodules.atomic import torch_save_atomic

KEPT = ("state_dict", "hyper_parameters", "speechxfer", "global_step", "epoch", "pytorch-lightning_version")


def package(source: str | Path, out: str | Path, fp16: bool = True) -> dict:
    """Write the stripped checkpoint of ``source`` to ``out``; returns it (after a weights-only reload)."""
    checkpoint = torch.load(source, map_location="cpu", weights_only=False)
    if "speechxfer" not in checkpoint:
        raise ValueError(f"{source}: not a speechxfer checkpoint (no 'speechxfer' entry)")
    stripped = {key: checkpoint[key] for key in KEPT if key in checkpoint}
    hparams = dict(stripped.get("hyper_parameters", {}))
    if "vocab_size" in hparams and "tokenizer" in hparams:  # written before the tokenizer owned the vocabulary
        del hparams["vocab_size"]
        stripped["hyper_parameters"] = hparams
    dtype = torch.float16 if fp16 else None
    stripped["state_dict"] = {k: v.to(dtype) if dtype is not None and v.is_floating_point() else v
                              for k, v in checkpoint["state_dict"].items()}
    torch_save_atomic(stripped, out)
    try:
        return torch.load(out, map_location="cpu", weights_only=True)
    except Exception as err:  # a non-plain hyper-parameter (an object) would end up here
        Path(out).unlink()
        raise ValueError(f"{source}: the stripped checkpoint does not load with weights_only=True: {err}") from err


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a checkpoint written by speechxfer fit")
    parser.add_argument("out", type=Path, help="where to write the stripped model")
    parser.add_argument("--fp32", action="store_true", help="keep float32 weights (twice the size)")
    args = parser.parse_args(argv)
    stripped = package(args.source, args.out, fp16=not args.fp32)
    size = args.out.stat().st_size / 1e6
    print(f"{args.out}: {size:.1f} MB, step {stripped.get('global_step')}, "
          f"{sum(v.numel() for v in stripped['state_dict'].values()) / 1e6:.2f} M weights")


if __name__ == "__main__":
    main()
