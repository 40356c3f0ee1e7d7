"""`meer-mask` end to end: aligned crops and photos, exact GT files, JSON, bad inputs, never writing into IN."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from meer.cli.mask import file_seed, main
from meer.faces.template import ARCFACE_112
from meer.masking import MaskSpec, apply_mask
from meer.utils.images import read_image, write_image

pytestmark = pytest.mark.usefixtures("one_thread")

ASTRONAUT_5 = np.array([[205.01, 101.73], [246.76, 103.71], [224.67, 128.97], [201.72, 139.25], [245.27, 141.86]])


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def aligned_dir(tmp_path: Path, astronaut_path: Path) -> Path:
    """Three aligned 112 crops (two nested), a truncated PNG, a text file and a hidden file."""
    photo = read_image(astronaut_path).rgb
    m, _ = cv2.estimateAffinePartial2D(ASTRONAUT_5.astype(np.float32), ARCFACE_112)
    crop = cv2.warpAffine(photo, m, (112, 112), flags=cv2.INTER_AREA)
    root = tmp_path / "in"
    write_image(root / "a.png", crop)
    write_image(root / "people" / "b.jpg", crop[:, ::-1].copy())
    write_image(root / "people" / "deep" / "c.png", (crop * 0.8).astype(np.uint8))
    (root / "people" / "broken.png").write_bytes((root / "a.png").read_bytes()[:300])
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"")
    return root


def test_aligned_folder_end_to_end(aligned_dir: Path, tmp_path: Path, capsys):
    before = _snapshot(aligned_dir)
    out = tmp_path / "out"
    rc = main([str(aligned_dir), str(out), "--aligned", "--seed", "5", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 0
    assert _snapshot(aligned_dir) == before  # nothing written into IN_DIR
    for rel in ("a", "people/b", "people/deep/c"):
        masked = read_image(out / "masked" / f"{rel}.png").rgb
        gt = read_image(out / "masks" / f"{rel}.png")
        assert gt.channels == 1 and set(np.unique(gt.rgb[..., 0])) == {0, 255}
        meta = json.loads((out / "meta" / f"{rel}.json").read_text())
        source = next(aligned_dir.glob(f"{rel}.*"))
        original = read_image(source).rgb
        assert meta["source"] == source.relative_to(aligned_dir).as_posix()
        # the GT file is exactly the set of changed pixels
        assert np.array_equal(gt.rgb[..., 0] == 255, (masked != original).any(-1))
        face = meta["faces"][0]
        assert face["landmark_source"] == "template" and len(face["landmarks"]) == 5
        assert face["seed"] == file_seed(5, meta["source"], 0, 0)
        # the JSON spec redraws the same image
        spec = MaskSpec.from_dict(face, strict=False)
        redo = apply_mask(original, np.array(face["landmarks"]), spec)
        assert np.array_equal(redo.image, masked)
    assert "3 input(s) skipped" not in err  # the hidden file is ignored, not reported
    assert "people/broken.png: unreadable or truncated image" in err
    assert "notes.txt: not an image" in err
    assert "2 input(s) skipped" in err
    assert not (out / "masked" / ".hidden.png").exists()


def test_results_do_not_depend_on_the_other_files(aligned_dir: Path, tmp_path: Path):
    main([str(aligned_dir), str(tmp_path / "all"), "--aligned", "--quiet", "--per-image", "2"])
    alone = tmp_path / "alone"
    (alone / "people" / "deep").mkdir(parents=True)
    shutil.copy(aligned_dir / "people" / "deep" / "c.png", alone / "people" / "deep" / "c.png")
    main([str(alone), str(tmp_path / "one"), "--aligned", "--quiet", "--per-image", "2"])
    for k in (0, 1):
        a = (tmp_path / "all" / "masked" / "people" / "deep" / f"c_m{k}.png").read_bytes()
        b = (tmp_path / "one" / "masked" / "people" / "deep" / f"c_m{k}.png").read_bytes()
        assert a == b
    v0 = (tmp_path / "all" / "masked" / "a_m0.png").read_bytes()
    v1 = (tmp_path / "all" / "masked" / "a_m1.png").read_bytes()
    assert v0 != v1  # variants differ


def test_existing_outputs_and_overwrite(aligned_dir: Path, tmp_path: Path, capsys):
    out = tmp_path / "out"
    assert main([str(aligned_dir), str(out), "--aligned", "--quiet", "--kinds", "cloth"]) == 0
    capsys.readouterr()
    assert main([str(aligned_dir), str(out), "--aligned", "--quiet"]) == 1  # nothing new could be written
    assert "outputs already exist (use --overwrite)" in capsys.readouterr().err
    assert main([str(aligned_dir), str(out), "--aligned", "--quiet", "--overwrite", "--kinds", "n95"]) == 0
    meta = json.loads((out / "meta" / "a.json").read_text())
    assert meta["faces"][0]["kind"] == "n95"


@pytest.mark.parametrize("args, message", [
    (["--per-image", "0"], "--per-image must be >= 1"),
    (["--kinds", "helmet"], "unknown mask kind 'helmet'"),
    (["--kinds", "template"], "needs --template-dir"),
    (["--coverage", "forehead"], "--coverage: unknown value 'forehead'"),
    (["--textures", "image"], "needs --texture-dir"),
    (["--texture-dir", "/nonexistent/textures"], "texture folder not found"),
    (["--template-dir", "/nonexistent/templates"], "no masks.cfg"),
])
def test_usage_errors_exit_2_with_one_line(aligned_dir: Path, tmp_path: Path, capsys, args, message):
    rc = main([str(aligned_dir), str(tmp_path / "out"), "--aligned", "--quiet", *args])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1
    assert not (tmp_path / "out" / "masked").exists()


def test_refuses_output_inside_input_and_missing_input(aligned_dir: Path, tmp_path: Path, capsys):
    before = _snapshot(aligned_dir)
    assert main([str(aligned_dir), str(aligned_dir / "out"), "--aligned"]) == 2
    assert "refusing to write inside the input folder" in capsys.readouterr().err
    assert main([str(aligned_dir), str(aligned_dir), "--aligned"]) == 2
    assert _snapshot(aligned_dir) == before
    assert main([str(tmp_path / "nope"), str(tmp_path / "out"), "--aligned"]) == 2
    assert "input not found" in capsys.readouterr().err


def test_texture_folder(aligned_dir: Path, tmp_path: Path):
    tex = tmp_path / "textures"
    write_image(tex / "red.png", np.full((20, 20, 3), (220, 20, 20), np.uint8))
    (tex / "bad.jpg").write_bytes(b"nope")
    out = tmp_path / "out"
    assert main([str(aligned_dir), str(out), "--aligned", "--quiet", "--kinds", "cloth", "--textures", "image",
                 "--texture-dir", str(tex)]) == 0
    face = json.loads((out / "meta" / "a.json").read_text())["faces"][0]
    assert face["texture"] == f"image:{(tex / 'red.png').resolve()}"


def test_photo_mode_detects_faces_and_reports_no_face(tmp_path: Path, astronaut_path: Path, no_face_path: Path, capsys):
    root = tmp_path / "photos"
    (root / "x").mkdir(parents=True)
    shutil.copy(astronaut_path, root / "astronaut.png")
    shutil.copy(no_face_path, root / "x" / "cat.jpg")
    before = _snapshot(root)
    out = tmp_path / "out"
    rc = main([str(root), str(out), "--quiet", "--seed", "1"])
    err = capsys.readouterr().err
    assert rc == 0
    assert "x/cat.jpg: no face found" in err
    assert _snapshot(root) == before
    meta = json.loads((out / "meta" / "astronaut.json").read_text())
    assert len(meta["faces"]) == 1
    face = meta["faces"][0]
    lm = np.array(face["landmarks"])
    five = lm if len(lm) == 5 else np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])
    assert np.abs(five - ASTRONAUT_5).max() < 8  # the detector found the face where MTCNN puts it
    gt = read_image(out / "masks" / "astronaut.png").rgb[..., 0] == 255
    assert gt.sum() > 1000
    for eye in five[:2]:
        x, y = np.round(eye).astype(int)
        assert not gt[y - 3:y + 4, x - 3:x + 4].any()
    if face["coverage"] != "chin_only":  # chin_only may leave the mouth visible
        for corner in five[3:]:
            x, y = np.round(corner).astype(int)
            assert gt[y, x]


def test_only_bad_files_exit_1(tmp_path: Path, no_face_path: Path, capsys):
    root = tmp_path / "in"
    root.mkdir()
    (root / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    shutil.copy(no_face_path, root / "cat.jpg")
    rc = main([str(root), str(tmp_path / "out"), "--quiet", "--landmarks", "5"])
    err = capsys.readouterr().err
    assert rc == 1
    assert "a.png: unreadable or truncated image" in err or "a.png: not an image" in err
    assert "cat.jpg: no face found" in err


@pytest.mark.shared_data
def test_template_kinds_from_the_shared_folder(aligned_dir: Path, tmp_path: Path, shared_data: Path):
    out = tmp_path / "out"
    assert main([str(aligned_dir), str(out), "--aligned", "--quiet", "--kinds", "template",
                 "--template-dir", str(shared_data / "mask_templates")]) == 0
    for rel in ("a", "people/b", "people/deep/c"):
        face = json.loads((out / "meta" / f"{rel}.json").read_text())["faces"][0]
        assert face["kind"].startswith("template:")
        masked = read_image(out / "masked" / f"{rel}.png").rgb
        original = read_image(next(aligned_dir.glob(f"{rel}.*"))).rgb
        gt = read_image(out / "masks" / f"{rel}.png").rgb[..., 0] == 255
        assert np.array_equal(gt, (masked != original).any(-1)) and gt.sum() > 1000


def test_aligned_crops_with_68_points(aligned_dir: Path, tmp_path: Path):
    from meer.masking.landmarks68 import find_predictor

    if find_predictor() is None:
        pytest.skip("dlib 68-point model not installed (judge extra)")
    out = tmp_path / "out"
    assert main([str(aligned_dir), str(out), "--aligned", "--landmarks", "68", "--quiet"]) == 0
    meta = json.loads((out / "meta" / "a.json").read_text())
    face = meta["faces"][0]
    assert face["landmark_source"] == "template+dlib68" and len(face["landmarks"]) == 68
    masked = read_image(out / "masked" / "a.png").rgb
    original = read_image(aligned_dir / "a.png").rgb
    assert np.array_equal(read_image(out / "masks" / "a.png").rgb[..., 0] == 255, (masked != original).any(-1))
    redo = apply_mask(original, np.array(face["landmarks"]), MaskSpec.from_dict(face, strict=False))
    assert np.array_equal(redo.image, masked)
