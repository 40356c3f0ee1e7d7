"""Detection on real photos from ../shared/data (skipped when the data is absent)."""
from __future__ import annotations

import numpy as np
import pytest

from meer.faces.align import align_face
from meer.faces.detect import FaceDetector
from meer.faces.template import ARCFACE_112
from meer.utils.images import read_image

pytestmark = pytest.mark.shared_data


@pytest.fixture(scope="module")
def detector():
    return FaceDetector("cpu", fallback=None)  # the default MTCNN cascade


def _sample(files: list, n: int) -> list:
    files = sorted(files)
    return files[:: max(1, len(files) // n)][:n]


def test_unmasked_lfw_faces_are_found_and_align_near_the_template(shared_data, detector):
    files = _sample(list((shared_data / "faces" / "lfw").glob("*/*.jpg")), 8)
    found = detector.detect([read_image(f).rgb for f in files])
    assert all(len(d) >= 1 for d in found)
    for f, dets in zip(files, found):
        face = align_face(read_image(f).rgb, dets[0].landmarks)
        assert np.linalg.norm(face.landmarks - ARCFACE_112, axis=1).mean() < 8


def test_most_real_masked_crops_are_found(shared_data, detector):
    """RMFRD's tight masked crops are MTCNN's hardest case (68.8% with its defaults on all 568); the
    cascade finds most of a spread-out sample, one face per crop."""
    files = _sample(list((shared_data / "real_masked_pairs" / "rmfrd").glob("*/masked/*")), 12)
    found = detector.detect([read_image(f).rgb for f in files])
    assert sum(len(d) >= 1 for d in found) >= 10
    assert sum(len(d) > 1 for d in found) <= 1
