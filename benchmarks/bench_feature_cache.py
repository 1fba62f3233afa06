"""Feature cache of ``FrozenFeatureCTC``: epoch wall time from epoch 2 on, cache vs no cache.

    python benchmarks/bench_feature_cache.py [--quick] [--epochs 3] [--layers 4] [--threads 1]

A randomly initialised wav2vec 2.0 encoder (``TorchaudioBackbone("WAV2VEC2_BASE")`` with
``encoder_num_layers=--layers``: full 7-layer CNN, 768-d transformer; weights saved to a local file,
so nothing is downloaded) stays frozen under a weighted layer sum + BiLSTM head (the demo_frozen
head). Both runs train the same model on the same ``ASRDataModule`` batches (``num_workers=0``,
so audio decoding is inside the timed epoch in both); only ``feature_cache_dir`` differs. Epoch 1
of the cached run computes and writes the features, later epochs read them. Goal: mean epoch time
of epochs 2.. with cache <= 0.2 x without.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_common import make_tone_corpus, ratio_line, set_threads  # noqa: E402

TINY = {"extractor_conv_layer_config": [[32, 10, 5], [32, 3, 2], [32, 3, 2], [32, 3, 2], [32, 3, 2], [32, 2, 2],
                                        [32, 2, 2]],
        "encoder_embed_dim": 64, "encoder_num_heads": 2, "encoder_ff_interm_features": 128,
        "encoder_pos_conv_kernel": 16, "encoder_pos_conv_groups": 4}


def backbone_weights(work: Path, layers: int, quick: bool) -> dict:
    """Backbone init args of a random-init encoder whose weights are written to ``work`` (no download)."""
    import torch

    from lightning_modules.backbones import TorchaudioBackbone, save_backbone_weights

    overrides = {"encoder_num_layers": layers, **(TINY if quick else {})}
    torch.manual_seed(0)
    path = save_backbone_weights(TorchaudioBackbone("WAV2VEC2_BASE", config_overrides=overrides), work / "w2v2.pt")
    return {"bundle": "WAV2VEC2_BASE", "config_overrides": overrides, "weights_path": str(path)}


class EpochClock:
    """Callback recording each training epoch's wall time."""

    def __new__(cls):
        from pytorch_lightning import Callback

        class _Clock(Callback):
            def __init__(self) -> None:
                self.times: list[float] = []
                self._t0 = 0.0

            def on_train_epoch_start(self, trainer, pl_module):
                self._t0 = time.perf_counter()

            def on_train_epoch_end(self, trainer, pl_module):
                self.times.append(time.perf_counter() - self._t0)

        return _Clock()


def run(root: Path, backbone_args: dict, epochs: int, cache_dir: str | None) -> tuple[list[float], dict, float]:
    """(epoch times, cache stats, last epoch's mean train loss) of one fit."""
    import torch
    from pytorch_lightning import Trainer

    from datamodules import ASRDataModule, LibriSpeechCorpus
    from lightning_modules import FrozenFeatureCTC
    from lightning_modules.backbones import TorchaudioBackbone

    dm = ASRDataModule(train=LibriSpeechCorpus(root, ["train-clean-100"]), max_duration=20.0, num_buckets=4,
                       num_workers=0, pin_memory=False, cache_dir=str(root / ".cache"), seed=0)
    torch.manual_seed(0)
    model = FrozenFeatureCTC(TorchaudioBackbone(**backbone_args), dm.tokenizer.to_dict(),
                             featurizer="weighted", head="bilstm", head_hidden=128, lr=2e-3, warmup_steps=5,
                             feature_cache_dir=cache_dir)
    clock = EpochClock()
    trainer = Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, enable_model_summary=False, limit_val_batches=0,
                      num_sanity_val_steps=0, callbacks=[clock], use_distributed_sampler=False)
    trainer.fit(model, datamodule=dm)
    stats = dict(model.cache.stats) if model.cache is not None else {}
    return clock.times, stats, float(trainer.callback_metrics.get("train/loss_epoch", float("nan")))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny encoder, few utterances (smoke run)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--layers", type=int, default=4, help="transformer layers of the frozen encoder")
    parser.add_argument("--utterances", type=int, default=None, help="training utterances (default 48, quick 12)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    set_threads(args.threads)
    import logging

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    tmp = tempfile.TemporaryDirectory(prefix="bench_cache_")
    work = args.workdir or Path(tmp.name)
    n = args.utterances or (12 if args.quick else 48)
    root = make_tone_corpus(work / "corpus", train=n, dev=2, test=2, words=(2, 4) if args.quick else (3, 6))
    backbone_args = backbone_weights(work, 2 if args.quick else args.layers, args.quick)

    off, _, loss_off = run(root, backbone_args, args.epochs, None)
    print(f"no cache: epochs {[round(t, 2) for t in off]} s", flush=True)
    on, stats, loss_on = run(root, backbone_args, args.epochs, str(work / "feature_cache"))
    print(f"cache:    epochs {[round(t, 2) for t in on]} s; stats {stats}", flush=True)
    later_on, later_off = statistics.mean(on[1:]), statistics.mean(off[1:])
    detail = (f"{n} utts, {args.layers if not args.quick else 2}-layer frozen encoder; epochs 2..{args.epochs}: "
              f"{later_on:.2f} s vs {later_off:.2f} s; epoch 1 with cache writes {on[0] / off[0]:.2f}x; "
              f"hit rate {stats.get('hits', 0) / max(1, stats.get('hits', 0) + stats.get('misses', 0)):.2f}; "
              f"final train loss {loss_on:.3f} (cache) vs {loss_off:.3f}")
    print(ratio_line("frozen features epoch 2+: cache / no cache", later_on / later_off, 0.2, detail=detail,
                     quick=args.quick))
    tmp.cleanup()


if __name__ == "__main__":
    main()
