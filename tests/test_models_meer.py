"""MEER model: shapes, composite bit-identity, parameter groups, gradient routing of every loss, autocast."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from kornia.morphology import dilation

from meer.losses.adversarial import g_loss
from meer.losses.decoupling import DecouplingLoss
from meer.losses.identity import id_preserving_loss
from meer.losses.margin import MarginHead
from meer.losses.occlusion import occlusion_loss
from meer.models.discriminator_local import LocalDiscriminator
from meer.models.discriminator_patch import PatchDiscriminator
from meer.models.meer import MEER, MEERConfig, count_parameters

S = 32


def tiny(**kw) -> MEERConfig:
    base = dict(image_size=S, enc_width=8, enc_layers=(1, 1), split_channels=8, occ_head_width=8, id_dim=16,
                occ_dim=8, embedding_dim=32, gen_width=8, gen_max_width=32, num_mask_kinds=3)
    base.update(kw)
    return MEERConfig(**base)


def batch(b: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    clean = torch.rand(b, 3, S, S, generator=g)
    mask = torch.zeros(b, 1, S, S)
    for i in range(b):
        top = 14 + i
        mask[i, :, top:S - 3, 6:S - 6] = 1.0
    masked = clean * (1 - mask) + mask * torch.tensor([0.2, 0.5, 0.9]).view(1, 3, 1, 1)
    return clean, masked, mask


def model(**kw) -> MEER:
    torch.manual_seed(0)
    return MEER(tiny(**kw))


def test_forward_shapes_and_unit_embeddings():
    m = model()
    clean, masked, mask = batch()
    out = m(masked, mask, clean=clean)
    assert out.occ_logits.shape == (4, 1, S, S) and out.occ_map.shape == (4, 1, S, S)
    assert out.id_code.shape == (4, 16) and out.occ_code.shape == (4, 8)
    assert out.embedding.shape == (4, 32) and out.embedding.dtype == torch.float32
    torch.testing.assert_close(out.embedding.norm(dim=1), torch.ones(4))
    assert out.generated.shape == (4, 3, S, S) and 0 <= out.generated.min() and out.generated.max() <= 1
    assert out.embedding_restored.shape == (4, 32) and out.embedding_clean.shape == (4, 32)
    assert m.embed(clean).shape == (4, 32)
    assert count_parameters(m) < 500_000


def test_bad_shapes_are_rejected():
    m = model()
    with pytest.raises(ValueError, match="B x 3 x 32 x 32"):
        m(torch.rand(2, 3, 40, 40))
    with pytest.raises(ValueError, match="mask"):
        m(torch.rand(2, 3, S, S), torch.zeros(2, 3, S, S))


def test_composite_with_gt_mask_keeps_visible_pixels_bit_identical():
    m = model()
    clean, masked, mask = batch()
    out = m(masked, mask)
    vis = (mask == 0).expand_as(masked)
    assert torch.equal(out.restored[vis], masked[vis])
    occ = ~vis
    torch.testing.assert_close(out.restored[occ], out.generated[occ])


@pytest.mark.parametrize("autocast", [False, True])
def test_restore_keeps_pixels_outside_the_predicted_region_bit_identical(autocast):
    m = model(infer_dilate=1).eval()
    _, masked, _ = batch()
    with torch.no_grad():
        # make the occlusion head predict a non-trivial region: bias so about half the logits are positive
        m.decoupling.occ_head.out[-1].bias.fill_(0.0)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        restored, occ_map = m.restore(masked)
        region = m.decouple(masked)["composite_mask"]
    assert restored.dtype == masked.dtype and occ_map.shape == (4, 1, S, S)
    assert 0 < region.mean() < 1, "test needs a partial region"
    outside = (region == 0).expand_as(masked)
    assert torch.equal(restored[outside], masked[outside])
    assert not torch.equal(restored, masked)


def test_composite_mask_is_binarised_then_dilated_like_kornia():
    m = model(infer_threshold=0.5, infer_dilate=2)
    occ_map = torch.rand(3, 1, S, S) ** 3
    ref = dilation((occ_map > 0.5).float(), torch.ones(5, 5))
    assert torch.equal(m.composite_mask(occ_map), ref)
    assert torch.equal(model(infer_dilate=0).composite_mask(occ_map), (occ_map > 0.5).float())


def test_parameter_groups_are_disjoint_and_cover_the_model():
    m = model()
    rec = {id(p) for p in m.recognizer_parameters()}
    gen = {id(p) for p in m.generator_parameters()}
    assert rec and gen and not rec & gen
    assert rec | gen == {id(p) for p in m.parameters()}


def _touched(module: torch.nn.Module) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def _run(m: MEER, loss_fn) -> None:
    m.zero_grad(set_to_none=True)
    clean, masked, mask = batch()
    out = m(masked, mask, clean=clean)
    loss_fn(out, clean, mask).backward()


def test_occlusion_loss_reaches_only_encoder_and_occlusion_head():
    m = model()
    _run(m, lambda o, c, k: occlusion_loss(o.occ_logits, k))
    assert _touched(m.encoder) and _touched(m.decoupling.occ_head)
    assert not _touched(m.generator) and not _touched(m.head)
    assert not _touched(m.decoupling.id_fc) and not _touched(m.decoupling.occ_fc)


@pytest.mark.parametrize("detach_gate", [True, False])
def test_margin_loss_reaches_recognizer_and_gate_only_when_not_detached(detach_gate):
    m = model(detach_gate=detach_gate)
    head = MarginHead(32, 5, "arcface", s=8.0)
    labels = torch.tensor([0, 1, 2, 3])
    _run(m, lambda o, c, k: head.loss(o.embedding, labels))
    assert _touched(m.encoder) and _touched(m.decoupling.id_fc) and _touched(m.head) and _touched(head)
    assert not _touched(m.generator)
    assert _touched(m.decoupling.occ_head) == (not detach_gate)


def test_gate_identity_off_reads_identity_from_every_position():
    # the "no decoupling" ablation: even with an undetached gate the occlusion map cannot shape the identity code
    m = model(detach_gate=False, gate_identity=False)
    head = MarginHead(32, 5, "arcface", s=8.0)
    _run(m, lambda o, c, k: head.loss(o.embedding, torch.tensor([0, 1, 2, 3])))
    assert _touched(m.encoder) and _touched(m.decoupling.id_fc) and not _touched(m.decoupling.occ_head)


@pytest.mark.parametrize("to_encoder", [True, False])
def test_reconstruction_loss_reaches_generator_and_encoder_switch(to_encoder):
    m = model(gen_grad_to_encoder=to_encoder)
    _run(m, lambda o, c, k: ((o.restored - c).abs() * k).mean())
    assert _touched(m.generator)
    assert _touched(m.encoder) == to_encoder
    assert _touched(m.decoupling.id_fc) == to_encoder
    assert not _touched(m.head) and not _touched(m.decoupling.occ_head)


@pytest.mark.parametrize(
    "to_gen,to_rec",
    [(True, True), (True, False), (False, True)],
)
def test_id_preserving_loss_switches(to_gen, to_rec):
    # gen_grad_to_encoder=False isolates the generator path from the encoder, so "recognizer touched" can only
    # come from the id-preserving embedding itself.
    m = model(id_grad_to_generator=to_gen, id_grad_to_recognizer=to_rec, gen_grad_to_encoder=False)
    _run(m, lambda o, c, k: id_preserving_loss(o.embedding_restored, o.embedding_clean))
    assert _touched(m.generator) == to_gen
    assert _touched(m.head) == to_rec
    assert _touched(m.encoder) == to_rec


def test_recognizer_frozen_path_still_updates_nothing_but_the_generator_and_matches_values():
    m = model()
    clean, masked, mask = batch()
    m.eval()
    with torch.no_grad():
        ref = m.id_embeddings(masked, clean)
    m.cfg.id_grad_to_recognizer = False
    with torch.no_grad():
        frozen = m.id_embeddings(masked, clean)
    torch.testing.assert_close(frozen[0], ref[0])
    torch.testing.assert_close(frozen[1], ref[1])


def test_every_parameter_gets_a_gradient_in_a_full_step():
    """A normal G+R step trains every MEER parameter (none is dead weight in the default configuration)."""
    m = model()
    dec = DecouplingLoss(16, 8, num_identities=5, num_mask_kinds=3)
    head = MarginHead(32, 5)
    pd, ld = PatchDiscriminator(8, 2), LocalDiscriminator(8, 16)
    labels, kinds = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, 0])

    def full(o, c, k):
        d_loss, _ = dec(o.id_code, o.occ_code, labels, kinds)
        return (occlusion_loss(o.occ_logits, k) + head.loss(o.embedding, labels) + d_loss
                + (o.restored - c).abs().mean() + id_preserving_loss(o.embedding_restored, o.embedding_clean)
                + g_loss(pd(o.restored)) + g_loss(ld(o.restored, k)))

    _run(m, full)
    unused = [n for n, p in m.named_parameters() if p.grad is None]
    assert not unused


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])  # fp16 on CPU exercises the CUDA-fp16 dtype paths
def test_autocast_forward_backward_is_finite(dtype):
    m = model()
    clean, masked, mask = batch()
    pd, ld = PatchDiscriminator(8, 2), LocalDiscriminator(8, 16)
    with torch.autocast("cpu", dtype=dtype):
        out = m(masked, mask, clean=clean)
        loss = occlusion_loss(out.occ_logits, mask) + (out.restored - clean).abs().mean() + id_preserving_loss(
            out.embedding_restored, out.embedding_clean) + g_loss(pd(out.restored)) + g_loss(ld(out.restored, mask))
    loss.backward()
    assert torch.isfinite(loss)
    assert out.embedding.dtype == torch.float32 and out.restored.dtype == torch.float32
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)
    vis = (mask == 0).expand_as(masked)
    assert torch.equal(out.restored[vis], masked[vis])


def test_same_seed_same_model_same_output():
    clean, masked, mask = batch()
    a, b = model().eval(), model().eval()
    with torch.no_grad():
        oa, ob = a(masked, mask), b(masked, mask)
    assert torch.equal(oa.restored, ob.restored) and torch.equal(oa.embedding, ob.embedding)


def test_cpu_and_gpu_layouts_build():
    cpu = MEER(MEERConfig(enc_stem_stride=2, enc_width=16, enc_layers=(1, 2, 2, 1), gen_width=16, gen_max_width=128, split_channels=32))
    assert 1_500_000 < count_parameters(cpu) < 8_000_000
    assert cpu.encoder.feature_sizes(112) == [56, 28, 14, 7, 4]
    with torch.device("meta"):  # layout only: no need to initialise 40 M weights
        ir50 = MEER(MEERConfig(enc_width=64, enc_layers=(3, 4, 14, 3), split_channels=128, id_dim=512))
    assert ir50.encoder.feature_sizes(112) == [112, 56, 28, 14, 7]
    assert ir50.encoder.channels == [64, 64, 128, 256, 512]
    out = cpu.eval()(torch.rand(1, 3, 112, 112))
    assert out.restored.shape == (1, 3, 112, 112) and F.normalize(out.embedding).shape == (1, 512)


def test_generator_ignores_encoder_features_and_pixels_inside_the_mask():
    """Masked-region content can only come from the identity code and visible context: changing the skips and
    the input pixels where the (downsampled) visibility is 0 leaves the generator output unchanged."""
    m = model().eval()
    clean, masked, _ = batch()
    mask = torch.zeros(4, 1, S, S)
    mask[..., S // 2 :, :] = 1.0  # aligned with every level's grid: visibility exactly 0 in the lower half
    with torch.no_grad():
        feats = m.encoder(masked * 2 - 1)
        id_code = m.decoupling(feats, (S, S))["id_code"]
        ref = m.generator(feats, id_code, 1 - mask, masked * 2 - 1)
        noisy = [f.clone() for f in feats]
        for f in noisy:
            f[..., f.shape[-2] // 2 :, :] = torch.randn_like(f[..., f.shape[-2] // 2 :, :]) * 5
        other_x = masked.clone()
        other_x[..., S // 2 :, :] = torch.rand_like(other_x[..., S // 2 :, :])
        out = m.generator(noisy, id_code, 1 - mask, other_x * 2 - 1)
        assert torch.equal(out, ref)
        # ... while the identity code does change the hole
        changed = m.generator(feats, id_code + 1.0, 1 - mask, masked * 2 - 1)
    assert not torch.allclose(changed[..., S // 2 :, :], ref[..., S // 2 :, :])


def test_template_prior_starts_at_the_tone_shifted_template_and_learns():
    m = model(gen_template=True)
    _, masked, mask = batch(2)
    mean_face = torch.rand(3, S, S)
    m.generator.init_template(mean_face)
    out = m(masked, mask=mask)
    # step 0: the last conv is zero, so the raw output is the template shifted to the visible mean, per channel
    vis = 1.0 - mask
    t = mean_face * 2 - 1
    shift = (((masked * 2 - 1) - t) * vis).sum((2, 3), keepdim=True) / vis.sum((2, 3), keepdim=True)
    expected = ((t + shift).clamp(-0.98, 0.98) + 1) / 2
    torch.testing.assert_close(out.generated, expected, atol=1e-5, rtol=0)
    # the template is a generator parameter and receives gradient from the restoration loss
    (out.generated * mask).mean().backward()
    assert m.generator.template.grad is not None and m.generator.template.grad.abs().sum() > 0
    assert any(p is m.generator.template for p in m.generator_parameters())
    with pytest.raises(ValueError, match="mean face"):
        m.generator.init_template(torch.rand(3, 16, 16))
    with pytest.raises(ValueError, match="without a template"):
        model().generator.init_template(mean_face)


def test_lowpass_template_cannot_carry_a_period_2_grid_or_learn_one():
    """The template is read through a binomial filter: a 2-pixel stripe pattern (either direction) added to it
    leaves the output unchanged, and the gradient it receives has no component at that period. Without the
    filter the same pattern shows through (the shipped v2 model's grid)."""
    _, masked, mask = batch(2)
    x = torch.arange(S)
    stripes_x = ((-1.0) ** x).view(1, 1, 1, S).expand(1, 3, S, S)
    stripes_y = stripes_x.transpose(-1, -2)
    for lowpass in (True, False):
        m = model(gen_template=True, gen_template_lowpass=lowpass)
        m.generator.init_template(torch.rand(3, S, S) * 0.5 + 0.25)
        with torch.no_grad():
            before = m(masked, mask=mask).generated
            m.generator.template.add_(0.2 * stripes_x + 0.2 * stripes_y)
            after = m(masked, mask=mask).generated
        if lowpass:
            torch.testing.assert_close(after, before, atol=1e-6, rtol=0)
        else:
            assert (after - before).abs().max() > 0.02
    m = model(gen_template=True, gen_template_lowpass=True)
    m.generator.init_template(torch.rand(3, S, S))
    (m(masked, mask=mask).generated * torch.rand(2, 3, S, S)).sum().backward()
    grad = m.generator.template.grad
    assert grad.abs().sum() > 0
    for pattern in (stripes_x, stripes_y):
        assert abs(float((grad * pattern).sum())) < 1e-6 * float(grad.abs().sum())
    # the filter is a fixed, non-persistent buffer: not in the state dict, old checkpoints load
    assert "generator.lowpass" not in m.state_dict()


def test_lowpass_length_sets_the_template_read_out():
    """``gen_template_lowpass_taps``: a binomial of that length; 5 (the default, what older checkpoints were trained
    with) is ``[1, 4, 6, 4, 1] / 16``; 9 also damps an 8-pixel period to ``cos(pi / 8) ** 8`` of its amplitude."""
    five = model(gen_template=True, gen_template_lowpass=True).generator.lowpass[0, 0]
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16
    torch.testing.assert_close(five, k[:, None] * k[None, :])
    m = model(gen_template=True, gen_template_lowpass=True, gen_template_lowpass_taps=9)
    k9 = m.generator.lowpass[0, 0].sum(dim=0)  # the 1-D kernel
    assert k9.shape == (9,) and float(k9.sum()) == pytest.approx(1.0)
    for period, want in ((2, 0.0), (4, math.cos(math.pi / 4) ** 8), (8, math.cos(math.pi / 8) ** 8)):
        response = sum(float(k9[i]) * math.cos(2 * math.pi * (i - 4) / period) for i in range(9))
        assert response == pytest.approx(want, abs=1e-6)
    # on the template: a vertical 8-pixel stripe added to it reaches the read-out at that amplitude (interior columns)
    m.generator.init_template(torch.full((3, S, S), 0.5))
    x = torch.arange(S, dtype=torch.float32)
    with torch.no_grad():
        m.generator.template.add_(0.1 * torch.cos(2 * math.pi * x / 8).view(1, 1, 1, S))
        read = m.generator.template_image()[0, 0, S // 2, 8:24]
    torch.testing.assert_close(read, 0.1 * math.cos(math.pi / 8) ** 8 * torch.cos(2 * math.pi * x[8:24] / 8), atol=1e-5,
                               rtol=0)
    for bad in (4, 1, 17):
        with pytest.raises(ValueError, match="template_lowpass_taps"):
            model(gen_template=True, gen_template_lowpass=True, gen_template_lowpass_taps=bad)


def test_frozen_template_gets_no_gradient_and_the_rest_of_the_generator_does():
    _, masked, mask = batch(2)
    m = model(gen_template=True, gen_template_lowpass=True, gen_template_frozen=True)
    m.generator.init_template(torch.rand(3, S, S) * 0.5 + 0.25)
    (m(masked, mask=mask).generated * mask).mean().backward()
    assert m.generator.template.grad is None and not m.generator.template.requires_grad
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.generator_parameters())
    opt = torch.optim.Adam(m.generator_parameters(), lr=0.1)
    before = m.generator.template.detach().clone()
    opt.step()
    assert torch.equal(m.generator.template, before)


def test_restore_selected_matches_forward_and_skips_the_generator_for_the_rest():
    m = model().eval()
    _, masked, _ = batch(4)
    seen = []
    m.generator.register_forward_hook(lambda mod, inp, out: seen.append(out.shape[0]))
    with torch.no_grad():
        full = m(masked)
        seen.clear()
        part = m.restore_selected(masked, lambda occ: torch.tensor([True, False, True, False]))
    assert seen == [2]  # one generator call, for the two selected faces only
    for i in (0, 2):
        torch.testing.assert_close(part.restored[i], full.restored[i], atol=1e-6, rtol=0)
        torch.testing.assert_close(part.composite_mask[i], full.composite_mask[i])
    for i in (1, 3):
        assert torch.equal(part.restored[i], masked[i]) and torch.equal(part.generated[i], masked[i])
        assert part.composite_mask[i].sum() == 0
    torch.testing.assert_close(part.embedding, full.embedding)
    torch.testing.assert_close(part.occ_map, full.occ_map)
    with torch.no_grad():
        seen.clear()
        none = m.restore_selected(masked, lambda occ: torch.zeros(4, dtype=torch.bool))
        assert seen == [] and torch.equal(none.restored, masked)
        with pytest.raises(ValueError, match="one flag per face"):
            m.restore_selected(masked, lambda occ: torch.ones(3, dtype=torch.bool))


def test_nothing_above_infer_top_is_restored():
    """Predicted occlusion above ``infer_top`` of the crop (a forehead highlight, a hat) is ignored: the composite
    mask is empty there and those pixels come back bit-identical; below it nothing changes."""
    _, masked, _ = batch(2)
    everywhere = lambda mod, inp, out: torch.full_like(out, 20.0)  # noqa: E731  the head says: all occluded
    plain, limited = model().eval(), model(infer_top=0.5).eval()
    for m in (plain, limited):
        m.decoupling.occ_head.register_forward_hook(everywhere)
    with torch.no_grad():
        a, b = plain(masked), limited(masked)
    top = S // 2
    assert a.composite_mask[..., :top, :].min() == 1 and b.composite_mask[..., :top - 2, :].max() == 0
    assert torch.equal(b.composite_mask[..., top:, :], a.composite_mask[..., top:, :])
    assert torch.equal(b.restored[..., :top - 2, :], masked[..., :top - 2, :])  # up to the dilation ring
    torch.testing.assert_close(limited.restorable(b.occ_map)[..., :top, :], torch.zeros(2, 1, top, S))
    with pytest.raises(ValueError, match="infer_top"):
        tiny(infer_top=1.0)
