"""dlib's pretrained ResNet face descriptor as an independent judge (trained by nobody here).

Models come from the ``face-recognition-models`` package (``pip install meer[judge]``), located
with ``importlib.util.find_spec`` (importing it needs ``pkg_resources``). dlib's own HOG detector
misses most masked faces, so the judge never detects: it takes the face box from the crop geometry
(``DLIB_BOX_112``, calibrated as the mean HOG box of clean aligned LFW faces), fits dlib's 5-point
shape predictor inside it and computes the descriptor on dlib's standard 150 px chip, which dlib cuts
from the 112 crop itself. That chip reaches a few pixels below the crop (the chin), so the crop is
first extended by reflection (``PAD`` pixels, ``meer.evaluation.geometry.reflect_pad``; on 60 LFW
faces this came closest to the descriptors of the earlier pipeline with real context, ahead of zero
and edge fill). A fit whose points stray from where they belong (``max_landmark_error``) is a
failure to enrol.

``hog_detects`` measures *detectability*: whether dlib's HOG detector, left to itself, finds the
face in the 112 crop (a method that makes masked faces look like faces should raise that share).
"""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np

from meer.evaluation.geometry import check_crops, reflect_pad
from meer.evaluation.judge import Judge, JudgeOutput
from meer.faces.detect import box_iou
from meer.faces.dlib_chip import DLIB_POINTS_112
from meer.models.teacher import TEACHER_WEIGHTS
from meer.utils import dlib_models as models
from meer.utils.errors import MeerError

#: dlib HOG face box in ArcFace-112 pixels: the mean over 78 clean aligned LFW faces
#: (std about 6 px per side; the descriptor from this fixed box differs from the one from the
#: detected box by 0.03 on average, against dlib's same-person threshold of 0.6).
DLIB_BOX_112 = (13.8, 26.1, 99.4, 111.5)

MODEL_FILES = ("shape_predictor_5_face_landmarks.dat", "dlib_face_recognition_resnet_model_v1.dat")
#: pixels of reflection around the 112 crop (dlib's chip reaches about 8 px below it)
PAD = 32


def dlib_available() -> bool:
    return importlib.util.find_spec("dlib") is not None and dlib_model_dir() is not None


def dlib_model_dir() -> Path | None:
    """``face_recognition_models/models`` when that package is installed with its files, else None."""
    return models.dlib_model_dir() if models.has_dlib_models(*MODEL_FILES) else None


def missing_reason() -> str:
    if importlib.util.find_spec("dlib") is None:
        return "dlib is not installed (pip install 'meer[judge]')"
    return "face-recognition-models is not installed (pip install 'meer[judge]')"


class DlibJudge(Judge):
    """128-d dlib descriptor, Euclidean distance (same person below 0.6 in dlib's own use)."""

    name = "dlib"
    metric = "euclidean"
    weights = TEACHER_WEIGHTS["dlib"]

    def __init__(self, max_landmark_error: float = 0.15, num_jitters: int = 0):
        d = dlib_model_dir()
        if importlib.util.find_spec("dlib") is None or d is None:
            raise MeerError(missing_reason())
        import dlib

        self._dlib = dlib
        self.shape_predictor = dlib.shape_predictor(str(d / MODEL_FILES[0]))
        self.recognizer = dlib.face_recognition_model_v1(str(d / MODEL_FILES[1]))
        self.hog = dlib.get_frontal_face_detector()
        self.num_jitters = int(num_jitters)
        x1, y1, x2, y2 = (int(round(v)) for v in DLIB_BOX_112)
        self.crop_box = (x1, y1, x2, y2)  # in crop pixels
        self.box = dlib.rectangle(x1 + PAD, y1 + PAD, x2 + PAD, y2 + PAD)  # in the padded crop
        self.expected_points = DLIB_POINTS_112 + PAD
        # tolerance as a share of the box width (0.15 x 86 px = 13 px on the 112 crop)
        self.max_error_px = float(max_landmark_error) * (x2 - x1)
        digest = hashlib.sha1()
        for f in MODEL_FILES:
            digest.update(f"{f}:{(d / f).stat().st_size}".encode())
        self.cache_key = f"dlib-{digest.hexdigest()[:10]}-j{self.num_jitters}-e{max_landmark_error}-crop112r{PAD}"

    def fit_points(self, padded: np.ndarray):
        """dlib's 5-point shape inside the template box of a padded crop, and its largest point error in pixels."""
        shape = self.shape_predictor(padded, self.box)
        pts = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
        err = float(np.linalg.norm(pts - self.expected_points, axis=1).max())
        return shape, err

    def embed(self, crops: np.ndarray) -> JudgeOutput:
        crops = check_crops(crops, "the dlib judge")
        vectors = np.zeros((len(crops), 128), dtype=np.float32)
        ok = np.zeros(len(crops), dtype=bool)
        for i, crop in enumerate(crops):
            padded = reflect_pad(crop, PAD)
            shape, err = self.fit_points(padded)
            if err > self.max_error_px:
                continue
            vec = self.recognizer.compute_face_descriptor(padded, shape, self.num_jitters)
            vectors[i] = np.asarray(vec, dtype=np.float32)
            ok[i] = True
        return JudgeOutput(vectors, ok)

    def hog_detects(self, crops: np.ndarray, min_iou: float = 0.3, upsample: int = 0) -> np.ndarray:
        """Whether dlib's HOG detector finds a face in each 112 crop overlapping the expected box (IoU >=
        ``min_iou``)."""
        crops = check_crops(crops, "dlib's HOG detectability")
        out = np.zeros(len(crops), dtype=bool)
        for i, crop in enumerate(crops):
            for r in self.hog(np.ascontiguousarray(crop), upsample):
                if box_iou((r.left(), r.top(), r.right(), r.bottom()), self.crop_box) >= min_iou:
                    out[i] = True
                    break
        return out
