"""Cheap geometric plausibility check of a detection's 5 landmarks against its box.

MTCNN's cascade with borders and lowered thresholds (``meer.faces.detect.DEFAULT_PASSES``) sometimes
accepts a detection whose landmarks cannot belong to an upright-ish face in that box (part of a face
at the wrong scale, landmarks collapsed onto one spot, a face upside down). Aligning such landmarks
gives a rotated or shrunken crop. :func:`plausible` rejects them so that the detector tries its next
pass instead. Everything is measured in the face's own frame: the eye line defines the x axis.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from meer.utils.errors import MeerError


@dataclass(frozen=True)
class PlausibilityLimits:
    """Limits of :func:`plausible` (measured: ``benchmarks/plausibility/README.md``).

    Attributes:
        max_roll_deg: largest tilt of the eye line from horizontal (image frame).
        iod_frac: (min, max) inter-ocular distance as a fraction of the box width.
        eye_mouth_ratio: (min, max) distance eye midpoint -> mouth midpoint over the inter-ocular distance.
        box_grow: landmarks must lie inside the box grown by this fraction of its side on every side.
        min_box_frac: smallest box side as a fraction of the image's shorter side (0 = no limit).
    """

    max_roll_deg: float = 45.0
    iod_frac: tuple[float, float] = (0.2, 0.7)
    eye_mouth_ratio: tuple[float, float] = (0.6, 2.0)
    box_grow: float = 0.1
    min_box_frac: float = 0.0

    def __post_init__(self):
        for name in ("iod_frac", "eye_mouth_ratio"):
            lo, hi = getattr(self, name)
            if not 0 <= lo < hi:
                raise MeerError(f"plausibility {name} must be (min, max) with 0 <= min < max, got {(lo, hi)}")
        if not 0 < self.max_roll_deg <= 180 or self.box_grow < 0 or not 0 <= self.min_box_frac <= 1:
            raise MeerError("plausibility limits out of range (max_roll_deg in (0, 180], box_grow >= 0, "
                            "min_box_frac in [0, 1])")


DEFAULT_LIMITS = PlausibilityLimits()


def plausibility_reason(landmarks: np.ndarray, box: np.ndarray, image_shape: tuple[int, ...] | None = None,
                        limits: PlausibilityLimits = DEFAULT_LIMITS) -> str | None:
    """``None`` when ``landmarks`` (5 x 2, order of ``ARCFACE_112``) fit ``box`` (x1 y1 x2 y2) as an
    upright face; otherwise a short reason. ``image_shape`` (H, W, ...) enables ``min_box_frac``."""
    lm = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    x1, y1, x2, y2 = (float(v) for v in np.asarray(box).reshape(4))
    bw, bh = x2 - x1, y2 - y1
    if not np.all(np.isfinite(lm)) or bw <= 0 or bh <= 0:
        return "degenerate box or landmarks"
    g = limits.box_grow
    if (lm[:, 0].min() < x1 - g * bw or lm[:, 0].max() > x2 + g * bw
            or lm[:, 1].min() < y1 - g * bh or lm[:, 1].max() > y2 + g * bh):
        return "landmark outside the box"
    if limits.min_box_frac > 0 and image_shape is not None:
        if min(bw, bh) < limits.min_box_frac * min(image_shape[0], image_shape[1]):
            return "box too small for the image"
    eye_l, eye_r, nose, mouth_l, mouth_r = lm
    eye_vec = eye_r - eye_l
    iod = float(np.hypot(*eye_vec))
    if not limits.iod_frac[0] * bw <= iod <= limits.iod_frac[1] * bw:
        return "eye distance implausible for the box"
    roll = np.degrees(np.arctan2(eye_vec[1], eye_vec[0]))  # 0 when the right eye is right of the left
    if abs(roll) > limits.max_roll_deg:
        return "eye line too tilted (or face upside down)"
    # face frame: x along the eye line, y perpendicular (downwards in an upright face)
    ux = eye_vec / iod
    uy = np.array([-ux[1], ux[0]])
    rel = lm - (eye_l + eye_r) / 2
    fx, fy = rel @ ux, rel @ uy
    mouth_y = (fy[3] + fy[4]) / 2
    if not 0 < fy[2] < mouth_y:
        return "nose not between eyes and mouth"
    if not fx[3] < fx[4]:
        return "mouth corners swapped"
    ratio = float(np.hypot((fx[3] + fx[4]) / 2, mouth_y)) / iod
    if not limits.eye_mouth_ratio[0] <= ratio <= limits.eye_mouth_ratio[1]:
        return "eye-mouth distance implausible"
    return None


def plausible(landmarks: np.ndarray, box: np.ndarray, image_shape: tuple[int, ...] | None = None,
              limits: PlausibilityLimits = DEFAULT_LIMITS) -> bool:
    """True when :func:`plausibility_reason` finds nothing wrong."""
    return plausibility_reason(landmarks, box, image_shape, limits) is None
