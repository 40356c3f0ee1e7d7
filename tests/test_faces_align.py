"""Similarity estimation (Umeyama) and the kornia warp to the ArcFace template."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from meer.faces.align import (align_batch, align_face, invert, similarity_matrix, transform_points,
                              umeyama_torch)
from meer.faces.template import ARCFACE_112, template_for_size
from meer.utils.errors import MeerError
from meer.utils.images import read_image


def _similarity(scale: float, angle_deg: float, tx: float, ty: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    return np.array([[scale * np.cos(a), -scale * np.sin(a), tx], [scale * np.sin(a), scale * np.cos(a), ty]])


def test_recovers_a_known_similarity_exactly():
    true = _similarity(0.37, 23.0, -40.5, 12.25)
    src = transform_points(ARCFACE_112, invert(true))  # points that `true` maps onto the template
    est = similarity_matrix(src)
    np.testing.assert_allclose(est, true, atol=1e-9)


def test_least_squares_against_hand_computed_case():
    # src: unit square corners; dst: the square scaled by 2 and shifted by (1, 1), one point off by
    # (0.4, 0): the optimum moves the translation by the mean offset 0.1 and keeps scale/rotation
    # up to tiny corrections; checked against OpenCV's own least-squares similarity
    src = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0.5, 0.5]], np.float64)
    dst = src * 2 + 1
    dst[1, 0] += 0.4
    est = similarity_matrix(src, dst)
    ref, _ = cv2.estimateAffinePartial2D(src, dst, method=cv2.LMEDS)
    # LMEDS is robust, so compare to the closed-form least squares instead
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    a = (sc * dc).sum() / (sc ** 2).sum()  # s cos
    b = (sc[:, 0] * dc[:, 1] - sc[:, 1] * dc[:, 0]).sum() / (sc ** 2).sum()  # s sin
    expected = np.array([[a, -b, 0], [b, a, 0]])
    expected[:, 2] = mu_d - expected[:, :2] @ mu_s
    np.testing.assert_allclose(est, expected, atol=1e-10)
    assert ref is not None


def test_never_returns_a_reflection():
    mirrored = ARCFACE_112.copy()
    mirrored[:, 0] = 112 - mirrored[:, 0]  # left/right swapped: a mirror image of the template
    m = similarity_matrix(mirrored)
    assert np.linalg.det(m[:, :2]) > 0


def test_batched_equals_single_and_runs_on_tensors():
    rng = np.random.default_rng(0)
    src = np.stack([ARCFACE_112 * rng.uniform(0.5, 3) + rng.uniform(-50, 50, 2) for _ in range(4)])
    batched = umeyama_torch(torch.from_numpy(src), torch.from_numpy(ARCFACE_112))
    assert batched.shape == (4, 2, 3) and batched.dtype == torch.float64
    for i in range(4):
        np.testing.assert_allclose(batched[i].numpy(), similarity_matrix(src[i]), atol=1e-9)


def test_warp_matches_opencv_convention(astronaut_path):
    rgb = read_image(astronaut_path).rgb
    lm = np.array([[205.0, 101.7], [246.8, 103.7], [224.7, 129.0], [201.7, 139.2], [245.3, 141.9]])
    face = align_face(rgb, lm)
    ref = cv2.warpAffine(rgb, face.matrix, (112, 112), flags=cv2.INTER_LINEAR, borderValue=0)
    assert face.crop.shape == (112, 112, 3) and face.crop.dtype == np.uint8
    assert np.abs(face.crop.astype(int) - ref).max() <= 1
    np.testing.assert_allclose(face.landmarks, transform_points(lm, face.matrix), atol=1e-4)


def test_dots_land_where_the_matrix_sends_them():
    """Draw 5 small blobs at sub-pixel landmark positions; after warping, their centroids in the crop
    must sit on the transformed landmarks (alignment error of the warp itself)."""
    h, w = 300, 400
    lm = transform_points(ARCFACE_112, invert(_similarity(0.6, -12.0, -60.0, -20.0)))
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.uint8)
    for x, y in lm:
        img[((xx - x) ** 2 + (yy - y) ** 2) < 16] = 255
    face = align_face(img, lm)
    crop = face.crop[..., 0].astype(np.float64)
    cyy, cxx = np.mgrid[0:112, 0:112]
    for (tx, ty) in face.landmarks:
        win = ((cxx - tx) ** 2 + (cyy - ty) ** 2) < 100
        wgt = crop * win
        cx, cy = (wgt * cxx).sum() / wgt.sum(), (wgt * cyy).sum() / wgt.sum()
        assert np.hypot(cx - tx, cy - ty) < 0.5
    np.testing.assert_allclose(face.landmarks, ARCFACE_112, atol=1e-3)


def test_landmarks_redetected_on_the_crop_are_within_2px(astronaut_path):
    """The bundled example: detect, align, detect again on the aligned crop; the landmarks found on
    the crop agree with the warped source landmarks to < 2 px."""
    from meer.faces.detect import FaceDetector

    rgb = read_image(astronaut_path).rgb
    det = FaceDetector("cpu", passes=[(0.0, 20), (0.2, 20)], fallback=None)
    src = det.detect_one(rgb)[0]
    face = align_face(rgb, src.landmarks, size=224)
    again = det.detect_one(face.crop)
    assert len(again) == 1
    err = np.linalg.norm(again[0].landmarks - face.landmarks, axis=1) * (112 / 224)  # in 112-crop px
    assert err.max() < 2.0, err
    # and the fit to the template itself is close on a frontal face
    # and the least-squares fit to the template leaves only the face's own shape (a wide smile here)
    assert np.linalg.norm(face.landmarks * 0.5 - ARCFACE_112, axis=1).mean() < 6.0


def test_align_batch_matches_single(astronaut_path):
    rgb = read_image(astronaut_path).rgb
    lm = np.array([[205.0, 101.7], [246.8, 103.7], [224.7, 129.0], [201.7, 139.2], [245.3, 141.9]])
    imgs = torch.from_numpy(np.stack([rgb, rgb[:, ::-1].copy()])).permute(0, 3, 1, 2).float() / 255
    lms = torch.from_numpy(np.stack([lm, np.c_[511 - lm[[1, 0, 2, 4, 3], 0], lm[[1, 0, 2, 4, 3], 1]]]))
    crops, mats = align_batch(imgs, lms, size=112)
    assert crops.shape == (2, 3, 112, 112) and mats.shape == (2, 2, 3)
    for i, (img, l) in enumerate([(rgb, lm), (rgb[:, ::-1].copy(), lms[1].numpy())]):
        single = align_face(img, l)
        assert np.abs((crops[i].permute(1, 2, 0).numpy() * 255).round() - single.crop).max() <= 1
        np.testing.assert_allclose(mats[i].numpy(), single.matrix, atol=1e-9)


def test_template_scaling_and_crop_size():
    np.testing.assert_allclose(template_for_size(224), ARCFACE_112 * 2)
    rgb = np.zeros((50, 60, 3), np.uint8)
    assert align_face(rgb, ARCFACE_112 / 2, size=64).crop.shape == (64, 64, 3)


def test_face_outside_the_photo_gives_a_black_crop():
    rgb = np.full((40, 40, 3), 200, np.uint8)
    face = align_face(rgb, ARCFACE_112 + 1000.0)
    assert face.crop.shape == (112, 112, 3) and face.crop.max() == 0


@pytest.mark.parametrize("bad, message", [
    (np.zeros((4, 2)), "5 x 2"),
    (np.full((5, 2), np.nan), "NaN"),
])
def test_bad_landmarks_are_one_line_errors(bad, message):
    with pytest.raises(MeerError, match=message):
        align_face(np.zeros((20, 20, 3), np.uint8), bad)
    with pytest.raises(MeerError, match="uint8"):
        align_face(np.zeros((20, 20, 3), np.float32), ARCFACE_112)
