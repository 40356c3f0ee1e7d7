"""Exponential moving average of a model's weights (the stylegan2-ada recipe).

The decay is set by a half-life in images rather than a fixed beta, so it does not change meaning
when the batch size changes: ``beta = 0.5 ** (batch / half_life_images)``. During the first images
the half-life ramps up (``rampup * images_seen``) so the average is not dominated by the random
initialisation.

Floating-point buffers (BatchNorm running means and variances) are averaged with the same beta as the
weights: copying the live statistics into a model whose weights are an average (stylegan2-ada copies
them; its generator has no BatchNorm) pairs statistics of one network with the weights of another.
Integer buffers (``num_batches_tracked``) are copied.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    def __init__(self, model: nn.Module, half_life_kimg: float = 10.0, rampup: float | None = 0.05):
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.half_life_kimg = float(half_life_kimg)
        self.rampup = rampup

    def beta(self, batch_size: int, images_seen: int) -> float:
        half_life = self.half_life_kimg * 1000.0
        if self.rampup is not None:
            half_life = min(half_life, images_seen * self.rampup)
        return 0.5 ** (batch_size / max(half_life, 1e-8))

    @torch.no_grad()
    def update(self, model: nn.Module, batch_size: int, images_seen: int) -> float:
        """Move the average towards ``model``; returns the beta used."""
        beta = self.beta(batch_size, images_seen)
        for p_ema, p in zip(self.model.parameters(), model.parameters()):
            p_ema.copy_(p.detach().lerp(p_ema, beta))
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            if b_ema.is_floating_point():
                b_ema.copy_(b.detach().lerp(b_ema, beta))
            else:
                b_ema.copy_(b)
        return beta

    def state_dict(self) -> dict:
        return self.model.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state)
