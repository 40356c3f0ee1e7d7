"""Geometry and randomness under the masks: hashing, polar outlines, the face frame, the contour model."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from meer.faces.template import ARCFACE_112
from meer.masking.geometry import (JAW_MODEL, contour_features, face_frame, fit_contour_model, five_from_68,
                                   lookup_radius, polar_radii, predict_contour, rotate)
from meer.masking.noise import hash2d_uniform, hash_u32, hash_uniform, value_noise


def test_hash_is_deterministic_uniform_and_key_sensitive():
    seeds = torch.arange(20000)
    u = hash_uniform(seeds, 7)
    assert torch.equal(u, hash_uniform(seeds.clone(), 7))
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.01
    assert abs(float(u.std()) - math.sqrt(1 / 12)) < 0.01
    # neighbouring seeds and keys are unrelated
    assert abs(float(torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1])) < 0.03
    assert abs(float(torch.corrcoef(torch.stack([u, hash_uniform(seeds, 8)]))[0, 1])) < 0.03
    # 32-bit range, never negative, and independent of the tensor's position in a batch
    h = hash_u32(seeds, 3)
    assert int(h.min()) >= 0 and int(h.max()) < 2**32
    assert int(hash_u32(torch.tensor([12345]), 3)) == int(h[12345])


def test_lattice_hash_and_value_noise():
    seed = torch.tensor([5, 6])
    ix = torch.arange(-50, 50).reshape(1, 10, 10).expand(2, -1, -1)
    iy = torch.zeros_like(ix)
    a = hash2d_uniform(seed, 1, ix, iy)
    assert a.shape == (2, 10, 10) and not torch.equal(a[0], a[1])
    assert torch.equal(a, hash2d_uniform(seed, 1, ix, iy))
    x = torch.linspace(0, 4, 41).reshape(1, 1, 41).expand(2, 1, -1)
    n = value_noise(seed, x, torch.zeros_like(x), key=2)
    # interpolates the lattice values exactly at integer points, stays within [0, 1)
    lattice = hash2d_uniform(seed, 2, torch.arange(5).reshape(1, 1, 5).expand(2, 1, -1),
                             torch.zeros(2, 1, 5, dtype=torch.long))
    assert torch.allclose(n[..., ::10], lattice, atol=1e-6)
    assert float(n.min()) >= 0 and float(n.max()) < 1


def test_polar_radii_of_a_square_match_hand_computed_values():
    square = torch.tensor([[[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]])
    table = polar_radii(square, torch.zeros(1, 2), 8)  # angles -pi, -3pi/4, ..., 3pi/4
    expected = torch.tensor([1, math.sqrt(2), 1, math.sqrt(2), 1, math.sqrt(2), 1, math.sqrt(2)])
    assert torch.allclose(table[0], expected, atol=1e-5)
    off = polar_radii(square, torch.tensor([[0.5, 0.0]]), 4)  # -pi, -pi/2, 0, pi/2
    assert torch.allclose(off[0], torch.tensor([1.5, 1.0, 0.5, 1.0]), atol=1e-5)
    # interpolation between rays, with wrap-around at +-pi
    tab = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    th = torch.tensor([[-math.pi, -math.pi * 3 / 4, math.pi * 3 / 4]])
    assert torch.allclose(lookup_radius(tab, th), torch.tensor([[1.0, 1.5, 2.5]]), atol=1e-5)


def test_rotate_is_clockwise_on_an_image():
    p = torch.tensor([[[1.0, 0.0]]])
    r = rotate(p, torch.tensor([math.pi / 2]))
    assert torch.allclose(r, torch.tensor([[[0.0, 1.0]]]), atol=1e-6)  # +x turns to +y (down)


def test_face_frame_of_the_arcface_template():
    lm = torch.as_tensor(ARCFACE_112)[None]
    frame = face_frame(lm)
    f5 = frame.to_frame(lm)[0]
    iod = float(np.linalg.norm(ARCFACE_112[1] - ARCFACE_112[0]))
    em = float(np.linalg.norm((ARCFACE_112[3] + ARCFACE_112[4]) / 2 - (ARCFACE_112[0] + ARCFACE_112[1]) / 2))
    assert float(frame.unit[0]) == pytest.approx(max(iod, em / 1.15), rel=1e-3)
    assert torch.allclose(f5[:2, 1], torch.zeros(2), atol=1e-5)  # eyes on v = 0
    assert float(f5[0, 0]) == pytest.approx(-float(f5[1, 0]), abs=1e-5)
    assert float(f5[2, 1]) > 0.3 and float(f5[3, 1]) > float(f5[2, 1])  # nose, then mouth, downwards
    # round trip pixels <-> face units
    assert torch.allclose(frame.to_pixels(frame.to_frame(lm)), lm, atol=1e-4)


def test_predicted_contour_is_a_plausible_lower_face():
    lm = torch.as_tensor(ARCFACE_112)[None]
    frame = face_frame(lm)
    f5 = frame.to_frame(lm)
    c = predict_contour(f5, frame.iod)[0]
    jaw, bridge = c[:17], c[17:]
    mouth_v = float(f5[0, 3:, 1].mean())
    assert float(jaw[8, 1]) > mouth_v + 0.4  # chin under the mouth
    assert float(jaw[0, 0]) < float(f5[0, 3, 0]) - 0.4 and float(jaw[16, 0]) > float(f5[0, 4, 0]) + 0.4
    assert torch.all(bridge[:, 1] < f5[0, 2, 1])  # the nose bridge lies above the nose tip
    assert torch.all(bridge[1:, 1] > bridge[:-1, 1])


def _synthetic_68(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """68-point faces whose contour follows JAW_MODEL exactly, under random similarity transforms."""
    out = []
    for _ in range(n):
        f5 = np.array([[-0.5, 0.0], [0.5, 0.0], [0, 0.55], [-0.43, 1.07], [0.44, 1.07]]) + rng.normal(0, 0.04, (5, 2))
        f5[:2] = [[-0.5, 0.0], [0.5, 0.0]]  # eyes define the frame
        feats = contour_features(torch.as_tensor(f5[None]), torch.tensor([1.0], dtype=torch.float64)).numpy()
        contour = (feats @ JAW_MODEL.astype(np.float64)).reshape(20, 2)
        pts = np.zeros((68, 2))
        pts[:17], pts[27:30] = contour[:17], contour[17:]
        pts[36:42], pts[42:48], pts[30], pts[48], pts[54] = f5[0], f5[1], f5[2], f5[3], f5[4]
        ang, scale, shift = rng.uniform(-0.3, 0.3), rng.uniform(20, 80), rng.uniform(0, 200, 2)
        rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
        out.append(pts @ rot.T * scale + shift)
    return out


def test_fit_contour_model_recovers_the_shipped_model():
    faces = _synthetic_68(200, np.random.default_rng(0))
    w = fit_contour_model(faces, ridge=1e-8)
    # the synthetic faces all have IOD/U = 1, so that column is confounded with the bias: compare predictions
    lm = torch.as_tensor(np.stack(faces))
    five = five_from_68(lm)
    frame = face_frame(five)
    x = contour_features(frame.to_frame(five), frame.iod).numpy()
    assert np.allclose(x @ w, x @ JAW_MODEL, atol=1e-4)
