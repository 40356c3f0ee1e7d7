"""MEER with dlib's face ResNet as its encoder (``model.encoder: dlib``)."""
from __future__ import annotations

import pytest
import torch

from meer.faces.dlib_chip import crops112_to_dlib_chips
from meer.models.dlib_resnet import DlibResNet
from meer.models.meer import MEER, MEERConfig

SMALL = dict(encoder="dlib", id_dim=256, embedding_dim=128, occ_head_width=4, occ_dim=8, split_channels=8,
             gen_width=4, gen_max_width=16)


def _random_dlib_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    net = DlibResNet()
    for p in net.parameters():
        p.data.normal_(0, 0.05)
    return net.state_dict()


def test_levels_are_crop_aligned_and_identity_is_pooled():
    model = MEER(MEERConfig(**SMALL)).train()
    x = torch.rand(2, 3, 112, 112)
    feats, dec, emb = model._recognize(x)
    assert [f.shape[-1] for f in feats] == [56, 28, 14, 7, 4]
    assert [f.shape[1] for f in feats] == model.encoder.channels
    assert dec["id_code"].shape == (2, 256) and emb.shape == (2, 128)
    out = model(x)
    assert out.restored.shape == x.shape
    out.embedding.sum().backward()
    trunk_grads = [p.grad for p in model.encoder.trunk.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in trunk_grads)


def test_fresh_model_embeds_like_the_pretrained_network_when_nothing_is_masked():
    state = _random_dlib_state()
    model = MEER(MEERConfig(**SMALL)).eval()
    fc = model.encoder.load_pretrained(state)
    model.head.net[1].weight.data.copy_(fc)
    net = DlibResNet()
    net.load_state_dict(state)
    net.eval()
    x = torch.rand(3, 3, 112, 112)
    with torch.no_grad():
        # an occlusion head that sees nothing masked: the visibility-weighted mean is dlib's average pooling
        model.decoupling.occ_head.out[-1].bias.fill_(-30.0)
        model.decoupling.occ_head.out[-1].weight.zero_()
        got = model.embed(x)
        want = net.embed(crops112_to_dlib_chips(x))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_masked_cells_are_left_out_of_the_identity_code():
    model = MEER(MEERConfig(**SMALL)).eval()
    x = torch.rand(2, 3, 112, 112)
    with torch.no_grad():
        head = model.decoupling.occ_head.out[-1]
        head.weight.zero_()
        head.bias.fill_(-30.0)
        clear = model.decouple(x)["id_code"]
        # change the lower face only: with the lower half predicted occluded, the code barely moves
        y = x.clone()
        y[:, :, 80:] = torch.rand_like(y[:, :, 80:])
        changed_visible = model.decouple(y)["id_code"]
    assert not torch.allclose(clear, changed_visible)  # an unmasked face: the lower face counts
    with torch.no_grad():
        lower = torch.zeros(1, 1, 112, 112)
        lower[..., 70:, :] = 1.0
        # force the predicted map to the lower half
        model.decoupling.occ_head.forward = lambda feats, size: (lower * 60.0 - 30.0).expand(feats[0].shape[0], -1, -1, -1)
        a = model.decouple(x)["id_code"]
        b = model.decouple(y)["id_code"]
    moved_masked = (a - b).norm(dim=1) / a.norm(dim=1)
    moved_clear = (clear - changed_visible).norm(dim=1) / clear.norm(dim=1)
    assert (moved_masked < 0.5 * moved_clear).all()


def test_gate_identity_off_pools_every_cell_whatever_the_occlusion_map():
    model = MEER(MEERConfig(**SMALL, gate_identity=False)).eval()
    x = torch.rand(2, 3, 112, 112)
    with torch.no_grad():
        plain = model.decouple(x)["id_code"]
        lower = torch.zeros(1, 1, 112, 112)
        lower[..., 70:, :] = 1.0
        model.decoupling.occ_head.forward = lambda feats, size: (lower * 60.0 - 30.0).expand(feats[0].shape[0], -1, -1, -1)
        forced = model.decouple(x)["id_code"]
        pooled = model.encoder(x * 2.0 - 1.0)[-1].mean(dim=(2, 3))  # dlib's own average pooling
    torch.testing.assert_close(forced, plain)
    torch.testing.assert_close(plain, pooled, atol=1e-5, rtol=1e-4)


def test_dlib_encoder_needs_its_identity_size():
    with pytest.raises(ValueError, match="id_dim must be 256"):
        MEERConfig(encoder="dlib", id_dim=128)
