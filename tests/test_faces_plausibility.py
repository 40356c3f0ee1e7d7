"""Geometric plausibility of a detection's 5 landmarks against its box (hand-made landmark sets)."""
from __future__ import annotations

import numpy as np
import pytest

from meer.faces.detect import FaceDetection, FaceDetector
from meer.faces.plausibility import PlausibilityLimits, plausibility_reason, plausible
from meer.faces.template import ARCFACE_112

# the ArcFace template is an upright frontal face; MTCNN's box around it is about x 18..94, y 20..110
BOX = np.array([18.0, 20.0, 94.0, 110.0], np.float32)
FACE = ARCFACE_112.copy()


def _rotate(points, degrees, centre=(56.0, 65.0)):
    a = np.radians(degrees)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return ((points - centre) @ rot.T + centre).astype(np.float32)


def test_upright_and_moderately_tilted_faces_accepted():
    assert plausibility_reason(FACE, BOX) is None
    for deg in (-30, -15, 15, 30):
        assert plausible(_rotate(FACE, deg), BOX), deg
    # a half-profile: eyes and mouth squeezed towards one side, nose off-centre
    profile = FACE.copy()
    profile[:, 0] = 30 + (profile[:, 0] - 30) * 0.6
    profile[2, 0] = 35
    assert plausible(profile, BOX)


def test_upside_down_face_rejected():
    assert not plausible(_rotate(FACE, 180), BOX)
    flipped = FACE.copy()
    flipped[:, 1] = 130 - flipped[:, 1]  # mirrored vertically: mouth above the eyes
    assert not plausible(flipped, BOX)
    assert "tilted" in plausibility_reason(_rotate(FACE, 70), BOX)


def test_collapsed_landmarks_rejected():
    collapsed = (FACE - FACE.mean(0)) * 0.15 + FACE.mean(0)  # all five within a few pixels
    assert plausibility_reason(collapsed, BOX) == "eye distance implausible for the box"
    squashed = FACE.copy()
    squashed[2:, 1] = 53.0  # nose and mouth on the eye line
    assert not plausible(squashed, BOX)
    assert not plausible(np.full((5, 2), np.nan, np.float32), BOX)


def test_landmarks_outside_the_box_rejected():
    assert plausibility_reason(FACE + [0, 60], BOX) == "landmark outside the box"
    assert plausibility_reason(FACE, BOX + [70, 0, 70, 0]) == "landmark outside the box"
    assert plausible(FACE + [0, 8], BOX)  # within the 10% growth


def test_min_box_fraction_is_optional():
    small = PlausibilityLimits(min_box_frac=0.4)
    assert plausible(FACE, BOX, (800, 800, 3))  # default: no limit
    assert not plausible(FACE, BOX, (800, 800, 3), small)
    assert plausible(FACE, BOX, (160, 160, 3), small)


def test_detector_filters_and_can_be_disabled():
    good = FaceDetection(BOX, 0.9, FACE, "mtcnn")
    bad = FaceDetection(BOX, 0.9, _rotate(FACE, 180), "mtcnn")
    det = FaceDetector.__new__(FaceDetector)  # no MTCNN weights needed for the filter
    det.plausibility = PlausibilityLimits()
    assert det._keep_plausible([good, bad], (112, 112, 3)) == [good]
    det.plausibility = None
    assert det._keep_plausible([good, bad], (112, 112, 3)) == [good, bad]


@pytest.mark.parametrize("bad", [(-1.0, 0.5), (0.5, 0.2)])
def test_bad_limits_rejected(bad):
    from meer.utils.errors import MeerError

    with pytest.raises(MeerError):
        PlausibilityLimits(iod_frac=bad)
