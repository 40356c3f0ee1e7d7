"""Gradient reversal layer (Ganin & Lempitsky, 2015): identity forward, ``-lambda * grad`` backward.

Used by :class:`meer.losses.decoupling.DecouplingLoss` so that an adversary classifier and the features it
reads are trained in one backward pass: the adversary minimises its loss, the features upstream of the
reversal receive the opposite gradient and learn to defeat it.
"""
from __future__ import annotations

import torch


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, lambd: float) -> torch.Tensor:  # type: ignore[override]
        ctx.lambd = float(lambd)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return -ctx.lambd * grad, None


def grad_reverse(x: torch.Tensor, lambd: float = 1.0) -> torch.Tensor:
    """Return ``x`` unchanged; during backward multiply the incoming gradient by ``-lambd``."""
    return _GradReverse.apply(x, lambd)


class GradReverse(torch.nn.Module):
    """Module form of :func:`grad_reverse` (no parameters)."""

    def __init__(self, lambd: float = 1.0) -> None:
        super().__init__()
        self.lambd = float(lambd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_reverse(x, self.lambd)

    def extra_repr(self) -> str:
        return f"lambd={self.lambd}"
