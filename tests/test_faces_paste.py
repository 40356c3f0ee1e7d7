"""Paste-back: untouched pixels stay bit-identical, the seam is feathered, file layouts survive."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from meer.faces.align import align_face, invert
from meer.faces.paste import (face_region, paste_back, paste_back_loaded, paste_faces, soften_region,
                              warp_region_back)
from meer.faces.template import ARCFACE_112
from meer.utils.errors import MeerError
from meer.utils.images import read_image, write_image

LM = np.array([[205.0, 101.7], [246.8, 103.7], [224.7, 129.0], [201.7, 139.2], [245.3, 141.9]])  # astronaut


@pytest.fixture(scope="module")
def photo(astronaut_path):
    return read_image(astronaut_path).rgb


def _edited(crop: np.ndarray) -> np.ndarray:
    out = crop.copy()
    out[..., 0] = 255 - out[..., 0]  # an obvious change everywhere in the crop
    return out


def test_pixels_outside_the_region_are_bit_identical(photo):
    face = align_face(photo, LM)
    out = paste_back(photo, _edited(face.crop), face.matrix)
    region = warp_region_back(face_region(), face.matrix, *photo.shape[:2])
    outside = region == 0
    assert outside.sum() > 0.8 * outside.size
    assert np.array_equal(out[outside], photo[outside])
    inside = region == 1
    assert inside.sum() > 2000
    assert np.abs(out[inside].astype(int) - photo[inside]).mean() > 30  # the edit is there


def test_full_region_reproduces_the_crop_in_crop_space(photo):
    """Paste a crop, align the result again: in the region's plateau we get the pasted crop back."""
    face = align_face(photo, LM)
    edited = _edited(face.crop)
    out = paste_back(photo, edited, face.matrix)
    again = align_face(out, LM).crop
    plateau = face_region() == 1.0
    inner = cv2.erode(plateau.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)  # resampling slack
    diff = np.abs(again.astype(int) - edited)[inner]
    assert np.median(diff) <= 6 and diff.mean() < 8


def test_zero_region_changes_nothing_and_partial_region_only_there(photo):
    face = align_face(photo, LM)
    zero = np.zeros((112, 112), np.float32)
    assert np.array_equal(paste_back(photo, _edited(face.crop), face.matrix, region=zero), photo)
    lower = np.zeros((112, 112), np.float32)
    lower[70:100, 20:92] = 1.0  # e.g. an occlusion mask: only the mouth area
    out = paste_back(photo, _edited(face.crop), face.matrix, region=lower)
    reach = cv2.warpAffine(cv2.dilate(lower, np.ones((3, 3))), invert(face.matrix), photo.shape[1::-1]) > 0
    changed = np.any(out != photo, axis=2)
    assert changed.any() and not np.any(changed & ~reach)


def test_feather_scales_with_the_face_size():
    """The same crop pasted at two face sizes: the blend ramp is twice as wide at twice the size."""
    def ramp_width(scale: float) -> int:
        lm = ARCFACE_112 * scale + 40
        size = int(112 * scale + 80)
        face_m = align_face(np.zeros((size, size, 3), np.uint8), lm).matrix
        reg = warp_region_back(face_region(), face_m, size, size)
        row = reg[int(56 * scale + 40)]
        return int(((row > 0.05) & (row < 0.95)).sum())

    w1, w2 = ramp_width(1.5), ramp_width(3.0)
    assert w1 >= 8
    assert w2 == pytest.approx(2 * w1, rel=0.2)


def test_face_region_shape():
    r = face_region(112)
    assert r.shape == (112, 112) and r.dtype == np.float32
    assert r[:2].max() == 0 and r[-2:].max() == 0 and r[:, :2].max() == 0 and r[:, -2:].max() == 0
    assert r[56, 56] == 1.0
    row = r[56, :56]
    assert np.all(np.diff(row) >= -1e-7)  # monotone ramp from the edge to the plateau
    assert 0.0 < row[8] < 0.5 < row[14] < 1.0
    soft = soften_region(np.pad(np.ones((20, 20)), 46), erode_px=5, feather_sigma=2.0)
    assert soft[56, 56] == 1.0 and soft.max() <= 1.0
    assert soft[44, 56] < 0.05 and soft[47, 56] < 0.5 < soft[49, 56]  # eroded by 2 px, then blurred


