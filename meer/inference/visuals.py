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
