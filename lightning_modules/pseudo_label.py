"""Pseudo-label self-training (noisy student) on the CTC core: labelled source + unlabelled target audio.

Training batches are ``{"source": batch, "target": batch}`` (``datamodules.DomainAdaptationDataModule``).
Per step::

    teacher (eval mode, no grad, clean input) --greedy CTC--> pseudo-labels + confidence per target utterance
    keep = confidence filter (below)
    loss = ctc(student(source), source labels) + target_weight · ctc(student(target[keep]), pseudo-labels[keep])

The student side is noisy: the core's SpecAugment (``spec_augment``, on by default here) and, with
``student_noise_snr``, white noise on the student's target waveform; the teacher sees neither. The
target batch's own transcripts (``targets``, ``texts``, ``monitor_texts``) never reach a loss: the
student's target CTC targets are built from the teacher's output only. When the target batch carries
``monitor_texts`` (``target_labels: monitor``) or ``texts``, the pseudo-labels' CER is logged.

Teacher: a copy of the starting model (backbone + featurizer + head; submodule ``teacher``, so it
is part of the checkpoint and a resume continues it exactly), taken when a fresh fit starts.
``teacher="frozen"`` keeps it; ``teacher="ema"`` updates it after every optimizer step::

    t <- ema_decay · t + (1 − ema_decay) · s     (parameters; buffers copied from the student)

Rounds (iterative pseudo-labelling, no separate script): with ``refresh_every_n_steps`` /
``refresh_every_n_epochs`` the teacher is replaced by a copy of the student after every N optimizer
steps / at the start of every N-th epoch. Pseudo-labels are computed for each batch by the current
teacher (eval mode, so a frozen teacher gives the same labels every epoch): "regenerating labels" is
refreshing the teacher.

Confidence filter (per target batch of B utterances; documented exactly, tested):

- confidence of an utterance = mean over its valid frames whose argmax is not blank of the max
  posterior ``max_v p(v | frame)`` (0 when every frame is blank, i.e. the hypothesis is empty);
- eligible = non-empty hypothesis and confidence >= ``confidence_threshold``;
- kept = the ``ceil(keep_fraction · B)`` most confident eligible utterances (all eligible ones when
  fewer; ties go to the earlier row). ``keep_fraction=1`` and ``confidence_threshold=0`` keep every
  non-empty hypothesis.

Logged: ``train/pl_kept_fraction`` (kept / B), ``train/pl_teacher_confidence`` (mean confidence of
the B utterances), ``train/source_loss``, ``train/pl_loss`` (target CTC of the kept rows, 0 when none),
per epoch ``train/pl_cer`` (kept pseudo-labels) and ``train/pl_cer_all`` (every teacher hypothesis)
when transcripts are there to compare, and ``train/pl_teacher_refreshes``.

Start from a trained model: ``backbone: CheckpointBackbone(path=P)`` gives the backbone and
``init_from: P`` the featurizer and head (same tokenizer required), so student and teacher start as
that model. Under DDP every rank transcribes its own target batch (the paired loader shards both
sides); the teacher is identical on all ranks (a copy / EMA of identical students).
"""

from __future__ import annotations

import copy
import math
from typing import Literal

import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics.text import CharErrorRate

from datamodules.augment import add_noise_at_snr
from datamodules.base import speech_datamodule
from datamodules.batch import lengths_to_mask, pad_targets
from lightning_modules.backbones.base import Backbone
from lightning_modules.backbones.checkpoint_backbone import read_checkpoint
from lightning_modules.ctc import CTCModule, greedy_decode

DEFAULT_SPEC_AUGMENT = {"time_masks": 2, "time_width": 0.05, "feature_masks": 2, "feature_width": 0.1}
STUDENT_PARTS = ("backbone", "featurizer", "head")  # the inference path the teacher copies


