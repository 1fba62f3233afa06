"""Test-time adaptation (SUTA, Lin et al. 2022): adapt to each utterance, decode, restore the weights.

For every group of ``utterances`` utterances of an evaluation batch (default 1: per utterance)::

    copy the adaptable parameters                      (default: normalisation layers + feature encoder)
    repeat `steps` times: loss = em_weight · EM + (1 − em_weight) · MCC on the model's own output; optimizer step
    log-probs = model(group)                           (the adapted model; this is what is decoded)
    restore the copied parameters                      (bit for bit; the optimizer is rebuilt per group)

The model runs in eval mode throughout (no dropout / SpecAugment / LayerDrop), so adaptation is
deterministic. Objective, on ``log_probs / temperature`` renormalised (= softmax(logits / T)):

- EM: mean entropy over the valid frames whose argmax is not blank (all valid frames of the group);
  0 when every frame is blank;
- MCC (minimum class confusion): per utterance over its valid frames, ``C = Pᵀ diag(w) P`` (V × V),
  each row normalised to sum 1, ``MCC = (sum(C) − trace(C)) / V``; ``w`` = ``1 + exp(−entropy)`` per frame
  scaled to mean 1 (``mcc_reweight``; else 1); averaged over the group's utterances.

Adaptable parameters (``params``), resolved per backbone type (``frontend_modules``):
"norm+frontend" (SUTA's "LN + feature"), "norm" (affine weights of every LayerNorm / GroupNorm /
BatchNorm in backbone, featurizer and head), "frontend" (torchaudio / HF wav2vec2-family:
``feature_extractor`` + ``feature_projection``; ``ScratchEncoder``: subsampling convs + input
projection; a ``CheckpointBackbone``: its inner backbone's) or "all" (backbone + featurizer + head).

Attach with ``model.test_time_adaptation = TestTimeAdapter(settings)`` (``callbacks.TestTimeAdaptation``
does it for ``speechxfer test``; ``speechxfer transcribe`` for predict): ``CTCModule.eval_forward``
then routes every val/test/predict batch through it. ``stats`` accumulates the cost: adaptation
seconds (the extra compute: every step plus copy/restore, not the final decoding forward) per second of
audio, and the objective before the first and after the last step.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import typing
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datamodules.batch import SAMPLE_RATE, lengths_to_mask
from lightning_modules.backbones import CheckpointBackbone, HFBackbone, ScratchEncoder, TorchaudioBackbone

NORM_TYPES = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)
INFERENCE_PARTS = ("backbone", "featurizer", "head")


@dataclass
class TTASettings:
    """Test-time adaptation settings (the CLI's ``--tta.*`` group; SUTA's defaults).

    Args:
        method: "none" (off) or "suta".
        steps: optimizer steps per utterance group.
        lr: learning rate of the per-group optimizer.
        optimizer: "adamw" (weight decay 0) or "sgd".
        params: which parameters adapt: "norm+frontend", "norm", "frontend" or "all".
        em_weight: weight of entropy minimisation; MCC gets ``1 - em_weight``.
        temperature: logits are divided by it for both terms.
        mcc_reweight: weight MCC frames by ``1 + exp(-entropy)`` (SUTA's reweighting).
        utterances: utterances adapted together (1 = per utterance, as SUTA).
    """

    method: Literal["none", "suta"] = "none"
    steps: int = 10
    lr: float = 2e-5
    optimizer: Literal["adamw", "sgd"] = "adamw"
    params: Literal["norm+frontend", "norm", "frontend", "all"] = "norm+frontend"
    em_weight: float = 0.3
    temperature: float = 2.5
    mcc_reweight: bool = True
    utterances: int = 1

    def __post_init__(self) -> None:
        if self.steps < 0 or self.utterances < 1 or self.temperature <= 0 or not 0.0 <= self.em_weight <= 1.0:
            raise ValueError(f"tta: need steps >= 0, utterances >= 1, temperature > 0, 0 <= em_weight <= 1; got {self}")

    @property
    def enabled(self) -> bool:
        return self.method != "none"


def add_tta_arguments(parser: argparse.ArgumentParser) -> None:
    """``--tta.<field>`` options of an argparse parser (``speechxfer transcribe``), one per ``TTASettings`` field."""
    for field in dataclasses.fields(TTASettings):
        kind = typing.get_type_hints(TTASettings)[field.name]
        options = {"choices": list(typing.get_args(kind))} if typing.get_origin(kind) is Literal else {}
        convert = (lambda text: text.lower() in ("1", "true", "yes")) if kind is bool else kind
        parser.add_argument(f"--tta.{field.name}", dest=f"tta.{field.name}", default=field.default,
                            type=str if options else convert, metavar=field.name.upper(), **options)


def tta_settings(args: argparse.Namespace) -> TTASettings:
    """The ``TTASettings`` of parsed ``--tta.*`` options."""
    return TTASettings(**{f.name: getattr(args, f"tta.{f.name}") for f in dataclasses.fields(TTASettings)})


def frontend_modules(backbone: nn.Module) -> list[nn.Module]:
    """The feature encoder ("front-end") of a backbone, by backbone type."""
    if isinstance(backbone, CheckpointBackbone):
        return frontend_modules(backbone.inner)
    if isinstance(backbone, TorchaudioBackbone):
        return [backbone.model.feature_extractor, backbone.model.encoder.feature_projection]
    if isinstance(backbone, HFBackbone):
        return [backbone.model.feature_extractor, backbone.model.feature_projection]
    if isinstance(backbone, ScratchEncoder):
        return [backbone.subsample, backbone.input_proj]
    raise ValueError(f"tta: no known front-end for {type(backbone).__name__}; use --tta.params norm or all")


def adaptable_parameters(model: nn.Module, which: str) -> list[nn.Parameter]:
    """Parameters ``which`` selects (module docstring), in model order, each once."""
    parts = [getattr(model, name) for name in INFERENCE_PARTS]
    chosen: list[nn.Parameter] = []
    if which == "all":
        chosen = [p for part in parts for p in part.parameters()]
    if which in ("norm", "norm+frontend"):
        chosen += [p for part in parts for m in part.modules() if isinstance(m, NORM_TYPES)
                   for p in m.parameters(recurse=False)]
    if which in ("frontend", "norm+frontend"):
        chosen += [p for m in frontend_modules(model.backbone) for p in m.parameters()]
    unique = list({id(p): p for p in chosen}.values())
    if not unique:
        raise ValueError(f"tta: params={which!r} selects no parameter of this {type(model).__name__} "
                         f"({type(model.backbone).__name__} backbone); try --tta.params all")
    return unique


def suta_objective(log_probs: Tensor, lengths: Tensor, em_weight: float, temperature: float,
                   reweight: bool = True, blank: int = 0) -> Tensor:
    """Scalar SUTA loss of log-probs (B, T, V) with (B,) valid frames (module docstring)."""
    scaled = (log_probs / temperature).log_softmax(-1)
    probs = scaled.exp()
    entropy = -(probs * scaled).sum(-1)                                              # (B, T)
    valid = lengths_to_mask(lengths, log_probs.shape[1])
    nonblank = valid & (log_probs.argmax(-1) != blank)
    em = entropy[nonblank].mean() if bool(nonblank.any()) else entropy.new_zeros(())
    mcc = torch.stack([class_confusion(probs[b, :n], entropy[b, :n].detach(), reweight)
                       for b, n in enumerate(lengths.tolist())]).mean()
    return em_weight * em + (1.0 - em_weight) * mcc


def class_confusion(probs: Tensor, entropy: Tensor, reweight: bool) -> Tensor:
    """MCC of one utterance: probs (L, V), entropy (L,) -> (sum(C) - trace(C)) / V, C row-normalised."""
    weights = 1.0 + torch.exp(-entropy) if reweight else torch.ones_like(entropy)
    weights = weights * (len(weights) / weights.sum())
    confusion = (probs * weights[:, None]).T @ probs                                  # (V, V)
    confusion = confusion / confusion.sum(1, keepdim=True).clamp_min(1e-12)
    return (confusion.sum() - confusion.trace()) / probs.shape[1]


@dataclass
class TTAStats:
    """Accumulated over every adapted group (per process; ``callbacks.TestTimeAdaptation`` sums ranks)."""

    utterances: int = 0
    audio_seconds: float = 0.0
    adapt_seconds: float = 0.0
    objective_before: float = 0.0  # sums over groups (divide by ``groups``)
    objective_after: float = 0.0
    groups: int = 0

    @property
    def extra_seconds_per_audio_second(self) -> float:
        return self.adapt_seconds / self.audio_seconds if self.audio_seconds else 0.0


class TestTimeAdapter:
    """Callable ``(model, audio (B, T), lengths (B,)) -> (log_probs (B, T', V), lengths (B,))``, adapted per group."""

    def __init__(self, settings: TTASettings) -> None:
        if not settings.enabled:
            raise ValueError("TestTimeAdapter needs settings.method != 'none'")
        self.settings, self.stats = settings, TTAStats()

    def __call__(self, model: nn.Module, audio: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        n = self.settings.utterances
        with torch.inference_mode(False), torch.enable_grad():  # eval loops run under inference mode
            audio, lengths = audio.clone(), lengths.clone()     # normal tensors: autograd may save them
            params = adaptable_parameters(model, self.settings.params)
            outputs = [self.adapt_group(model, params, audio[i:i + n], lengths[i:i + n])
                       for i in range(0, len(lengths), n)]
        frames = max(lp.shape[1] for lp, _ in outputs)
        log_probs = torch.cat([F.pad(lp, (0, 0, 0, frames - lp.shape[1])) for lp, _ in outputs])
        return log_probs, torch.cat([out for _, out in outputs])

    def adapt_group(self, model: nn.Module, params: list[nn.Parameter], audio: Tensor,
                    lengths: Tensor) -> tuple[Tensor, Tensor]:
        """Adapt on one group (padding trimmed), return its adapted log-probs, restore the weights."""
        s = self.settings
        audio = audio[:, : int(lengths.max())]
        start = time.perf_counter()
        saved = [p.detach().clone() for p in params]
        grad_flags = [p.requires_grad for p in model.parameters()]
        was_training = model.training
        model.eval()
        try:
            model.requires_grad_(False)
            for p in params:
                p.requires_grad_(True)
            optimizer = (torch.optim.AdamW(params, lr=s.lr, weight_decay=0.0) if s.optimizer == "adamw"
                         else torch.optim.SGD(params, lr=s.lr))
            before = None
            for _ in range(s.steps):
                log_probs, out_lengths = model(audio, lengths)
                loss = suta_objective(log_probs, out_lengths, s.em_weight, s.temperature, s.mcc_reweight)
                before = float(loss.detach()) if before is None else before
                optimizer.zero_grad(set_to_none=True)
                if loss.requires_grad:
                    loss.backward()
                if all(p.grad is None for p in params):
                    raise ValueError(f"tta: none of the {len(params)} parameters selected by params={s.params!r} "
                                     f"gets a gradient from {type(model).__name__}'s output (a frozen backbone runs "
                                     "without gradients); use --tta.params all")
                optimizer.step()
            adapt_end = time.perf_counter()
            with torch.no_grad():
                log_probs, out_lengths = model(audio, lengths)
                after = float(suta_objective(log_probs, out_lengths, s.em_weight, s.temperature, s.mcc_reweight))
        finally:
            restore_start = time.perf_counter()
            with torch.no_grad():
                for p, value in zip(params, saved):
                    p.copy_(value)
                    p.grad = None
            for p, flag in zip(model.parameters(), grad_flags):
                p.requires_grad_(flag)
            model.train(was_training)
            restore_seconds = time.perf_counter() - restore_start
        self._account(lengths, adapt_end - start + restore_seconds, after if before is None else before, after)
        return log_probs.detach(), out_lengths

    def _account(self, lengths: Tensor, seconds: float, before: float, after: float) -> None:
        stats = self.stats
        stats.utterances += len(lengths)
        stats.audio_seconds += float(lengths.sum()) / SAMPLE_RATE
        stats.adapt_seconds += seconds
        stats.objective_before += before
        stats.objective_after += after
        stats.groups += 1
