"""Decode-only sweeps: beam-search weights tuned on cached validation log-probs, without retraining.

    speechxfer sweep experiments/sweeps/quickstart_decode.yaml                # Optuna, in-process, SQLite

A sweep spec (:mod:`experiments.sweep_spec`) with a ``decode`` section::

    config: runs/quickstart/latest/config.yaml      # the data: a run / experiment config or a datamodule config
    metric: val/target/wer                          # val/<domain>/<wer|cer>
    n_trials: 30
    sampler: {type: tpe, seed: 0}
    decode:
      ckpt: runs/quickstart/latest/checkpoints/last.ckpt
      decoder: {beam_size: 50, lexicon: runs/quickstart/latest/lm/lexicon.txt, lm: runs/quickstart/latest/lm/lm.arpa}
    parameters:                                     # DecoderConfig fields (lightning_modules/decoding.py)
      lm_weight: {distribution: uniform, min: 0.0, max: 4.0}
      word_score: {distribution: uniform, min: -4.0, max: 2.0}

1. The model runs ONCE per (checkpoint, data): the log-probs of every validation utterance are stored in
   ``<runs_dir>/decode_cache/<checkpoint sha256>-<data sha256>.pt``; the data fingerprint covers every
   validation cut's audio key (path, size, mtime, window) and transcript, per domain. Later sweeps on the
   same checkpoint and data reuse the file (delete it to recompute).
2. Each trial builds ``DecoderConfig(**decoder, **sampled values)`` and decodes the cached log-probs; its
   value is the corpus-level WER/CER of the metric's domain (torchmetrics, as validation logs it); every
   domain's WER/CER and the decoding time are stored as trial attributes.

The study lives where training sweeps' studies live (``--storage``, default SQLite under
``<runs_dir>/sweeps``); rerunning adds trials. Trials take seconds, so there is no pruning, and only the
optuna backend applies. The best trial is printed with the ``speechxfer test`` / ``transcribe``
arguments that use it.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import optuna
import torch
from torchmetrics.functional.text import char_error_rate, word_error_rate

from datamodules.atomic import torch_save_atomic
from datamodules.batch import audio_key
from datamodules.dataset import cut_text
from experiments.sweep_spec import SweepSpec, SweepSpecError
from lightning_modules.decoding import BeamSearchDecoder, DecoderConfig, decoder_flags

CACHE_VERSION = 1


def check_decode_spec(spec: SweepSpec) -> tuple[Path, dict[str, Any], str]:
    """(checkpoint, fixed decoder fields, metric domain) of a decode-only spec; ``SweepSpecError`` if invalid."""
    decode = spec.decode
    if not isinstance(decode, dict) or set(decode) - {"ckpt", "decoder"} or "ckpt" not in decode:
        raise SweepSpecError(f"{spec.path}: decode needs 'ckpt' (and optionally 'decoder'), got {decode!r}")
    names = {f.name for f in fields(DecoderConfig)} - {"kind"}
    fixed = dict(decode.get("decoder") or {})
    unknown = (set(fixed) | {p.key for p in spec.parameters}) - names
    if unknown:
        raise SweepSpecError(f"{spec.path}: {sorted(unknown)} are not decoder settings; "
                             f"expected some of {sorted(names)}")
    parts = spec.metric.split("/")
    if len(parts) != 3 or parts[0] != "val" or parts[2] not in ("wer", "cer"):
        raise SweepSpecError(f"{spec.path}: a decode-only metric is val/<domain>/<wer|cer>, got {spec.metric!r}")
    if spec.fixed_args:
        raise SweepSpecError(f"{spec.path}: fixed_args are training arguments; a decode-only sweep takes none")
    ckpt = Path(decode["ckpt"])
    if not ckpt.is_file():
        raise SweepSpecError(f"{spec.path}: decode.ckpt {ckpt}: no such checkpoint (train it first)")
    return ckpt, fixed, parts[1]


def checkpoint_fingerprint(path: Path) -> str:
    """sha256 of the checkpoint's bytes (16 hex digits)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def validation_loaders(datamodule) -> dict[str, Any]:
    """{domain: validation DataLoader} of one process (rank 0 of 1)."""
    datamodule.prepare_data()
    datamodule.setup("validate")
    return dict(zip(datamodule.val_domains, datamodule.val_dataloader(rank=0, world_size=1)))


def data_fingerprint(loaders: dict[str, Any]) -> str:
    """sha256 (16 hex) of every validation cut's audio key and transcript, per domain; no audio is read."""
    h = hashlib.sha256()
    for domain, loader in loaders.items():
        h.update(f"[{domain}]".encode())
        for cuts in loader.sampler:
            for cut in cuts:
                h.update(f"{audio_key(cut)}\t{cut_text(cut)}\n".encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:16]


