"""meer-restore end to end on a small generated folder: outputs, summary, bad files, exit codes, safety."""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from meer.cli.restore import main
from meer.inference import loading, weights
from meer.models.checkpoint import save_inference_checkpoint
from meer.models.meer import MEER, MEERConfig

TINY = dict(enc_width=8, enc_layers=(1, 1, 1, 1), enc_max_width=32, enc_stem_stride=2, split_channels=8,
            occ_head_width=8, id_dim=16, occ_dim=8, embedding_dim=32, gen_width=8, gen_max_width=32)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_inference_checkpoint(MEER(MEERConfig(**TINY)).eval(), path, {"note": "random tiny test model"})
    return path


@pytest.fixture
def lower_face_model(monkeypatch):
    """Models loaded by the CLI predict the nose-to-chin box of the crop as occluded (as a trained one would)."""
    logits = torch.full((1, 1, 112, 112), -20.0)
    logits[..., 66:104, 28:84] = 20.0
    real = loading.load_model

    def steered(path, device):
        model, meta = real(path, device)
        model.decoupling.occ_head.register_forward_hook(lambda mod, inp, out: logits.to(out).expand_as(out))
        return model, meta

    monkeypatch.setattr(loading, "load_model", steered)


def masked_face(astronaut_path: Path) -> np.ndarray:
    rgb = np.array(Image.open(astronaut_path).convert("RGB").resize((256, 256), Image.LANCZOS))
    rgb[62:90, 92:132] = (90, 140, 200)
    return rgb


@pytest.fixture
def inputs(tmp_path, astronaut_path, no_face_path) -> Path:
    root = tmp_path / "in"
    (root / "people" / "sub").mkdir(parents=True)
    face = masked_face(astronaut_path)
    Image.fromarray(face).save(root / "people" / "masked.png")
    Image.fromarray(face).save(root / "people" / "masked.jpg", quality=92)
    alpha = np.full(face.shape[:2], 200, np.uint8)
    Image.fromarray(np.dstack([face, alpha]), "RGBA").save(root / "people" / "sub" / "rgba.png")
    cv2.imwrite(str(root / "people" / "sub" / "deep.png"), (face[..., ::-1].astype(np.uint16) * 257 + 3))
    Image.open(no_face_path).resize((150, 100)).save(root / "cat.jpg")
    (root / "broken.jpg").write_bytes((root / "people" / "masked.jpg").read_bytes()[:300])
    (root / "notes.txt").write_text("not a photo\n")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "tiny.png")
    Image.fromarray(face).save(root / ".hidden.png")
    return root


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


def run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def read_summary(out: Path):
    rows = list(csv.DictReader((out / "summary.csv").read_text().splitlines()))
    doc = json.loads((out / "summary.json").read_text())
    return rows, doc