def teacher_confidence(log_probs: Tensor, lengths: Tensor, blank: int = 0) -> Tensor:
    """(B,) mean max posterior over each row's valid non-blank (argmax) frames; 0 for all-blank rows.

    ``log_probs`` (B, T, V) log-softmax outputs, ``lengths`` (B,) valid frames.
    """
    best_logp, best = log_probs.max(-1)                                            # (B, T)
    frames = lengths_to_mask(lengths, log_probs.shape[1]) & (best != blank)        # (B, T)
    count = frames.sum(1)
    total = (best_logp.exp() * frames).sum(1)
    return torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total))


def select_confident(confidence: Tensor, nonempty: Tensor, threshold: float = 0.0,
                     keep_fraction: float = 1.0) -> Tensor:
    """(B,) bool: the ``ceil(keep_fraction · B)`` most confident rows among the eligible ones.

    Eligible: ``nonempty`` (B,) bool and ``confidence`` (B,) >= ``threshold``. Ties: earlier row first.
    """
    eligible = nonempty & (confidence >= threshold)
    budget = math.ceil(round(keep_fraction * confidence.shape[0], 6))
    order = torch.sort(torch.where(eligible, confidence, -1.0), descending=True, stable=True).indices
    keep = torch.zeros_like(eligible)
    keep[order[:budget]] = True
    return keep & eligible


def copy_weights_(target: nn.Module, source: nn.Module) -> None:
    """Parameters and buffers of ``source`` copied into ``target`` (same structure), in place."""
    with torch.no_grad():
        for t, s in zip(target.state_dict().values(), source.state_dict().values(), strict=True):
            t.copy_(s)


