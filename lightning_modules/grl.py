"""Gradient reversal (Ganin & Lempitsky, 2015) and its lambda schedule.

``GradientReversal`` is the identity in the forward pass and multiplies the incoming gradient by
``-lambda`` in the backward pass, so the encoder below it is trained to *confuse* the domain
classifier above it while the classifier itself is trained normally.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, lambd: float) -> Tensor:
        ctx.lambd = float(lambd)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        return grad.neg() * ctx.lambd, None


def grad_reverse(x: Tensor, lambd: float = 1.0) -> Tensor:
    """Identity on ``x`` (any shape); gradient scaled by ``-lambd`` on the way back."""
    return _GradReverse.apply(x, lambd)


class GradientReversal(nn.Module):
    """Module wrapper with a settable ``lambd`` (updated every step by the DANN schedule)."""

    def __init__(self, lambd: float = 1.0) -> None:
        super().__init__()
        self.lambd = float(lambd)

    def forward(self, x: Tensor) -> Tensor:
        return grad_reverse(x, self.lambd)

    def extra_repr(self) -> str:
        return f"lambd={self.lambd}"


def ganin_lambda(p: float, lambda_max: float = 1.0, gamma: float = 10.0) -> float:
    """λ_p = λ_max · (2 / (1 + exp(−γ·p)) − 1) for training progress ``p`` in [0, 1] (clamped)."""
    p = min(max(float(p), 0.0), 1.0)
    return lambda_max * (2.0 / (1.0 + math.exp(-gamma * p)) - 1.0)


def dann_lambda(schedule: str, p: float, lambda_max: float = 1.0, gamma: float = 10.0) -> float:
    """λ for ``schedule`` in {"ganin", "constant"} at progress ``p``."""
    if schedule == "ganin":
        return ganin_lambda(p, lambda_max, gamma)
    if schedule == "constant":
        return float(lambda_max)
    raise ValueError(f"lambda_schedule must be 'ganin' or 'constant', got {schedule!r}")