def test_folder_end_to_end(inputs, tmp_path, checkpoint, lower_face_model, capsys):
    before = digest(inputs)
    out = tmp_path / "out"
    code, stdout, stderr = run([inputs, out, "--checkpoint", checkpoint, "--device", "cpu", "--no-dlib-fallback",
                                "--batch-size", "2", "-q"], capsys)
    assert code == 0, stderr
    assert digest(inputs) == before  # input untouched, nothing written inside it

    rows, doc = read_summary(out)
    status = {r["path"]: r["status"] for r in rows}
    assert status == {"broken.jpg": "unreadable", "cat.jpg": "no_face", "notes.txt": "unreadable",
                      "people/masked.jpg": "ok", "people/masked.png": "ok", "people/sub/deep.png": "ok",
                      "people/sub/rgba.png": "ok",
                      "tiny.png": "too_small"}
    reasons = {r["path"]: r["reason"] for r in rows}
    assert "truncated" in reasons["broken.jpg"] or "unreadable" in reasons["broken.jpg"]
    assert reasons["notes.txt"] == "not an image file (extension .txt)"
    assert reasons["cat.jpg"] == "no face found" and "8x8" in reasons["tiny.png"]
    faces = [r for r in rows if r["status"] == "ok"]
    assert len(faces) == 4 and all(r["face"] == "0" and r["face_status"] == "restored" for r in faces)
    for r in faces:
        assert float(r["occlusion"]) == pytest.approx(38 * 56 / 112 ** 2, abs=1e-3)
        assert -1 <= float(r["id_cosine"]) <= 1 and float(r["score"]) > 0.9
        x1, y1, x2, y2 = (float(r[k]) for k in ("x1", "y1", "x2", "y2"))
        assert 60 < x1 < x2 < 170 and 10 < y1 < y2 < 120  # the astronaut's face in the 256 px photo
        assert float(r["face_seconds"]) > 0 and float(r["photo_seconds"]) >= float(r["face_seconds"])

    run_info = doc["run"]
    assert run_info["checkpoint"] == str(checkpoint) and run_info["device"] == "cpu" and run_info["complete"] is True
    assert run_info["precision"] == "fp32" and run_info["checkpoint_meta"] == {"note": "random tiny test model"}
    assert run_info["totals"]["photos"] == 8 and run_info["totals"]["faces_restored"] == 4
    assert {"torch", "kornia", "meer"} <= set(run_info["versions"])
    assert [p["path"] for p in doc["photos"]] == sorted(status)
    assert "8 photos (4 ok, 4 skipped), 4 faces (4 restored, 0 passed through)" in stdout
    assert "photos/s" in stdout and "faces/s" in stdout
    assert "4 input(s) skipped" in stderr and "notes.txt: unreadable" in stderr

    # the layout, names and formats
    rest = out / "restored_imgs"
    assert sorted(str(p.relative_to(rest)) for p in rest.rglob("*") if p.is_file()) == \
        ["people/masked.jpg", "people/masked.png", "people/sub/deep.png", "people/sub/rgba.png"]
    assert Image.open(rest / "people" / "masked.jpg").format == "JPEG"
    rgba = Image.open(rest / "people" / "sub" / "rgba.png")
    assert rgba.mode == "RGBA" and np.all(np.asarray(rgba)[..., 3] == 200)
    deep_in = cv2.imread(str(inputs / "people" / "sub" / "deep.png"), cv2.IMREAD_UNCHANGED)
    deep_out = cv2.imread(str(rest / "people" / "sub" / "deep.png"), cv2.IMREAD_UNCHANGED)
    assert deep_out.dtype == np.uint16 and deep_out.shape == deep_in.shape
    deep_diff = (deep_in != deep_out).any(-1)
    assert deep_diff.sum() > 300 and not deep_diff[:40].any()
    src = np.asarray(Image.open(inputs / "people" / "masked.png"))
    res = np.asarray(Image.open(rest / "people" / "masked.png"))
    diff = (src != res).any(-1)
    assert diff.sum() > 300 and not diff[:40].any() and not diff[:, :70].any()  # only around the mouth
    for sub, shape in (("cropped_faces", (112, 112, 3)), ("restored_faces", (112, 112, 3)), ("masks", (112, 112)),
                       ("cmp", (112, 340, 3))):
        names = sorted(str(p.relative_to(out / sub)) for p in (out / sub).rglob("*.png"))
        assert names == ["people/masked_jpg_00.png", "people/masked_png_00.png", "people/sub/deep_00.png",
                         "people/sub/rgba_00.png"], sub
        assert np.asarray(Image.open(out / sub / names[0])).shape == shape
    mask = np.asarray(Image.open(out / "masks" / "people" / "masked_png_00.png"))
    assert mask[80, 56] == 255 and mask[20, 56] == 0

    # a second run refuses to overwrite, then --overwrite with nothing occluded enough copies the photos
    code, _, stderr = run([inputs, out, "--checkpoint", checkpoint, "--device", "cpu", "-q"], capsys)
    assert code == 2 and "already holds results" in stderr and "--overwrite" in stderr
    code, stdout, stderr = run([inputs, out, "--checkpoint", checkpoint, "--device", "cpu", "--no-dlib-fallback",
                                "--min-occlusion", "0.5", "--largest-face", "--overwrite", "-q"], capsys)
    assert code == 0, stderr
    assert (rest / "people" / "masked.jpg").read_bytes() == (inputs / "people" / "masked.jpg").read_bytes()
    assert (rest / "people" / "masked.png").read_bytes() == (inputs / "people" / "masked.png").read_bytes()
    rows, _ = read_summary(out)
    assert [r["face_status"] for r in rows if r["status"] == "ok"] == ["passthrough"] * 4
    assert all(r["id_cosine"] == "" for r in rows if r["status"] == "ok")
    assert "4 faces (0 restored, 4 passed through)" in stdout
    assert digest(inputs) == before


def test_random_model_and_aligned_crops(tmp_path, checkpoint, astronaut_path, capsys):
    """No steering: whatever a random model predicts, the run completes and the summary is consistent."""
    crops = tmp_path / "crops"
    crops.mkdir()
    face = masked_face(astronaut_path)
    Image.fromarray(face[8:136, 46:174]).resize((112, 112)).save(crops / "a.png")
    Image.fromarray(face[8:136, 46:174]).resize((160, 160)).save(crops / "b.jpg")
    out = tmp_path / "out"
    code, stdout, stderr = run([crops, out, "--checkpoint", checkpoint, "--device", "cpu", "--aligned",
                                "--min-occlusion", "0", "-q"], capsys)
    assert code == 0, stderr
    rows, doc = read_summary(out)
    assert [(r["path"], r["status"], r["score"]) for r in rows] == [("a.png", "ok", ""), ("b.jpg", "ok", "")]
    for r in rows:
        occluded = float(r["occlusion"]) > 0
        assert r["face_status"] == ("restored" if occluded else "passthrough")
        assert (r["id_cosine"] != "") == occluded
    assert Image.open(out / "restored_imgs" / "b.jpg").size == (160, 160)
    assert doc["run"]["detector"] is None and doc["run"]["options"]["aligned"] is True


