"""Paste an edited aligned face back into its photo without a visible seam.

The crop is warped back with the inverse alignment matrix and blended through a soft face region:
the crop minus a border, eroded, with a Gaussian-blurred edge. The region lives in crop pixels, so
once warped back its feather width scales with the face's size in the photo. Pixels where the
warped region is exactly 0 are copied from the input untouched (bit-identical), and a
``LoadedImage`` keeps its alpha channel, gray layout and 16-bit depth.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from kornia.filters import gaussian_blur2d
from kornia.morphology import erosion

from meer.faces.align import invert, transform_points, warp
from meer.utils.errors import MeerError
from meer.utils.images import LoadedImage


def soften_region(mask: np.ndarray, erode_px: int, feather_sigma: float, border_px: int = 1) -> np.ndarray:
    """Turn a hard crop-space mask (``S x S``, nonzero = paste) into a blending region: eroded by a
    ``erode_px`` square (kornia), edge blurred by a Gaussian of ``feather_sigma`` pixels, and a
    ``border_px`` frame forced to exactly 0 so nothing beyond the crop's footprint is touched."""
    m = torch.as_tensor(np.asarray(mask, dtype=np.float32) > 0, dtype=torch.float32)[None, None]
    if m.shape[-1] != m.shape[-2]:
        raise MeerError(f"region must be square, got {tuple(m.shape[-2:])}")
    if erode_px > 1:
        m = erosion(m, torch.ones(int(erode_px), int(erode_px)), border_type="constant", border_value=0.0)
    if feather_sigma > 0:
        ksize = 2 * int(np.ceil(3 * feather_sigma)) + 1
        m = gaussian_blur2d(m, (ksize, ksize), (feather_sigma, feather_sigma), border_type="constant")
    region = m[0, 0].numpy().astype(np.float32)
    region[region > 1.0 - 1e-5] = 1.0  # blur round-off: the plateau is exactly 1
    b = max(0, int(border_px))
    if b:
        region[:b], region[-b:], region[:, :b], region[:, -b:] = 0, 0, 0, 0
    return region


@functools.lru_cache(maxsize=8)
def _face_region(size: int, border: float, erode: float, feather: float) -> np.ndarray:
    b = max(1, int(round(border * size)))
    return soften_region(np.ones((size, size), np.float32), 2 * int(round(erode * size)) + 1, feather * size,
                         border_px=b)


def face_region(size: int = 112, border: float = 0.02, erode: float = 0.1, feather: float = 0.03) -> np.ndarray:
    """Soft blending region of a ``size`` crop, ``size x size`` float32 in [0, 1]: 1 inside, falling
    to 0 over a Gaussian edge of sigma ``feather * size`` that sits ``erode * size`` pixels inside
    the crop's edge; the outer ``border * size`` pixels are exactly 0. Being in crop pixels, the
    feather scales with the face once warped back. Multiply it with an occlusion mask (or use
    :func:`soften_region` on one) to paste only there."""
    return _face_region(int(size), float(border), float(erode), float(feather)).copy()


