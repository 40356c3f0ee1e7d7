"""apply_mask / sample_spec / MaskSpec: coverage, exact ground truth, determinism, bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest

from meer.faces.template import ARCFACE_112
from meer.masking import (COVERAGES, KINDS, PALETTE, MaskSpec, MaskSpecError, apply_mask, sample_spec)
from meer.utils.errors import MeerError
from meer.utils.images import read_image, write_image

pytestmark = pytest.mark.usefixtures("one_thread")

# MTCNN's landmarks for the bundled astronaut photo (examples/astronaut.png)
ASTRONAUT_5 = np.array([[205.01, 101.73], [246.76, 103.71], [224.67, 128.97], [201.72, 139.25], [245.27, 141.86]])
EYE_DISC = 0.1  # x inter-ocular distance: never covered


def _face_image(size: int = 112, seed: int = 0) -> np.ndarray:
    """A smooth random 'face' picture (content does not matter to the geometry)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(60, 200, (8, 8, 3)).astype(np.float32)
    import cv2

    return cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC).clip(0, 255).astype(np.uint8)


def _covered(mask: np.ndarray, point: np.ndarray) -> bool:
    x, y = np.round(point).astype(int)
    return bool(mask[y, x])


def _eye_disc_clear(mask: np.ndarray, lm5: np.ndarray) -> bool:
    h, w = mask.shape
    yy, xx = np.mgrid[0:h, 0:w]
    r = EYE_DISC * np.linalg.norm(lm5[1] - lm5[0])
    for eye in lm5[:2]:
        if mask[(xx - eye[0]) ** 2 + (yy - eye[1]) ** 2 <= r * r].any():
            return False
    return True


@pytest.mark.parametrize("coverage", COVERAGES)
def test_coverage_holds_for_every_kind_over_many_seeds(coverage):
    """Many random masks per kind (the batched op and apply_mask share one renderer)."""
    import torch

    from meer.masking import MaskAugment

    lm = ARCFACE_112.astype(np.float64)
    images = torch.from_numpy(_face_image()).permute(2, 0, 1)[None].float().div(255).expand(24, -1, -1, -1)
    for kind in KINDS:
        op = MaskAugment(kinds=[kind], coverages=[coverage])
        _, masks, info = op(images, None, generator=torch.Generator().manual_seed(KINDS.index(kind)))
        assert (info["kind"] == KINDS.index(kind)).all() and (info["coverage"] == COVERAGES.index(coverage)).all()
        for i, m in enumerate(masks[:, 0].numpy() > 0):
            where = (kind, coverage, int(info["seed"][i]))
            assert _eye_disc_clear(m, lm), where
            if coverage == "over_nose":
                assert _covered(m, lm[2]), ("nose tip not covered",) + where
            else:
                assert not _covered(m, lm[2]), ("nose tip covered",) + where
            if coverage in ("over_nose", "below_nose"):
                assert _covered(m, lm[3]) and _covered(m, lm[4]), ("mouth corners",) + where
            # a real part of the lower face, nothing above the eye line
            assert m.sum() > 300, where
            assert not m[: int(lm[:2, 1].min()) + 1].any(), where
    # and through the per-image API
    for seed in range(5):
        spec = sample_spec(seed, coverages=[coverage])
        m = apply_mask(_face_image(seed=seed), lm, spec).mask
        assert _eye_disc_clear(m, lm)
        assert _covered(m, lm[2]) == (coverage == "over_nose")
        if coverage != "chin_only":
            assert _covered(m, lm[3]) and _covered(m, lm[4])


def test_coverage_on_a_real_photo_with_tilted_jitter():
    photo = read_image("examples/astronaut.png").rgb
    for seed in range(8):
        for coverage in ("over_nose", "below_nose"):
            spec = MaskSpec(kind=KINDS[seed % len(KINDS)], coverage=coverage, tilt=6.0 * (-1) ** seed,
                            scale=0.93, shift=(0.04, -0.04), seed=seed)
            m = apply_mask(photo, ASTRONAUT_5, spec).mask
            assert _eye_disc_clear(m, ASTRONAUT_5)
            assert _covered(m, ASTRONAUT_5[3]) and _covered(m, ASTRONAUT_5[4]), spec
            assert _covered(m, ASTRONAUT_5[2]) == (coverage == "over_nose")


