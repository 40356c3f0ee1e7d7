"""ReconstructionLoss: masked L1 by hand, LPIPS real-trunk loading vs the flagged random-trunk fallback."""
from __future__ import annotations

import logging

import pytest
import torch
import torchvision

from meer.losses.reconstruction import ReconstructionLoss, build_lpips


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path


def test_masked_l1_hand_computed():
    loss_fn = ReconstructionLoss(l1_weight=2.0, visible_weight=0.5, lpips_weight=0.0)
    clean = torch.zeros(1, 3, 2, 2)
    restored = torch.zeros(1, 3, 2, 2)
    restored[0, :, 0, 0] = torch.tensor([0.3, 0.6, 0.9])  # inside the mask
    mask = torch.zeros(1, 1, 2, 2)
    mask[0, 0, 0, :] = 1  # 2 masked pixels
    generated = torch.full((1, 3, 2, 2), 0.25)
    total, parts = loss_fn(restored, clean, mask, generated=generated)
    assert parts["l1_masked"].item() == pytest.approx((0.3 + 0.6 + 0.9) / 6)
    assert parts["l1_visible"].item() == pytest.approx(0.25)
    assert total.item() == pytest.approx(2.0 * 1.8 / 6 + 0.5 * 0.25)
    assert "lpips" not in parts and loss_fn.lpips is None


def test_random_trunk_fallback_is_logged_and_never_called_lpips(empty_torch_home, caplog):
    with caplog.at_level(logging.WARNING, logger="meer"):
        loss_fn = ReconstructionLoss(lpips_weight=1.0)
    assert loss_fn.lpips_is_real is False
    assert "RANDOM trunk" in caplog.text
    x = torch.rand(2, 3, 64, 64, requires_grad=True)
    mask = torch.ones(2, 1, 64, 64)
    _, parts = loss_fn(x, torch.rand(2, 3, 64, 64), mask)
    assert "lpips" not in parts and "perceptual_random_trunk" in parts
    assert not any(p.requires_grad for p in loss_fn.lpips.parameters())


def test_real_trunk_is_loaded_from_the_local_cache(empty_torch_home):
    # a torchvision-format AlexNet file in the cache (random values: we test the loading, not ImageNet)
    torch.manual_seed(0)
    ckpt_dir = empty_torch_home / "torch_home" / "hub" / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    name = torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url.rsplit("/", 1)[-1]
    state = torchvision.models.alexnet().state_dict()
    torch.save(state, ckpt_dir / name)
    module, is_real = build_lpips("alex")
    assert is_real
    torch.testing.assert_close(getattr(module.net.slice1, "0").weight, state["features.0.weight"])
    torch.testing.assert_close(getattr(module.net.slice5, "10").weight, state["features.10.weight"])
    loss_fn = ReconstructionLoss(lpips_weight=1.0)
    assert loss_fn.lpips_is_real and loss_fn.perceptual_name == "lpips"
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    c = torch.rand(1, 3, 64, 64)
    total, parts = loss_fn(x, c, torch.ones(1, 1, 64, 64))
    assert parts["lpips"].item() > 0
    total.backward()
    assert x.grad.abs().sum() > 0
    _, same = loss_fn(c, c, torch.ones(1, 1, 64, 64))
    assert same["lpips"].item() == pytest.approx(0.0, abs=1e-6)


def test_feature_term_uses_detached_clean_features():
    loss_fn = ReconstructionLoss(lpips_weight=0.0, feature_weight=1.0)
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.rand(1, 3, 8, 8, requires_grad=True)
    c = torch.rand(1, 3, 8, 8, requires_grad=True)
    _, parts = loss_fn(x, c, torch.ones(1, 1, 8, 8), feature_fn=lambda t: [conv(t)])
    expected = (conv(x) - conv(c)).abs().mean()
    torch.testing.assert_close(parts["id_feature"], expected)
    parts["id_feature"].backward()
    assert x.grad is not None and c.grad is None


def test_shape_mismatch():
    with pytest.raises(ValueError, match="do not match"):
        ReconstructionLoss(lpips_weight=0)(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8), torch.ones(1, 1, 4, 4))
