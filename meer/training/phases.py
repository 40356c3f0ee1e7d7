"""The three phases of a MEER training step: recognizer, generator (G) and discriminator (D).

One step runs **one** forward of MEER on the masked batch (the generator is fed by the encoder, so
running it twice would double the cost), then:

* :func:`recognizer_phase` -- loss terms that train the recognizer (encoder, mask-decoupling module,
  recognition head, margin head, decoupling adversaries): margin loss on masked and clean faces,
  occlusion-map supervision, decoupling loss, distillation of the masked face's embedding towards a
  frozen teacher's embedding of the clean face.
* :func:`g_phase` -- loss terms that train the generator: masked-region L1 (+ a light visible-region
  L1 on the raw output), LPIPS, perceptual on recognizer features,
  adversarial (global PatchGAN + local), id-preserving (cosine + margin on the restored face; the clean
  side is the target, detached unless ``loss.id_target_detach=false``), and the teacher's id-preserving
  term (frozen teacher on restored vs clean). The own-recognizer id-preserving terms reach G, the
  recognizer or both, as the model config's switches say.

The two term sets are summed and back-propagated once; each optimiser then steps on its own
parameters (the reconstruction gradient reaching the encoder through the skips and the identity
code is what makes the training end-to-end). The discriminators are frozen during this backward.

* :func:`d_phase` -- its own backward on detached restored faces, with lazy R1 every
  ``r1_interval`` steps (stylegan2-ada): the penalty is scaled by the interval. Unlike stylegan2-ada,
  R1 is added into the same D step (not a separate optimiser step), so D's lr and betas stay as
  configured (no ``interval / (interval + 1)`` correction).

Every function returns a dict of **unweighted** named parts; :func:`weigh` applies the config weights
(the ``WEIGHTS`` table) in one place, and the trainer logs every part.
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
    index: torch.Tensor | None = None  # B long: the training set's sample index (None: not from the training set)
    flipped: torch.Tensor | None = None  # B bool: the clean face was mirrored
    real: torch.Tensor | None = None  # R x 3 x H x W: photos with real masks (no pixel ground truth)
    real_labels: torch.Tensor | None = None  # R long: their identities' labels


@dataclass
class Forward:
    out: object  # MEEROutput on the masked batch (with embedding_restored / embedding_clean when needed)
    emb_clean: torch.Tensor | None  # recognizer embedding of the clean face, for its margin loss
    emb_restored: torch.Tensor | None  # embedding of the restored face (gradient routed by the model config)
    id_target: torch.Tensor | None  # embedding of the clean face for the id-preserving loss
    teacher_clean: torch.Tensor | None = None  # frozen teacher's embedding of the clean face (no gradient)
    teacher_restored: torch.Tensor | None = None  # teacher's embedding of the restored face (gradient to G)


#: loss part -> the ``LossConfig`` weight that scales it: the one place where weights are applied
WEIGHTS = {
    "id_masked": "w_id_masked", "id_clean": "w_id_clean", "occ": "w_occ", "decouple": "w_decouple",
    "distill": "w_distill", "l1_masked": "w_l1", "l1_visible": "w_l1_visible", "lpips": "w_lpips",
    "perceptual_random_trunk": "w_lpips", "perceptual": "w_perceptual", "adv_patch": "w_adv_patch",
    "adv_local": "w_adv_local", "id_preserve": "w_id_preserve", "id_restored": "w_id_restored",
    "teacher_id": "w_teacher_id", "real_distill": "w_real_distill", "real_id": "w_real_id",
    "d_patch": None, "d_local": None, "r1": None,
}


def weigh(parts: dict[str, torch.Tensor], loss_cfg) -> dict[str, torch.Tensor]:
    """Unweighted loss parts -> the weighted terms that are summed and back-propagated.

    Discriminator parts carry weight 1 (``r1`` is scaled by ``r1_gamma / 2 * r1_interval`` here)."""
    out = {}
    for k, v in parts.items():
        if k == "r1":
            out[k] = (loss_cfg.r1_gamma / 2.0) * loss_cfg.r1_interval * v
        elif WEIGHTS[k] is None:
            out[k] = v
        else:
            out[k] = getattr(loss_cfg, WEIGHTS[k]) * v
    return out


def forward(model: nn.Module, batch: Batch, loss_cfg, teacher: nn.Module | None = None,
            teacher_clean: torch.Tensor | None = None) -> Forward:
    """The shared forward: MEER on the masked faces; when an id-preserving term is on, the model also
    embeds the restored and the clean faces in the same call, honouring ``model.id_grad_to_generator``
    and ``model.id_grad_to_recognizer`` (ablation switches of the gradient routing).

    The composite is trained on what inference does (``loss.composite``): ``union`` replaces the exact
    mask plus the binarised, dilated predicted map (the ring and any false positives, which the
    generator must then reproduce), ``gt`` only the exact mask, ``predicted`` only the prediction.
    With a teacher, the clean faces are embedded once without gradient (distillation and id targets)
    and the restored faces with a gradient that reaches the generator (never the frozen teacher);
    ``teacher_clean`` passes the clean faces' teacher embeddings when they are already known (a cache)."""
    need_id = loss_cfg.w_id_preserve > 0 or loss_cfg.w_id_restored > 0
    mode = loss_cfg.composite
    out = model(batch.masked, mask=None if mode == "predicted" else batch.mask,
                clean=batch.clean if need_id else None, union_predicted=mode == "union")
    emb_clean = None
    if loss_cfg.w_id_clean > 0:
        if out.embedding_clean is not None and model.cfg.id_grad_to_recognizer:
            emb_clean = out.embedding_clean
        else:  # the id branch ran the recognizer frozen: the clean margin loss needs its own pass
            emb_clean = model.embed(batch.clean, track_stats=False)
    id_target = out.embedding_clean
    if id_target is not None and loss_cfg.id_target_detach:
        id_target = id_target.detach()
    t_clean = t_restored = None
    if teacher is not None:
        if teacher_clean is not None:
            t_clean = teacher_clean.detach()
        else:
            with torch.no_grad():
                t_clean = teacher.embed(batch.clean).detach()
        if loss_cfg.w_teacher_id > 0:
            t_restored = teacher.embed(out.restored)
    return Forward(out=out, emb_clean=emb_clean, emb_restored=out.embedding_restored,
                   id_target=id_target, teacher_clean=t_clean, teacher_restored=t_restored)


