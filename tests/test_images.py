"""read_image / write_image on every odd file a user may have (generated in tmp_path)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from meer.utils.errors import ImageError, OutputExistsError
from meer.utils.images import read_image, write_image


@pytest.fixture()
def rgb() -> np.ndarray:
    rng = np.random.default_rng(0)
    base = np.linspace(0, 255, 40 * 30 * 3).reshape(40, 30, 3)
    return (base + rng.integers(0, 5, base.shape)).clip(0, 255).astype(np.uint8)


def test_gray_l(tmp_path, rgb):
    g = rgb[..., 0]
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    im = read_image(tmp_path / "g.png")
    assert im.rgb.shape == (40, 30, 3) and np.array_equal(im.rgb[..., 2], g)
    assert (im.channels, im.bit_depth, im.alpha) == (1, 8, None)
    assert np.array_equal(im.to_native(im.rgb), g)


def test_gray_alpha_la(tmp_path, rgb):
    la = np.dstack([rgb[..., 0], rgb[..., 1]])
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    im = read_image(tmp_path / "la.png")
    assert im.channels == 1 and np.array_equal(im.alpha, rgb[..., 1])
    native = im.to_native(im.rgb)
    assert native.shape == (40, 30, 2) and np.array_equal(native, la)


def test_palette_with_transparency(tmp_path):
    p = Image.new("P", (8, 6))
    p.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    px = np.zeros((6, 8), np.uint8)
    px[:, 4:] = 1
    p.putdata(px.ravel().tolist())
    p.info["transparency"] = 0
    p.save(tmp_path / "p.png", transparency=0)
    im = read_image(tmp_path / "p.png")
    assert im.channels == 3 and im.alpha is not None
    assert np.array_equal(im.rgb[0, 0], [255, 0, 0]) and np.array_equal(im.rgb[0, 7], [0, 255, 0])
    assert im.alpha[0, 0] == 0 and im.alpha[0, 7] == 255


def test_rgba(tmp_path, rgb):
    a = np.full(rgb.shape[:2], 128, np.uint8)
    Image.fromarray(np.dstack([rgb, a]), "RGBA").save(tmp_path / "a.png")
    im = read_image(tmp_path / "a.png")
    assert np.array_equal(im.rgb, rgb) and np.array_equal(im.alpha, a)
    assert np.array_equal(im.to_native(im.rgb), np.dstack([rgb, a]))


def test_sixteen_bit_gray_i16(tmp_path):
    g16 = (np.arange(40 * 30, dtype=np.uint32).reshape(40, 30) * 50).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), g16)
    im = read_image(tmp_path / "g16.png")
    assert im.bit_depth == 16 and im.channels == 1
    assert np.array_equal(im.rgb16[..., 0], g16)
    assert np.array_equal(im.rgb[..., 0], (g16 // 257).astype(np.uint8))
    native = im.to_native(im.rgb, im.rgb16)
    assert native.dtype == np.uint16 and np.array_equal(native, g16)


def test_sixteen_bit_rgb_png_round_trip(tmp_path, rgb):
    deep = rgb.astype(np.uint16) * 257 + 3
    cv2.imwrite(str(tmp_path / "c16.png"), deep[..., ::-1])
    im = read_image(tmp_path / "c16.png")
    assert im.bit_depth == 16 and np.array_equal(im.rgb16, deep)
    write_image(tmp_path / "back.png", im.to_native(im.rgb, im.rgb16))
    assert np.array_equal(read_image(tmp_path / "back.png").rgb16, deep)


def test_cmyk_jpeg(tmp_path, rgb):
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=100)
    im = read_image(tmp_path / "c.jpg")
    assert im.mode == "CMYK" and im.rgb.shape == (40, 30, 3) and im.channels == 3
    assert np.abs(im.rgb.astype(int) - rgb).mean() < 8


def test_exif_orientation_6_is_applied(tmp_path, rgb):
    stored = np.rot90(rgb, k=1).copy()  # displayed upright after a 90 degree clockwise turn
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=100)
    im = read_image(tmp_path / "r.jpg")
    assert im.rgb.shape == rgb.shape
    assert np.abs(im.rgb.astype(int) - rgb).mean() < 6


@pytest.mark.parametrize("name, content, message", [
    ("cut.jpg", None, "unreadable or truncated image"),
    ("text.jpg", b"hello, I am not a picture\n", "not an image"),
    ("empty.png", b"", "empty file"),
])
def test_bad_files_have_one_line_messages(tmp_path, rgb, name, content, message):
    path = tmp_path / name
    if content is None:
        Image.fromarray(rgb).save(tmp_path / "full.jpg", quality=95)
        data = (tmp_path / "full.jpg").read_bytes()
        content = data[: len(data) // 2]
    path.write_bytes(content)
    with pytest.raises(ImageError, match=message) as info:
        read_image(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_missing_file_and_no_overwrite(tmp_path, rgb):
    with pytest.raises(ImageError, match="file not found"):
        read_image(tmp_path / "nope.png")
    write_image(tmp_path / "x.png", rgb)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        write_image(tmp_path / "x.png", rgb)
    write_image(tmp_path / "x.png", rgb[::-1].copy(), overwrite=True)
    assert np.array_equal(read_image(tmp_path / "x.png").rgb, rgb[::-1])


def test_png_level_is_lossless_and_trades_size(tmp_path, rgb):
    big = np.tile(rgb, (4, 4, 1))
    fast = write_image(tmp_path / "fast.png", big, png_level=1)
    small = write_image(tmp_path / "small.png", big)  # the default, zlib level 6
    for p in (fast, small):
        assert np.array_equal(read_image(p).rgb, big)
    assert fast.stat().st_size > small.stat().st_size


def test_durable_writes_fsync_and_fast_ones_do_not(tmp_path, rgb, monkeypatch):
    import os

    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real(fd))
    write_image(tmp_path / "a.png", rgb)
    assert len(synced) == 1
    write_image(tmp_path / "b.png", rgb, durable=False)
    assert len(synced) == 1 and np.array_equal(read_image(tmp_path / "b.png").rgb, rgb)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]  # no temp files left
