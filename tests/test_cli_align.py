"""`meer-align` end to end on a small generated folder tree."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from meer.cli.align import main
from meer.faces.folder import read_alignment
from meer.faces.template import ARCFACE_112
from meer.utils.images import read_image, write_image

FAST = ["--device", "cpu", "--no-fallback", "--quiet"]


@pytest.fixture(scope="module")
def raw(tmp_path_factory, astronaut_path, no_face_path) -> Path:
    """good photo, a 2-face mosaic, a gray copy in a nested folder, an EXIF-rotated JPEG, a no-face
    photo, a text file named .jpg, an empty file, a truncated JPEG."""
    root = tmp_path_factory.mktemp("raw")
    rgb = read_image(astronaut_path).rgb[::2, ::2].copy()  # 256 x 256 keeps the test fast
    write_image(root / "person_a" / "good.png", rgb)
    write_image(root / "group" / "two.jpg", np.concatenate([rgb, rgb[:, ::-1]], axis=1))
    write_image(root / "person_a" / "deeper" / "gray.png", rgb.mean(axis=2).astype(np.uint8))
    img = Image.fromarray(np.rot90(rgb, k=1).copy())  # stored rotated; EXIF says "rotate 90 CW"
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(root / "person_a" / "rotated.jpg", exif=exif.tobytes(), quality=95)
    (root / "cats").mkdir()
    write_image(root / "cats" / "cat.png", read_image(no_face_path).rgb[::2, ::2].copy())  # small: fast
    (root / "cats" / "notes.jpg").write_text("not an image")
    (root / "cats" / "empty.png").write_bytes(b"")
    data = (root / "person_a" / "rotated.jpg").read_bytes()
    (root / "cats" / "cut.jpg").write_bytes(data[: len(data) // 3])
    return root


@pytest.fixture(scope="module")
def largest_run(raw, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "aligned"
    code = main([str(raw), str(out), *FAST])
    return code, out


def test_largest_face_mode_writes_crops_mirroring_folders(largest_run, raw):
    code, out = largest_run
    assert code == 0
    crops = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg"))
    assert crops == ["group/two.jpg", "person_a/deeper/gray.jpg", "person_a/good.jpg", "person_a/rotated.jpg"]
    for c in crops:
        im = read_image(out / c)
        assert im.size == (112, 112)


def test_jsonl_records_are_consistent(largest_run, raw):
    _, out = largest_run
    recs = {r["crop"]: r for r in read_alignment(out)}
    assert set(recs) == {"group/two.jpg", "person_a/deeper/gray.jpg", "person_a/good.jpg", "person_a/rotated.jpg"}
    r = recs["person_a/good.jpg"]
    assert r["source"] == "person_a/good.png" and r["face_index"] == 0 and r["detector"] == "mtcnn"
    assert r["source_size"] == [256, 256] and r["crop_size"] == 112
    assert r["matrix"].shape == (2, 3) and r["landmarks_source"].shape == (5, 2)
    # landmarks_crop is the matrix applied to landmarks_source, near the template
    mapped = r["landmarks_source"] @ r["matrix"][:, :2].T + r["matrix"][:, 2]
    np.testing.assert_allclose(mapped, r["landmarks_crop"], atol=0.01)
    assert np.linalg.norm(r["landmarks_crop"] - ARCFACE_112, axis=1).mean() < 6
    # EXIF rotation applied: coordinates are in the displayed (upright) frame, same face as good.png
    rot = recs["person_a/rotated.jpg"]
    assert rot["source_size"] == [256, 256]
    np.testing.assert_allclose(rot["landmarks_source"], r["landmarks_source"], atol=3)
    # one JSON object per line
    lines = (out / "alignment.jsonl").read_text().splitlines()
    assert len(lines) == 4 and all(isinstance(json.loads(x), dict) for x in lines)


def test_bad_inputs_are_reported_and_listed(largest_run, raw):
    _, out = largest_run
    skipped = dict(line.split("\t") for line in (out / "skipped.txt").read_text().splitlines())
    by_name = {Path(p).name: reason for p, reason in skipped.items()}
    assert by_name == {
        "cat.png": "no face found",
        "notes.jpg": "not an image (unrecognised file format)",
        "empty.png": "empty file",
        "cut.jpg": by_name.get("cut.jpg"),
    }
    assert by_name["cut.jpg"].startswith("unreadable or truncated image")


def test_all_faces_mode_numbers_faces(raw, tmp_path):
    out = tmp_path / "all"
    assert main([str(raw / "group"), str(out), "--all-faces", "--format", "png", *FAST]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["two_00.png", "two_01.png"]
    recs = read_alignment(out)
    assert [r["face_index"] for r in recs] == [0, 1]
    assert recs[0]["box"][0] < 256 <= recs[1]["box"][0]  # both copies of the face found
    assert read_image(out / "two_00.png").rgb.shape == (112, 112, 3)


def test_refuses_to_overwrite_or_write_inside_input(largest_run, raw, capsys):
    _, out = largest_run
    before = (out / "alignment.jsonl").read_bytes()
    assert main([str(raw), str(out), *FAST]) == 2
    assert "already exists (use --overwrite" in capsys.readouterr().err
    assert (out / "alignment.jsonl").read_bytes() == before
    assert main([str(raw), str(raw / "aligned"), *FAST]) == 2
    assert "refusing to write inside the input folder" in capsys.readouterr().err
    assert not (raw / "aligned").exists()


def test_overwrite_replaces(raw, tmp_path):
    out = tmp_path / "o"
    assert main([str(raw / "person_a"), str(out), "--size", "64", *FAST]) == 0
    assert read_image(out / "good.jpg").size == (64, 64)
    assert main([str(raw / "person_a"), str(out), "--overwrite", *FAST]) == 0
    assert read_image(out / "good.jpg").size == (112, 112)


def test_nothing_aligned_exits_1_and_usage_errors_exit_2(raw, tmp_path, capsys):
    assert main([str(raw / "cats"), str(tmp_path / "c"), *FAST]) == 1
    err = capsys.readouterr().err
    assert "4 input(s) skipped" in err and "no face found" in err
    assert main([str(tmp_path / "missing"), str(tmp_path / "x"), *FAST]) == 2
    assert "input folder not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main([str(raw), str(tmp_path / "y"), "--largest-face", "--all-faces"])
    assert exc.value.code == 2


def test_console_entry_point_end_line(raw, tmp_path):
    """Through a real subprocess: the last line gives counts and faces/s, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "meer.cli.align", str(raw / "person_a"), str(tmp_path / "e"), *FAST],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("meer-align: 3 face(s) aligned from 3 of 3 file(s), 0 skipped") and "faces/s" in last
    assert "Traceback" not in proc.stderr
