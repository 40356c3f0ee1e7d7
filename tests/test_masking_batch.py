"""MaskAugment, the batched torch op: shapes, dtypes, device, determinism, exact GT, same masks as apply_mask."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from meer.faces.template import ARCFACE_112
from meer.masking import COVERAGES, KINDS, TEXTURES, MaskAugment, MaskSpecError, apply_mask, spec_from_params
from meer.utils.errors import MeerError

pytestmark = pytest.mark.usefixtures("one_thread")


def _images(b: int = 8, size: int = 112, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(b, 3, 7, 7, generator=g)
    return torch.nn.functional.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)


def test_shapes_dtypes_ranges_and_info():
    x = _images(12)
    op = MaskAugment()
    masked, mask, info = op(x, None, generator=torch.Generator().manual_seed(0))
    assert masked.shape == x.shape and masked.dtype == x.dtype
    assert mask.shape == (12, 1, 112, 112) and mask.dtype == x.dtype
    assert set(torch.unique(mask).tolist()) <= {0.0, 1.0}
    assert float(masked.min()) >= 0 and float(masked.max()) <= 1
    assert set(info) >= {"kind", "coverage", "texture", "color", "seed"}
    for key, n in (("kind", len(KINDS)), ("coverage", len(COVERAGES)), ("texture", len(TEXTURES))):
        assert info[key].shape == (12,) and info[key].dtype == torch.long
        assert int(info[key].min()) >= 0 and int(info[key].max()) < n
    assert info["color"].shape == (12, 3)
    assert MaskAugment.KINDS == KINDS + ("template",) and MaskAugment.COVERAGES == COVERAGES
    # the mask is exactly the set of changed pixels, and masks are substantial
    changed = (masked != x).any(dim=1, keepdim=True)
    assert torch.equal(changed, mask > 0)
    assert (mask.flatten(1).sum(1) > 300).all()


def test_determinism_with_a_generator_and_order_independence():
    x = _images(6)
    op = MaskAugment()
    a = op(x, None, generator=torch.Generator().manual_seed(7))
    b = op(x, None, generator=torch.Generator().manual_seed(7))
    c = op(x, None, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    # a sample's mask depends on its seed only, not on the rest of the batch
    params = op.sample_params(a[2]["seed"].flip(0))
    from meer.masking.render import render_masks

    lm = torch.from_numpy(ARCFACE_112)[None].expand(6, -1, -1)
    flipped, fmask = render_masks(x.flip(0), lm, params)
    assert torch.equal(flipped.flip(0), a[0]) and torch.equal(fmask.flip(0), a[1])


def test_batch_op_draws_the_same_masks_as_apply_mask():
    x = _images(5, seed=3)
    u8 = (x * 255).round().to(torch.uint8)
    xf = u8.float() / 255
    op = MaskAugment()
    masked, mask, info = op(xf, None, generator=torch.Generator().manual_seed(11))
    params = op.sample_params(info["seed"])
    for i in range(5):
        spec = spec_from_params(params, i)
        assert spec.kind == KINDS[int(info["kind"][i])] and spec.coverage == COVERAGES[int(info["coverage"][i])]
        image = u8[i].permute(1, 2, 0).numpy()
        face = apply_mask(image, ARCFACE_112.astype(np.float64), spec)
        assert np.array_equal(face.mask, mask[i, 0].numpy() > 0)
        batch_u8 = (masked[i].permute(1, 2, 0).numpy() * 255).round().astype(int)
        assert np.abs(batch_u8 - face.image.astype(int)).max() <= 1


def test_probability_constraints_and_dtypes():
    x = _images(10)
    none = MaskAugment(p=0.0)(x, None, generator=torch.Generator().manual_seed(0))
    assert torch.equal(none[0], x) and float(none[1].sum()) == 0 and (none[2]["kind"] == -1).all()
    half = MaskAugment(p=0.5)(x, None, generator=torch.Generator().manual_seed(1))
    applied = half[2]["kind"] >= 0
    assert 0 < int(applied.sum()) < 10
    assert torch.equal(half[0][~applied], x[~applied]) and float(half[1][~applied].sum()) == 0
    only = MaskAugment(kinds=["kn95"], coverages=["chin_only"], textures=["stripes"])
    _, _, info = only(x, None, generator=torch.Generator().manual_seed(2))
    assert (info["kind"] == KINDS.index("kn95")).all() and (info["coverage"] == COVERAGES.index("chin_only")).all()
    assert (info["texture"] == TEXTURES.index("stripes")).all()
    for dtype in (torch.float16, torch.float64):
        masked, mask, _ = MaskAugment()(x.to(dtype), None, generator=torch.Generator().manual_seed(3))
        assert masked.dtype == dtype and mask.dtype == dtype
        assert torch.equal((masked != x.to(dtype)).any(1, keepdim=True), mask > 0)


def test_landmarks_for_other_sizes_and_explicit_landmarks():
    x = _images(4, size=96)
    _, mask_none, _ = MaskAugment(kinds=["surgical"], coverages=["over_nose"])(x, None, generator=torch.Generator().manual_seed(0))
    lm = torch.from_numpy(ARCFACE_112 * (96 / 112))[None].expand(4, -1, -1)
    _, mask_lm, _ = MaskAugment(kinds=["surgical"], coverages=["over_nose"])(x, lm, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask_none, mask_lm)
    nose = (lm[0, 2] + 0.5).long()
    assert (mask_lm[:, 0, nose[1], nose[0]] == 1).all()


def test_texture_bank_from_tensor_and_files(tmp_path):
    bank = torch.zeros(2, 3, 32, 32)
    bank[0, 0] = 1.0  # pure red
    bank[1, 2] = 1.0  # pure blue
    op = MaskAugment(kinds=["cloth"], textures=["image"], texture_images=bank)
    masked, mask, info = op(_images(6), None, generator=torch.Generator().manual_seed(0))
    assert (info["texture"] == TEXTURES.index("image")).all()
    inside = masked.permute(0, 2, 3, 1)[mask[:, 0] > 0]
    # red or blue fabric (shaded); green only where edges and ear loops blend with the photo
    assert float((inside[:, 1] < 0.2).float().mean()) > 0.85
    assert float((inside[:, 0] > 0.3).float().mean()) > 0.2 and float((inside[:, 2] > 0.3).float().mean()) > 0.2
    from meer.utils.images import write_image

    write_image(tmp_path / "t.png", np.full((16, 16, 3), (0, 200, 0), np.uint8))
    op2 = MaskAugment(textures=["image"], texture_images=[tmp_path / "t.png"])
    assert op2.bank.shape == (1, 3, 128, 128)
    with pytest.raises(MaskSpecError, match="needs texture images"):
        MaskAugment(textures=["image"])


def test_bad_arguments_give_one_line_errors():
    op = MaskAugment()
    x = _images(2)
    cases = [
        (lambda: op(x[0], None), "B x 3 x H x W"),
        (lambda: op((x * 255).to(torch.uint8), None), "float in \\[0, 1\\]"),
        (lambda: op(x, torch.zeros(2, 4, 2)), "2 x 5 x 2"),
        (lambda: op(x, torch.full((2, 5, 2), float("nan"))), "NaN"),
        (lambda: MaskAugment(p=1.5), "p must be within"),
        (lambda: MaskAugment(kinds=["helmet"]), "unknown mask kind 'helmet'"),
        (lambda: MaskAugment(coverages=[]), "no coverage allowed"),
        (lambda: MaskAugment(texture_images=torch.zeros(2, 4, 8, 8)), "N x 3 x S x S"),
    ]
    for fn, message in cases:
        with pytest.raises(MeerError, match=message) as info:
            fn()
        assert "\n" not in str(info.value)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    x = _images(4)
    op = MaskAugment()
    cpu = op(x, None, generator=torch.Generator().manual_seed(5))
    gpu = op.cuda()(x.cuda(), None, generator=torch.Generator().manual_seed(5))
    assert gpu[0].device.type == "cuda"
    assert torch.equal(gpu[2]["seed"].cpu(), cpu[2]["seed"])
    assert (gpu[1].cpu() != cpu[1]).float().mean() < 1e-3  # edge pixels may differ by float rounding
    assert (gpu[0].cpu() - cpu[0]).abs().mean() < 2e-3


@pytest.mark.shared_data
def test_templates_in_the_batch_op(shared_data):
    from meer.masking import sample_spec

    op = MaskAugment(template_dir=shared_data / "mask_templates", template_p=1.0, coverages=["over_nose"])
    x = _images(6)
    masked, mask, info = op(x, None, generator=torch.Generator().manual_seed(4))
    assert (info["kind"] == MaskAugment.KINDS.index("template")).all()
    assert (info["template"] >= 0).all() and (info["texture"] == 0).all()
    assert torch.equal((masked != x).any(1, keepdim=True), mask > 0)
    lm = ARCFACE_112
    r = 0.1 * np.linalg.norm(lm[1] - lm[0])
    yy, xx = np.mgrid[0:112, 0:112]
    for i in range(6):
        m = mask[i, 0].numpy() > 0
        for eye in lm[:2]:
            assert not m[(xx - eye[0]) ** 2 + (yy - eye[1]) ** 2 <= r * r].any()
        for point in lm[2:]:
            assert m[int(round(point[1])), int(round(point[0]))]
        # the template sample_spec (hence meer-mask) draws for this seed
        spec = sample_spec(int(info["seed"][i]), coverages=["over_nose"], templates=op.template_bank.names, template_p=1.0)
        assert spec.kind == "template:" + op.template_bank.names[int(info["template"][i])]
    mixed = MaskAugment(template_dir=shared_data / "mask_templates", template_p=0.5)
    _, _, info = mixed(_images(16), None, generator=torch.Generator().manual_seed(0))
    is_t = info["kind"] == MaskAugment.KINDS.index("template")
    assert 0 < int(is_t.sum()) < 16 and torch.equal(info["template"] >= 0, is_t)


def test_templates_need_a_folder():
    with pytest.raises(MeerError, match="need a template_dir"):
        MaskAugment(templates=["surgical"])
    with pytest.raises(MeerError, match="no masks.cfg"):
        MaskAugment(template_dir="/nonexistent/templates")
