"""GAN losses: non-saturating logistic (StyleGAN2) or hinge (SAGAN/BigGAN), and the R1 penalty.

* ``d_loss(real, fake, "nonsat") = mean(softplus(-real)) + mean(softplus(fake))``;
  ``"hinge"``: ``mean(relu(1 - real)) + mean(relu(1 + fake))``.
* ``g_loss(fake, "nonsat") = mean(softplus(-fake))``; ``"hinge"``: ``-mean(fake)``.
* ``r1_penalty(real_logits, real_images) = mean_b ||d sum(D(x)) / d x_b||^2`` (Mescheder et al., 2018),
  built with ``create_graph=True`` so it trains D. The caller scales it by ``gamma / 2`` (and by the lazy
  interval, as StyleGAN2 does). ``real_images`` may be a tensor or a tuple of tensors (a D with several inputs);
  they must have ``requires_grad=True`` before D is applied.

Logits of any shape (a PatchGAN map or one per sample) are averaged over all elements. Float32 math.
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F

GanKind = Literal["nonsat", "hinge"]


def _kind(kind: str) -> None:
    if kind not in ("nonsat", "hinge"):
        raise ValueError(f"GAN loss kind must be 'nonsat' or 'hinge', got {kind!r}")


def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: GanKind = "nonsat") -> torch.Tensor:
    _kind(kind)
    r, f = real_logits.float(), fake_logits.float()
    if kind == "nonsat":
        return F.softplus(-r).mean() + F.softplus(f).mean()
    return F.relu(1.0 - r).mean() + F.relu(1.0 + f).mean()


def g_loss(fake_logits: torch.Tensor, kind: GanKind = "nonsat") -> torch.Tensor:
    _kind(kind)
    f = fake_logits.float()
    if kind == "nonsat":
        return F.softplus(-f).mean()
    return -f.mean()


def r1_penalty(real_logits: torch.Tensor, real_images: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    inputs = (real_images,) if isinstance(real_images, torch.Tensor) else tuple(real_images)
    if not all(t.requires_grad for t in inputs):
        raise ValueError("r1_penalty: call real_images.requires_grad_(True) before running the discriminator")
    # R1 (Mescheder et al. 2018) penalises the gradient of one real/fake score per image. A PatchGAN gives a map of
    # logits; summing them would scale the penalty with the square of the number of patches (169 at 112 px with 3
    # layers), which pinned the patch D of the first CPU runs at a constant output. Its score is the map's mean.
    per_image = real_logits.float().flatten(1).mean(1) if real_logits.dim() > 1 else real_logits.float()
    grads = torch.autograd.grad(per_image.sum(), inputs, create_graph=True)
    per_sample = sum(g.float().square().flatten(1).sum(1) for g in grads)
    return per_sample.mean()
