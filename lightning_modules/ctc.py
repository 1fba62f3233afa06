"""The one CTC core: backbone → featurizer → head → CTC loss, decoding, WER/CER.

Transfer methods (``finetune.py``, ``frozen.py``, ``dann.py``) are short subclasses that override
``hidden_states`` (how layers are obtained), ``backbone_layer_groups`` / ``top_layer_groups``
(what is optimised) or ``training_step`` (what is minimised).

The vocabulary is the tokenizer's: ``tokenizer`` (its ``to_dict()``) is an init argument, stored once
in the checkpoint's ``hyper_parameters``, and the head has ``tokenizer.vocab_size`` outputs. Every
transcript -- validation/test WER, ``predict_step``, ``transcribe`` -- comes from :meth:`CTCModule.decode`.

CTC loss convention: per utterance ``loss / max(target_length, 1)``, averaged over the
utterances of the batch (= ``torch.nn.CTCLoss(reduction="mean")``), blank id 0,
``zero_infinity=True``; utterances whose alignment is impossible (too few frames, the rule of
``datamodules.ctc_check``, which the data layer also applies) contribute 0 and are counted in
``train/ctc_infeasible``.

Decoding (``lightning_modules/decoding.py``): greedy everywhere by default (training-time validation
included). ``eval_decoders`` adds decoders for ``trainer.validate`` / ``trainer.test`` (and, with
``eval_decoders_in_fit``, the fit's validations): each name
logs ``<stage>_<name>/<domain>/{wer,cer}`` (e.g. ``test_beam/target/wer``) from the same log-probs as
the greedy ``<stage>/<domain>/*`` metrics. It is an evaluation choice, not part of the model: it is
left out of the checkpoint's hyper-parameters, so checkpoints load with or without it.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MeanMetric, MetricCollection, SumMetric
from torchmetrics.text import CharErrorRate, WordErrorRate

from datamodules.augment import SpecAugment
from datamodules.base import Tokenizer, eval_domain_name, speech_datamodule
from datamodules.ctc_check import ctc_infeasible
from datamodules.text import tokenizer_from_dict
from lightning_modules.adaptation import AdaptationRecipe, adapted_outputs, is_episode
from lightning_modules.backbones.base import Backbone
from lightning_modules.decoding import Decoder, DecoderConfig, build_decoder, greedy_decode  # noqa: F401 (re-export)
from lightning_modules.featurizer import WeightedLayerSum, build_featurizer, resolve_layers
from lightning_modules.heads import build_head
from lightning_modules.optim import (TRI_STAGE, TransferLRScheduler, base_learning_rates, build_param_groups,
                                     check_tri_stage, total_optimizer_steps)


def ctc_losses(log_probs: Tensor, lengths: Tensor, targets: Tensor, target_lengths: Tensor) -> Tensor:
    """(B,) CTC loss per utterance divided by its target length (blank 0, zero_infinity)."""
    losses = F.ctc_loss(log_probs.transpose(0, 1).float(), targets, lengths, target_lengths,
                        blank=0, reduction="none", zero_infinity=True)
    return losses / target_lengths.clamp(min=1).to(losses.dtype)


class CTCModule(pl.LightningModule):
    """CTC speech recogniser on any ``Backbone`` (see ARCHITECTURE.md).

    Args (all plain values except ``backbone``): ``tokenizer`` is the tokenizer's ``to_dict()`` (the CLI
    links the datamodule's; the head gets its ``vocab_size`` outputs, blank id 0 included);
    ``head`` "linear" | "bilstm" (``head_hidden`` units per direction); ``featurizer`` "last" |
    "weighted" over ``layers`` (backbone hidden-state indices, negatives allowed; default last /
    all); ``lr`` for head and featurizer, ``backbone_lr`` (default ``lr``) for the top backbone
    group, multiplied by ``layer_decay`` per group below; ``decay`` "linear" | "cosine" |
    "constant" down to ``min_lr_ratio`` after ``warmup_steps``, or "tri_stage" (warm-up / hold /
    exponential decay to ``min_lr_ratio`` over ``tri_stage_phases`` of the run, see ``optim.py``);
    ``spec_augment`` kwargs of ``datamodules.augment.SpecAugment`` applied to (B, T, F) features in
    training only -- not together with a backbone that masks its own CNN features before the transformer
    (``backbone.feature_masking()``, the wav2vec 2.0 recipe), unless the backbone never trains
    (``frozen_backbone``); ``eval_decoders`` name -> ``DecoderConfig`` of extra decoders for
    validate/test (module docstring), also in the fit's validations with ``eval_decoders_in_fit``
    (e.g. for ``callbacks.ResultsTable``'s beam-search rows; the best checkpoint still follows greedy).
    """

    frozen_backbone = False  # True: the backbone stays in eval (no dropout, LayerDrop or masking)

    def __init__(self, backbone: Backbone, tokenizer: dict,
                 head: Literal["linear", "bilstm"] = "linear", head_hidden: int = 256,
                 featurizer: Literal["last", "weighted"] = "last", layers: list[int] | None = None,
                 normalize_layers: bool = False, dropout: float = 0.1, lr: float = 1e-3,
                 backbone_lr: float | None = None, layer_decay: float | None = None, weight_decay: float = 0.01,
                 warmup_steps: int = 0, decay: Literal["linear", "cosine", "constant", "tri_stage"] = "linear",
                 min_lr_ratio: float = 0.0, tri_stage_phases: tuple[float, float, float] = TRI_STAGE,
                 spec_augment: dict | None = None, eval_decoders: dict[str, DecoderConfig] | None = None,
                 eval_decoders_in_fit: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone", "eval_decoders", "eval_decoders_in_fit"])
        if decay == "tri_stage":
            check_tri_stage(tri_stage_phases, min_lr_ratio)  # fail at construction, not at fit
        self.tokenizer: Tokenizer = tokenizer_from_dict(tokenizer)
        self.backbone = backbone
        self.layers = resolve_layers(layers, backbone.num_layers, featurizer)
        self.featurizer = build_featurizer(featurizer, len(self.layers), normalize_layers)
        self.head = build_head(head, backbone.output_dim, self.tokenizer.vocab_size, head_hidden, dropout)
        if spec_augment and not self.frozen_backbone and backbone.feature_masking() is not None:
            raise ValueError(f"spec_augment would mask the features a second time: the backbone already masks its CNN "
                             f"features before the transformer ({backbone.feature_masking()}); drop spec_augment "
                             "or set the backbone's mask to null")
        self.spec_augment = SpecAugment(**spec_augment) if spec_augment else None
        self.metrics = nn.ModuleDict()  # "<stage>_<dataloader idx>" -> MetricCollection, created lazily
        self.ctc_infeasible_count = SumMetric()  # training utterances per epoch whose CTC alignment is impossible
        # lightning_modules.tta.TestTimeAdapter or None; set for test/predict (callbacks.TestTimeAdaptation)
        self.test_time_adaptation: Any = None
        self._weights_restored = False
        self.eval_decoders = check_decoder_names(eval_decoders or {})
        self.eval_decoders_in_fit = eval_decoders_in_fit
        self._decoders: dict[str, Decoder] = {}  # built on first use (they need the tokenizer)
        self.predict_decoder: Decoder | None = None  # predict_step's (``speechxfer transcribe --decoder``); None: greedy

    # ---------------------------------------------------------------- model
    def hidden_states(self, audio: Tensor, lengths: Tensor, keys: list[str] | None = None
                      ) -> tuple[list[Tensor], Tensor]:
        """Selected backbone layers, each (B, T', F), and their lengths (B,). ``keys``: cache keys."""
        out = self.backbone(audio, lengths)
        return [out.hidden_states[i] for i in self.layers], out.lengths

    def encode(self, audio: Tensor, lengths: Tensor, keys: list[str] | None = None) -> tuple[Tensor, Tensor]:
        """Shared encoder: (B, T) audio -> features (B, T', F) and lengths (B,)."""
        layers, out_lengths = self.hidden_states(audio, lengths, keys)
        return self.featurizer(layers), out_lengths

    def classify(self, feats: Tensor, lengths: Tensor) -> Tensor:
        """(B, T', F) -> float32 CTC log-probs (B, T', V); SpecAugment on valid frames in training."""
        if self.training and self.spec_augment is not None:
            feats = self.spec_augment(feats, lengths)
        return self.head(feats, lengths).float().log_softmax(-1)

    def forward(self, audio: Tensor, lengths: Tensor, keys: list[str] | None = None) -> tuple[Tensor, Tensor]:
        """(B, T) audio, (B,) lengths -> log-probs (B, T', V), output lengths (B,)."""
        feats, out_lengths = self.encode(audio, lengths, keys)
        return self.classify(feats, out_lengths), out_lengths

    def eval_forward(self, batch: dict) -> tuple[Tensor, Tensor]:
        """Log-probs (B, T', V) and lengths (B,) of a val/test/predict batch: the forward, or the forward of
        the model adapted to each utterance when ``test_time_adaptation`` is attached (``tta.py``)."""
        if self.test_time_adaptation is not None:
            return self.test_time_adaptation(self, batch["audio"], batch["lengths"])
        return self(batch["audio"], batch["lengths"], batch.get("audio_keys"))

    def ctc_loss(self, log_probs: Tensor, lengths: Tensor, batch: dict) -> Tensor:
        """Scalar CTC loss of a labelled batch (see module docstring for the convention).

        In training it also counts the utterances whose alignment is impossible (logged per epoch as
        ``train/ctc_infeasible``): wherever a method computes a CTC loss, they are counted.
        """
        if "targets" not in batch:
            raise ValueError(f"batch {batch.get('ids', '?')} has no 'targets': labels are unavailable")
        if self.training:
            self.ctc_infeasible_count.update(ctc_infeasible(lengths, batch["targets"], batch["target_lengths"]).sum())
        return ctc_losses(log_probs, lengths, batch["targets"], batch["target_lengths"]).mean()

    def decoder(self, name: str = "greedy") -> Decoder:
        """The greedy decoder, or the ``eval_decoders`` entry ``name``, built on first use."""
        if name not in self._decoders:
            config = DecoderConfig(kind="greedy") if name == "greedy" else self.eval_decoders[name]
            self._decoders[name] = build_decoder(config, self.tokenizer)
        return self._decoders[name]

    def decode(self, log_probs: Tensor, lengths: Tensor, decoder: Decoder | None = None) -> list[str]:
        """Transcripts of (B, T', V) log-probs with (B,) valid frames: THE decoding call (greedy CTC unless a
        ``decoder`` from ``lightning_modules.decoding`` is given)."""
        return (decoder or self.decoder())(log_probs, lengths)

    @torch.no_grad()
    def transcribe(self, audio: Tensor, lengths: Tensor, decoder: Decoder | None = None) -> list[str]:
        """(B, T) 16 kHz audio, (B,) lengths -> one transcript per utterance (eval mode; greedy by default)."""
        was_training = self.training
        self.eval()
        try:
            log_probs, out_lengths = self(audio.to(self.device), lengths.to(self.device))
        finally:
            self.train(was_training)
        return self.decode(log_probs, out_lengths, decoder)

    # ---------------------------------------------------------------- training
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        log_probs, lengths = self(batch["audio"], batch["lengths"], batch.get("audio_keys"))
        loss = self.ctc_loss(log_probs, lengths, batch)
        self.log_train_stats(loss, len(lengths))
        return loss

    def log_train_stats(self, loss: Tensor, batch_size: int, name: str = "train/loss") -> None:
        """Log the training loss of a batch of ``batch_size`` utterances (labelled or not).

        Each ``self.log`` costs Lightning ~1 ms of Python per step, so per-step logging stays minimal:
        the group lrs are logged by ``LearningRateMonitor`` (as ``lr/<group>``, every
        ``log_every_n_steps``; the CLI adds it), the infeasible-alignment count (``ctc_loss``) is a
        ``SumMetric`` logged once per epoch (summed over ranks).
        """
        self.log(name, loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch_size, sync_dist=True)

    def on_train_epoch_end(self) -> None:
        if self.ctc_infeasible_count.update_called:  # (not after resuming at an epoch's end; ranks agree)
            self.log("train/ctc_infeasible", self.ctc_infeasible_count)  # compute() syncs ranks, then resets
        if isinstance(self.featurizer, WeightedLayerSum):
            for layer, w in zip(self.layers, self.featurizer.layer_weights().tolist()):
                self.log(f"layer_weights/{layer}", w)

    # ---------------------------------------------------------------- evaluation
    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict[str, list[str]]:
        return self._eval_step("val", batch, dataloader_idx)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict[str, list[str]]:
        return self._eval_step("test", batch, dataloader_idx)

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict[str, list[str]]:
        """``{"ids": batch["ids"], "transcripts": [...]}`` of a (possibly unlabelled) batch, decoded by
        ``predict_decoder`` (greedy when None); test-time adaptation applies (``eval_forward``)."""
        log_probs, lengths = self.eval_forward(batch)
        return {"ids": list(batch["ids"]), "transcripts": self.decode(log_probs, lengths, self.predict_decoder)}

    def _metric_set(self, stage: str, idx: int, with_loss: bool = True) -> tuple[str, MetricCollection]:
        key = f"{stage}_{idx}"
        if key not in self.metrics:
            metrics = {"wer": WordErrorRate(), "cer": CharErrorRate()} | ({"loss": MeanMetric()} if with_loss else {})
            self.metrics[key] = MetricCollection(metrics).to(self.device)
        return key, self.metrics[key]

    def _active_eval_decoders(self) -> list[str]:
        """Names of the ``eval_decoders`` used now: in ``validate`` / ``test``; in the fit's validations only
        with ``eval_decoders_in_fit``."""
        fn = self._trainer.state.fn if self._trainer is not None else None
        stages = (TrainerFn.VALIDATING, TrainerFn.TESTING) + ((TrainerFn.FITTING,) if self.eval_decoders_in_fit else ())
        return list(self.eval_decoders) if fn in stages else []

    def _eval_step(self, stage: str, batch: dict, idx: int) -> dict[str, list[str]]:
        """Update and log this dataloader's WER, CER and loss (torchmetrics states: exact under DDP), and
        with ``eval_decoders`` (validate/test) each extra decoder's WER/CER.

        An episode batch (``datamodules.episodic``) is scored on its query after adapting on its
        support (``lightning_modules.adaptation``). Returns ``{"ids", "transcripts"}`` (greedy, as
        ``predict_step``; callbacks get it as ``outputs``).
        """
        domain, (key, metrics) = eval_domain_name(self._trainer, stage, idx), self._metric_set(stage, idx)
        if is_episode(batch):
            batch, (log_probs, lengths) = adapted_outputs(self, batch)
        else:
            log_probs, lengths = self.eval_forward(batch)
        size = len(batch["lengths"])
        logged = {}
        if "targets" in batch:
            loss = ctc_losses(log_probs, lengths, batch["targets"], batch["target_lengths"])
            metrics["loss"].update(loss)
            logged["loss"] = metrics["loss"]
        hyps = self.decode(log_probs, lengths)
        if "texts" in batch:
            for name in ("wer", "cer"):
                metrics[name].update(hyps, batch["texts"])
                logged[name] = metrics[name]
        for name, metric in logged.items():
            self.log(f"{stage}/{domain}/{name}", metric, on_step=False, on_epoch=True, batch_size=size,
                     add_dataloader_idx=False, metric_attribute=f"metrics.{key}.{name}")
        if "texts" in batch:
            for decoder in self._active_eval_decoders():
                self._eval_decoder(f"{stage}_{decoder}", decoder, log_probs, lengths, batch, idx, domain)
        return {"ids": list(batch["ids"]), "transcripts": hyps}

    def adaptation_recipe(self) -> AdaptationRecipe:
        """How this module adapts to a task's support set (few-shot evaluation, ``speechxfer adapt``):
        nothing of its own here (the evaluation protocol sets it); ``MetaCTC`` returns its inner loop."""
        return AdaptationRecipe()

    def _eval_decoder(self, prefix: str, decoder: str, log_probs: Tensor, lengths: Tensor, batch: dict, idx: int,
                      domain: str) -> None:
        """WER/CER of the ``eval_decoders`` entry ``decoder``, logged as ``<prefix>/<domain>/{wer,cer}``."""
        key, metrics = self._metric_set(prefix, idx, with_loss=False)
        hyps = self.decode(log_probs, lengths, self.decoder(decoder))
        for name in ("wer", "cer"):
            metrics[name].update(hyps, batch["texts"])
            self.log(f"{prefix}/{domain}/{name}", metrics[name], on_step=False, on_epoch=True,
                     batch_size=len(batch["lengths"]), add_dataloader_idx=False,
                     metric_attribute=f"metrics.{key}.{name}")

    # ---------------------------------------------------------------- optimisation
    def backbone_layer_groups(self) -> list[tuple[str, list[nn.Parameter]]]:
        """The backbone's groups (bottom → top) as parameter lists."""
        return [(name, list(module.parameters())) for name, module in self.backbone.layer_groups()]

    def top_layer_groups(self) -> list[tuple[str, list[nn.Parameter]]]:
        """Groups above the backbone: "featurizer" (if it has parameters), then "head"."""
        groups = [("featurizer", list(self.featurizer.parameters()))]
        return [g for g in groups if g[1]] + [("head", list(self.head.parameters()))]

    def layer_groups(self) -> list[tuple[str, list[nn.Parameter]]]:
        """All optimised groups, bottom → top; the last one is "head"."""
        return self.backbone_layer_groups() + self.top_layer_groups()

    def configure_optimizers(self) -> dict:
        """AdamW, one param group per layer group (all present from step 0) + ``TransferLRScheduler``."""
        hp = self.hparams
        backbone, top = self.backbone_layer_groups(), self.top_layer_groups()
        groups = backbone + top
        self._check_covered(groups)
        lrs = base_learning_rates(len(groups), len(backbone), hp.lr, hp.backbone_lr, hp.layer_decay)
        optimizer = torch.optim.AdamW(build_param_groups(groups, lrs, hp.warmup_steps, hp.weight_decay), lr=hp.lr)
        total = total_optimizer_steps(self.trainer)
        if hp.decay != "constant" and not math.isfinite(total):
            rank_zero_warn(f"the number of training steps is unknown (set trainer.max_steps or max_epochs): "
                           f"decay={hp.decay!r} is not applied, the lr stays at its peak after warm-up")
        scheduler = TransferLRScheduler(optimizer, total, hp.decay, hp.min_lr_ratio, phases=hp.tri_stage_phases)
        # "name": LearningRateMonitor logs each param group as lr/<group name>
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "name": "lr"}}

    def _check_covered(self, groups: list[tuple[str, list[nn.Parameter]]]) -> None:
        """Every trainable parameter must be in a layer group, or it would silently never train."""
        grouped = {id(p) for _, params in groups for p in params}
        missing = [n for n, p in self.named_parameters() if p.requires_grad and id(p) not in grouped]
        if missing:
            raise ValueError(f"trainable parameters outside every layer group (see layer_groups()): {missing[:10]}")

    # ---------------------------------------------------------------- checkpoints
    def setup(self, stage: str) -> None:
        """Check the datamodule's tokenizer; load pretrained backbone weights for a fresh fit (or a
        validation of the starting model, e.g. ``ResultsTable(before=True)``'s before ``fit``).

        The datamodule encodes the targets and this module decodes: with labels (fit, validate, test)
        both must use the same tokenizer. The weights load is skipped when they come from a
        checkpoint: ``load_from_checkpoint`` / ``load_model`` or ``trainer.ckpt_path = ...`` set
        before ``fit``. With ``trainer.fit(ckpt_path=...)`` Lightning restores only after ``setup``,
        so the pretrained weights are loaded and then overwritten.
        """
        datamodule = speech_datamodule(self._trainer)
        if datamodule is not None and stage != "predict" and datamodule.tokenizer.to_dict() != self.hparams.tokenizer:
            raise ValueError(f"{type(datamodule).__name__}'s tokenizer ({datamodule.vocab_size} symbols) is not "
                             f"the one this {type(self).__name__} was built with ({self.tokenizer.vocab_size} "
                             "symbols): targets would be encoded with one vocabulary and decoded with another")
        if self.fresh_fit(stage):
            self.backbone.load_pretrained()

    def fresh_fit(self, stage: str) -> bool:
        """True when ``stage`` is a fit (or validation) whose weights do not come from a checkpoint (see ``setup``)."""
        resuming = self._trainer is not None and bool(self._trainer.ckpt_path)
        return stage in ("fit", "validate") and not self._weights_restored and not resuming

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """``checkpoint["speechxfer"]``: what ``load_model`` needs besides the hyper-parameters (tokenizer included)."""
        cls = type(self)
        checkpoint["speechxfer"] = {"module_class": f"{cls.__module__}.{cls.__qualname__}",
                                    "backbone_config": self.backbone.config()}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._weights_restored = True


def check_decoder_names(decoders: dict[str, DecoderConfig]) -> dict[str, DecoderConfig]:
    """``eval_decoders`` names become metric prefixes (``test_<name>/``): lower-case letters and digits."""
    bad = [n for n in decoders if not (n.isascii() and n.isalnum() and n.islower()) or n == "greedy"]
    if bad:
        raise ValueError(f"eval_decoders names must be lower-case letters/digits and not 'greedy', got {bad}")
    return dict(decoders)
