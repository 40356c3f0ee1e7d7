"""The three phases of a MEER training step: recognizer, generator (G) and discriminator (D).

One step runs **one** forward of MEER on the masked batch (the generator is fed by the encoder, so
running it twice would double the cost), then:

* :func:`recognizer_phase` -- loss terms that train the recognizer (encoder, mask-decoupling module,
  recognition head, margin head, decoupling adversaries): margin loss on masked and clean faces,
  occlusion-map supervision, decoupling loss.
* :func:`g_phase` -- loss terms that train the generator: masked-region L1 (+ a light visible-region
  L1 on the raw output), LPIPS, perceptual on recognizer features,
  adversarial (global PatchGAN + local), id-preserving (cosine + margin on the restored face). The
  id-preserving terms reach G, the recognizer or both, as the model config's switches say.

The two term sets are summed and back-propagated once; each optimiser then steps on its own
parameters (the reconstruction gradient reaching the encoder through the skips and the identity
code is what makes the training end-to-end). The discriminators are frozen during this backward.

* :func:`d_phase` -- its own backward on detached restored faces, with lazy R1 every
  ``r1_interval`` steps (stylegan2-ada): the penalty is scaled by the interval and the D optimiser's
  Adam parameters are adjusted once, at build time, by ``interval / (interval + 1)``.

Every function returns a dict of named loss terms (already weighted) so each can be logged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call

from meer.losses.adversarial import d_loss, g_loss, r1_penalty
from meer.losses.identity import id_preserving_loss
from meer.losses.occlusion import occlusion_loss


@dataclass
class Batch:
    clean: torch.Tensor  # B x 3 x H x W in [0, 1]
    masked: torch.Tensor  # B x 3 x H x W
    mask: torch.Tensor  # B x 1 x H x W, 1 = occluded
    labels: torch.Tensor  # B long
    kind: torch.Tensor  # B long, index into MaskAugment.KINDS


@dataclass
class Forward:
    out: object  # MEEROutput on the masked batch (with embedding_restored / embedding_clean when needed)
    emb_clean: torch.Tensor | None  # recognizer embedding of the clean face, for its margin loss
    emb_restored: torch.Tensor | None  # embedding of the restored face (gradient routed by the model config)
    id_target: torch.Tensor | None  # embedding of the clean face for the id-preserving loss


def forward(model: nn.Module, batch: Batch, loss_cfg) -> Forward:
    """The shared forward: MEER on the masked faces; when an id-preserving term is on, the model also
    embeds the restored and the clean faces in the same call, honouring ``model.id_grad_to_generator``
    and ``model.id_grad_to_recognizer`` (ablation switches of the gradient routing)."""
    need_id = loss_cfg.w_id_preserve > 0 or loss_cfg.w_id_restored > 0
    out = model(batch.masked, mask=batch.mask if loss_cfg.restore_with_gt_mask else None,
                clean=batch.clean if need_id else None)
    emb_clean = None
    if loss_cfg.w_id_clean > 0:
        if out.embedding_clean is not None and model.cfg.id_grad_to_recognizer:
            emb_clean = out.embedding_clean
        else:  # the id branch ran the recognizer frozen: the clean margin loss needs its own pass
            emb_clean = model.embed(batch.clean)
    return Forward(out=out, emb_clean=emb_clean, emb_restored=out.embedding_restored, id_target=out.embedding_clean)


def recognizer_phase(fwd: Forward, batch: Batch, margin_head: nn.Module, decoupling: nn.Module | None,
                     loss_cfg) -> dict[str, torch.Tensor]:
    """Weighted loss terms that train the recognizer."""
    terms: dict[str, torch.Tensor] = {}
    out = fwd.out
    if loss_cfg.w_id_masked > 0:
        terms["id_masked"] = loss_cfg.w_id_masked * margin_head.loss(out.embedding, batch.labels)
    if loss_cfg.w_id_clean > 0:
        terms["id_clean"] = loss_cfg.w_id_clean * margin_head.loss(fwd.emb_clean, batch.labels)
    if loss_cfg.w_occ > 0:
        terms["occ"] = loss_cfg.w_occ * occlusion_loss(out.occ_logits, batch.mask)
    if loss_cfg.w_decouple > 0 and decoupling is not None:
        loss, _parts = decoupling(out.id_code, out.occ_code, batch.labels, batch.kind)
        terms["decouple"] = loss_cfg.w_decouple * loss
    return terms


def encoder_features(model: nn.Module) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """The recognizer encoder's feature maps with its weights held fixed (for the perceptual term:
    it trains the generator, not the recognizer)."""
    params = {n: p.detach() for n, p in model.encoder.named_parameters()}
    return lambda x: functional_call(model.encoder, params, (x * 2.0 - 1.0,))


def g_phase(fwd: Forward, batch: Batch, margin_head: nn.Module, recon: nn.Module | None,
            d_patch: nn.Module | None, d_local: nn.Module | None, loss_cfg, model: nn.Module | None = None,
            balance: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Weighted loss terms that train the generator (and the id-preserving terms, routed in ``forward``).

    ``balance(local_weight_sum) -> factor``: with several processes, rescales the region-normalised L1
    terms so that their gradient, averaged over the ranks, equals the one of the global batch."""
    terms: dict[str, torch.Tensor] = {}
    out = fwd.out
    restored = out.restored
    if recon is not None:
        feature_fn = encoder_features(model) if (loss_cfg.w_perceptual > 0 and model is not None) else None
        _loss, parts = recon(restored, batch.clean, batch.mask,
                             generated=out.generated if loss_cfg.w_l1_visible > 0 else None, feature_fn=feature_fn)
        if loss_cfg.w_l1 > 0:
            f = balance(batch.mask.sum()) if balance is not None else 1.0
            terms["l1_masked"] = loss_cfg.w_l1 * parts["l1_masked"] * f
        if loss_cfg.w_l1_visible > 0:
            f = balance((1.0 - batch.mask).sum()) if balance is not None else 1.0
            terms["l1_visible"] = loss_cfg.w_l1_visible * parts["l1_visible"] * f
        if loss_cfg.w_lpips > 0:
            name = recon.perceptual_name  # "lpips" only with the real trunk
            terms[name] = loss_cfg.w_lpips * parts[name]
        if loss_cfg.w_perceptual > 0 and "id_feature" in parts:
            terms["perceptual"] = loss_cfg.w_perceptual * parts["id_feature"]
    if d_patch is not None and loss_cfg.w_adv_patch > 0:
        terms["adv_patch"] = loss_cfg.w_adv_patch * g_loss(d_patch(restored), loss_cfg.gan)
    if d_local is not None and loss_cfg.w_adv_local > 0:
        terms["adv_local"] = loss_cfg.w_adv_local * g_loss(d_local(restored, batch.mask), loss_cfg.gan)
    if fwd.emb_restored is not None:
        if loss_cfg.w_id_preserve > 0:
            terms["id_preserve"] = loss_cfg.w_id_preserve * id_preserving_loss(fwd.emb_restored, fwd.id_target)
        if loss_cfg.w_id_restored > 0:
            terms["id_restored"] = loss_cfg.w_id_restored * margin_head.loss(fwd.emb_restored, batch.labels)
    return terms


