"""MarginHead values against hand-computed ArcFace / CosFace logits."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from meer.losses.margin import MarginHead


def _head(kind, m, s=2.0):
    head = MarginHead(2, 3, kind=kind, s=s, m=m)
    with torch.no_grad():  # class centres at 0, 90 and 180 degrees
        head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]]))
    return head


def _emb(deg):
    r = math.radians(deg)
    return torch.tensor([[math.cos(r), math.sin(r)]])


def test_arcface_target_logit_is_cos_theta_plus_m():
    head = _head("arcface", 0.5)
    logits = head(_emb(30) * 5.0, torch.tensor([0]))  # theta to class 0 = 30 deg
    theta = math.radians(30)
    expected = 2.0 * torch.tensor([[math.cos(theta + 0.5), math.cos(math.radians(60)), math.cos(math.radians(150))]])
    torch.testing.assert_close(logits, expected)


def test_arcface_fallback_past_pi():
    head = _head("arcface", 0.5)
    # theta to class 0 = 170 deg: theta + m > pi -> cos(theta) - m * sin(m)
    logits = head(_emb(170), torch.tensor([0]))
    c = math.cos(math.radians(170))
    assert logits[0, 0].item() == pytest.approx(2.0 * (c - 0.5 * math.sin(0.5)), abs=1e-5)


def test_cosface_target_logit_is_cos_minus_m():
    head = _head("cosface", 0.35, s=64.0)
    logits = head(_emb(60), torch.tensor([1]))  # theta to class 1 = 30 deg
    expected = 64.0 * torch.tensor([[math.cos(math.radians(60)), math.cos(math.radians(30)) - 0.35, math.cos(math.radians(120))]])
    torch.testing.assert_close(logits, expected)


def test_unlabelled_rows_get_no_margin_and_are_ignored_by_the_loss():
    head = _head("arcface", 0.5)
    emb = torch.cat([_emb(10), _emb(100)])
    logits = head(emb, torch.tensor([-1, 1]))
    torch.testing.assert_close(logits[0], 2.0 * head.cosine(emb)[0])
    loss = head.loss(emb, torch.tensor([-1, 1]))
    torch.testing.assert_close(loss, F.cross_entropy(logits[1:], torch.tensor([1])))
    assert head.loss(emb, torch.tensor([-1, -1])).item() == 0.0


def test_defaults_and_gradients():
    assert MarginHead(8, 4, "arcface").m == 0.5 and MarginHead(8, 4, "cosface").m == 0.35
    head = MarginHead(8, 4, "arcface")
    emb = torch.randn(5, 8, requires_grad=True)
    head.loss(emb, torch.tensor([0, 1, 2, 3, 0])).backward()
    assert emb.grad.abs().sum() > 0 and head.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="arcface"):
        MarginHead(8, 4, "sphereface")
    with pytest.raises(ValueError, match="labels"):
        head(emb, torch.tensor([0, 1]))


def test_margin_makes_the_target_harder():
    emb = torch.randn(16, 8)
    labels = torch.randint(0, 4, (16,))
    for kind in ("arcface", "cosface"):
        head = MarginHead(8, 4, kind, s=10.0)
        plain = head.cosine(emb) * 10.0
        logits = head(emb, labels)
        tgt = logits.gather(1, labels[:, None])
        assert (tgt < plain.gather(1, labels[:, None])).all()
        other = torch.ones_like(logits, dtype=torch.bool).scatter(1, labels[:, None], False)
        assert torch.equal(logits[other], plain[other])
