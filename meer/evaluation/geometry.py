"""The evaluation canvas: every face the harness scores is first warped into one fixed frame.

The canvas is a ``CANVAS_SIZE`` square in which the ArcFace 5-point template sits scaled by
``CANVAS_SCALE`` and centred (``CANVAS_TEMPLATE``), leaving context around the face that the
ArcFace 112 crop cuts off (dlib's face chip and facenet's margin crop need it). Because the face
position in the canvas is known, judges never have to find the face again: they take the box and
crops from this geometry. Masks, restorations and quality metrics all live in canvas pixels.
"""
from __future__ import annotations

import cv2
import numpy as np

from meer.faces.template import ARCFACE_112

CANVAS_SIZE = 224
CANVAS_SCALE = 1.5
CANVAS_OFFSET = (CANVAS_SIZE - 112 * CANVAS_SCALE) / 2.0  # 28 px on every side of the scaled 112 crop
CANVAS_TEMPLATE = (ARCFACE_112 * CANVAS_SCALE + CANVAS_OFFSET).astype(np.float32)
#: where the ArcFace 112 x 112 crop lies in the canvas: x1, y1, x2, y2
ARCFACE_REGION = (CANVAS_OFFSET, CANVAS_OFFSET, CANVAS_SIZE - CANVAS_OFFSET, CANVAS_SIZE - CANVAS_OFFSET)


def canvas_matrix(landmarks: np.ndarray) -> np.ndarray:
    """``(2, 3)`` similarity transform taking an image's 5 landmarks onto ``CANVAS_TEMPLATE``."""
    from meer.faces.align import similarity_matrix

    return np.asarray(similarity_matrix(np.asarray(landmarks, dtype=np.float32), CANVAS_TEMPLATE), dtype=np.float64)


def warp_to_canvas(image: np.ndarray, matrix: np.ndarray, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Warp an ``H x W (x C)`` image with ``matrix`` into the canvas (zero border)."""
    return cv2.warpAffine(np.ascontiguousarray(image), np.asarray(matrix, dtype=np.float64), (CANVAS_SIZE, CANVAS_SIZE),
                          flags=interpolation, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def crop_matrix_to_canvas(crop_size: int) -> np.ndarray:
    """Matrix placing an already aligned ``crop_size`` ArcFace crop into the canvas."""
    s = CANVAS_SCALE * 112.0 / crop_size
    return np.array([[s, 0.0, CANVAS_OFFSET], [0.0, s, CANVAS_OFFSET]])


def arcface_crops(canvases: np.ndarray, size: int = 112) -> np.ndarray:
    """``N x size x size x 3`` ArcFace-aligned crops cut from ``N x 224 x 224 x 3`` canvases (area resampling)."""
    a = int(round(CANVAS_OFFSET))
    b = CANVAS_SIZE - a
    return np.stack([cv2.resize(c[a:b, a:b], (size, size), interpolation=cv2.INTER_AREA) for c in canvases])


def box_from_template(box_112: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """A box given in ArcFace 112-crop pixels, expressed in canvas pixels."""
    return tuple(float(v) * CANVAS_SCALE + CANVAS_OFFSET for v in box_112)  # type: ignore[return-value]


def face_region_mask() -> np.ndarray:
    """``224 x 224`` bool: the ArcFace crop region, where whole-face quality metrics are computed."""
    m = np.zeros((CANVAS_SIZE, CANVAS_SIZE), dtype=bool)
    a = int(round(CANVAS_OFFSET))
    m[a:CANVAS_SIZE - a, a:CANVAS_SIZE - a] = True
    return m
