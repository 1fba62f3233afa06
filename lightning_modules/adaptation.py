"""Few-shot adaptation on fast weights: the inner loop of meta-learning, episode evaluation, ``speechxfer adapt``.

Any ``CTCModule`` (meta-learned or not) adapts to a task by a few SGD steps on the CTC loss of the
task's support batch, over a chosen set of layer groups (specs as ``GradualUnfreezing``'s: a group
name such as ``"head"``, ``"top:k"`` = the top k backbone groups and everything above, ``"all"``).
The steps run on FAST weights: ``{parameter name: tensor}`` passed to the module with
``torch.func.functional_call``, so the module's stored parameters are never written, and their
``.grad`` is never touched (gradients come from ``torch.autograd.grad``). Inner-loop gradients are
first-order (``create_graph=False``): a fast weight is ``w0 - sum_k lr * g_k`` with every ``g_k``
a constant, so the only graph from the adapted weights back to ``w0`` (and to a learned lr) is
those subtractions -- exactly the first-order MAML meta-gradient (``lightning_modules.meta``).

The inner loop runs in the module's current mode (train during meta-training, eval in validation,
test and ``speechxfer adapt``: no dropout, deterministic). Evaluation adaptation needs autograd
inside Lightning's val/test loop, which runs under ``torch.inference_mode``: :func:`adapted_outputs`
leaves inference mode (``torch.inference_mode(False)`` + ``torch.enable_grad()``) and clones the
support batch out of it, so no trainer setting is needed (``inference_mode=False`` also works).

The recipe (steps, lr, groups) of an evaluation comes from ``module.adaptation_recipe()`` (the
core's is empty; ``MetaCTC`` returns its inner loop) updated by the episode's ``"adapt"`` entries
that are not None (the datamodule's protocol, equal for every compared method).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call

from callbacks.unfreeze import resolve_groups

INNER_LR_GROUP = "inner_lr"  # MetaCTC's learned inner lrs: a layer group that is trained, never adapted


@dataclass(frozen=True)
class AdaptationRecipe:
    """How a module adapts to a task: ``steps`` SGD steps at ``lr`` on ``groups`` (layer-group specs).

    ``group_lrs`` (learned per-group lrs, ``MetaCTC(learn_inner_lr=True)``) win over ``lr`` for the
    groups they name. ``None`` means "not set": ``groups`` then defaults to ``["head"]``.
    """

    steps: int | None = None
    lr: float | None = None
    groups: tuple[str, ...] | None = None
    group_lrs: Mapping[str, float] | None = None

    def updated(self, overrides: Mapping[str, Any] | None) -> AdaptationRecipe:
        """This recipe with the non-None ``steps`` / ``lr`` / ``groups`` of ``overrides`` (an explicit lr
        replaces learned per-group lrs)."""
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        unknown = set(given) - {"steps", "lr", "groups"}
        if unknown:
            raise ValueError(f"unknown adaptation setting(s) {sorted(unknown)}; expected steps, lr, groups")
        if "groups" in given:
            given["groups"] = tuple(given["groups"])
        if "lr" in given:
            given["group_lrs"] = None
        return replace(self, **given)

    def checked(self, owner: str) -> AdaptationRecipe:
        """Raise unless the recipe says how many steps and (for steps > 0) at which lr."""
        if self.steps is None or (self.steps > 0 and self.lr is None and not self.group_lrs):
            raise ValueError(f"{owner} has no adaptation recipe of its own (steps={self.steps}, lr={self.lr}): set the "
                             "evaluation protocol (EpisodicDataModule adapt_steps / adapt_lr / adapt_groups, or "
                             "speechxfer adapt --steps / --lr)")
        if self.steps < 0:
            raise ValueError(f"adaptation steps must be >= 0, got {self.steps}")
        return self

    def lr_of(self, group: str) -> float:
        if self.group_lrs and group in self.group_lrs:
            return float(self.group_lrs[group])
        if self.lr is None:
            raise ValueError(f"no adaptation lr for layer group {group!r}")
        return self.lr


def adapted_groups(module: Any, specs: Sequence[str] | None) -> dict[str, str]:
    """``{parameter name: layer-group name}`` of the parameters in the groups ``specs`` select."""
    groups = module.layer_groups()
    chosen = set(resolve_groups(list(specs or ["head"]), [n for n, _ in groups], len(module.backbone_layer_groups())))
    chosen.discard(INNER_LR_GROUP)
    group_of_param = {id(p): name for name, params in groups if name in chosen for p in params}
    return {n: group_of_param[id(p)] for n, p in module.named_parameters() if id(p) in group_of_param}


def support_loss(module: Any, fast: Mapping[str, Tensor], batch: Mapping[str, Any]) -> Tensor:
    """Scalar CTC loss (the core's convention) of a labelled batch under fast weights."""
    from lightning_modules.ctc import ctc_losses  # here: ctc.py imports this module

    log_probs, lengths = functional_call(module, dict(fast), (batch["audio"], batch["lengths"]))
    return ctc_losses(log_probs, lengths, batch["targets"], batch["target_lengths"]).mean()


def inner_loop(module: Any, support: Mapping[str, Any], fast: Mapping[str, Tensor], group_of: Mapping[str, str],
               lrs: Mapping[str, float | Tensor], steps: int) -> dict[str, Tensor]:
    """``steps`` first-order SGD steps on the support CTC loss; returns the new fast weights.

    ``fast`` maps parameter names to starting tensors (that require grad); ``lrs`` maps layer-group
    names to a float or a (learned) scalar tensor. Parameters not in ``fast`` stay the module's own.
    """
    fast = dict(fast)
    for _ in range(steps):
        names = list(fast)
        grads = torch.autograd.grad(support_loss(module, fast, support), [fast[n] for n in names], allow_unused=True)
        fast = {n: fast[n] if g is None else fast[n] - lrs[group_of[n]] * g for n, g in zip(names, grads)}
    return fast


def adapted_weights(module: Any, support: Mapping[str, Any] | None, recipe: AdaptationRecipe) -> dict[str, Tensor]:
    """Fast weights after adapting on ``support`` (detached from the module: no meta-gradient); {} when
    there is nothing to adapt (no support, or 0 steps)."""
    if support is None or recipe.steps == 0:
        return {}
    group_of = adapted_groups(module, recipe.groups)
    params = dict(module.named_parameters())
    fast = {n: params[n].detach().requires_grad_(True) for n in group_of}
    lrs = {g: recipe.lr_of(g) for g in set(group_of.values())}
    fast = inner_loop(module, support, fast, group_of, lrs, recipe.steps)
    return {n: w.detach() for n, w in fast.items()}


def is_episode(batch: Any) -> bool:
    """True for an episode dict ``{"support", "query", "task", ...}`` (``datamodules.episodic``)."""
    return isinstance(batch, dict) and "query" in batch and "support" in batch


def outside_inference(batch: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a batch whose tensors are ordinary (not inference-mode) tensors; call outside inference mode."""
    return {k: v.clone() if isinstance(v, Tensor) else v for k, v in batch.items()}


def adapted_outputs(module: Any, episode: Mapping[str, Any]) -> tuple[dict, tuple[Tensor, Tensor]]:
    """(query batch, (query log-probs (B, T', V), lengths (B,))) after adapting on the episode's support.

    The recipe is ``module.adaptation_recipe()`` updated by ``episode["adapt"]``; the adaptation runs
    with autograd even inside Lightning's inference-mode evaluation loop (module docstring).
    """
    recipe = module.adaptation_recipe().updated(episode.get("adapt"))
    support = episode["support"]
    fast: dict[str, Tensor] = {}
    if support is not None:
        recipe = recipe.checked(type(module).__name__)
        with torch.inference_mode(False), torch.enable_grad():
            fast = adapted_weights(module, outside_inference(support), recipe)
    query = episode["query"]
    return query, functional_call(module, fast, (query["audio"], query["lengths"]))
