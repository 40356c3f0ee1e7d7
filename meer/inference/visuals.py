"""Images written next to the restored photos: occlusion maps and side-by-side comparison strips."""
from __future__ import annotations

import numpy as np

OVERLAY_COLOR = np.array([255, 40, 40], dtype=np.float32)


def occlusion_image(occ_map: np.ndarray) -> np.ndarray:
    """``H x W`` probabilities in [0, 1] -> ``H x W`` uint8 gray (255 = occluded)."""
    return (np.clip(occ_map, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def overlay(crop: np.ndarray, occ_map: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """The crop with the occlusion probabilities tinted red."""
    w = (np.clip(occ_map, 0.0, 1.0) * alpha)[..., None]
    out = crop.astype(np.float32) * (1.0 - w) + OVERLAY_COLOR * w
    return out.round().clip(0, 255).astype(np.uint8)


def comparison_strip(crop: np.ndarray, occ_map: np.ndarray, restored: np.ndarray, gap: int = 2) -> np.ndarray:
    """``[input crop | predicted occlusion over the crop | restored crop]`` with white gaps."""
    if crop.shape != restored.shape or crop.shape[:2] != occ_map.shape:
        raise ValueError(f"shapes differ: crop {crop.shape}, occlusion {occ_map.shape}, restored {restored.shape}")
    h = crop.shape[0]
    sep = np.full((h, gap, 3), 255, dtype=np.uint8)
    return np.concatenate([crop, sep, overlay(crop, occ_map), sep, restored], axis=1)


def pixelate(image: np.ndarray, cells: int = 12) -> np.ndarray:
    """A mosaic of ``cells x cells`` flat blocks (block means), same size and dtype as ``image`` (``H x W`` or
    ``H x W x C``). Used where a figure shows photos whose terms forbid redistribution: pose, lighting and the
    mask stay visible, the person does not."""
    if cells < 1:
        raise ValueError(f"cells must be >= 1, got {cells}")
    img = np.asarray(image)
    h, w = img.shape[:2]
    ys = np.linspace(0, h, min(cells, h) + 1).round().astype(int)
    xs = np.linspace(0, w, min(cells, w) + 1).round().astype(int)
    out = np.empty_like(img)
    for y0, y1 in zip(ys[:-1], ys[1:]):
        for x0, x1 in zip(xs[:-1], xs[1:]):
            block = img[y0:y1, x0:x1]
            out[y0:y1, x0:x1] = block.reshape(-1, *img.shape[2:]).mean(axis=0).round().astype(img.dtype)
    return out
