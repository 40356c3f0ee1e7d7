"""DecouplingLoss: gradient reversal signs, ignored labels, decorrelation values, weight switches."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from meer.losses.decoupling import DecouplingLoss, cross_correlation_penalty
from meer.losses.identity import id_preserving_loss
from meer.losses.grad_reverse import GradReverse, grad_reverse


def _codes(b=6):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(b, 10, generator=g, requires_grad=True), torch.randn(b, 4, generator=g, requires_grad=True))


def test_grad_reverse_is_identity_forward_and_flips_backward():
    x = torch.randn(3, 5, requires_grad=True)
    y = grad_reverse(x, 0.7)
    assert torch.equal(y, x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, -0.7))
    assert GradReverse(2.0)(x).shape == x.shape


def test_kind_adversary_gets_normal_gradient_and_id_code_gets_the_reversed_one():
    torch.manual_seed(0)
    loss_fn = DecouplingLoss(10, 4, num_identities=3, num_mask_kinds=2, w_kind_adv=1.0, w_id_adv=0.0,
                             w_occ_kind=0.0, w_decorr=0.0, grl_lambda=0.5)
    id_code, occ_code = _codes()
    labels, kinds = torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([0, 1, 0, 1, 0, 1])
    loss, parts = loss_fn(id_code, occ_code, labels, kinds)
    loss.backward()
    # reference without reversal
    ref_id = id_code.detach().clone().requires_grad_(True)
    adv = loss_fn.kind_adversary
    ref_grads = torch.autograd.grad(F.cross_entropy(adv(ref_id), kinds), [ref_id, *adv.parameters()])
    torch.testing.assert_close(id_code.grad, -0.5 * ref_grads[0])
    for p, g in zip(adv.parameters(), ref_grads[1:]):
        torch.testing.assert_close(p.grad, g)  # the adversary itself minimises its loss
    assert occ_code.grad is None
    assert set(parts) == {"kind_adv", "kind_adv_acc"}
    assert 0.0 <= parts["kind_adv_acc"].item() <= 1.0


def test_identity_adversary_reverses_into_occ_code_and_occ_kind_does_not():
    torch.manual_seed(0)
    id_code, occ_code = _codes()
    labels, kinds = torch.tensor([0, 1, 2, 0, 1, 2]), torch.tensor([0, 1, 0, 1, 0, 1])
    only_id = DecouplingLoss(10, 4, 3, 2, w_kind_adv=0, w_id_adv=1, w_occ_kind=0, w_decorr=0)
    only_id(id_code, occ_code, labels, kinds)[0].backward()
    ref = occ_code.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(only_id.id_adversary(ref), labels), ref)
    torch.testing.assert_close(occ_code.grad, -g)
    occ_code.grad = None
    only_kind = DecouplingLoss(10, 4, 3, 2, w_kind_adv=0, w_id_adv=0, w_occ_kind=1, w_decorr=0)
    only_kind(id_code, occ_code, labels, kinds)[0].backward()
    ref = occ_code.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(only_kind.occ_kind(ref), kinds), ref)
    torch.testing.assert_close(occ_code.grad, g)


def test_weighted_total_and_ignored_labels():
    torch.manual_seed(0)
    loss_fn = DecouplingLoss(10, 4, 3, 2, w_kind_adv=0.2, w_id_adv=0.3, w_occ_kind=0.4, w_decorr=2.0)
    id_code, occ_code = _codes()
    labels = torch.tensor([0, -1, 2, -1, 1, 2])
    kinds = torch.full((6,), -1)  # no masked face in this batch
    loss, parts = loss_fn(id_code, occ_code, labels, kinds)
    assert parts["kind_adv"].item() == 0.0 and parts["occ_kind"].item() == 0.0
    valid = labels >= 0
    expected_id = F.cross_entropy(loss_fn.id_adversary(occ_code)[valid], labels[valid])
    torch.testing.assert_close(parts["id_adv"], expected_id)
    torch.testing.assert_close(loss, 0.3 * expected_id + 2.0 * parts["decorr"])
    loss.backward()  # graph stays valid with empty terms
    with pytest.raises(ValueError, match=">= 0"):
        DecouplingLoss(10, 4, 3, 2, w_decorr=-1)


def test_cross_correlation_penalty_hand_computed():
    a = torch.tensor([[1.0], [-1.0], [1.0], [-1.0]])
    b = torch.tensor([[1.0, 2.0], [-1.0, 2.0], [1.0, -2.0], [-1.0, -2.0]])
    # standardised a = a; b0 = a (corr 1), b1 = [1,1,-1,-1] (corr 0) -> mean([1, 0]) = 0.5
    assert cross_correlation_penalty(a, b).item() == pytest.approx(0.5, abs=1e-4)
    assert cross_correlation_penalty(a, b[:, 1:]).item() == pytest.approx(0.0, abs=1e-8)
    assert cross_correlation_penalty(a[:1], b[:1]).item() == 0.0


def test_id_preserving_loss_values():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[1.0, 1.0], [0.0, -1.0]])
    # cos = [1/sqrt2, -1] -> mean(1 - cos) = (1 - 0.7071 + 2) / 2
    assert id_preserving_loss(a, b).item() == pytest.approx((1 - 2**-0.5 + 2) / 2, rel=1e-6)
    assert id_preserving_loss(a, a).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="B x D"):
        id_preserving_loss(a, b[:1])
