"""Real 2-process CPU DDP run of LayerDrop with the plain ``ddp`` strategy (no find_unused_parameters).

    python tests/scripts/ddp_layerdrop.py --out DIR

Each rank trains a ``CTCModule`` on a tiny 4-layer ``TorchaudioBackbone(layer_drop=0.5)`` on *different*
tone-speech batches for ``STEPS`` steps and writes ``DIR/rank{r}.pt``: its final parameters and the
LayerDrop decisions of every training forward.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT)]

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from lightning_modules import CTCModule  # noqa: E402
from lightning_modules.backbones import TorchaudioBackbone  # noqa: E402
from tests.cli_helpers import TINY_TORCHAUDIO, tiny_weights  # noqa: E402
from tests.conftest import char_tokenizer, chunked, texts, tone_batch  # noqa: E402

STEPS, LAYERS, LAYER_DROP = 6, 4, 0.5


class RecordDecisions(pl.Callback):
    """Wraps the backbone's LayerDrop.decide to keep every training forward's decisions."""

    def __init__(self) -> None:
        self.decisions: list[list[bool]] = []

    def on_fit_start(self, trainer, pl_module):
        layerdrop = pl_module.backbone.layerdrop
        decide = layerdrop.decide

        def recorded(*args, **kwargs):
            out = decide(*args, **kwargs)
            if layerdrop.training:
                self.decisions.append(out)
            return out

        layerdrop.decide = recorded


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    rank = int(os.environ.get("LOCAL_RANK", 0))
    tokenizer = char_tokenizer()
    overrides = {**TINY_TORCHAUDIO, "encoder_num_layers": LAYERS}
    weights = tiny_weights("WAV2VEC2_BASE", overrides, args.out)  # rank 0 writes it before rank 1 starts
    backbone = TorchaudioBackbone("WAV2VEC2_BASE", weights_path=str(weights), layer_drop=LAYER_DROP,
                                  config_overrides=overrides)
    model = CTCModule(backbone, tokenizer.to_dict(), lr=1e-3)
    batches = [tone_batch(c, tokenizer, seed=100 * rank + i) for i, c in enumerate(chunked(texts(8, seed=rank), 2))]
    record = RecordDecisions()
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=STEPS, callbacks=[record],
                         use_distributed_sampler=False, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, DataLoader(batches, batch_size=None))
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.save({"params": params, "decisions": record.decisions,
                "find_unused_parameters": trainer.strategy._ddp_kwargs.get("find_unused_parameters", False)},
               args.out / f"rank{rank}.pt")


if __name__ == "__main__":
    main()
