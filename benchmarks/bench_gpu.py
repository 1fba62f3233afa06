"""GPU readiness: wav2vec2-base fine-tuning throughput, this framework vs a hand-written loop, same run.

    python benchmarks/bench_gpu.py              # needs one CUDA GPU; ~2-3 min on an H100/H200-class GPU
    python benchmarks/bench_gpu.py --cpu-smoke  # reduced CPU mode: tiny encoder, fp32, a few steps (the tests)

Full mode: the WAV2VEC2_BASE architecture with random weights (no pretrained weights are reachable;
the speed is the same) and the recipe of ``experiments/librispeech_finetune_wav2vec2.yaml`` (mask
preset "100h", LayerDrop 0.1, feature encoder frozen, tri-stage lr), ``bf16-mixed``, AdamW, gradient
clipping 5.0. Data: a generated LibriSpeech-layout corpus (16 kHz FLAC) whose utterances have
LibriSpeech-like durations (normal, mean 12.7 s, sd 3.5 s, clipped to 1.5-24.5 s), each made by
concatenating utterances of the demo corpus's synthesised speech (so the FLAC decoding cost is that of
speech), batched by ``ASRDataModule`` into duration buckets of ~200 s of audio, 8 loader workers.

Both sides train copies of the same initial model on the same ``DataLoader`` for ``--warmup`` +
``--steps`` optimizer steps, one after the other:

- framework: ``Trainer.fit`` of ``FineTuneCTC`` with the callbacks every CLI run gets;
- hand loop: ``next(batch) -> .to(device) -> autocast forward -> CTC loss -> backward -> clip -> AdamW
  -> scheduler``, the same optimizer and param groups.

Over the timed steps (after the warm-up, CUDA synchronised at both ends) each side reports audio-hours
per GPU-hour (= audio seconds trained / wall seconds, one GPU), step time, peak GPU memory and the
fraction of the wall time spent inside the loader's ``next()`` (waiting on data). Goals (issue 15):
>= 4000 audio-h/GPU-h on an H100/H200-class GPU, framework >= 0.95x the hand loop, loader wait < 5 %.
Without CUDA the full mode prints ``SKIP`` and exits 0.
"""

from __future__ import annotations

import argparse
import copy
import math
import random
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_common import REPO, ratio_line, rss_mb, set_threads  # noqa: E402

DEMO = REPO / "experiments" / "demo_corpus" / "LibriSpeech" / "train-clean-100"
TINY = {"encoder_num_layers": 2, "encoder_embed_dim": 32, "encoder_num_heads": 2, "encoder_ff_interm_features": 64,
        "extractor_conv_layer_config": [[32, 10, 5], [32, 3, 2], [32, 3, 2], [32, 3, 2], [32, 3, 2], [32, 2, 2],
                                        [32, 2, 2]], "encoder_pos_conv_kernel": 16, "encoder_pos_conv_groups": 4}
FULL = dict(utterances=800, mean=12.7, sd=3.5, low=1.5, high=24.5, max_duration=200.0, workers=8, warmup=20, steps=200)
SMOKE = dict(utterances=16, mean=4.0, sd=1.0, low=2.0, high=6.0, max_duration=12.0, workers=0, warmup=1, steps=3)


# ---------------------------------------------------------------- data
def demo_utterances() -> list[tuple["object", str]]:
    """(waveform float32 (T,), UPPERCASE transcript) of every demo-corpus source training utterance."""
    import soundfile as sf

    out = []
    for trans in sorted(DEMO.rglob("*.trans.txt")):
        for line in trans.read_text(encoding="utf-8").splitlines():
            uid, text = line.split(" ", 1)
            wave, rate = sf.read(trans.parent / f"{uid}.flac", dtype="float32")
            assert rate == 16000, trans
            out.append((wave, text))
    return out


