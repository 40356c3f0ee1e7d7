"""The five silent trainer defects of the trainer review, each pinned by a test that failed before its fix.

1. auxiliary / frozen passes leave every buffer (BatchNorm running statistics) untouched;
2. the id-preserving target is detached (no gradient into the clean face's embedding) unless asked;
3. lazy R1 is added into the D step, so D keeps its configured lr and betas;
4. EMA averages BatchNorm statistics like the weights, and validation scores the exported (EMA) model;
5. the training composite covers what inference replaces (the dilated predicted ring).
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from meer.training import loop, meer_task, phases
from meer.training.ema import EMA
from test_training_loop import _task_and_batch, dataset, tiny  # noqa: F401  (fixture)


def _buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.named_buffers()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_auxiliary_passes_leave_every_buffer_untouched(dataset, tmp_path):
    cfg, task, batch = _task_and_batch(dataset, tmp_path, "loss.w_perceptual=1")
    model = task.model.train()
    before = _buffers(model)
    emb_r, emb_c = model.id_embeddings(batch.masked, batch.clean)  # restored + clean, gradient to recognizer
    model.embed(batch.clean, track_stats=False)
    phases.encoder_features(model)(batch.clean)  # the perceptual term's frozen encoder
    model.cfg.id_grad_to_recognizer = False
    model.id_embeddings(batch.masked, batch.clean)  # the frozen form
    assert _same(before, _buffers(model))
    assert emb_r.requires_grad  # the pass still trains what it should
    model(batch.masked)  # the main pass on masked faces does update the statistics
    assert not _same(before, _buffers(model))


def test_a_training_step_updates_statistics_once_on_masked_faces(dataset, tmp_path):
    cfg, task, batch = _task_and_batch(dataset, tmp_path, "loss.w_perceptual=1")
    counter = next(b for n, b in task.model.encoder.named_buffers() if n.endswith("num_batches_tracked"))
    start = int(counter)
    task.train_step(batch, step=1, nimg=4)
    assert int(counter) == start + 1  # before the fix: 1 (masked) + the restored/clean/perceptual passes


def test_perceptual_term_normalises_restored_and_clean_together(dataset, tmp_path):
    cfg, task, batch = _task_and_batch(dataset, tmp_path, "loss.w_perceptual=1")
    seen = []
    real = phases.encoder_features(task.model)
    task.recon(batch.masked, batch.clean, batch.mask, feature_fn=lambda x: seen.append(x.shape[0]) or real(x))
    assert seen == [2 * batch.clean.shape[0]]  # one batch: the same BatchNorm statistics for both


def test_id_preserving_target_is_detached_unless_asked(dataset, tmp_path):
    from meer.losses.identity import id_preserving_loss

    for detach in (True, False):
        cfg, task, batch = _task_and_batch(dataset, tmp_path, f"loss.id_target_detach={str(detach).lower()}")
        model = task.model
        fwd = phases.forward(model, batch, cfg.loss)
        assert fwd.id_target.requires_grad == (not detach)
        params = list(model.recognizer_parameters())
        loss = phases.g_phase(fwd, batch, task.margin, None, None, None, cfg.loss)["id_preserve"]
        got = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        # the same forward graph, the clean side explicitly detached: only the restored face is moved
        one_sided = id_preserving_loss(fwd.emb_restored, fwd.out.embedding_clean.detach())
        want = torch.autograd.grad(one_sided, params, allow_unused=True)
        same = all((g is None and w is None) or (g is not None and w is not None and torch.equal(g, w))
                   for g, w in zip(got, want))
        assert same == detach  # symmetric form: the clean embedding is pulled too


def test_d_optimiser_keeps_its_configured_lr_and_betas(dataset, tmp_path):
    cfg, task, _ = _task_and_batch(dataset, tmp_path, "loss.r1_interval=16", "optim.warmup_steps=0",
                                   "optim.schedule=constant")
    group = task.opt_d.param_groups[0]
    assert group["lr"] == pytest.approx(cfg.optim.lr_d)
    assert tuple(group["betas"]) == pytest.approx(tuple(cfg.optim.betas_d))


def test_r1_weight_applied_in_the_weight_table(dataset, tmp_path):
    cfg, task, batch = _task_and_batch(dataset, tmp_path)
    parts = phases.d_phase(batch.clean, batch.masked, batch.mask, task.d_patch, task.d_local, cfg.loss, True,
                           task.autocast)
    terms = phases.weigh(parts, cfg.loss)
    scale = cfg.loss.r1_gamma / 2 * cfg.loss.r1_interval
    assert float(terms["r1"].detach()) == pytest.approx(scale * float(parts["r1"].detach()))


def test_ema_averages_batchnorm_statistics_like_the_weights():
    live = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    ema = EMA(live, half_life_kimg=0.001, rampup=None)
    ema_bn_before = ema.model[1].running_mean.clone()
    live.train()
    live(torch.randn(8, 3, 5, 5) + 3.0)  # the live statistics move
    beta = ema.update(live, batch_size=1, images_seen=100)
    expected = live[1].running_mean.lerp(ema_bn_before, beta)
    assert 0 < beta < 1
    assert torch.allclose(ema.model[1].running_mean, expected)
    assert not torch.equal(ema.model[1].running_mean, live[1].running_mean)  # averaged, not copied
    assert int(ema.model[1].num_batches_tracked) == int(live[1].num_batches_tracked)


def test_validation_scores_the_exported_model(dataset, tmp_path, monkeypatch):
    seen, built = [], []
    real_validate, real_build = meer_task.validate, meer_task.build

    def spy_validate(model, *args, **kwargs):
        seen.append(model)
        return real_validate(model, *args, **kwargs)

    def spy_build(*args, **kwargs):
        built.append(real_build(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(meer_task, "validate", spy_validate)
    monkeypatch.setattr(meer_task, "build", spy_build)
    result = loop.train(tiny(dataset, tmp_path))
    task = built[0]
    assert seen and all(m is task.eval_model() for m in seen) and task.eval_model() is not task.live_model()
    assert "l1_ring" in result.val


def test_training_composite_covers_the_inference_ring(dataset, tmp_path):
    cfg, task, batch = _task_and_batch(dataset, tmp_path)
    assert cfg.loss.composite == "union"
    fwd = phases.forward(task.model, batch, cfg.loss)
    predicted = task.model.composite_mask(fwd.out.occ_map)
    assert torch.equal(fwd.out.composite_mask, torch.maximum(batch.mask, predicted))
    # the generator is scored on the whole replaced region, ring included
    restored = fwd.out.restored
    ring = (fwd.out.composite_mask > 0) & (batch.mask < 0.5)
    assert bool(ring.any())  # an untrained occlusion head predicts plenty beyond the mask
    parts = phases.g_phase(fwd, batch, task.margin, task.recon, None, None, cfg.loss)
    w = fwd.out.composite_mask.expand_as(restored)
    expected = ((restored - batch.clean).abs() * w).sum() / w.sum()
    assert float(parts["l1_masked"]) == pytest.approx(float(expected), rel=1e-5)
    cfg_gt = copy.deepcopy(cfg.loss)
    cfg_gt.composite = "gt"
    assert torch.equal(phases.forward(task.model, batch, cfg_gt).out.composite_mask, batch.mask)
