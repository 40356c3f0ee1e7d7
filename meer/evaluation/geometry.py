"""Crop space: every face the evaluation scores is an ArcFace-aligned ``CROP_SIZE`` x ``CROP_SIZE`` crop.

A photo is warped once into the crop with meer's own alignment (``meer.faces.align.align_face``, what
``meer-restore`` does); aligned input is used as it is (resized once when it is not 112 px). Synthetic masks are
drawn on the crop, methods restore the crop, quality metrics compare crops, and judges read the crops exactly as
the methods returned them. Judges whose input reaches a little past the crop (dlib's chip and facenet's box go a
few pixels below the chin) see the crop extended by reflection (:func:`reflect_pad`), the same fill as the
``reflection`` padding of ``meer.faces.dlib_chip.crops112_to_dlib_chips``.
"""
from __future__ import annotations

import cv2
import numpy as np

from meer.utils.errors import MeerError

CROP_SIZE = 112


def crop_from_photo(rgb: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(crop, landmarks in crop pixels)`` of a photo's face given its 5 landmarks."""
    from meer.faces.align import align_face

    a = align_face(rgb if rgb.flags.writeable else rgb.copy(), landmarks, size=CROP_SIZE)
    return a.crop, a.landmarks.astype(np.float64)


def crop_from_aligned(rgb: np.ndarray) -> np.ndarray:
    """An already aligned square crop at ``CROP_SIZE`` (unchanged when it has that size; otherwise one resize:
    area averaging when shrinking, bicubic when enlarging)."""
    h, w = rgb.shape[:2]
    if h != w:
        raise MeerError(f"aligned crops must be square, got {w}x{h}")
    if w == CROP_SIZE:
        return np.ascontiguousarray(rgb)
    return cv2.resize(rgb, (CROP_SIZE, CROP_SIZE), interpolation=cv2.INTER_AREA if w > CROP_SIZE else cv2.INTER_CUBIC)


def check_crops(crops: np.ndarray, what: str = "judge") -> np.ndarray:
    """``crops`` as ``N x 112 x 112 x 3`` uint8, or a one-line :class:`MeerError` saying what came instead."""
    crops = np.asarray(crops)
    if crops.ndim != 4 or crops.shape[1:] != (CROP_SIZE, CROP_SIZE, 3) or crops.dtype != np.uint8:
        raise MeerError(f"{what} takes N x {CROP_SIZE} x {CROP_SIZE} x 3 uint8 ArcFace crops, got "
                        f"{crops.dtype} {tuple(crops.shape)}")
    return crops


def reflect_pad(crop: np.ndarray, pad: int) -> np.ndarray:
    """A crop extended by ``pad`` pixels on every side by mirroring it about its border (``fedcba|abcdef``)."""
    return cv2.copyMakeBorder(np.ascontiguousarray(crop), pad, pad, pad, pad, cv2.BORDER_REFLECT)