def test_exit_codes_and_refusals(inputs, tmp_path, checkpoint, monkeypatch, capsys):
    # OUTPUT inside INPUT
    code, _, err = run([inputs, inputs / "out", "--checkpoint", checkpoint], capsys)
    assert code == 2 and "inside the input folder" in err
    assert not (inputs / "out").exists()
    # usage errors
    code, _, err = run([inputs, tmp_path / "o1", "--batch-size", "0"], capsys)
    assert code == 2 and "--batch-size must be >= 1" in err
    code, _, err = run([inputs, tmp_path / "o1", "--detect-size", "-5"], capsys)
    assert code == 2 and "--detect-size must be >= 0" in err
    code, _, err = run([inputs, tmp_path / "o1", "--all-faces", "--largest-face"], capsys)
    assert code == 2 and "not allowed with argument" in err
    code, _, err = run([tmp_path / "missing", tmp_path / "o1"], capsys)
    assert code == 2 and "input not found" in err
    code, _, err = run([inputs, tmp_path / "o1", "--device", "tpu", "--checkpoint", checkpoint], capsys)
    assert code == 2 and "--device must be" in err
    # no checkpoint anywhere: every place is named
    monkeypatch.setattr(weights, "REPO_ROOT", tmp_path / "repo")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("MEER_CHECKPOINT", raising=False)
    code, _, err = run([inputs, tmp_path / "o2"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert str(tmp_path / "repo" / "checkpoints" / "meer_112.pt") in err
    assert str(tmp_path / "cache" / "meer" / "meer_112.pt") in err
    code, _, err = run([inputs, tmp_path / "o2", "--checkpoint", tmp_path / "nope.pt"], capsys)
    assert code == 2 and "nope.pt does not exist" in err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    code, _, err = run([inputs, tmp_path / "o2", "--checkpoint", bad], capsys)
    assert code == 2 and "bad.pt" in err and err.count("\n") == 1
    # nothing processable: only bad files, or no files at all
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.jpg").write_bytes(b"\xff\xd8 nope")
    (junk / "b.txt").write_text("x")
    code, _, err = run([junk, tmp_path / "o3", "--checkpoint", checkpoint, "--aligned", "-q"], capsys)
    assert code == 1 and "no input could be processed" in err
    rows, _ = read_summary(tmp_path / "o3")
    assert [r["status"] for r in rows] == ["unreadable", "unreadable"]
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run([empty, tmp_path / "o4", "--checkpoint", checkpoint, "--aligned", "-q"], capsys)
    assert code == 1 and "no files found" in err


def test_face_selection_on_a_photo_with_two_faces(tmp_path, checkpoint, lower_face_model, astronaut_path, capsys):
    """--all-faces (default), --largest-face, --only-center-face and --min-face on one photo: a large face off to
    the left and a smaller one in the middle."""
    big = masked_face(astronaut_path)  # 256 x 256, face around x 90..140
    small = np.array(Image.fromarray(big).resize((200, 200), Image.LANCZOS))
    canvas = np.full((256, 640, 3), 128, np.uint8)
    canvas[:, :256] = big
    face_x = int(round(112 * 200 / 256))  # the small face's centre, put on the canvas centre
    canvas[28:228, 320 - face_x:520 - face_x] = small
    photos = tmp_path / "in"
    photos.mkdir()
    Image.fromarray(canvas).save(photos / "two.png")

    def faces(*options):
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        code, _, stderr = run([photos, out, "--checkpoint", checkpoint, "--device", "cpu", "--no-dlib-fallback", "-q",
                               *options], capsys)
        assert code == 0, stderr
        rows, doc = read_summary(out)
        boxes = [tuple(float(r[k]) for k in ("x1", "y1", "x2", "y2")) for r in rows if r["status"] == "ok"]
        return boxes, doc["run"]["options"]["faces"], out

    both, mode, _ = faces()
    assert mode == "all" and len(both) == 2
    large, centre = sorted(both, key=lambda b: b[0])  # the left one is the large one
    side = lambda b: min(b[2] - b[0], b[3] - b[1])  # noqa: E731
    assert side(large) > side(centre) + 5 and abs((centre[0] + centre[2]) / 2 - 320) < 20
    assert faces("--largest-face")[0] == [large]
    chosen, mode, out = faces("--only-center-face")
    assert mode == "center" and chosen == [centre]
    # only the centre face is pasted: the large face's pixels are untouched
    res = np.asarray(Image.open(out / "restored_imgs" / "two.png"))
    changed = (res != canvas).any(-1)
    assert changed[:, 256:].sum() > 100 and not changed[:, :256].any()
    assert [p.name for p in (out / "cropped_faces").iterdir()] == ["two_00.png"]
    # --min-face drops the small face first: the centre-most of what is left is the large one
    threshold = int((side(large) + side(centre)) / 2)
    assert faces("--only-center-face", "--min-face", str(threshold))[0] == [large]
    code, _, err = run([photos, tmp_path / "x", "--only-center-face", "--largest-face"], capsys)
    assert code == 2 and "not allowed with argument" in err
    code, _, err = run([photos, tmp_path / "x", "--io-threads", "-1"], capsys)
    assert code == 2 and "--io-threads must be >= 0" in err
