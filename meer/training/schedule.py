"""Learning-rate schedules: linear warmup, then constant, cosine or step decay (as a LambdaLR).

The factor is a plain function of the step, so the scheduler's state_dict holds only numbers and
resumes exactly.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from meer.utils.errors import MeerError

KINDS = ("constant", "cosine", "step")


def lr_factor(kind: str, total_steps: int, warmup_steps: int = 0, min_ratio: float = 0.0,
              milestones: tuple[float, ...] = (0.6, 0.85), gamma: float = 0.1) -> Callable[[int], float]:
    """Multiplier of the base learning rate at a step.

    ``milestones`` (step schedule) are fractions of ``total_steps``; ``min_ratio`` is the floor of
    the cosine schedule."""
    if kind not in KINDS:
        raise MeerError(f"unknown learning-rate schedule {kind!r} (choose {', '.join(KINDS)})")
    if total_steps < 1:
        raise MeerError(f"total_steps must be at least 1, got {total_steps}")
    warmup_steps = max(0, int(warmup_steps))
    marks = sorted(int(round(m * total_steps)) for m in milestones)

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if kind == "constant":
            return 1.0
        if kind == "cosine":
            span = max(1, total_steps - warmup_steps)
            t = min(1.0, (step - warmup_steps) / span)
            return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))
        return gamma ** sum(step >= m for m in marks)

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, kind: str, total_steps: int, warmup_steps: int = 0,
                    min_ratio: float = 0.0, milestones: tuple[float, ...] = (0.6, 0.85),
                    gamma: float = 0.1) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_factor(kind, total_steps, warmup_steps, min_ratio, milestones, gamma))