def warp_region_back(region: np.ndarray, matrix: np.ndarray, height: int, width: int,
                     window: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """The crop-space ``region`` warped into the photo (``height x width`` float32, 0 outside)."""
    x0, y0, x1, y1 = window or _crop_footprint(matrix, region.shape[0], width, height)
    out = np.zeros((height, width), np.float32)
    if x1 > x0 and y1 > y0:
        out[y0:y1, x0:x1] = _warp_back(region[None].astype(np.float32), matrix, (x0, y0, x1, y1))[0]
    return out


def paste_back(image_rgb: np.ndarray, face_crop: np.ndarray, matrix: np.ndarray,
               region: np.ndarray | None = None) -> np.ndarray:
    """Blend ``face_crop`` (``S x S x 3`` uint8, aligned by ``matrix`` image -> crop) back into
    ``image_rgb`` (``H x W x 3`` uint8). ``region`` (``S x S`` float in [0, 1], default
    :func:`face_region`) says how much of the crop to use; pixels it does not reach are unchanged."""
    _check(image_rgb, face_crop, region)
    out, _ = _blend(image_rgb, None, face_crop, matrix, region)
    return out


def paste_back_loaded(image: LoadedImage, face_crop: np.ndarray, matrix: np.ndarray,
                      region: np.ndarray | None = None) -> np.ndarray:
    """Like :func:`paste_back` for a ``LoadedImage``; returns the result in the file's own layout
    (``image.to_native``): alpha re-attached, gray stays gray, 16-bit files blended at 16 bits."""
    _check(image.rgb, face_crop, region)
    rgb8, rgb16 = _blend(image.rgb, image.rgb16, face_crop, matrix, region)
    return image.to_native(rgb8, rgb16)


def paste_faces(image: LoadedImage, crops: list[np.ndarray], matrices: list[np.ndarray],
                regions: list[np.ndarray | None] | None = None) -> np.ndarray:
    """Paste several faces into one ``LoadedImage`` (in order); returns the native-layout array."""
    regions = regions or [None] * len(crops)
    rgb8, rgb16 = image.rgb, image.rgb16
    for crop, m, r in zip(crops, matrices, regions):
        _check(rgb8, crop, r)
        rgb8, rgb16 = _blend(rgb8, rgb16, crop, m, r)
    return image.to_native(rgb8, rgb16)


def _check(image_rgb: np.ndarray, face_crop: np.ndarray, region: np.ndarray | None) -> None:
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise MeerError(f"image must be H x W x 3 uint8, got {image_rgb.dtype} {tuple(image_rgb.shape)}")
    if face_crop.ndim != 3 or face_crop.shape[2] != 3 or face_crop.shape[0] != face_crop.shape[1] \
            or face_crop.dtype != np.uint8:
        raise MeerError(f"face crop must be S x S x 3 uint8, got {face_crop.dtype} {tuple(face_crop.shape)}")
    if region is not None and np.shape(region) != face_crop.shape[:2]:
        raise MeerError(f"region must be {face_crop.shape[0]} x {face_crop.shape[1]}, got {np.shape(region)}")


def _crop_footprint(matrix: np.ndarray, size: int, width: int, height: int) -> tuple[int, int, int, int]:
    corners = transform_points(np.array([[-1, -1], [size, -1], [-1, size], [size, size]], np.float64),
                               invert(matrix))
    x0 = int(np.clip(np.floor(corners[:, 0].min()), 0, width))
    y0 = int(np.clip(np.floor(corners[:, 1].min()), 0, height))
    x1 = int(np.clip(np.ceil(corners[:, 0].max()) + 1, 0, width))
    y1 = int(np.clip(np.ceil(corners[:, 1].max()) + 1, 0, height))
    if x1 > x0 and y1 > y0:  # kornia needs >= 2 pixels per side to normalise coordinates
        if x1 - x0 < 2:
            x0, x1 = (x0 - 1, x1) if x0 > 0 else (x0, x1 + 1)
        if y1 - y0 < 2:
            y0, y1 = (y0 - 1, y1) if y0 > 0 else (y0, y1 + 1)
    return x0, y0, x1, y1


def _warp_back(planes: np.ndarray, matrix: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    """Warp ``C x S x S`` crop planes into the image window ``(x0, y0, x1, y1)``: ``C x h x w``."""
    x0, y0, x1, y1 = window
    back = invert(matrix)  # crop -> image
    back[:, 2] -= np.array([x0, y0], dtype=np.float64)
    t = torch.from_numpy(np.ascontiguousarray(planes, dtype=np.float32))[None]
    return warp(t, torch.from_numpy(back)[None].float(), (y1 - y0, x1 - x0))[0].numpy()


def _blend(rgb8: np.ndarray, rgb16: np.ndarray | None, face_crop: np.ndarray, matrix: np.ndarray,
           region: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    size = face_crop.shape[0]
    region = face_region(size) if region is None else np.clip(np.asarray(region, np.float32), 0.0, 1.0)
    h, w = rgb8.shape[:2]
    x0, y0, x1, y1 = _crop_footprint(matrix, size, w, h)
    out8 = rgb8.copy()
    out16 = rgb16.copy() if rgb16 is not None else None
    if x1 <= x0 or y1 <= y0:
        return out8, out16
    planes = np.concatenate([face_crop.transpose(2, 0, 1).astype(np.float32), region[None],
                             np.ones((1, size, size), np.float32)], axis=0)
    warped = _warp_back(planes, matrix, (x0, y0, x1, y1))
    coverage = warped[4]
    alpha = np.clip(warped[3], 0.0, 1.0)  # already fades with the coverage at the footprint's edge
    # at the footprint's edge bilinear sampling mixes in the zero padding: un-premultiply the face
    face = (warped[:3] / np.maximum(coverage, 1e-6)).transpose(1, 2, 0)
    touched = alpha > 0
    a = alpha[..., None]
    win8 = out8[y0:y1, x0:x1]
    blended = a * face + (1 - a) * win8.astype(np.float32)
    win8[touched] = np.clip(np.round(blended[touched]), 0, 255).astype(np.uint8)
    if out16 is not None:
        win16 = out16[y0:y1, x0:x1]
        b16 = a * (face * 257.0) + (1 - a) * win16.astype(np.float32)
        win16[touched] = np.clip(np.round(b16[touched]), 0, 65535).astype(np.uint16)
    return out8, out16