def ema_update_(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """``t = decay · t + (1 − decay) · s`` for every parameter, buffers copied (exact, in place)."""
    with torch.no_grad():
        for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
            t.mul_(decay).add_(s, alpha=1.0 - decay)
        for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
            t.copy_(s)


class PseudoLabelCTC(CTCModule):
    """``CTCModule`` + teacher-generated pseudo-labels on unlabelled target audio; other args as ``CTCModule``.

    Args:
        init_from: speechxfer checkpoint whose backbone, featurizer and head weights start the student
            (and so the teacher) at a fresh fit; its tokenizer must be this model's.
        teacher: "ema" (updated after every optimizer step) or "frozen" (the starting model).
        ema_decay: EMA decay per optimizer step.
        refresh_every_n_steps / refresh_every_n_epochs: copy the student into the teacher after every
            N optimizer steps / at the start of every N-th epoch (rounds); None: never.
        confidence_threshold, keep_fraction: the confidence filter (module docstring).
        target_weight: weight of the pseudo-labelled target CTC loss.
        student_noise_snr: ``[low, high]`` dB: white noise on the student's target waveform at an SNR
            drawn per utterance (None: off); SpecAugment (``spec_augment``) is on by default.
    """

    def __init__(self, backbone: Backbone, tokenizer: dict, init_from: str | None = None,
                 teacher: Literal["ema", "frozen"] = "ema", ema_decay: float = 0.999,
                 refresh_every_n_steps: int | None = None, refresh_every_n_epochs: int | None = None,
                 confidence_threshold: float = 0.0, keep_fraction: float = 1.0, target_weight: float = 1.0,
                 student_noise_snr: list[float] | None = None, spec_augment: dict | None = DEFAULT_SPEC_AUGMENT,
                 **kwargs) -> None:
        super().__init__(backbone, tokenizer, spec_augment=spec_augment, **kwargs)
        if teacher not in ("ema", "frozen"):
            raise ValueError(f"teacher must be 'ema' or 'frozen', got {teacher!r}")
        if not 0.0 <= ema_decay <= 1.0 or not 0.0 < keep_fraction <= 1.0:
            raise ValueError(f"need 0 <= ema_decay <= 1 and 0 < keep_fraction <= 1, got {ema_decay}, {keep_fraction}")
        self.teacher = nn.ModuleDict({part: copy.deepcopy(getattr(self, part)) for part in STUDENT_PARTS})
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        # epoch of the last epoch-start refresh (-1: none): checkpointed, so a resumed epoch does not refresh twice
        self.register_buffer("last_refresh_epoch", torch.tensor(-1, dtype=torch.int64))
        self.register_buffer("teacher_refreshes", torch.tensor(0, dtype=torch.int64))
        self.pl_cer, self.pl_cer_all = CharErrorRate(), CharErrorRate()

    def student(self) -> nn.ModuleDict:
        """The student's inference path as a ``ModuleDict`` shaped like ``self.teacher`` (shares the modules)."""
        return nn.ModuleDict({part: getattr(self, part) for part in STUDENT_PARTS})

    def train(self, mode: bool = True) -> PseudoLabelCTC:
        super().train(mode)
        self.teacher.eval()  # never dropout / SpecAugment / LayerDrop
        return self

    # ---------------------------------------------------------------- teacher
    @torch.no_grad()
    def teacher_log_probs(self, audio: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(B, T) audio -> the teacher's log-probs (B, T', V) and lengths (B,) (the core's forward path)."""
        out = self.teacher["backbone"](audio, lengths)
        feats = self.teacher["featurizer"]([out.hidden_states[i] for i in self.layers])
        return self.teacher["head"](feats, out.lengths).float().log_softmax(-1), out.lengths

    def pseudo_labels(self, target: dict) -> tuple[list[list[int]], Tensor, Tensor]:
        """Teacher ids per utterance, confidence (B,) and the kept rows (B,) bool of a target batch."""
        log_probs, lengths = self.teacher_log_probs(target["audio"], target["lengths"])
        ids = greedy_decode(log_probs, lengths)
        confidence = teacher_confidence(log_probs, lengths)
        nonempty = torch.tensor([len(i) > 0 for i in ids], device=confidence.device)
        hp = self.hparams
        return ids, confidence, select_confident(confidence, nonempty, hp.confidence_threshold, hp.keep_fraction)

    def refresh_teacher(self) -> None:
        """A new round: the teacher becomes a copy of the current student."""
        copy_weights_(self.teacher, self.student())
        self.teacher_refreshes += 1

    # ---------------------------------------------------------------- training
    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        if not isinstance(batch, dict) or not {"source", "target"} <= set(batch):
            raise ValueError("PseudoLabelCTC training batches must be {'source': batch, 'target': batch} "
                             "(datamodules.DomainAdaptationDataModule)")
        source, target = batch["source"], batch["target"]
        ids, confidence, keep = self.pseudo_labels(target)
        log_probs, lengths = self(source["audio"], source["lengths"], source.get("audio_keys"))
        source_loss = self.ctc_loss(log_probs, lengths, source)
        pl_loss = self.pseudo_label_loss(target, ids, keep)
        loss = source_loss + self.hparams.target_weight * pl_loss
        self.log_train_stats(loss, len(lengths))
        size = len(ids)
        self.log_dict({"train/source_loss": source_loss, "train/pl_loss": pl_loss,
                       "train/pl_kept_fraction": keep.float().mean(), "train/pl_teacher_confidence": confidence.mean()},
                      on_step=True, on_epoch=True, batch_size=size, sync_dist=True)
        self.update_label_quality(target, ids, keep)
        return loss

    def pseudo_label_loss(self, target: dict, ids: list[list[int]], keep: Tensor) -> Tensor:
        """Student CTC on the kept target rows against the teacher's ids (0 when none is kept).

        Only ``audio``/``lengths`` of the target batch are read here: its transcripts cannot reach the loss.
        """
        rows = keep.nonzero().flatten()
        if len(rows) == 0:
            return torch.zeros((), device=self.device)
        lengths = target["lengths"][rows]
        audio = self.noisy_student_input(target["audio"][rows, : int(lengths.max())], lengths)
        log_probs, out_lengths = self(audio, lengths)
        targets, target_lengths = pad_targets([ids[i] for i in rows.tolist()])
        pseudo = {"targets": targets.to(self.device), "target_lengths": target_lengths.to(self.device)}
        return self.ctc_loss(log_probs, out_lengths, pseudo)

    def noisy_student_input(self, audio: Tensor, lengths: Tensor) -> Tensor:
        """(B, T) waveforms with white noise at an SNR in ``student_noise_snr`` per row (valid samples only)."""
        if self.hparams.student_noise_snr is None:
            return audio
        low, high = self.hparams.student_noise_snr
        rows = []
        for wave, n in zip(audio, lengths.tolist()):
            snr = low + (high - low) * float(torch.rand(()))
            noisy = add_noise_at_snr(wave[:n], torch.randn(n, device=wave.device), snr)
            rows.append(torch.cat([noisy, wave[n:]]))
        return torch.stack(rows)

    def update_label_quality(self, target: dict, ids: list[list[int]], keep: Tensor) -> None:
        """Pseudo-label CER against the batch's transcripts, when it has them (metrics only, never a loss)."""
        refs = target.get("monitor_texts", target.get("texts"))
        if refs is None:
            return
        hyps, kept = [self.tokenizer.decode(i) for i in ids], keep.tolist()
        self.pl_cer_all.update(hyps, list(refs))
        # updated also with nothing kept: every rank must have updated before compute() syncs them
        self.pl_cer.update([h for h, k in zip(hyps, kept) if k], [r for r, k in zip(refs, kept) if k])

    # ---------------------------------------------------------------- teacher schedule
    def optimizer_step(self, *args, **kwargs) -> None:
        """The optimizer step, then the teacher's EMA update and/or step-unit refresh."""
        super().optimizer_step(*args, **kwargs)
        hp = self.hparams
        if hp.teacher == "ema":
            ema_update_(self.teacher, self.student(), hp.ema_decay)
        steps_done = self.global_step + 1  # Lightning counts this step as completed after the hook returns
        if hp.refresh_every_n_steps and steps_done % hp.refresh_every_n_steps == 0:
            self.refresh_teacher()

    def on_train_epoch_start(self) -> None:
        epoch, every = self.current_epoch, self.hparams.refresh_every_n_epochs
        if every and epoch > 0 and epoch % every == 0 and int(self.last_refresh_epoch) < epoch:
            self.refresh_teacher()
            self.last_refresh_epoch.fill_(epoch)

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        for name, metric in (("train/pl_cer", self.pl_cer), ("train/pl_cer_all", self.pl_cer_all)):
            if metric.update_called:
                self.log(name, metric.compute())  # synced over ranks by torchmetrics
                metric.reset()
        self.log("train/pl_teacher_refreshes", self.teacher_refreshes.float())

    # ---------------------------------------------------------------- start
    def setup(self, stage: str) -> None:
        """Core setup (pretrained backbone), then ``init_from`` and the teacher copy for a fresh fit.

        On resume Lightning restores the checkpoint after ``setup``, teacher included.
        """
        fresh = stage == "fit" and not self._weights_restored and not (self._trainer is not None
                                                                       and bool(self._trainer.ckpt_path))
        super().setup(stage)
        if not fresh:
            return
        if self.hparams.init_from:
            load_inference_weights(self, self.hparams.init_from)
        copy_weights_(self.teacher, self.student())
        datamodule = speech_datamodule(self._trainer)
        if datamodule is not None and datamodule.augments_waveform:
            rank_zero_warn("PseudoLabelCTC: the datamodule's waveform augmentation also reaches the audio the "
                           "teacher transcribes; for a clean teacher use spec_augment / student_noise_snr instead")


def load_inference_weights(model: CTCModule, ckpt_path: str) -> None:
    """Load ``backbone.*``, ``featurizer.*``, ``head.*`` of a speechxfer checkpoint into ``model`` (strict)."""
    ckpt = read_checkpoint(ckpt_path)
    if ckpt.get("hyper_parameters", {}).get("tokenizer") != model.hparams.tokenizer:
        raise ValueError(f"init_from={ckpt_path}: its tokenizer differs from this model's (the head's outputs "
                         "would mean other symbols); train the source model on the same training text")
    state = ckpt.get("state_dict", {})
    for part in STUDENT_PARTS:
        prefix = f"{part}."
        weights = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        try:
            getattr(model, part).load_state_dict(weights, strict=True)
        except RuntimeError as err:
            raise ValueError(f"init_from={ckpt_path}: its {part} does not fit this model's: {err}") from err
