"""SRT / triplet loss against hand-computed values, mining, and the EUM gradient path."""
from __future__ import annotations

import math

import pytest
import torch

from meer.losses.srt import (SRTConfig, SRTLoss, mine_negatives, pairwise_squared_distance,
                             self_restrained_triplet_loss, triplet_loss)
from meer.models.eum import EUM, EUMConfig, FrozenEmbedder
from meer.utils.errors import MeerError


def t(*rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_unrestrained_case_is_the_triplet_term():
    # a = p's opposite direction from n: d(a,p)=2, d(a,n)=0, d(p,n)=2 -> mean d_an 0 < mean d_pn 2
    a, p, n = t([1.0, 0.0]), t([0.0, 1.0]), t([1.0, 0.0])
    out = self_restrained_triplet_loss(a, p, n, margin=2.0)
    assert not out.restrained
    assert out.loss.item() == pytest.approx(2 + 2 - 0)
    assert (out.d_ap.item(), out.d_an.item(), out.d_pn.item()) == pytest.approx((2.0, 0.0, 2.0))


def test_restrained_case_uses_mean_positive_negative_distance():
    # d(a,p)=2, d(a,n)=4, d(p,n)=2 -> mean d_an 4 >= mean d_pn 2: delta = 2, loss = 2 + 2 - 2 = 2
    a, p, n = t([1.0, 0.0]), t([0.0, 1.0]), t([-1.0, 0.0])
    out = self_restrained_triplet_loss(a, p, n, margin=2.0)
    assert out.restrained and out.loss.item() == pytest.approx(2.0)
    # the plain triplet loss is satisfied here: 2 + 2 - 4 = 0
    assert triplet_loss(a, p, n, margin=2.0).loss.item() == pytest.approx(0.0)
    assert triplet_loss(a, p, n, margin=3.0).loss.item() == pytest.approx(1.0)


def test_restraint_is_decided_on_batch_means():
    s = 1 / math.sqrt(2)
    # triplet 1: d_ap=2, d_an=4, d_pn=2 ; triplet 2: a=p: d_ap=0, d_an=d(p,n)
    a = t([1.0, 0.0], [s, s])
    p = t([0.0, 1.0], [s, s])
    n = t([-1.0, 0.0], [s, -s])  # triplet 2: d_an = d_pn = 2
    out = self_restrained_triplet_loss(a, p, n, margin=1.0)
    # means: d_an = (4 + 2)/2 = 3 >= d_pn = (2 + 2)/2 = 2 -> restrained with delta = 2
    assert out.restrained
    expected = (max(2 + 1 - 2, 0) + max(0 + 1 - 2, 0)) / 2
    assert out.loss.item() == pytest.approx(expected)
    # move triplet 1's negative onto the anchor: means d_an = (0 + 2)/2 = 1 < 2 -> per-sample d_an
    out2 = self_restrained_triplet_loss(a, p, t([1.0, 0.0], [s, -s]), margin=1.0)
    assert not out2.restrained
    assert out2.loss.item() == pytest.approx((max(2 + 1 - 0, 0) + max(0 + 1 - 2, 0)) / 2)


def test_normalisation_and_unnormalised_option():
    a, p, n = t([3.0, 0.0]), t([0.0, 2.0]), t([5.0, 0.0])
    assert self_restrained_triplet_loss(a, p, n, 2.0).loss.item() == pytest.approx(4.0)  # as unit vectors
    raw = triplet_loss(a, p, n, margin=1.0, normalize=False)
    assert raw.d_ap.item() == pytest.approx(13.0) and raw.d_an.item() == pytest.approx(4.0)
    assert raw.loss.item() == pytest.approx(13 + 1 - 4)


def test_restrained_gradient_only_pulls_anchor_to_positive():
    torch.manual_seed(0)
    p = torch.nn.functional.normalize(torch.randn(6, 32), dim=1)
    n = torch.nn.functional.normalize(torch.randn(6, 32), dim=1)  # d(p, n) ~ 2
    a = (-n + 0.3 * torch.randn(6, 32)).requires_grad_(True)  # far from the negatives: d(a, n) ~ 4
    out = self_restrained_triplet_loss(a, p, n, margin=2.0)
    assert out.restrained
    out.loss.backward()
    g = a.grad.clone()
    a2 = a.detach().clone().requires_grad_(True)
    an = torch.nn.functional.normalize(a2, dim=1)
    hinge = ((an - p).pow(2).sum(1) + 2.0 - out.d_pn.mean()) > 0
    ((an - p).pow(2).sum(1) * hinge).mean().backward()
    assert hinge.any() and torch.allclose(g, a2.grad, atol=1e-6)


def test_mining_strategies():
    a = t([1.0, 0.0], [0.0, 1.0])
    p = t([0.8, 0.6], [0.0, 1.0])
    labels = torch.tensor([0, 1])
    cands = t([1.0, 0.0], [0.6, 0.8], [-1.0, 0.0], [0.0, 1.0])
    cl = torch.tensor([0, 2, 3, 1])
    # anchor 0 (label 0): candidates 1,2,3 are other identities; d(a0,.) = 0.8, 4, 2 ; d(a0,p0)=0.4
    hard, valid = mine_negatives(a, p, labels, cands, cl, "hard")
    assert hard[0].item() == 1 and valid.all()
    semi, _ = mine_negatives(a, p, labels, cands, cl, "semihard")
    assert semi[0].item() == 1  # 0.8 > 0.4: the closest one farther than the positive
    # anchor 1 (label 1, equal to its positive): d_ap = 0; closest other-identity = cand 1 (0.4)
    assert hard[1].item() == 1 and semi[1].item() == 1
    # when no candidate is farther than the positive, semihard falls back to the farthest one
    far_p = t([-1.0, 0.0], [0.0, 1.0])
    semi2, _ = mine_negatives(a, far_p, labels, cands, cl, "semihard")
    assert semi2[0].item() == 2
    g = torch.Generator().manual_seed(0)
    rnd, _ = mine_negatives(a, p, labels, cands, cl, "random", generator=g)
    assert cl[rnd[0]] != 0 and cl[rnd[1]] != 1
    with pytest.raises(MeerError, match="unknown mining"):
        mine_negatives(a, p, labels, cands, cl, "hardest")


def test_pairwise_distance_matches_rowwise():
    x, y = torch.randn(5, 7), torch.randn(4, 7)
    d = pairwise_squared_distance(x, y)
    assert torch.allclose(d, torch.cdist(x, y).pow(2), atol=1e-5)


def test_srt_module_batch_checks_and_margins():
    assert SRTConfig().resolved_margin == 2.0 and SRTConfig(kind="triplet").resolved_margin == 1.0
    loss = SRTLoss(SRTConfig(mining="hard"))
    a, p = torch.randn(4, 8), torch.randn(4, 8)
    with pytest.raises(MeerError, match="at least two identities"):
        loss(a, p, torch.zeros(4, dtype=torch.long))
    terms = loss(a, p, torch.tensor([0, 0, 1, 1]))
    assert terms.loss.dim() == 0 and torch.isfinite(terms.loss)
    with pytest.raises(MeerError, match="share one B x D"):
        triplet_loss(a, p[:3], p)


class TinyRecognizer(torch.nn.Module):
    def __init__(self, dim=16):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8 * 4 * 4, dim)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1))


