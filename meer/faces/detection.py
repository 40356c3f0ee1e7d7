"""What a face detector returns: :class:`FaceDetection` (box, score, 5 landmarks). Its own module so that the
detector (``meer.faces.detect``) and its dlib fallback (``meer.faces.fallback``) both use it without importing
each other."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass
class FaceDetection:
    """One face: box ``x1 y1 x2 y2`` and 5 landmarks ``(x, y)`` in the image's pixel coordinates."""

    box: np.ndarray  # (4,) float32
    score: float
    landmarks: np.ndarray  # (5, 2) float32, order of meer.faces.template.ARCFACE_112
    detector: str  # "mtcnn" or "dlib-cnn+onet"

    @property
    def area(self) -> float:
        return float(max(self.box[2] - self.box[0], 0.0) * max(self.box[3] - self.box[1], 0.0))

    def to_dict(self) -> dict:
        return {
            "box": [round(float(v), 2) for v in self.box],
            "score": round(float(self.score), 5),
            "landmarks": [[round(float(x), 3), round(float(y), 3)] for x, y in self.landmarks],
            "detector": self.detector,
        }


def largest(dets: Sequence[FaceDetection]) -> FaceDetection | None:
    """The detection with the largest box area, or ``None`` for an empty list."""
    return max(dets, key=lambda d: d.area) if dets else None