@torch.inference_mode()
def compute_log_probs(model, loaders: dict[str, Any], device: torch.device,
                      sample_rate: int) -> dict[str, dict[str, list]]:
    """{domain: {"log_probs": [(T_i, V) float32], "texts": [...], "ids": [...], "seconds": float}}."""
    out = {}
    for domain, loader in loaders.items():
        entry: dict[str, Any] = {"log_probs": [], "texts": [], "ids": [], "seconds": 0.0}
        for batch in loader:
            if "texts" not in batch:
                raise ValueError(f"validation domain {domain!r} has no transcripts to score against")
            log_probs, lengths = model(batch["audio"].to(device), batch["lengths"].to(device), batch["audio_keys"])
            entry["log_probs"] += [lp[:n].float().cpu().clone() for lp, n in zip(log_probs, lengths.tolist())]
            entry["texts"] += list(batch["texts"])
            entry["ids"] += list(batch["ids"])
            entry["seconds"] += float(batch["lengths"].sum()) / sample_rate
        out[domain] = entry
    return out


def load_or_compute(ckpt: Path, data_config: str, runs_dir: str, device: torch.device) -> tuple[dict, Path, bool]:
    """(cache, its path, whether the model ran now): the validation log-probs of ``ckpt`` on the data."""
    from experiments.lm import load_datamodule

    datamodule = load_datamodule(data_config)
    loaders = validation_loaders(datamodule)
    key = f"{checkpoint_fingerprint(ckpt)}-{data_fingerprint(loaders)}"
    path = Path(runs_dir) / "decode_cache" / f"{key}.pt"
    if path.is_file():
        cache = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain values only
        if cache.get("version") == CACHE_VERSION:
            return cache, path, False
    from lightning_modules import load_model

    model = load_model(ckpt, map_location=device)
    cache = {"version": CACHE_VERSION, "ckpt": str(ckpt), "data": str(data_config),
             "tokenizer": model.tokenizer.to_dict(),
             "domains": compute_log_probs(model, loaders, device, datamodule.sample_rate)}
    torch_save_atomic(cache, path)
    return cache, path, True


def decode_cached(cache: dict, decoder) -> dict[str, float]:
    """``val/<domain>/wer`` and ``val/<domain>/cer`` of ``decoder`` on the cached log-probs."""
    metrics = {}
    for domain, entry in cache["domains"].items():
        hyps = []
        for log_probs in entry["log_probs"]:
            hyps += decoder(log_probs[None], torch.tensor([log_probs.shape[0]]))
        metrics[f"val/{domain}/wer"] = float(word_error_rate(hyps, entry["texts"]))
        metrics[f"val/{domain}/cer"] = float(char_error_rate(hyps, entry["texts"]))
    return metrics


def run_decode_sweep(spec: SweepSpec, backend: str, storage: str | None, runs_dir: str, n_trials: int) -> int:
    """Run ``n_trials`` decode-only trials (see module docstring); 0 if any trial of the study completed."""
    from datamodules.text import tokenizer_from_dict
    from experiments.sweep import optimize_and_report, suggest

    if backend != "optuna":
        raise SweepSpecError(f"{spec.path}: decode-only sweeps run with the optuna backend (trials take seconds)")
    ckpt, fixed, domain = check_decode_spec(spec)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    start = time.perf_counter()
    cache, path, computed = load_or_compute(ckpt, spec.config, runs_dir, device)
    if domain not in cache["domains"]:
        raise SweepSpecError(f"{spec.path}: metric domain {domain!r} is not a validation domain "
                             f"({sorted(cache['domains'])})")
    seconds = sum(e["seconds"] for e in cache["domains"].values())
    print(f"log-probs of {seconds / 60:.1f} min of validation audio {'computed' if computed else 'reused'}: "
          f"{path} ({time.perf_counter() - start:.1f} s)")
    tokenizer = tokenizer_from_dict(cache["tokenizer"])

    def objective(trial: optuna.Trial) -> float:
        values = {p.key: suggest(trial, p) for p in spec.parameters}
        config = DecoderConfig(**{**fixed, **values, "kind": "beam"})
        t0 = time.perf_counter()
        metrics = decode_cached(cache, BeamSearchDecoder(tokenizer, config))
        trial.set_user_attr("metrics", metrics)
        trial.set_user_attr("decode_s_per_audio_s", (time.perf_counter() - t0) / max(seconds, 1e-9))
        return metrics[spec.metric]

    storage = storage or f"sqlite:///{Path(runs_dir) / 'sweeps' / spec.study_name}.db"
    spec.pruner = {"type": "none"}
    best = optimize_and_report(spec, storage, objective, n_trials)
    if best is None:
        return 1
    config = DecoderConfig(**{**fixed, **best.params})
    changed = {k: v for k, v in asdict(config).items() if k != "kind" and v != getattr(DecoderConfig(), k)}
    print(f"best: trial {best.number} {spec.metric}={best.value:.4g} {best.params}\nuse it:\n"
          f"  speechxfer test --config EXPERIMENT.yaml --ckpt_path {ckpt} "
          f"--model.init_args.eval_decoders '{json.dumps({'beam': changed})}'\n"
          f"  speechxfer transcribe --ckpt {ckpt} {decoder_flags(config)} AUDIO ...")
    return 0