def make_corpus(root: Path, n: int, mean: float, sd: float, low: float, high: float, seed: int = 0) -> float:
    """``n`` utterances with LibriSpeech-like durations in ``root/LibriSpeech/train-clean-100``; total seconds."""
    import numpy as np
    import soundfile as sf

    sources, rng = demo_utterances(), random.Random(seed)
    plans = []
    for _ in range(n):
        target, parts, seconds = min(max(rng.gauss(mean, sd), low), high), [], 0.0
        while seconds < target:
            parts.append(rng.randrange(len(sources)))
            seconds += len(sources[parts[-1]][0]) / 16000
        plans.append(parts)
    folder = root / "LibriSpeech" / "train-clean-100" / "100" / "1"
    folder.mkdir(parents=True, exist_ok=True)

    def write(i: int) -> float:
        wave = np.concatenate([sources[j][0] for j in plans[i]])
        sf.write(folder / f"100-1-{i:04d}.flac", wave, 16000)
        return len(wave) / 16000

    with ThreadPoolExecutor(8) as pool:
        total = sum(pool.map(write, range(n)))
    lines = [f"100-1-{i:04d} " + " ".join(sources[j][1] for j in parts) for i, parts in enumerate(plans)]
    (folder / "100-1.trans.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return total


class TimedLoader:
    """Iterates ``loader`` epoch after epoch; records each batch's audio seconds and each ``next()`` wait."""

    def __init__(self, loader) -> None:
        self.loader = loader
        self.audio_s: list[float] = []           # per yielded batch, in order
        self.waits: list[tuple[float, float]] = []  # (time next() returned, seconds spent in it)

    def __iter__(self):
        while True:
            it = iter(self.loader)
            while True:
                start = time.perf_counter()
                try:
                    batch = next(it)
                except StopIteration:
                    break
                end = time.perf_counter()
                self.waits.append((end, end - start))
                self.audio_s.append(float(batch["lengths"].sum()) / 16000)
                yield batch

    def wait_between(self, start: float, stop: float) -> float:
        return sum(w for t, w in self.waits if start < t <= stop)


# ---------------------------------------------------------------- model and the two sides
def build_model(tokenizer, full: bool, weights: Path):
    import torch

    from lightning_modules import FineTuneCTC
    from lightning_modules.backbones import TorchaudioBackbone, save_backbone_weights

    torch.manual_seed(0)
    backbone = TorchaudioBackbone("WAV2VEC2_BASE", config_overrides=None if full else TINY, mask="100h",
                                  layer_drop=0.1)
    save_backbone_weights(backbone, weights)  # the random init, loaded back by fit's setup
    backbone = TorchaudioBackbone("WAV2VEC2_BASE", weights_path=str(weights), config_overrides=None if full else TINY,
                                  mask="100h", layer_drop=0.1)
    backbone.load_pretrained()
    return FineTuneCTC(backbone, tokenizer.to_dict(), freeze_feature_encoder=True,
                       lr=5e-4, backbone_lr=5e-5, layer_decay=0.9, decay="tri_stage", min_lr_ratio=0.05)


class Window:
    """Wall time of the timed steps, CUDA synchronised at both ends."""

    def __init__(self, cuda: bool) -> None:
        self.cuda, self.start, self.stop = cuda, math.nan, math.nan

    def now(self) -> float:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()


def run_framework(model, loader: TimedLoader, warmup: int, steps: int, cuda: bool, workdir: Path) -> Window:
    from pytorch_lightning import Callback, Trainer

    from experiments.cli import default_callbacks

    window = Window(cuda)

    class Clock(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == warmup and math.isnan(window.start):
                window.start = window.now()

        def on_train_end(self, trainer, pl_module):
            window.stop = window.now()

    callbacks = default_callbacks([], with_logger=False) + [Clock()]
    trainer = Trainer(accelerator="gpu" if cuda else "cpu", devices=1, precision="bf16-mixed" if cuda else "32-true",
                      max_steps=warmup + steps, max_epochs=-1, logger=False, enable_progress_bar=False,
                      enable_checkpointing=False, enable_model_summary=False, gradient_clip_val=5.0,
                      limit_val_batches=0, num_sanity_val_steps=0, use_distributed_sampler=False,
                      default_root_dir=str(workdir), callbacks=callbacks)
    trainer.fit(model, train_dataloaders=loader)
    return window


def run_hand(model, loader: TimedLoader, warmup: int, steps: int, cuda: bool) -> tuple[Window, list[float]]:
    import torch

    from lightning_modules.ctc import ctc_losses
    from lightning_modules.optim import TransferLRScheduler, base_learning_rates, build_param_groups

    device = torch.device("cuda" if cuda else "cpu")
    model.to(device).train()
    hp = model.hparams
    groups = model.layer_groups()
    lrs = base_learning_rates(len(groups), len(model.backbone_layer_groups()), hp.lr, hp.backbone_lr, hp.layer_decay)
    optimizer = torch.optim.AdamW(build_param_groups(groups, lrs, hp.warmup_steps, hp.weight_decay), lr=hp.lr)
    scheduler = TransferLRScheduler(optimizer, warmup + steps, hp.decay, hp.min_lr_ratio, phases=hp.tri_stage_phases)
    params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
    window, losses, batches = Window(cuda), [], iter(loader)
    for step in range(warmup + steps):
        if step == warmup:
            window.start = window.now()
        batch = next(batches)
        audio, lengths = batch["audio"].to(device, non_blocking=True), batch["lengths"].to(device, non_blocking=True)
        targets = batch["targets"].to(device, non_blocking=True)
        target_lengths = batch["target_lengths"].to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            log_probs, out_lengths = model(audio, lengths)
            loss = ctc_losses(log_probs, out_lengths, targets, target_lengths).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 5.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    window.stop = window.now()
    return window, [float(x) for x in losses]


def report(name: str, loader: TimedLoader, window: Window, warmup: int, steps: int, peak: str) -> dict[str, float]:
    elapsed = window.stop - window.start
    audio = sum(loader.audio_s[warmup:warmup + steps])
    wait = loader.wait_between(window.start, window.stop)
    out = {"throughput": audio / elapsed, "step_ms": 1e3 * elapsed / steps, "wait": wait / elapsed}
    print(f"{name:>10}: {out['throughput']:9.1f} audio-h/GPU-h | {out['step_ms']:8.1f} ms/step | "
          f"{audio / steps:6.1f} s audio/step | loader wait {100 * out['wait']:5.2f} % | peak memory {peak}",
          flush=True)
    return out


def peak_memory(cuda: bool) -> str:
    if cuda:
        import torch

        return f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
    return f"{rss_mb()[1]:.0f} MB RSS (CPU)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", "--quick", action="store_true",
                        help="reduced CPU mode (tiny encoder, fp32, few steps); --quick as in run_all.py")
    parser.add_argument("--steps", type=int, default=None, help="timed optimizer steps per side")
    parser.add_argument("--warmup", type=int, default=None, help="untimed first steps per side")
    parser.add_argument("--workers", type=int, default=None, help="loader worker processes")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available() and not args.cpu_smoke
    if not cuda and not args.cpu_smoke:
        print("SKIP: bench_gpu needs a CUDA GPU (none found); `--cpu-smoke` runs the reduced CPU mode")
        return 0
    settings = {**(FULL if cuda else SMOKE)}
    for key in ("steps", "warmup", "workers"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if not cuda:
        set_threads(1)
    import logging

    from datamodules import ASRDataModule, LibriSpeechCorpus

    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    tmp = tempfile.TemporaryDirectory(prefix="bench_gpu_")
    root = args.workdir or Path(tmp.name)
    start = time.perf_counter()
    total = make_corpus(root, settings["utterances"], settings["mean"], settings["sd"], settings["low"],
                        settings["high"])
    dm = ASRDataModule(train=LibriSpeechCorpus(root, ["train-clean-100"]), max_duration=settings["max_duration"],
                       num_buckets=10, num_workers=settings["workers"], pin_memory=cuda, cache_dir=str(root / ".cache"))
    loader = dm.train_dataloader(rank=0, world_size=1)
    device = torch.cuda.get_device_name() if cuda else "CPU (reduced mode)"
    print(f"{device}; corpus {settings['utterances']} utterances, {total / 3600:.2f} h, built in "
          f"{time.perf_counter() - start:.0f} s; batches of <= {settings['max_duration']:g} s audio, "
          f"{settings['workers']} workers; {settings['warmup']} + {settings['steps']} steps per side", flush=True)
    warmup, steps = settings["warmup"], settings["steps"]
    initial = build_model(dm.tokenizer, cuda, root / "init.pt")
    print(f"model: {sum(p.numel() for p in initial.parameters()) / 1e6:.2f}M parameters "
          f"({'bf16-mixed' if cuda else 'fp32'})", flush=True)

    hand_loader = TimedLoader(loader)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    hand_window, _ = run_hand(copy.deepcopy(initial), hand_loader, warmup, steps, cuda)
    hand = report("hand loop", hand_loader, hand_window, warmup, steps, peak_memory(cuda))
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    frame_loader = TimedLoader(loader)
    frame_window = run_framework(copy.deepcopy(initial), frame_loader, warmup, steps, cuda, root / "run")
    frame = report("framework", frame_loader, frame_window, warmup, steps, peak_memory(cuda))

    quick = not cuda
    detail = f"{device}; hand loop {hand['throughput']:.0f}; {frame['step_ms']:.0f} ms/step"
    print(ratio_line("GPU fine-tune wav2vec2-base bf16: audio-h per GPU-h (framework)", frame["throughput"], 4000,
                     lower_is_better=False, unit=" h/h", detail=detail, quick=quick))
    print(ratio_line("GPU fine-tune: framework / hand loop throughput", frame["throughput"] / hand["throughput"],
                     0.95, lower_is_better=False, detail=f"{device}", quick=quick))
    print(ratio_line("GPU fine-tune: loader wait, % of step time (framework)", 100 * frame["wait"], 5.0, unit=" %",
                     detail=f"hand loop {100 * hand['wait']:.2f} %", quick=quick))
    print(ratio_line("GPU fine-tune: step time, framework (ms)", frame["step_ms"], None, unit=" ms",
                     detail=f"hand loop {hand['step_ms']:.1f} ms; peak memory {peak_memory(cuda)}"))
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
