"""Pixel quality of restorations against the unmasked ground truth (synthetic masks only), in crop space.

Restored and clean faces are the same 112 ArcFace crops the judges see. SSIM (kornia, 11 px Gaussian window, map
computed on the whole crop) and PSNR (capped at 100 dB) over the whole face (the crop) and over the masked region
alone (SSIM map averaged over the mask; PSNR from the masked pixels' MSE). ``region_agreement`` compares the region a
method reports it replaced with the ground-truth mask. LPIPS is computed only with its real AlexNet trunk, i.e.
when torchvision's weights are already in the local torch cache; a randomly initialised trunk would give numbers
that mean nothing, so it is skipped.
"""
from __future__ import annotations

from pathlib import Path

import kornia
import numpy as np
import torch

from meer.utils.tensors import images_to_tensor

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"


def _t(x: np.ndarray) -> torch.Tensor:
    return images_to_tensor(x)


def region_scores(restored: np.ndarray, clean: np.ndarray, masks: np.ndarray, batch: int = 64) -> dict[str, np.ndarray]:
    """Per image of ``N x H x W x 3`` uint8 crops and ``N x H x W`` bool masks: ``psnr_face``, ``ssim_face`` (the
    whole crop), ``psnr_mask``, ``ssim_mask`` (the masked region; NaN where a mask is empty)."""
    if restored.shape != clean.shape or masks.shape != restored.shape[:3]:
        raise ValueError(f"shapes differ: restored {restored.shape}, clean {clean.shape}, masks {masks.shape}")
    out = {k: [] for k in ("psnr_face", "ssim_face", "psnr_mask", "ssim_mask")}
    for s in range(0, len(restored), batch):
        r = _t(restored[s:s + batch])
        c = _t(clean[s:s + batch])
        m = torch.from_numpy(masks[s:s + batch].astype(np.float32))[:, None]
        # PSNR capped at 100 dB (MSE floor 1e-10): an untouched face must not turn the mean into inf
        mse_face = ((r - c) ** 2).mean(dim=(1, 2, 3))
        out["psnr_face"].append(10 * torch.log10(1.0 / mse_face.clamp_min(1e-10)))
        full_map = kornia.metrics.ssim(r, c, window_size=11).mean(dim=1, keepdim=True)  # B x 1 x H x W
        out["ssim_face"].append(full_map.mean(dim=(1, 2, 3)))
        area = m.sum(dim=(1, 2, 3))
        mse = (((r - c) ** 2).mean(dim=1, keepdim=True) * m).sum(dim=(1, 2, 3)) / area.clamp_min(1)
        psnr_m = 10 * torch.log10(1.0 / mse.clamp_min(1e-10))
        ssim_m = (full_map * m).sum(dim=(1, 2, 3)) / area.clamp_min(1)
        empty = area == 0
        out["psnr_mask"].append(torch.where(empty, torch.nan, psnr_m))
        out["ssim_mask"].append(torch.where(empty, torch.nan, ssim_m))
    return {k: torch.cat(v).numpy().astype(np.float64) if v else np.zeros(0) for k, v in out.items()}


def region_agreement(regions: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Per image, how the region a method replaced (``N x H x W`` bool) matches the ground-truth mask: ``iou``
    (NaN where both are empty), ``share`` (replaced fraction of the crop), ``truth_covered`` (fraction of the mask
    replaced; NaN where the mask is empty)."""
    regions, truth = np.asarray(regions, bool), np.asarray(truth, bool)
    if regions.shape != truth.shape:
        raise ValueError(f"shapes differ: regions {regions.shape}, truth {truth.shape}")
    inter = (regions & truth).reshape(len(regions), -1).sum(axis=1).astype(np.float64)
    union = (regions | truth).reshape(len(regions), -1).sum(axis=1).astype(np.float64)
    area = truth.reshape(len(truth), -1).sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"iou": np.where(union > 0, inter / union, np.nan),
                "share": regions.reshape(len(regions), -1).mean(axis=1),
                "truth_covered": np.where(area > 0, inter / area, np.nan)}


def photo_region_errors(image: np.ndarray, clean: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """How far ``image`` is from ``clean`` inside ``mask`` (``H x W`` bool), for whole uint8 photos: ``l1`` (mean
    absolute error in 8-bit levels) and ``psnr`` (dB, from the masked pixels' MSE, capped at 100 dB like
    :func:`region_scores`). Used on masked and restored photos alike (model card, notebook 01)."""
    if image.shape != clean.shape or image.shape[:2] != mask.shape:
        raise ValueError(f"shapes differ: image {image.shape}, clean {clean.shape}, mask {mask.shape}")
    if not mask.any():
        raise ValueError("empty mask: no region to compare")
    diff = image[mask].astype(np.float64) - clean[mask].astype(np.float64)
    mse = max(float(np.mean(diff ** 2)), 1e-10 * 255.0 ** 2)
    return {"l1": float(np.abs(diff).mean()), "psnr": 10.0 * float(np.log10(255.0 ** 2 / mse))}


def lpips_trunk_available() -> bool:
    return (Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE).is_file()


class LpipsScorer:
    """LPIPS (AlexNet) on the 112 crops; construct only when ``lpips_trunk_available()``."""

    def __init__(self, device: str | torch.device = "cpu"):
        import lpips

        self.device = torch.device(device)
        self.net = lpips.LPIPS(net="alex", verbose=False).to(self.device).eval()

    @torch.no_grad()
    def __call__(self, restored: np.ndarray, clean: np.ndarray, batch: int = 32) -> np.ndarray:
        out = []
        for s in range(0, len(restored), batch):
            r = _t(restored[s:s + batch]).to(self.device) * 2 - 1
            c = _t(clean[s:s + batch]).to(self.device) * 2 - 1
            out.append(self.net(r, c).flatten().cpu())
        return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


def periodic_energy(patches: np.ndarray, periods: tuple[int, ...] = (2, 4, 8)) -> dict[int, np.ndarray]:
    """Share of each patch's (de-meaned, Hann-windowed) gray-level spectral power at a given horizontal
    ``period`` in pixels (all vertical frequencies summed): a vertical stripe pattern with that period, e.g.
    an upsampling grid, stands out against clean faces' smooth spectrum. ``patches``: ``N x H x W x 3``
    uint8 (or ``N x H x W`` gray); returns ``{period: N shares}``. Compare restored with clean patches."""
    x = np.asarray(patches, dtype=np.float64)
    if x.ndim == 4:
        x = x @ np.array([0.299, 0.587, 0.114])
    if x.ndim != 3:
        raise ValueError(f"patches must be N x H x W (x 3), got shape {np.shape(patches)}")
    n, h, w = x.shape
    x = x - x.mean(axis=(1, 2), keepdims=True)
    x = x * np.outer(np.hanning(h), np.hanning(w))[None]
    power = np.abs(np.fft.rfft2(x, axes=(1, 2))) ** 2  # N x H x (W//2 + 1)
    per_col = power.sum(axis=1)  # N x (W//2+1): power at each horizontal frequency
    total = per_col[:, 1:].sum(axis=1).clip(min=1e-12)  # no DC
    out = {}
    for p in periods:
        k = w / p  # bin of that period
        lo, hi = int(np.floor(k - 0.5)), int(np.ceil(k + 0.5))  # the bins around it (window leakage)
        out[p] = per_col[:, max(lo, 1):min(hi, per_col.shape[1] - 1) + 1].sum(axis=1) / total
    return out
