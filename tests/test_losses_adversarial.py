"""GAN losses against their formulas, and R1 against a hand-computed linear discriminator."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from meer.losses.adversarial import d_loss, g_loss, r1_penalty


def _softplus(x):
    return math.log1p(math.exp(x))


def test_nonsaturating_values():
    real = torch.tensor([1.0, -2.0])
    fake = torch.tensor([0.5, 3.0])
    expected_d = (_softplus(-1.0) + _softplus(2.0)) / 2 + (_softplus(0.5) + _softplus(3.0)) / 2
    assert d_loss(real, fake, "nonsat").item() == pytest.approx(expected_d, rel=1e-6)
    assert g_loss(fake, "nonsat").item() == pytest.approx((_softplus(-0.5) + _softplus(-3.0)) / 2, rel=1e-6)


def test_hinge_values():
    real = torch.tensor([[0.5, 2.0]])
    fake = torch.tensor([[-3.0, 0.0]])
    # relu(1 - real) = [0.5, 0]; relu(1 + fake) = [0, 1]
    assert d_loss(real, fake, "hinge").item() == pytest.approx(0.25 + 0.5)
    assert g_loss(fake, "hinge").item() == pytest.approx(1.5)
    with pytest.raises(ValueError, match="nonsat"):
        g_loss(fake, "wgan")


def test_r1_on_a_linear_discriminator_is_squared_weight_norm():
    torch.manual_seed(0)
    d = torch.nn.Linear(12, 1)
    x = torch.randn(5, 3, 2, 2, requires_grad=True)
    logits = d(x.flatten(1))
    penalty = r1_penalty(logits, x)
    # D(x) = w . x + b  ->  dD/dx = w for every sample  ->  penalty = ||w||^2
    assert penalty.item() == pytest.approx(d.weight.square().sum().item(), rel=1e-5)
    penalty.backward()
    torch.testing.assert_close(d.weight.grad, 2 * d.weight.detach())  # d||w||^2/dw = 2w
    assert d.bias.grad is None or d.bias.grad.abs().max() == 0


def test_r1_on_a_quadratic_discriminator_and_tuple_inputs():
    x = torch.tensor([[1.0, 2.0], [0.5, -1.0]], requires_grad=True)
    y = torch.tensor([[3.0], [4.0]], requires_grad=True)
    logits = (x.square().sum(1, keepdim=True) + 2 * y)  # grad_x = 2x, grad_y = 2
    expected = ((4 * x.detach().square()).sum(1) + 4).mean()
    assert r1_penalty(logits, (x, y)).item() == pytest.approx(expected.item())
    with pytest.raises(ValueError, match="requires_grad"):
        r1_penalty(F.relu(torch.ones(1)), torch.ones(1))


def test_r1_of_a_patch_map_uses_the_per_image_mean_score():
    # a "PatchGAN" whose every output logit is the same linear function of the image: the per-image score is that
    # function, so the penalty must not depend on how many patches the map has
    torch.manual_seed(0)
    w = torch.randn(3, 4, 4)
    x = torch.randn(2, 3, 4, 4, requires_grad=True)
    one = (x * w).sum((1, 2, 3))
    for patches in (1, 4, 9):
        side = int(patches ** 0.5)
        logits = one.view(2, 1, 1, 1).expand(2, 1, side, side)
        assert r1_penalty(logits, x).item() == pytest.approx(w.square().sum().item(), rel=1e-5)
