"""Discriminators: shapes, the local critic's crop box, and R1 through the crop (double backward)."""
from __future__ import annotations

import pytest
import torch

from meer.losses.adversarial import r1_penalty
from meer.models.discriminator_local import LocalDiscriminator, mask_boxes
from meer.models.discriminator_patch import PatchDiscriminator


def test_patch_discriminator_gives_a_logit_map():
    d = PatchDiscriminator(width=8, n_layers=3)
    out = d(torch.rand(2, 3, 112, 112))
    assert out.shape == (2, 1, 12, 12)


def test_mask_boxes_hand_computed():
    mask = torch.zeros(2, 1, 20, 30)
    mask[0, :, 10:15, 4:24] = 1  # rows 10..14, cols 4..23 -> h 5, w 20
    boxes = mask_boxes(mask, margin=0.2)
    # margin: 0.2*5 = 1 row, 0.2*20 = 4 cols
    expected = torch.tensor([[0.0, 9.0], [27.0, 9.0], [27.0, 15.0], [0.0, 15.0]])
    torch.testing.assert_close(boxes[0], expected)
    full = torch.tensor([[0.0, 0.0], [29.0, 0.0], [29.0, 19.0], [0.0, 19.0]])
    torch.testing.assert_close(boxes[1], full)  # empty mask -> whole image


def test_local_discriminator_shape_and_crop_content():
    d = LocalDiscriminator(width=8, local_size=16, margin=0.0)
    images = torch.zeros(1, 3, 32, 32)
    images[:, :, 16:32, 8:24] = 1.0
    mask = torch.zeros(1, 1, 32, 32)
    mask[:, :, 16:32, 8:24] = 1.0
    crop = d.crop(images, mask)
    assert crop.shape == (1, 4, 16, 16)
    torch.testing.assert_close(crop, torch.ones_like(crop))  # RGB 1 -> +1 in [-1, 1], mask channel 1
    assert d(images, mask).shape == (1, 1)
    with pytest.raises(ValueError, match="does not match"):
        d(images, torch.zeros(1, 1, 16, 16))


def test_r1_through_the_local_crop_only_sees_the_box():
    torch.manual_seed(0)
    d = LocalDiscriminator(width=8, local_size=16, margin=0.0)
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 18:30, 6:26] = 1.0
    logits = d(images, mask)
    (grad,) = torch.autograd.grad(logits.sum(), images, retain_graph=True)
    outside = torch.ones(32, 32, dtype=torch.bool)
    outside[17:31, 5:27] = False  # bilinear sampling may touch one pixel around the box
    assert grad[:, :, outside].abs().max() == 0
    assert grad[:, :, 18:30, 6:26].abs().sum() > 0
    penalty = r1_penalty(logits, images)
    penalty.backward()  # double backward through kornia's crop_and_resize
    # every weight shapes the input gradient (biases only move LeakyReLU kinks: zero a.e.)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in d.named_parameters() if n.endswith("weight"))
    torch.testing.assert_close(penalty, grad.square().flatten(1).sum(1).mean())


def test_local_discriminator_under_bf16_autocast():
    d = LocalDiscriminator(width=8, local_size=16)
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 16:, :] = 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = d(torch.rand(2, 3, 32, 32), mask)
    assert out.shape == (2, 1) and torch.isfinite(out.float()).all()


def test_local_size_must_be_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        LocalDiscriminator(local_size=48)
