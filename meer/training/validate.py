"""Validation during training on the held-out identities.

The validation set is fixed for the whole run: the first ``val_images_per_identity`` images of each
held-out identity, masked once with a generator seeded by the run's seed (never the training
generator), and a fixed list of verification pairs (half same identity, half different). Metrics:

* ``verify_acc`` -- masked probe vs clean reference, cosine similarity of MEER embeddings,
  accuracy at the best threshold on these pairs (optimistic by construction: a training monitor,
  not a benchmark; ``meer-eval`` does 10-fold protocols), plus ``verify_auc``;
* ``mask_iou`` -- predicted occlusion map (> 0.5) vs the exact synthetic mask, mean per image;
* ``psnr_masked`` / ``ssim_masked`` -- restored vs clean inside the true masked region (kornia):
  PSNR over the masked pixels only, SSIM map averaged over the masked pixels;
* ``restored_cos`` -- cosine similarity of embeddings of restored and clean faces;
* ``l1_ring`` -- mean absolute error in the ring that inference replaces beyond the exact mask (the
  predicted map binarised and dilated), where the composite must reproduce real skin.

Every metric is computed on the model that is exported (the EMA model when EMA is on), so the best
checkpoint is chosen on the shipped weights.
"""
from __future__ import annotations

from dataclasses import dataclass

import kornia
import numpy as np
import torch
import torch.nn.functional as F

from meer.utils.verification import best_threshold, roc_auc
from meer.losses.occlusion import mask_iou
from meer.utils.errors import MeerError


PSNR_CAP = 100.0


@dataclass
class ValSet:
    clean: torch.Tensor  # N x 3 x H x W (CPU)
    masked: torch.Tensor
    mask: torch.Tensor  # N x 1 x H x W
    labels: torch.Tensor  # N
    pairs: np.ndarray  # P x 2 indices (probe masked, reference clean)
    same: np.ndarray  # P bool


def build_val_set(dataset, images_per_identity: int, num_pairs: int, masking, seed: int) -> ValSet:
    by_id: dict[int, list[int]] = {}
    for i, s in enumerate(dataset.samples):
        by_id.setdefault(s.label, []).append(i)
    chosen = [i for label in sorted(by_id) for i in by_id[label][:images_per_identity]]
    items = [dataset[i] for i in chosen]
    clean = torch.stack([it["clean"] for it in items])
    labels = torch.tensor([it["identity"] for it in items], dtype=torch.long)
    g = torch.Generator().manual_seed(seed + 12345)
    with torch.no_grad():
        masked, mask, _info = masking(clean, None, generator=g)
    pairs, same = make_pairs(labels.numpy(), num_pairs, np.random.default_rng(seed + 54321))
    return ValSet(clean=clean, masked=masked.clamp(0, 1), mask=mask.float(), labels=labels, pairs=pairs, same=same)


def make_pairs(labels: np.ndarray, num_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``num_pairs // 2`` positive pairs (same label, different images) and as many negative pairs."""
    by_id: dict[int, np.ndarray] = {int(k): np.flatnonzero(labels == k) for k in np.unique(labels)}
    multi = [k for k, v in by_id.items() if len(v) >= 2]
    if not multi or len(by_id) < 2:
        raise MeerError("validation needs at least 2 held-out identities, one with 2 or more images")
    half = num_pairs // 2
    pos = []
    for _ in range(half):
        k = multi[rng.integers(len(multi))]
        a, b = rng.choice(by_id[k], size=2, replace=False)
        pos.append((a, b))
    neg = []
    ids = list(by_id)
    for _ in range(num_pairs - half):
        ka, kb = rng.choice(len(ids), size=2, replace=False)
        neg.append((rng.choice(by_id[ids[ka]]), rng.choice(by_id[ids[kb]])))
    pairs = np.array(pos + neg, dtype=np.int64)
    same = np.r_[np.ones(len(pos), bool), np.zeros(len(neg), bool)]
    return pairs, same


@torch.no_grad()
def validate(model, vs: ValSet, batch_size: int, device: torch.device, autocast) -> dict[str, float]:
    """Score ``model`` -- the one that is exported (the EMA model when EMA is on) -- in eval mode, as
    ``meer-restore`` runs it: the composite uses the binarised, dilated predicted map."""
    was_training = model.training
    model.eval()
    emb_m, emb_c, iou, psnr, ssim, rcos, ring_err, ring_px = [], [], [], [], [], [], [], []
    for start in range(0, vs.clean.shape[0], batch_size):
        clean = vs.clean[start:start + batch_size].to(device)
        masked = vs.masked[start:start + batch_size].to(device)
        mask = vs.mask[start:start + batch_size].to(device)
        with autocast():
            out = model(masked)
            e_clean = model.embed(clean)
            e_rest = model.embed(out.restored)
        restored = out.restored.float()
        emb_m.append(out.embedding.float().cpu())
        emb_c.append(e_clean.float().cpu())
        iou.append(mask_iou(out.occ_map.float(), mask).cpu())
        p, s = masked_psnr_ssim(restored, clean, mask)
        psnr.append(p)
        ssim.append(s)
        rcos.append(F.cosine_similarity(e_rest.float(), e_clean.float()).cpu())
        # the ring: pixels inference replaces (dilated prediction) that the exact mask does not cover
        ring = ((out.composite_mask > 0) & (mask < 0.5)).float()
        ring_err.append(float(((restored - clean).abs() * ring).sum() / 3.0))
        ring_px.append(float(ring.sum()))
    if was_training:
        model.train()
    emb_m, emb_c = torch.cat(emb_m), torch.cat(emb_c)
    scores = (F.normalize(emb_m[vs.pairs[:, 0]], dim=1) * F.normalize(emb_c[vs.pairs[:, 1]], dim=1)).sum(1).numpy()
    t = best_threshold(scores, vs.same)
    return {
        "verify_acc": float(((scores >= t) == vs.same).mean()),
        "verify_auc": float(roc_auc(scores, vs.same)),
        "mask_iou": float(torch.cat(iou).mean()),
        "psnr_masked": float(torch.cat(psnr).mean()),
        "ssim_masked": float(torch.cat(ssim).mean()),
        "restored_cos": float(torch.cat(rcos).mean()),
        "l1_ring": sum(ring_err) / max(sum(ring_px), 1.0),  # mean |restored - clean| per channel, 0..1
    }


def masked_psnr_ssim(restored: torch.Tensor, clean: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image PSNR and SSIM restricted to the masked region (images without mask are skipped)."""
    ssim_map = kornia.metrics.ssim(restored, clean, window_size=11, max_val=1.0).mean(1, keepdim=True)
    psnr, ssim = [], []
    for i in range(restored.shape[0]):
        region = mask[i, 0] > 0.5
        if not region.any():
            continue
        p = kornia.metrics.psnr(restored[i][:, region], clean[i][:, region], max_val=1.0)
        psnr.append(p.clamp(max=PSNR_CAP).reshape(1))  # identical pixels would give inf
        ssim.append(ssim_map[i, 0][region].mean().reshape(1))
    if not psnr:
        return torch.empty(0), torch.empty(0)
    return torch.cat(psnr).cpu(), torch.cat(ssim).cpu()