def test_gradients_reach_only_the_eum():
    torch.manual_seed(0)
    rec = TinyRecognizer()
    before = {k: v.clone() for k, v in rec.state_dict().items()}
    emb = FrozenEmbedder(rec)
    eum = EUM(EUMConfig(embedding_dim=16, depth=2))
    opt = torch.optim.SGD(list(eum.parameters()) + list(rec.parameters()), lr=0.5)
    imgs, masked = torch.rand(6, 3, 16, 16), torch.rand(6, 3, 16, 16)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    emb.train()
    eum.train()
    assert not rec.training  # frozen recognizer stays in eval mode (BN statistics untouched)
    for _ in range(3):
        opt.zero_grad()
        terms = SRTLoss()(eum(emb(masked)), emb(imgs), labels)
        terms.loss.backward()
        opt.step()
    assert all(p.grad is None and not p.requires_grad for p in rec.parameters())
    assert all(p.grad is not None for p in eum.parameters())
    assert all(torch.equal(before[k], v) for k, v in rec.state_dict().items())


def test_residual_eum_starts_as_identity_and_shape_errors():
    eum = EUM(EUMConfig(embedding_dim=12, residual=True)).eval()
    x = torch.randn(3, 12)
    assert torch.allclose(eum(x), x)
    with pytest.raises(MeerError, match="B x 12"):
        eum(torch.randn(3, 10))
    with pytest.raises(MeerError, match="B x 3 x H x W"):
        FrozenEmbedder(TinyRecognizer())(torch.rand(2, 1, 16, 16))


def test_frozen_embedder_input_ranges():
    seen = {}

    def fake(x):
        seen["x"] = x
        return x.flatten(1)[:, :4]

    img = torch.full((1, 3, 8, 8), 0.5)
    FrozenEmbedder(fake, input_range="symmetric")(img)
    assert torch.allclose(seen["x"], torch.zeros_like(img))
    FrozenEmbedder(fake, input_range="facenet", input_size=4)(torch.full((1, 3, 8, 8), 0.6))
    assert seen["x"].shape[-1] == 4 and torch.allclose(seen["x"], torch.full_like(seen["x"], (153 - 127.5) / 128))
    with pytest.raises(MeerError, match="B x D"):
        FrozenEmbedder(lambda x: x)(img)