def test_ground_truth_is_exactly_the_changed_pixels_even_on_mask_coloured_skin():
    lm = ARCFACE_112.astype(np.float64)
    flat = np.zeros((112, 112, 3), np.uint8)
    flat[:] = PALETTE["light_blue"]  # the mask colour itself: a naive composite would leave pixels unchanged
    for seed in range(10):
        for image in (flat, _face_image(seed=seed), np.zeros_like(flat), np.full_like(flat, 255)):
            spec = MaskSpec(kind=KINDS[seed % 5], coverage=COVERAGES[seed % 3], color=PALETTE["light_blue"],
                            texture=("none", "stripes", "dots", "checks", "floral")[seed % 5], seed=seed)
            face = apply_mask(image, lm, spec)
            changed = (face.image != image).any(axis=-1)
            assert face.mask.dtype == bool and face.mask.shape == image.shape[:2]
            assert np.array_equal(face.mask, changed)
            assert face.image.dtype == np.uint8 and face.image.shape == image.shape
    # pixels outside the mask are bit-identical on a large photo (only a region around the face is rendered)
    photo = read_image("examples/astronaut.png").rgb
    face = apply_mask(photo, ASTRONAUT_5, 3)
    assert np.array_equal(face.image[~face.mask], photo[~face.mask])
    assert np.array_equal(face.mask, (face.image != photo).any(-1))


def test_same_seed_same_bytes_and_different_seeds_differ():
    image = _face_image(seed=3)
    lm = ARCFACE_112.astype(np.float64)
    a = apply_mask(image, lm, np.random.default_rng(42))
    b = apply_mask(image, lm, np.random.default_rng(42))
    assert a.spec == b.spec
    assert a.image.tobytes() == b.image.tobytes() and np.array_equal(a.mask, b.mask)
    outs = {apply_mask(image, lm, seed).image.tobytes() for seed in range(6)}
    assert len(outs) == 6
    # the JSON spec redraws the same mask
    again = apply_mask(image, lm, MaskSpec.from_dict(json.loads(json.dumps(a.spec.to_dict()))))
    assert again.image.tobytes() == a.image.tobytes()
    # same spec with another seed: same kind and colour, different details (shape, light, grain)
    other = apply_mask(image, lm, MaskSpec(**{**a.spec.__dict__, "seed": a.spec.seed + 1}))
    assert other.image.tobytes() != a.image.tobytes()


def test_sample_spec_respects_constraints_and_covers_the_choices():
    rng = np.random.default_rng(0)
    specs = [sample_spec(rng) for _ in range(150)]
    assert {s.kind for s in specs} == set(KINDS)
    assert {s.coverage for s in specs} == set(COVERAGES)
    assert {s.texture for s in specs} == {"none", "stripes", "checks", "dots", "floral"}  # no image bank given
    assert len({s.color for s in specs}) > 20  # palette plus random colours
    for s in specs:
        assert 0.93 <= s.scale <= 1.07 and abs(s.tilt) <= 6.0 and max(abs(v) for v in s.shift) <= 0.04
        json.dumps(s.to_dict())
    limited = [sample_spec(rng, kinds=["cloth"], coverages=["chin_only"], textures=["dots", "floral"]) for _ in range(30)]
    assert all(s.kind == "cloth" and s.coverage == "chin_only" and s.texture in ("dots", "floral") for s in limited)
    images = [sample_spec(rng, kinds=["cloth"], textures=["image"], texture_images=["a.png", "b.png"]) for _ in range(20)]
    assert {s.texture for s in images} == {"image:a.png", "image:b.png"}
    with pytest.raises(MaskSpecError, match="unknown mask kind 'hat'"):
        sample_spec(rng, kinds=["hat"])
    with pytest.raises(MaskSpecError, match="needs texture images"):
        sample_spec(rng, textures=["image"])
    with pytest.raises(MaskSpecError, match="numpy Generator or an int"):
        sample_spec("seed")  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs, message", [
    ({"kind": "scarf"}, "unknown mask kind 'scarf'"),
    ({"coverage": "eyes"}, "unknown coverage 'eyes'"),
    ({"texture": "plaid"}, "unknown texture 'plaid'"),
    ({"color": (300, 0, 0)}, "color must be 3 integers 0-255"),
    ({"color": "mauve"}, "unknown color 'mauve'"),
    ({"scale": 5.0}, "scale must be within"),
    ({"tilt": 90.0}, "tilt must be within"),
    ({"seed": -1}, "seed must be within"),
    ({"shift": (2.0, 0.0)}, "shift must be within"),
])
def test_mask_spec_validation(kwargs, message):
    with pytest.raises(MaskSpecError, match=message):
        MaskSpec(**kwargs)
    assert issubclass(MaskSpecError, MeerError)


def test_mask_spec_json_round_trip_and_unknown_keys():
    spec = MaskSpec(kind="kn95", coverage="below_nose", color="navy", texture="dots", seed=9)
    d = spec.to_dict()
    assert d["color"] == list(PALETTE["navy"]) and d["color_name"] == "navy"
    assert MaskSpec.from_dict(json.loads(json.dumps(d))) == spec
    with pytest.raises(MaskSpecError, match="unknown mask spec key"):
        MaskSpec.from_dict({**d, "colour": [1, 2, 3]})


