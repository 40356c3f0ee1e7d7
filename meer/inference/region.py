"""The part of an aligned face that is pasted back into the photo.

Only what the model restored should change in the photo, so the paste region starts from the pixels
the model replaced (MEER's ``composite_mask``: its predicted occlusion map binarised and dilated; any
soft map is binarised at ``threshold``), is grown by ``dilate`` more pixels and feathered over
``feather`` pixels outwards, so that it is exactly 1 on every replaced pixel and the seam falls
where the crop still shows the photo's own pixels. Values below ``1/512`` are set to exactly 0,
which keeps every photo pixel outside the region bit-identical after blending; the crop's outer
``border`` pixels are faded out so that the warped region never has a hard edge where the crop ends.
"""
from __future__ import annotations

import math

import torch
from kornia.filters import gaussian_blur2d
from kornia.morphology import dilation

EPS = 1.0 / 512.0


def paste_region(occ_map: torch.Tensor, threshold: float = 0.5, dilate: int = 2, feather: float = 2.0,
                 border: int = 4) -> torch.Tensor:
    """``B x 1 x H x W`` occlusion probabilities -> ``B x 1 x H x W`` blending weights in [0, 1].

    Weights are 1 on every pixel predicted occluded (``occ_map > threshold``), fall to 0 within
    ``dilate + 3 * feather`` pixels around them, and are exactly 0 further away and on the crop border.
    """
    if occ_map.dim() != 4 or occ_map.shape[1] != 1:
        raise ValueError(f"occ_map must be B x 1 x H x W, got {tuple(occ_map.shape)}")
    occ = occ_map.float()
    binary = (occ > threshold).float()
    region = binary
    if dilate > 0:
        kernel = _disk(dilate, occ.device)
        region = dilation(region, kernel)
    if feather > 0:
        radius = max(1, math.ceil(3 * feather))
        region = gaussian_blur2d(region, (2 * radius + 1, 2 * radius + 1), (feather, feather),
                                 border_type="constant")
        region = torch.maximum(region, binary)
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
