"""Occlusion loss (BCE + Dice) and mask IoU against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

from meer.losses.occlusion import dice_loss, mask_iou, occlusion_loss, occlusion_loss_parts


def _sig(z):
    return 1.0 / (1.0 + math.exp(-z))


def test_bce_and_dice_hand_computed():
    z = torch.tensor([2.0, -1.0, 0.0, 3.0]).view(1, 1, 2, 2)
    y = torch.tensor([1.0, 0.0, 1.0, 0.0]).view(1, 1, 2, 2)
    p = [_sig(v) for v in (2.0, -1.0, 0.0, 3.0)]
    bce = -(math.log(p[0]) + math.log(1 - p[1]) + math.log(p[2]) + math.log(1 - p[3])) / 4
    dice = 1 - (2 * (p[0] + p[2]) + 1) / (sum(p) + 2 + 1)
    total, parts = occlusion_loss_parts(z, y, bce_weight=0.5, dice_weight=2.0)
    assert parts["bce"].item() == pytest.approx(bce, rel=1e-5)
    assert parts["dice"].item() == pytest.approx(dice, rel=1e-5)
    assert total.item() == pytest.approx(0.5 * bce + 2.0 * dice, rel=1e-5)
    assert occlusion_loss(z, y).item() == pytest.approx(bce + dice, rel=1e-5)


def test_dice_is_per_image_then_averaged():
    z = torch.full((2, 1, 2, 2), 20.0)  # p ~= 1 everywhere
    y = torch.zeros(2, 1, 2, 2)
    y[0] = 1.0
    # image 0: perfect -> 0; image 1: empty truth, prediction 4 -> 1 - 1/5
    assert dice_loss(z, y).item() == pytest.approx((0.0 + (1 - 1 / 5)) / 2, abs=1e-6)


def test_loss_falls_as_prediction_improves_and_has_gradient():
    y = torch.zeros(1, 1, 8, 8)
    y[..., 4:, :] = 1
    good = (y * 2 - 1) * 4
    bad = -good
    assert occlusion_loss(good, y) < occlusion_loss(torch.zeros_like(y), y) < occlusion_loss(bad, y)
    z = torch.zeros_like(y, requires_grad=True)
    occlusion_loss(z, y).backward()
    assert (z.grad[..., 4:, :] < 0).all() and (z.grad[..., :4, :] > 0).all()


def test_shape_mismatch_message():
    with pytest.raises(ValueError, match="B x 1 x H x W"):
        occlusion_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))


def test_mask_iou():
    y = torch.zeros(2, 1, 4, 4)
    y[0, :, :2] = 1  # 8 px
    p = torch.zeros(2, 1, 4, 4)
    p[0, :, 1:3] = 0.9  # 8 px, 4 overlap -> IoU 4/12
    ious = mask_iou(p, y)
    assert ious[0].item() == pytest.approx(4 / 12)
    assert ious[1].item() == 1.0  # both empty