@pytest.mark.parametrize("image, landmarks, message", [
    (np.zeros((112, 112, 3), np.float32), ARCFACE_112, "H x W x 3 uint8"),
    (np.zeros((112, 112), np.uint8), ARCFACE_112, "H x W x 3 uint8"),
    ([[0]], ARCFACE_112, "numpy array"),
    (np.zeros((4, 4, 3), np.uint8), ARCFACE_112, "too small"),
    (np.zeros((112, 112, 3), np.uint8), np.zeros((4, 2)), "5 x 2 or 68 x 2"),
    (np.zeros((112, 112, 3), np.uint8), np.full((5, 2), np.nan), "NaN"),
    (np.zeros((112, 112, 3), np.uint8), np.ones((5, 2)), "degenerate"),
    (np.zeros((112, 112, 3), np.uint8), ARCFACE_112 + 5000, "outside the image"),
])
def test_bad_input_gives_one_line_errors(image, landmarks, message):
    with pytest.raises(MaskSpecError, match=message) as info:
        apply_mask(image, landmarks, 0)
    assert "\n" not in str(info.value)


def test_bad_spec_argument_and_template_without_library():
    image = _face_image()
    with pytest.raises(MaskSpecError, match="MaskSpec, a numpy Generator or an int"):
        apply_mask(image, ARCFACE_112, "surgical")  # type: ignore[arg-type]
    with pytest.raises(MaskSpecError, match="needs a template folder"):
        apply_mask(image, ARCFACE_112, MaskSpec(kind="template:surgical"))


def test_image_texture_from_a_file(tmp_path):
    rng = np.random.default_rng(0)
    tile = np.zeros((64, 64, 3), np.uint8)
    tile[::8] = (250, 30, 30)  # red lines on black
    tile[:, ::8] = (30, 250, 30)
    path = write_image(tmp_path / "fabric.png", tile)
    image = _face_image()
    spec = MaskSpec(kind="cloth", coverage="over_nose", texture=f"image:{path}", seed=int(rng.integers(100)))
    face = apply_mask(image, ARCFACE_112, spec)
    plain = apply_mask(image, ARCFACE_112, MaskSpec(**{**spec.__dict__, "texture": "none"}))
    assert np.array_equal(face.mask, plain.mask)
    inside = face.image[face.mask].astype(int)
    assert inside[:, 1].max() > 150 and inside[:, 0].max() > 150 and inside.min() < 60  # the tile's colours show
    assert np.array_equal(face.mask, (face.image != image).any(-1))
    with pytest.raises(MeerError, match="file not found"):
        apply_mask(image, ARCFACE_112, MaskSpec(kind="cloth", texture=f"image:{tmp_path / 'missing.png'}"))


def test_68_point_landmarks_follow_the_jaw():
    from meer.masking.landmarks68 import Landmarks68, find_predictor

    if find_predictor() is None:
        pytest.skip("dlib 68-point model not installed (judge extra)")
    photo = read_image("examples/astronaut.png").rgb
    lm68 = Landmarks68().predict(photo, np.array([181, 62, 268, 172]))
    assert lm68.shape == (68, 2)
    for seed in range(6):
        for coverage in ("over_nose", "below_nose"):
            face = apply_mask(photo, lm68, MaskSpec(kind=KINDS[seed % 5], coverage=coverage, seed=seed))
            five = np.stack([lm68[36:42].mean(0), lm68[42:48].mean(0), lm68[30], lm68[48], lm68[54]])
            assert _eye_disc_clear(face.mask, five)
            assert _covered(face.mask, five[3]) and _covered(face.mask, five[4])
            assert np.array_equal(face.mask, (face.image != photo).any(-1))
            # the mask stays near the jaw: nothing far outside the face contour
            jaw = lm68[:17]
            ys, xs = np.nonzero(face.mask)
            assert xs.min() > jaw[:, 0].min() - 15 and xs.max() < jaw[:, 0].max() + 15
            assert ys.max() < jaw[:, 1].max() + 25


@pytest.mark.shared_data
def test_masktheface_templates(shared_data):
    from meer.masking import TemplateLibrary

    lib = TemplateLibrary(shared_data / "mask_templates")
    assert {"surgical", "N95", "KN95", "cloth"} <= set(lib.frontal_names)
    photo = read_image("examples/astronaut.png").rgb
    for i, name in enumerate(("surgical", "N95", "KN95", "cloth", "surgical_blue")):
        spec = MaskSpec(kind=f"template:{name}", coverage="over_nose", seed=i)
        face = apply_mask(photo, ASTRONAUT_5, spec, templates=lib)
        assert face.spec.kind == f"template:{name}" and face.spec.color == lib.get(name).mean_color
        assert _eye_disc_clear(face.mask, ASTRONAUT_5)
        assert _covered(face.mask, ASTRONAUT_5[2]) and _covered(face.mask, ASTRONAUT_5[3])
        assert np.array_equal(face.mask, (face.image != photo).any(-1))
    with pytest.raises(MaskSpecError, match="unknown template 'visor'"):
        apply_mask(photo, ASTRONAUT_5, MaskSpec(kind="template:visor"), templates=lib)
