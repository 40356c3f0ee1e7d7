"""The part of an aligned face that is pasted back into the photo.

Only what the model restored may change in the photo. The paste region is the set of pixels the model
replaced (MEER's ``composite_mask``: its predicted occlusion map binarised and dilated; any soft map is
binarised at ``threshold``), optionally grown by ``dilate`` pixels, and feathered **inwards**: the weight
is 1 from ``feather`` pixels inside the region's edge and ramps down to ``1 / (feather + 1)`` on its
outermost pixel, and is exactly 0 outside it. The composite mask already reaches a few pixels beyond the
predicted occlusion (the model's ``infer_dilate``), so the seam falls in that ring, on the face's own
skin, and every photo pixel the model did not replace keeps its exact value (a feather that spread
outwards blended the resampled crop into the visible face around the mask). The crop's outer ``border``
pixels are faded out so that the warped region never has a hard edge where the crop ends; values below
``1/512`` are set to exactly 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from kornia.morphology import dilation

EPS = 1.0 / 512.0


def paste_region(occ_map: torch.Tensor, threshold: float = 0.5, dilate: int = 0, feather: int = 2,
                 border: int = 4) -> torch.Tensor:
    """``B x 1 x H x W`` occlusion probabilities (or the model's composite mask) -> ``B x 1 x H x W``
    blending weights in [0, 1].

    Weights are exactly 0 outside the binarised map grown by ``dilate`` pixels, 1 on every pixel at least
    ``feather`` pixels inside its edge, and ``(k + 1) / (feather + 1)`` on the ``k``-th pixel ring inside it.
    """
    if occ_map.dim() != 4 or occ_map.shape[1] != 1:
        raise ValueError(f"occ_map must be B x 1 x H x W, got {tuple(occ_map.shape)}")
    if feather < 0 or dilate < 0:
        raise ValueError(f"dilate and feather must be >= 0, got {dilate}, {feather}")
    occ = occ_map.float()
    region = (occ > threshold).float()
    if dilate > 0:
        region = dilation(region, _disk(int(dilate), occ.device))
    feather = int(round(feather))
    if feather > 0:
        # mean of the region eroded by 0..feather pixels (3x3 square steps): an inward linear ramp
        eroded, acc = region, region.clone()
        for _ in range(feather):
            eroded = -F.max_pool2d(-eroded, 3, 1, 1)
            acc = acc + eroded
        region = acc / (feather + 1)
    if border > 0:
        region = region * _border_ramp(occ.shape[-2], occ.shape[-1], border, occ.device)
    region = region.clamp(0.0, 1.0)
    return torch.where(region < EPS, torch.zeros_like(region), region)


def _disk(radius: int, device: torch.device) -> torch.Tensor:
    r = torch.arange(-radius, radius + 1, device=device, dtype=torch.float32)
    return ((r[:, None] ** 2 + r[None, :] ** 2) <= radius * radius + 0.5).float()


def _border_ramp(h: int, w: int, border: int, device: torch.device) -> torch.Tensor:
    """1 inside, linearly down to 0 on the outermost pixel row/column."""

    def ramp(n: int) -> torch.Tensor:
        i = torch.arange(n, device=device, dtype=torch.float32)
        d = torch.minimum(i, n - 1 - i)
        return (d / border).clamp(max=1.0)

    return ramp(h)[:, None] * ramp(w)[None, :]
