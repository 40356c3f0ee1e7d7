"""Occlusion-map supervision: binary cross-entropy + soft Dice against the exact synthetic mask.

``occlusion_loss(occ_logits, mask)`` = ``bce_weight * BCE + dice_weight * Dice`` with

* ``BCE = mean(softplus(z) - y * z)`` over all pixels (``F.binary_cross_entropy_with_logits``),
* ``Dice = mean_b(1 - (2 * sum(p * y) + eps) / (sum(p) + sum(y) + eps))``, ``p = sigmoid(z)``, per image,
  ``eps = 1`` (so an empty mask and an empty prediction give 0, and predicting occlusion on a clean face costs).

BCE gets every pixel right on average; Dice keeps the small mask region from being drowned by the background.
Computed in float32 with autocast disabled. ``occlusion_loss_parts`` also returns the two terms, and
``mask_iou`` is the validation metric.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _check(occ_logits: torch.Tensor, mask: torch.Tensor) -> None:
    if occ_logits.shape != mask.shape or occ_logits.dim() != 4 or occ_logits.shape[1] != 1:
        raise ValueError(
            f"occlusion logits and mask must both be B x 1 x H x W, got {tuple(occ_logits.shape)} and {tuple(mask.shape)}"
        )


def dice_loss(occ_logits: torch.Tensor, mask: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice loss per image, averaged over the batch."""
    _check(occ_logits, mask)
    with torch.autocast(device_type=occ_logits.device.type, enabled=False):
        p = torch.sigmoid(occ_logits.float()).flatten(1)
        y = mask.float().flatten(1)
        dice = (2.0 * (p * y).sum(1) + eps) / (p.sum(1) + y.sum(1) + eps)
        return (1.0 - dice).mean()


def occlusion_loss_parts(
    occ_logits: torch.Tensor, mask: torch.Tensor, bce_weight: float = 1.0, dice_weight: float = 1.0
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(bce_weight * bce + dice_weight * dice, {"bce": ..., "dice": ...})``."""
    _check(occ_logits, mask)
    with torch.autocast(device_type=occ_logits.device.type, enabled=False):
        bce = F.binary_cross_entropy_with_logits(occ_logits.float(), mask.float())
    dice = dice_loss(occ_logits, mask)
    return bce_weight * bce + dice_weight * dice, {"bce": bce, "dice": dice}


def occlusion_loss(
    occ_logits: torch.Tensor, mask: torch.Tensor, bce_weight: float = 1.0, dice_weight: float = 1.0
) -> torch.Tensor:
    """Scalar ``bce_weight * BCE + dice_weight * Dice`` (see :func:`occlusion_loss_parts` for the terms)."""
    return occlusion_loss_parts(occ_logits, mask, bce_weight, dice_weight)[0]


@torch.no_grad()
def mask_iou(occ_map: torch.Tensor, mask: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Per-image IoU (``B``) of ``occ_map > threshold`` with ``mask > 0.5``; 1 when both are empty."""
    if occ_map.shape != mask.shape:
        raise ValueError(f"occlusion map {tuple(occ_map.shape)} and mask {tuple(mask.shape)} differ in shape")
    p = (occ_map > threshold).flatten(1)
    y = (mask > 0.5).flatten(1)
    inter = (p & y).sum(1).float()
    union = (p | y).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
