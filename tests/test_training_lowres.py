"""data.lowres_p: low-resolution copies of training faces (after masking, clean and masked alike)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from meer.config import ConfigError, load_config
from meer.masking.batch import MaskAugment
from meer.training.checkpoint import load_state
from meer.training.config import TrainConfig
from meer.training.data import augment, degrade
from meer.training.loop import train
from test_training_loop import all_tensors, assert_same_task_state, dataset, tiny  # noqa: F401


def _faces(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 112, 112, generator=g)


def _aug(clean, seed=1, **kw):
    g = torch.Generator().manual_seed(seed)
    out = augment(clean, MaskAugment(), g, kw.pop("rank", 0), kw.pop("world_size", 1), hflip=True, **kw)
    return out, g


def test_degrade_is_area_down_bilinear_up_and_leaves_scale_one_alone():
    x = _faces(3)
    out = degrade(x, torch.tensor([0.5, 1.0, 0.25]), range(3))
    want0 = F.interpolate(F.interpolate(x[:1], size=(56, 56), mode="area"), size=(112, 112), mode="bilinear",
                          align_corners=False)
    assert torch.equal(out[0:1], want0)
    assert torch.equal(out[1], x[1])
    assert out[2].std() < out[0].std() < x[0].std()  # less detail at a smaller scale
    assert torch.equal(degrade(x, torch.tensor([0.5, 0.5, 0.5]), range(1, 2))[0], x[0])  # only the given rows


def test_off_draws_nothing_and_changes_nothing():
    clean = _faces()
    (c0, m0, k0, kind0, f0), g0 = _aug(clean)
    (c1, m1, k1, kind1, f1), g1 = _aug(clean, lowres_p=0.0)
    for a, b in ((c0, c1), (m0, m1), (k0, k1), (kind0, kind1), (f0, f1)):
        assert torch.equal(a, b)
    assert torch.equal(g0.get_state(), g1.get_state())


def test_on_keeps_the_mask_and_blurs_clean_and_masked_alike():
    clean = _faces(8)
    (c0, m0, k0, kind0, f0), _ = _aug(clean)
    (c1, m1, k1, kind1, f1), _ = _aug(clean, lowres_p=1.0, lowres_min_scale=0.3)
    assert torch.equal(k0, k1) and torch.equal(kind0, kind1) and torch.equal(f0, f1)  # drawn before, unchanged
    assert set(k1.unique().tolist()) <= {0.0, 1.0}
    hf = lambda x: (x[..., 1:] - x[..., :-1]).abs().mean()  # noqa: E731
    assert hf(c1) < 0.8 * hf(c0)
    # far from the mask the masked input still equals the clean target (the same low-resolution copy)
    far = F.max_pool2d(k1, 15, stride=1, padding=7) == 0
    assert far.any()
    assert torch.allclose(m1 * far, c1 * far, atol=1e-6)
    # and the shrunk faces are exactly degrade() of the p=0 images with some scale: mean error small but nonzero
    assert (c1 - c0).abs().mean() > 1e-3


def test_independent_of_the_process_count():
    clean = _faces(8)
    (c, m, k, _, _), g = _aug(clean, lowres_p=0.5)
    parts = []
    for rank in range(2):
        (cr, mr, kr, _, _), gr = _aug(clean[rank * 4:(rank + 1) * 4], rank=rank, world_size=2, lowres_p=0.5)
        parts.append((cr, mr, kr))
        assert torch.equal(gr.get_state(), g.get_state())
    assert torch.allclose(torch.cat([p[0] for p in parts]), c, atol=1e-6)
    assert torch.allclose(torch.cat([p[1] for p in parts]), m, atol=1e-6)
    assert torch.equal(torch.cat([p[2] for p in parts]), k)


def test_bad_lowres_config_is_one_line(dataset, tmp_path):
    for bad in ("data.lowres_p=1.5", "data.lowres_min_scale=0"):
        with pytest.raises(ConfigError, match="data.lowres_p must lie"):
            tiny(dataset, tmp_path, bad)


def test_training_with_lowres_copies_resumes_bit_identically(dataset, tmp_path):
    base = ["data.lowres_p=0.5", "total_steps=4", "data.val_identities=0"]
    full = train(tiny(dataset, tmp_path / "a", *base))
    plain = train(tiny(dataset, tmp_path / "c", "total_steps=4", "data.val_identities=0"))
    part = train(tiny(dataset, tmp_path / "b", *base, "stop_at_step=2"))
    resumed = train(load_config(TrainConfig, part.run_dir / "config.yaml", ["stop_at_step=null"]), resume=part.run_dir)
    ta = assert_same_task_state(full.last_checkpoint, resumed.last_checkpoint)
    tc = all_tensors(load_state(plain.last_checkpoint)["task"])
    assert any(isinstance(v, torch.Tensor) and not torch.equal(v, tc[k]) for k, v in ta.items())  # the copies trained
