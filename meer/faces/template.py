"""The standard 5-point ArcFace alignment template (insightface), in 112 x 112 crop pixels.

Order: left eye, right eye, nose tip, left mouth corner, right mouth corner (image left/right).
"""
from __future__ import annotations

import numpy as np

ARCFACE_112 = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)


def template_for_size(size: int) -> np.ndarray:
    """``ARCFACE_112`` scaled to a ``size`` x ``size`` crop (the face keeps its framing)."""
    if size <= 0:
        raise ValueError(f"crop size must be positive, got {size}")
    return (ARCFACE_112 * (size / 112.0)).astype(np.float32)


#: MTCNN's face box on clean faces in ArcFace-112 pixels, x1 y1 x2 y2 (mean over 80 LFW faces placed
#: on the evaluation canvas): the box facenet's InceptionResnetV1 was trained on
MTCNN_BOX_112 = (16.3, 11.5, 95.2, 116.6)