def d_phase(clean: torch.Tensor, fake: torch.Tensor, mask: torch.Tensor, d_patch: nn.Module | None,
            d_local: nn.Module | None, loss_cfg, do_r1: bool, autocast) -> dict[str, torch.Tensor]:
    """Weighted discriminator loss terms on real (clean) and detached fake (restored) faces.

    ``do_r1``: add the lazy R1 penalty this step (scaled by the interval)."""
    terms: dict[str, torch.Tensor] = {}
    fake = fake.detach()
    with autocast():
        if d_patch is not None and loss_cfg.w_adv_patch > 0:
            terms["d_patch"] = d_loss(d_patch(clean), d_patch(fake), loss_cfg.gan)
        if d_local is not None and loss_cfg.w_adv_local > 0:
            terms["d_local"] = d_loss(d_local(clean, mask), d_local(fake, mask), loss_cfg.gan)
    if do_r1 and loss_cfg.r1_gamma > 0 and terms:
        # R1 in full precision: the gradient of D w.r.t. its input is small and fp16 loses it
        real = clean.detach().float().requires_grad_(True)
        penalty = real.new_zeros(())
        if "d_patch" in terms:
            penalty = penalty + r1_penalty(d_patch(real), real)
        if "d_local" in terms:
            penalty = penalty + r1_penalty(d_local(real, mask), real)
        terms["r1"] = (loss_cfg.r1_gamma / 2.0) * loss_cfg.r1_interval * penalty
    return terms