def test_rgba_and_sixteen_bit_round_trip(tmp_path, photo):
    face = align_face(photo, LM)
    edited = _edited(face.crop)
    region = warp_region_back(face_region(), face.matrix, *photo.shape[:2])
    outside = region == 0
    # RGBA: alpha kept exactly, colour pasted
    alpha = np.tile(np.linspace(0, 255, 512).astype(np.uint8), (512, 1))
    write_image(tmp_path / "a.png", np.dstack([photo, alpha]))
    im = read_image(tmp_path / "a.png")
    out = paste_back_loaded(im, edited, face.matrix)
    assert out.shape == (512, 512, 4) and out.dtype == np.uint8
    assert np.array_equal(out[..., 3], alpha)
    assert np.array_equal(out[..., :3][outside], photo[outside])
    # 16-bit RGB: stays 16-bit, untouched pixels keep their low bits, pasted ones are ~ value * 257
    deep = photo.astype(np.uint16) * 257 + np.random.default_rng(0).integers(0, 200, photo.shape).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "d.png"), deep[..., ::-1])
    im16 = read_image(tmp_path / "d.png")
    assert im16.bit_depth == 16
    out16 = paste_back_loaded(im16, edited, face.matrix)
    assert out16.dtype == np.uint16 and out16.shape == (512, 512, 3)
    assert np.array_equal(out16[outside], deep[outside])
    plateau = region == 1
    pasted8 = paste_back(photo, edited, face.matrix)
    assert np.abs(out16[plateau].astype(int) - pasted8[plateau].astype(int) * 257).max() <= 257
    # written back in the file's own layout and read again: same 16-bit pixels
    write_image(tmp_path / "d_out.png", out16)
    assert np.array_equal(read_image(tmp_path / "d_out.png").rgb16, out16)


def test_gray_photo_stays_gray(tmp_path, photo):
    gray = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    write_image(tmp_path / "g.png", gray)
    im = read_image(tmp_path / "g.png")
    face = align_face(im.rgb, LM)
    out = paste_back_loaded(im, face.crop, face.matrix)
    assert out.shape == gray.shape and out.dtype == np.uint8
    outside = warp_region_back(face_region(), face.matrix, 512, 512) == 0
    assert np.array_equal(out[outside], gray[outside])


def test_several_faces_pasted_in_order(photo):
    mosaic = np.concatenate([photo, photo], axis=1)
    lm2 = LM + [512, 0]
    faces = [align_face(mosaic, LM), align_face(mosaic, lm2)]
    from meer.utils.images import LoadedImage

    im = LoadedImage(path=None, rgb=mosaic, rgb16=None, alpha=None, bit_depth=8, channels=3, mode="RGB")
    out = paste_faces(im, [_edited(f.crop) for f in faces], [f.matrix for f in faces])
    for f in faces:
        one = paste_back(mosaic, _edited(f.crop), f.matrix)
        reg = warp_region_back(face_region(), f.matrix, *mosaic.shape[:2]) > 0
        assert np.array_equal(out[reg], one[reg])


def test_bad_inputs_are_one_line_errors(photo):
    face = align_face(photo, LM)
    with pytest.raises(MeerError, match="region must be 112 x 112"):
        paste_back(photo, face.crop, face.matrix, region=np.ones((64, 64)))
    with pytest.raises(MeerError, match="face crop"):
        paste_back(photo, face.crop[:100], face.matrix)
    with pytest.raises(MeerError, match="image must be"):
        paste_back(photo.astype(np.float32), face.crop, face.matrix)