def recognizer_phase(fwd: Forward, batch: Batch, margin_head: nn.Module, decoupling: nn.Module | None,
                     loss_cfg, distill_proj: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Unweighted loss parts that train the recognizer (``weigh`` applies the config weights).

    Decoupling diagnostics (the adversaries' accuracies, the decorrelation) come back under
    ``decouple/<part>``, detached, for logging only."""
    parts: dict[str, torch.Tensor] = {}
    out = fwd.out
    if loss_cfg.w_id_masked > 0:
        parts["id_masked"] = margin_head.loss(out.embedding, batch.labels)
    if loss_cfg.w_id_clean > 0:
        parts["id_clean"] = margin_head.loss(fwd.emb_clean, batch.labels)
    if loss_cfg.w_occ > 0:
        parts["occ"] = occlusion_loss(out.occ_logits, batch.mask)
    if loss_cfg.w_decouple > 0 and decoupling is not None:
        loss, diag = decoupling(out.id_code, out.occ_code, batch.labels, batch.kind)
        parts["decouple"] = loss
        parts.update({f"decouple/{k}": v.detach() for k, v in diag.items()})
    if loss_cfg.w_distill > 0 and fwd.teacher_clean is not None:
        # template-level distillation (MaskInv): the masked face's embedding towards the teacher's clean one
        emb = distill_proj(out.embedding) if distill_proj is not None else out.embedding
        parts["distill"] = id_preserving_loss(emb, fwd.teacher_clean)
    return parts


def real_masked_phase(model: nn.Module, batch: Batch, margin_head: nn.Module, teacher_targets: torch.Tensor | None,
                      loss_cfg, distill_proj: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Unweighted parts on the photos with real masks (``batch.real``): they have no pixel ground truth, so
    only the recognition branch learns from them, through its embedding of the masked photo: towards the
    teacher's mean embedding of the person's clean photos (``teacher_targets``, ``real_distill``) and the margin
    loss with the person's label (``real_id``)."""
    parts: dict[str, torch.Tensor] = {}
    if batch.real is None or (loss_cfg.w_real_distill <= 0 and loss_cfg.w_real_id <= 0):
        return parts
    emb = model.embed(batch.real)
    if loss_cfg.w_real_distill > 0 and teacher_targets is not None:
        parts["real_distill"] = id_preserving_loss(distill_proj(emb) if distill_proj is not None else emb,
                                                   teacher_targets)
    if loss_cfg.w_real_id > 0:
        parts["real_id"] = margin_head.loss(emb, batch.real_labels)
    return parts


def encoder_features(model: nn.Module) -> Callable[[torch.Tensor], list[torch.Tensor]]:
    """The recognizer encoder's feature maps with its weights held fixed (for the perceptual term:
    it trains the generator, not the recognizer). Buffers are passed as copies: the pass leaves the
    BatchNorm running statistics untouched."""
    params = {n: p.detach() for n, p in model.encoder.named_parameters()}

    def features(x: torch.Tensor) -> list[torch.Tensor]:
        state = {**params, **{n: b.clone() for n, b in model.encoder.named_buffers()}}
        return functional_call(model.encoder, state, (x * 2.0 - 1.0,))

    return features


def g_phase(fwd: Forward, batch: Batch, margin_head: nn.Module, recon: nn.Module | None,
            d_patch: nn.Module | None, d_local: nn.Module | None, loss_cfg, model: nn.Module | None = None,
            balance: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Unweighted loss parts that train the generator (and the id-preserving terms, routed in ``forward``).

    The reconstruction terms are scored on ``fwd.out.composite_mask``, the pixels the composite replaced (the exact
    mask and, in ``union`` mode, the dilated ring and false positives of the predicted map).
    ``balance(local_weight_sum) -> factor``: with several processes, rescales the region-normalised L1
    terms so that their gradient, averaged over the ranks, equals the one of the global batch."""
    parts: dict[str, torch.Tensor] = {}
    out = fwd.out
    restored = out.restored
    region = out.composite_mask  # what the composite replaced
    if recon is not None:
        feature_fn = encoder_features(model) if (loss_cfg.w_perceptual > 0 and model is not None) else None
        _loss, rparts = recon(restored, batch.clean, region,
                              generated=out.generated if loss_cfg.w_l1_visible > 0 else None, feature_fn=feature_fn)
        if loss_cfg.w_l1 > 0:
            f = balance(region.sum()) if balance is not None else 1.0
            parts["l1_masked"] = rparts["l1_masked"] * f
        if loss_cfg.w_l1_visible > 0:
            f = balance((1.0 - region).sum()) if balance is not None else 1.0
            parts["l1_visible"] = rparts["l1_visible"] * f
        if loss_cfg.w_lpips > 0:
            name = recon.perceptual_name  # "lpips" only with the real trunk
            parts[name] = rparts[name]
        if loss_cfg.w_perceptual > 0 and "id_feature" in rparts:
            parts["perceptual"] = rparts["id_feature"]
    if d_patch is not None and loss_cfg.w_adv_patch > 0:
        parts["adv_patch"] = g_loss(d_patch(restored), loss_cfg.gan)
    if d_local is not None and loss_cfg.w_adv_local > 0:
        parts["adv_local"] = g_loss(d_local(restored, batch.mask), loss_cfg.gan)
    if fwd.emb_restored is not None:
        if loss_cfg.w_id_preserve > 0:
            parts["id_preserve"] = id_preserving_loss(fwd.emb_restored, fwd.id_target)
        if loss_cfg.w_id_restored > 0:
            parts["id_restored"] = margin_head.loss(fwd.emb_restored, batch.labels)
    if fwd.teacher_restored is not None:
        parts["teacher_id"] = id_preserving_loss(fwd.teacher_restored, fwd.teacher_clean)
    return parts


def d_phase(clean: torch.Tensor, fake: torch.Tensor, mask: torch.Tensor, d_patch: nn.Module | None,
            d_local: nn.Module | None, loss_cfg, do_r1: bool, autocast) -> dict[str, torch.Tensor]:
    """Unweighted discriminator parts on real (clean) and detached fake (restored) faces.

    ``do_r1``: add the lazy R1 penalty this step (``weigh`` scales it by ``r1_gamma / 2`` and the
    interval). R1 is added into the same D step, so the D optimiser keeps its configured lr and betas."""
    parts: dict[str, torch.Tensor] = {}
    fake = fake.detach()
    with autocast():
        if d_patch is not None and loss_cfg.w_adv_patch > 0:
            parts["d_patch"] = d_loss(d_patch(clean), d_patch(fake), loss_cfg.gan)
        if d_local is not None and loss_cfg.w_adv_local > 0:
            parts["d_local"] = d_loss(d_local(clean, mask), d_local(fake, mask), loss_cfg.gan)
    if do_r1 and loss_cfg.r1_gamma > 0 and parts:
        # R1 in full precision: the gradient of D w.r.t. its input is small and fp16 loses it
        real = clean.detach().float().requires_grad_(True)
        penalty = real.new_zeros(())
        if "d_patch" in parts:
            penalty = penalty + r1_penalty(d_patch(real), real)
        if "d_local" in parts:
            penalty = penalty + r1_penalty(d_local(real, mask), real)
        parts["r1"] = penalty
    return parts
