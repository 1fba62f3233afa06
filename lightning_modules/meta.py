"""Meta-learning an initialisation for fast adaptation: first-order MAML and Reptile on the CTC core.

Training batches are lists of episodes ``{"support", "query", "task", ...}`` (``datamodules.episodic``,
this rank's share of a meta-batch). Each episode adapts FAST weights of the ``inner_groups`` layer
groups by ``inner_steps`` SGD steps on its support CTC loss (``lightning_modules.adaptation``: the
stored parameters are never written), then gives a meta-gradient per trainable parameter θ::

    fomaml:   g_i = ∇ L_query_i(φ_i)            φ_i = θ − Σ_k α_group · ∇ L_support_i(φ_k)   (first order)
    reptile:  g_i = θ − φ_i                      (inner groups only; the others get no update)

The outer update is one optimizer step on ``mean_i g_i`` (Lightning manual optimisation). Under
DDP every rank adapts its own episodes and the meta-gradients are averaged with ONE explicit
all-reduce (a flat buffer; DDP's own hooks never see them: every gradient here comes from
``torch.autograd.grad``), so W ranks take the step one process takes on all W shares. With
``outer_optimizer: sgd`` and lr ε, Reptile is θ ← θ + ε · mean_i (φ_i − θ).

``learn_inner_lr`` (Meta-SGD style, FOMAML only): one learned inner lr per inner layer group,
α_g = exp(log_α_g), trained by the query loss in the layer group ``"inner_lr"`` (lr
``inner_lr_lr``, default ``lr``; no weight decay). Its first-order gradient is
−α_g · Σ_k ⟨∇L_query, ∇L_support(φ_k)⟩ over the group's parameters.

Schedules: ``global_step`` counts outer steps (one ``optimizer.step()`` per batch); the LR scheduler
(``TransferLRScheduler``, per-group warm-up and decay) is stepped here after each outer step, so its
``last_epoch`` equals ``global_step`` as in automatic optimisation, and ``total_optimizer_steps``
sizes it from ``EpisodicDataModule.steps_per_epoch``. ``GradualUnfreezing`` works: it decides which
parameters are meta-trained (``requires_grad``); the inner groups adapt whatever their state.
Lightning refuses ``gradient_clip_val`` and ``accumulate_grad_batches > 1`` with manual
optimisation: use ``meta_grad_clip`` (norm clipping of the averaged meta-gradient) instead.
Validation and test: the core's, on episodes (adapt with this module's inner loop, score the query).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn
from torch.func import functional_call

from lightning_modules.adaptation import INNER_LR_GROUP, AdaptationRecipe, adapted_groups, inner_loop, is_episode
from lightning_modules.backbones.base import Backbone
from lightning_modules.ctc import CTCModule
from lightning_modules.optim import TransferLRScheduler

PARAM_GROUP_KEYS = ("params", "name", "lr", "base_lr", "active_since_step", "warmup_steps", "weight_decay")


class MetaCTC(CTCModule):
    """``CTCModule`` meta-trained on episodes; other args as ``CTCModule`` (``lr`` is the outer lr).

    Args:
        algorithm: "fomaml" (query-loss gradient at the adapted weights) or "reptile".
        inner_steps, inner_lr: SGD steps and lr of the inner loop (and of evaluation adaptation).
        inner_groups: layer groups adapted in the inner loop (``"head"``, ``"top:k"``, ``"all"``, names).
        learn_inner_lr: learn one log-parameterised inner lr per inner group (FOMAML only).
        inner_lr_lr: outer lr of the learned inner lrs (default ``lr``).
        outer_optimizer: "adamw" (the core's) or "sgd" (same param groups and schedule).
        meta_grad_clip: max norm of the averaged meta-gradient (None: no clipping).
    """

    def __init__(self, backbone: Backbone, tokenizer: dict, algorithm: Literal["fomaml", "reptile"] = "fomaml",
                 inner_steps: int = 1, inner_lr: float = 0.01, inner_groups: list[str] | None = None,
                 learn_inner_lr: bool = False, inner_lr_lr: float | None = None,
                 outer_optimizer: Literal["adamw", "sgd"] = "adamw", meta_grad_clip: float | None = 5.0,
                 **kwargs) -> None:
        super().__init__(backbone, tokenizer, **kwargs)
        if algorithm not in ("fomaml", "reptile"):
            raise ValueError(f"MetaCTC: algorithm must be 'fomaml' or 'reptile', got {algorithm!r}")
        if outer_optimizer not in ("adamw", "sgd"):
            raise ValueError(f"MetaCTC: outer_optimizer must be 'adamw' or 'sgd', got {outer_optimizer!r}")
        if inner_steps < 1 or inner_lr <= 0:
            raise ValueError(f"MetaCTC: needs inner_steps >= 1 and inner_lr > 0 (got {inner_steps}, {inner_lr})")
        if learn_inner_lr and algorithm == "reptile":
            raise ValueError("MetaCTC: learn_inner_lr needs a query loss to learn from: use algorithm 'fomaml'")
        self.automatic_optimization = False
        self.inner_log_lr: nn.Parameter | None = None  # set below: layer_groups() must not list it yet
        self.inner_group_of = adapted_groups(self, inner_groups or ["head"])  # parameter name -> layer group
        order = [name for name, _ in self.layer_groups()]
        self.inner_group_names = sorted(set(self.inner_group_of.values()), key=order.index)
        if learn_inner_lr:
            self.inner_log_lr = nn.Parameter(torch.full((len(self.inner_group_names),), math.log(inner_lr)))

    # ---------------------------------------------------------------- inner loop
    def inner_lrs(self) -> dict[str, float | Tensor]:
        """Inner lr per inner layer group: learned (a scalar tensor in the graph) or ``inner_lr``."""
        if self.inner_log_lr is None:
            return {g: self.hparams.inner_lr for g in self.inner_group_names}
        return dict(zip(self.inner_group_names, self.inner_log_lr.exp().unbind()))

    def adaptation_recipe(self) -> AdaptationRecipe:
        """The inner loop: what validation, few-shot tests and ``speechxfer adapt`` use by default."""
        learned = None
        if self.inner_log_lr is not None:
            learned = {g: float(lr) for g, lr in self.inner_lrs().items()}
        return AdaptationRecipe(steps=self.hparams.inner_steps, lr=self.hparams.inner_lr,
                                groups=tuple(self.hparams.inner_groups or ["head"]), group_lrs=learned)

    def meta_gradient(self, episode: dict, meta: dict[str, nn.Parameter]) -> tuple[dict[str, Tensor], Tensor]:
        """(``{name: meta-gradient}`` of one episode, its query loss after adaptation)."""
        params = dict(self.named_parameters())
        reptile = self.hparams.algorithm == "reptile"
        fast = {n: meta[n] if n in meta and not reptile else params[n].detach().requires_grad_(True)
                for n in self.inner_group_of}
        lrs = self.inner_lrs()
        fast = inner_loop(self, episode["support"], fast, self.inner_group_of, lrs, self.hparams.inner_steps)
        query = episode["query"]
        with torch.set_grad_enabled(not reptile):
            log_probs, lengths = functional_call(self, fast, (query["audio"], query["lengths"]))
            loss = self.ctc_loss(log_probs, lengths, query)
        if reptile:
            return {n: (meta[n] - fast[n]).detach() for n in fast if n in meta}, loss
        names = list(meta)
        grads = torch.autograd.grad(loss, [meta[n] for n in names], allow_unused=True)
        return {n: g for n, g in zip(names, grads) if g is not None}, loss.detach()

    # ---------------------------------------------------------------- outer loop
    def training_step(self, batch: list[dict], batch_idx: int) -> None:
        if not isinstance(batch, list) or not batch or not all(is_episode(e) for e in batch):
            raise ValueError("MetaCTC training batches must be lists of episodes {'support', 'query', 'task'} "
                             f"(datamodules.EpisodicDataModule); got {type(batch).__name__}")
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        meta = {n: p for n, p in self.named_parameters() if p.requires_grad}
        total: dict[str, Tensor] = {}
        losses = []
        for episode in batch:
            grads, loss = self.meta_gradient(episode, meta)
            losses.append(loss)
            for name, grad in grads.items():
                total[name] = total[name] + grad if name in total else grad.clone()
        grads = self.mean_over_ranks({n: g / len(batch) for n, g in total.items()})
        for name, param in meta.items():
            param.grad = grads.get(name)
        if self.hparams.meta_grad_clip is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.hparams.meta_grad_clip, gradient_clip_algorithm="norm")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        self.log_train_stats(torch.stack(losses).mean(), sum(len(e["query"]["lengths"]) for e in batch))
        for group, lr in (self.inner_lrs().items() if self.inner_log_lr is not None else ()):
            self.log(f"train/inner_lr/{group}", lr.detach(), on_step=True, on_epoch=False, batch_size=len(batch))

    def mean_over_ranks(self, grads: dict[str, Tensor]) -> dict[str, Tensor]:
        """Average the meta-gradients over DDP ranks: one all-reduce of one flat buffer (same names everywhere)."""
        if self.trainer.world_size == 1 or not grads:
            return grads
        names = list(grads)
        flat = self.trainer.strategy.reduce(torch.cat([grads[n].reshape(-1) for n in names]), reduce_op="mean")
        return {n: chunk.view_as(grads[n]) for n, chunk in zip(names, flat.split([grads[n].numel() for n in names]))}

    def on_train_start(self) -> None:
        if self.hparams.algorithm == "reptile":
            outside = [n for n, p in self.named_parameters() if p.requires_grad and n not in self.inner_group_of]
            if outside:
                rank_zero_warn(f"MetaCTC(reptile): {len(outside)} trainable parameter tensor(s) outside inner_groups "
                               f"{self.inner_group_names} get no meta-gradient (e.g. {outside[0]})")

    # ---------------------------------------------------------------- optimisation
    def top_layer_groups(self) -> list[tuple[str, list[nn.Parameter]]]:
        """As the core, plus the learned inner lrs as group ``"inner_lr"`` just below ``"head"``."""
        groups = super().top_layer_groups()
        if self.inner_log_lr is None:
            return groups
        return groups[:-1] + [(INNER_LR_GROUP, [self.inner_log_lr]), groups[-1]]

    def configure_optimizers(self) -> dict:
        """The core's param groups and ``TransferLRScheduler``; SGD instead of AdamW if asked."""
        config = super().configure_optimizers()
        optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
        for group in optimizer.param_groups:
            if group["name"] == INNER_LR_GROUP:
                group["weight_decay"] = 0.0
                group["base_lr"] = self.hparams.inner_lr_lr or group["base_lr"]
        if self.hparams.outer_optimizer == "sgd":
            optimizer = torch.optim.SGD([{k: g[k] for k in PARAM_GROUP_KEYS} for g in optimizer.param_groups],
                                        lr=self.hparams.lr)
            scheduler = TransferLRScheduler(optimizer, scheduler.total_steps, scheduler.decay, scheduler.min_lr_ratio)
            config = {"optimizer": optimizer, "lr_scheduler": {**config["lr_scheduler"], "scheduler": scheduler}}
        scheduler.refresh()
        return config
