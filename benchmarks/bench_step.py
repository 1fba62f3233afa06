"""Framework overhead of one training step: Lightning + ``CTCModule`` vs a hand-written PyTorch loop.

    python benchmarks/bench_step.py [--quick] [--steps 40] [--rounds 8] [--threads 1]

Both sides train the same ``CTCModule(ScratchEncoder)`` from the same initial weights on the same
real ``ASRDataModule`` batches (one epoch, materialised in memory first and served by the same
``DataLoader``), with AdamW + ``TransferLRScheduler`` and gradient clipping at 5.0:

- framework: ``Trainer.fit`` (logger, progress bar, checkpointing, model summary off), i.e.
  ``training_step`` with its logging, Lightning's loop, hooks and optimizer closure;
- plain: ``for batch: forward -> ctc loss -> backward -> clip -> AdamW step -> scheduler step``.

Time per step = interval between consecutive step starts (after ``--warmup`` steps); rounds
alternate plain/framework, and each side's time is the sum over steps of that step's fastest round
(every round trains the same batches in the same order, so this removes a shared CPU's bursts).
The per-step losses of both sides are compared too: equal losses show it is the same computation.
Goal: framework / plain <= 1.05.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_common import make_tone_corpus, ratio_line, set_threads  # noqa: E402


def materialised_loader(root: Path, max_duration: float):
    """A DataLoader over one epoch of real ``ASRDataModule`` training batches held in memory."""
    from torch.utils.data import DataLoader

    from datamodules import ASRDataModule, LibriSpeechCorpus

    dm = ASRDataModule(train=LibriSpeechCorpus(root, ["train-clean-100"]), max_duration=max_duration,
                       num_buckets=4, num_workers=0, pin_memory=False, cache_dir=str(root / ".cache"))
    batches = list(dm.train_dataloader(rank=0, world_size=1))
    return DataLoader(batches, batch_size=None, shuffle=False), dm.tokenizer


def build_model(tokenizer, quick: bool):
    from lightning_modules import CTCModule
    from lightning_modules.backbones import ScratchEncoder

    size = dict(hidden=64, num_layers=1, conv_channels=8) if quick else dict(hidden=160, num_layers=2, conv_channels=32)
    backbone = ScratchEncoder(n_mels=80, kind="bilstm", subsampling=4, **size)
    return CTCModule(backbone, tokenizer.to_dict(), lr=2e-3, warmup_steps=5, decay="cosine")


class StepClock:
    """Lightning callback: a timestamp at every batch start, the loss at every batch end."""

    def __init__(self) -> None:
        from pytorch_lightning import Callback

        clock = self

        class _Hook(Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                clock.starts.append(time.perf_counter())

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                clock.losses.append(float(outputs["loss"]))

            def on_train_end(self, trainer, pl_module):
                clock.starts.append(time.perf_counter())

        self.starts: list[float] = []
        self.losses: list[float] = []
        self.callback = _Hook()


def run_framework(model, loader, steps: int, seed: int) -> tuple[list[float], list[float]]:
    """(step start times + end time, losses) of ``Trainer.fit`` for ``steps`` optimizer steps."""
    import torch
    from pytorch_lightning import Trainer

    clock = StepClock()
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=steps, max_epochs=-1, logger=False,
                      enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                      gradient_clip_val=5.0, limit_val_batches=0, num_sanity_val_steps=0,
                      callbacks=[clock.callback], use_distributed_sampler=False)
    torch.manual_seed(seed)
    trainer.fit(model, train_dataloaders=loader)
    return clock.starts, clock.losses


def run_plain(model, loader, steps: int, seed: int) -> tuple[list[float], list[float]]:
    """The same training as ``run_framework``, as a hand-written loop."""
    import torch

    from lightning_modules.ctc import ctc_losses
    from lightning_modules.optim import TransferLRScheduler, base_learning_rates, build_param_groups

    hp = model.hparams
    groups = model.layer_groups()
    lrs = base_learning_rates(len(groups), len(model.backbone_layer_groups()), hp.lr, hp.backbone_lr, hp.layer_decay)
    optimizer = torch.optim.AdamW(build_param_groups(groups, lrs, hp.warmup_steps, hp.weight_decay), lr=hp.lr)
    scheduler = TransferLRScheduler(optimizer, steps, hp.decay, hp.min_lr_ratio)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    model.train()
    torch.manual_seed(seed)
    starts, losses, step = [], [], 0
    while step < steps:
        for batch in loader:
            starts.append(time.perf_counter())
            optimizer.zero_grad(set_to_none=True)
            log_probs, lengths = model(batch["audio"], batch["lengths"], batch["audio_keys"])
            loss = ctc_losses(log_probs, lengths, batch["targets"], batch["target_lengths"]).mean()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss))
            step += 1
            if step == steps:
                break
    starts.append(time.perf_counter())
    return starts, losses


def step_times(starts: list[float], warmup: int) -> list[float]:
    """Seconds of each step after the first ``warmup`` (start of step i to start of step i + 1)."""
    return [b - a for a, b in zip(starts[warmup:-1], starts[warmup + 1:])]


def fastest_steps(rounds: list[list[float]]) -> float:
    """Sum over steps of the fastest time of that step over the rounds.

    Every round trains the same batches in the same order, so step i does the same work in every
    round; its minimum is its cost without the bursts of a shared CPU, which a whole-round total
    (or the best round) cannot separate from the framework's overhead.
    """
    return sum(min(step) for step in zip(*rounds))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny model and few steps (smoke run)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 40, quick 6)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed first steps (default 3, quick 1)")
    parser.add_argument("--rounds", type=int, default=None, help="plain/framework pairs (default 8, quick 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for both sides")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    steps = args.steps or (6 if args.quick else 40)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    rounds = args.rounds or (1 if args.quick else 8)
    set_threads(args.threads)

    import logging

    import torch

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    tmp = tempfile.TemporaryDirectory(prefix="bench_step_")
    root = make_tone_corpus(args.workdir or Path(tmp.name), train=24 if args.quick else 80, dev=2, test=2,
                            words=(2, 5) if args.quick else (4, 8))
    loader, tokenizer = materialised_loader(root, max_duration=8.0 if args.quick else 24.0)
    torch.manual_seed(0)
    initial = build_model(tokenizer, args.quick)
    sizes = [len(b["lengths"]) for b in loader]
    print(f"{len(sizes)} batches/epoch ({sum(sizes)} utts, mean {statistics.mean(sizes):.1f}/batch), "
          f"{sum(p.numel() for p in initial.parameters()) / 1e6:.2f}M params, {steps} steps, "
          f"{torch.get_num_threads()} thread(s)", flush=True)

    plain_steps, frame_steps, plain_losses, frame_losses = [], [], [], []
    for r in range(rounds):
        starts, plain_losses = run_plain(copy.deepcopy(initial), loader, steps, seed=r)
        plain_steps.append(step_times(starts, warmup))
        starts, frame_losses = run_framework(copy.deepcopy(initial), loader, steps, seed=r)
        frame_steps.append(step_times(starts, warmup))
        print(f"round {r}: plain {sum(plain_steps[-1]):.3f} s, framework {sum(frame_steps[-1]):.3f} s "
              f"-> {sum(frame_steps[-1]) / sum(plain_steps[-1]):.3f}x", flush=True)
    diff = max(abs(a - b) for a, b in zip(plain_losses, frame_losses))
    plain_t, frame_t = fastest_steps(plain_steps), fastest_steps(frame_steps)
    n = steps - warmup
    rounds_median = statistics.median(sum(f) / sum(p) for f, p in zip(frame_steps, plain_steps))
    detail = (f"per-step best of {rounds} rounds: framework {1e3 * frame_t / n:.1f} ms/step vs plain "
              f"{1e3 * plain_t / n:.1f} ms/step over {n} steps; max abs loss diff {diff:.2e}; "
              f"median of round ratios {rounds_median:.3f}")
    print(ratio_line("train step: framework / plain PyTorch", frame_t / plain_t, 1.05, detail=detail,
                     quick=args.quick))
    print(ratio_line("train step: same losses (max abs diff)", diff, 1e-4, unit=""))
    tmp.cleanup()


if __name__ == "__main__":
    main()
