"""Restorer: detection -> alignment -> tiny random MEER -> paste-back, on the bundled photo.

The occlusion head of the tiny random MEER is steered with a forward hook so that the tests know
which part of the aligned crop is "occluded" (a trained model would predict the mask there).
"""
from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from meer.faces.align import invert
from meer.faces.detect import FaceDetector
from meer.inference.pipeline import Restorer
from meer.models.meer import MEER, MEERConfig
from meer.utils.errors import MeerError
from meer.utils.images import decode_image, encode_image, read_image

TINY = dict(enc_width=8, enc_layers=(1, 1, 1, 1), enc_max_width=32, enc_stem_stride=2, split_channels=8,
            occ_head_width=8, id_dim=16, occ_dim=8, embedding_dim=32, gen_width=8, gen_max_width=32)
LOWER_FACE = (slice(66, 104), slice(28, 84))  # nose-to-chin box of the 112 ArcFace crop


def tiny_meer(seed: int = 0) -> MEER:
    torch.manual_seed(seed)
    return MEER(MEERConfig(**TINY)).eval()


def steer(model: MEER, occluded: np.ndarray | None) -> MEER:
    """Force the predicted occlusion map: ``occluded`` (112 x 112 bool) or ``None`` for 'nothing occluded'."""
    logits = torch.full((1, 1, 112, 112), -20.0)
    if occluded is not None:
        logits[0, 0][torch.from_numpy(occluded)] = 20.0
    model.decoupling.occ_head.register_forward_hook(lambda mod, inp, out: logits.to(out).expand_as(out))
    return model


def lower_face() -> np.ndarray:
    m = np.zeros((112, 112), bool)
    m[LOWER_FACE] = True
    return m


class CachingDetector:
    """The real MTCNN detector, asked once per distinct image (the tests reuse the same photos a lot)."""

    def __init__(self):
        self.real = FaceDetector("cpu", fallback=None)
        self.cache: dict[bytes, list] = {}

    def detect(self, images):
        keys = [hashlib.sha1(np.ascontiguousarray(im).tobytes() + bytes(str(im.shape), "ascii")).digest()
                for im in images]
        todo = {k: im for k, im in zip(keys, images) if k not in self.cache}
        for k, dets in zip(todo, self.real.detect(list(todo.values()))):
            self.cache[k] = dets
        return [list(self.cache[k]) for k in keys]


@pytest.fixture(scope="module")
def detector():
    return CachingDetector()


@pytest.fixture(scope="module")
def photo(astronaut_path):
    """The bundled face, 256 x 256, with a flat 'mask' over nose and mouth."""
    img = read_image(astronaut_path)
    rgb = np.array(Image.fromarray(img.rgb).resize((256, 256), Image.LANCZOS))
    rgb[62:90, 92:132] = (90, 140, 200)
    return decode_image(encode_image(rgb, ".png"))


def changed_pixels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a), np.asarray(b)
    d = a != b
    return d.any(axis=-1) if d.ndim == 3 else d


def warped_support(face, shape) -> np.ndarray:
    """Photo pixels that the face's paste region can reach (bilinear warp, plus one pixel of slack)."""
    warped = cv2.warpAffine((face.region > 0).astype(np.float32), invert(face.matrix), (shape[1], shape[0]),
                            flags=cv2.INTER_LINEAR, borderValue=0)
    return cv2.dilate((warped > 0).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0


def test_restores_only_inside_the_paste_region(photo, detector):
    restorer = Restorer(steer(tiny_meer(), lower_face()), detector, min_occlusion=0.05)
    res = restorer.restore_image(photo)
    assert len(res.faces) == 1
    face = res.faces[0]
    assert face.status == "restored"
    assert face.occlusion == pytest.approx(lower_face().mean(), abs=1e-6)
    assert -1.0 <= face.id_cosine <= 1.0
    assert face.crop.shape == face.restored.shape == (112, 112, 3) and face.crop.dtype == np.uint8
    # region: 1 on every occluded crop pixel, 0 far from it
    assert np.all(face.region[lower_face()] == 1.0)
    assert np.all(face.region[:40] == 0.0)
    # the restored crop differs from the input crop only inside the region
    assert not np.any(changed_pixels(face.crop, face.restored) & (face.region == 0))
    # the photo: something changed, and only where the warped region reaches
    diff = changed_pixels(photo.rgb, res.rgb)
    assert diff.sum() > 500
    assert not np.any(diff & ~warped_support(face, photo.rgb.shape))
    # the changed area sits on the lower face of the detected box
    ys, xs = np.nonzero(diff)
    x1, y1, x2, y2 = face.box
    assert x1 - 5 <= xs.min() and xs.max() <= x2 + 5
    assert ys.mean() > (y1 + y2) / 2
    assert res.native.shape == photo.rgb.shape and res.native.dtype == np.uint8
    assert set(res.timings) == {"detect", "align", "model", "paste"} and res.seconds > 0


def test_below_min_occlusion_passes_through_unchanged(photo, detector):
    for occluded, min_occ in ((None, 0.0), (lower_face(), 0.5)):
        restorer = Restorer(steer(tiny_meer(), occluded), detector, min_occlusion=min_occ)
        res = restorer.restore_image(photo)
        assert [f.status for f in res.faces] == ["passthrough"]
        assert res.faces[0].id_cosine is None
        assert np.array_equal(res.faces[0].restored, res.faces[0].crop)
        assert np.array_equal(res.rgb, photo.rgb) and not res.changed


def test_occlusion_above_the_eyes_is_not_restored_with_infer_top(photo, detector):
    """A forehead highlight taken for an occluder: with ``infer_top`` the face passes through (byte for byte),
    without it the forehead is repainted; a lower-face mask is restored either way."""
    forehead = np.zeros((112, 112), bool)
    forehead[12:40, 30:82] = True  # 12 % of the crop
    for top, status in ((0.0, "restored"), (0.42, "passthrough")):
        model = tiny_meer()
        model.cfg.infer_top = top
        res = Restorer(steer(model, forehead), detector).restore_image(photo)
        assert [f.status for f in res.faces] == [status]
        assert res.changed == (status == "restored")
    model = tiny_meer()
    model.cfg.infer_top = 0.42
    res = Restorer(steer(model, lower_face() | forehead), detector).restore_image(photo)
    region = res.faces[0].region
    assert res.faces[0].status == "restored" and region[:45].max() == 0 and region[LOWER_FACE].min() > 0


def test_random_model_never_touches_pixels_outside_its_region(photo, detector):
    """Without steering: whatever the random model predicts, pixels outside the region stay exact."""
    res = Restorer(tiny_meer(3), detector, min_occlusion=0.0).restore_image(photo)
    for face in res.faces:
        assert face.status == "restored" or face.occlusion == 0.0
        assert not np.any(changed_pixels(photo.rgb, res.rgb) & ~warped_support(face, photo.rgb.shape))


def test_alpha_and_16_bit_photos_keep_their_layout(photo, detector, tmp_path):
    rgb = photo.rgb
    alpha = np.tile(np.linspace(0, 255, rgb.shape[1]).astype(np.uint8), (rgb.shape[0], 1))
    rgba_path = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(rgba_path)
    rgb16 = rgb.astype(np.uint16) * 257 + np.random.default_rng(0).integers(0, 257, rgb.shape).astype(np.uint16)
    deep_path = tmp_path / "deep.png"
    cv2.imwrite(str(deep_path), rgb16[..., ::-1].copy())
    restorer = Restorer(steer(tiny_meer(), lower_face()), detector)

    rgba = read_image(rgba_path)
    res = restorer.restore_image(rgba)
    assert res.native.shape == (*rgb.shape[:2], 4) and res.native.dtype == np.uint8
    assert np.array_equal(res.native[..., 3], alpha)
    support = warped_support(res.faces[0], rgb.shape)
    assert changed_pixels(res.native[..., :3], rgb).any()
    assert not np.any(changed_pixels(res.native[..., :3], rgb) & ~support)

    deep = read_image(deep_path)
    assert deep.bit_depth == 16
    res = restorer.restore_image(deep)
    assert res.native.dtype == np.uint16 and res.native.shape == rgb16.shape
    diff = changed_pixels(res.native, rgb16)
    assert diff.any()
    assert not np.any(diff & ~warped_support(res.faces[0], rgb.shape))


def test_batches_match_single_photos_and_faces_are_selected(photo, detector, no_face_path):
    head = photo.rgb[8:136, 46:174]  # 128 x 128 around the face, next to a smaller copy
    small = np.array(Image.fromarray(head).resize((96, 96)).crop((0, -16, 96, 112)))
    two = np.concatenate([head, small], axis=1)
    two_faces = decode_image(encode_image(two, ".png"))
    cat = read_image(no_face_path)
    cat = decode_image(encode_image(np.array(Image.fromarray(cat.rgb).resize((150, 100))), ".png"))
    model = steer(tiny_meer(), lower_face())
    restorer = Restorer(model, detector, batch_size=2)
    batch = restorer.restore_images([photo, cat, two_faces])
    singles = [Restorer(model, detector, batch_size=1).restore_image(im) for im in (photo, cat, two_faces)]
    for b, s in zip(batch, singles):
        assert np.array_equal(b.rgb, s.rgb)
        assert [f.status for f in b.faces] == [f.status for f in s.faces]
    assert [len(r.faces) for r in batch] == [1, 0, 2]
    assert batch[1].note == "no face found" and np.array_equal(batch[1].rgb, cat.rgb)
    areas = [(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]) for f in batch[2].faces]
    assert areas[0] > areas[1]
    largest = Restorer(model, detector, faces="largest").restore_image(two_faces)
    assert len(largest.faces) == 1 and np.allclose(largest.faces[0].box, batch[2].faces[0].box)
    # a minimum face size above both faces leaves nothing, with the reason
    none = Restorer(model, detector, min_face=400).restore_image(two_faces)
    assert none.faces == [] and none.note == "2 face(s) found, all smaller than 400 px (see --min-face)"


def test_large_photos_are_detected_shrunk_and_restored_at_full_resolution(photo, detector):
    model = steer(tiny_meer(), lower_face())
    full = Restorer(model, detector, detect_size=None).restore_image(photo)
    shrunk = Restorer(model, detector, detect_size=128).restore_image(photo)  # detection on a 128 px copy
    a, b = full.faces[0], shrunk.faces[0]
    assert np.abs(a.box - b.box).max() < 6  # boxes come back in full-resolution pixels
    assert np.abs(a.landmarks - b.landmarks).max() < 4
    assert b.crop.shape == (112, 112, 3) and shrunk.rgb.shape == photo.rgb.shape
    assert not np.any(changed_pixels(photo.rgb, shrunk.rgb) & ~warped_support(b, photo.rgb.shape))
    with pytest.raises(MeerError, match="--detect-size"):
        Restorer(model, detector, detect_size=-1)


def test_aligned_crops_skip_detection(photo):
    crop = np.array(Image.fromarray(photo.rgb[40:200, 48:208]).resize((112, 112)))
    restorer = Restorer(steer(tiny_meer(), lower_face()), None, aligned=True)
    res = restorer.restore_image(decode_image(encode_image(crop, ".png")))
    face = res.faces[0]
    assert face.score is None and np.array_equal(face.box, [0, 0, 112, 112])
    assert np.array_equal(face.crop, crop)
    diff = changed_pixels(crop, res.rgb)
    assert diff[LOWER_FACE].mean() > 0.95
    assert not np.any(diff & (face.region == 0))
    # another size is resized to the crop and pasted back at its own size
    big = decode_image(encode_image(np.array(Image.fromarray(crop).resize((160, 160))), ".png"))
    res = restorer.restore_image(big)
    assert res.rgb.shape == (160, 160, 3) and changed_pixels(big.rgb, res.rgb)[:60].sum() == 0


def test_only_restored_faces_are_generated_and_embedded_again(photo):
    """The generator and the identity cosine (masked vs restored, a second encoder pass) run only on the faces
    that are restored, and give what running every face gives."""
    crops = [np.array(Image.fromarray(photo.rgb[40 + k:200 + k, 48:208]).resize((112, 112))) for k in range(3)]
    crops[1] = np.full((112, 112, 3), 128, np.uint8)  # a flat crop: predicted unoccluded, passed through
    model = tiny_meer()
    seen = {}
    model.encoder.register_forward_pre_hook(lambda mod, inp: seen.update(x=inp[0]))
    occluded = torch.full((1, 1, 112, 112), -20.0)
    occluded[0, 0][torch.from_numpy(lower_face())] = 20.0

    def steer_by_content(mod, inp, out):  # the lower face of every crop that is not flat
        flat = seen["x"].flatten(1).std(dim=1) < 1e-3
        return torch.where(flat[:, None, None, None], torch.full_like(out, -20.0), occluded.to(out).expand_as(out))

    model.decoupling.occ_head.register_forward_hook(steer_by_content)
    embedded = []
    real_embed = model.embed
    model.embed = lambda images, **kw: embedded.append(images.shape[0]) or real_embed(images, **kw)
    generated = []
    hook = model.generator.register_forward_hook(lambda mod, inp, out: generated.append(out.shape[0]))
    restorer = Restorer(model, None, aligned=True, batch_size=3)
    res = restorer.restore_images([decode_image(encode_image(c, ".png")) for c in crops])
    assert [r.faces[0].status for r in res] == ["restored", "passthrough", "restored"]
    assert embedded == [2] and generated == [2]
    hook.remove()
    assert res[1].faces[0].id_cosine is None
    with torch.inference_mode():  # what embedding all three gave
        x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0
        out = model(x)
        cos = torch.nn.functional.cosine_similarity(out.embedding, real_embed(out.restored.clamp(0, 1)), dim=1)
    assert [r.faces[0].id_cosine for r in res[::2]] == pytest.approx(cos[::2].tolist(), abs=1e-5)
    full = (out.restored.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    for k in (0, 2):  # the faces restored come out as the full forward restores them (up to the feathered edge)
        inside = res[k].faces[0].region >= 1.0
        assert np.abs(res[k].faces[0].restored[inside].astype(int) - full[k][inside].astype(int)).max() <= 1
    none = Restorer(steer(tiny_meer(), None), None, aligned=True)
    none.model.embed = lambda images, **kw: pytest.fail("no face to restore: nothing to embed")
    none.model.generator.register_forward_hook(lambda *a: pytest.fail("no face to restore: nothing to generate"))
    assert none.restore_image(decode_image(encode_image(crops[0], ".png"))).faces[0].status == "passthrough"


def test_bf16_runs_and_stays_close(photo, detector):
    model = steer(tiny_meer(), lower_face())
    a = Restorer(model, detector).restore_image(photo)
    b = Restorer(model, detector, dtype=torch.bfloat16).restore_image(photo)
    assert b.faces[0].status == "restored"
    assert np.array_equal(changed_pixels(photo.rgb, b.rgb) & ~warped_support(b.faces[0], photo.rgb.shape),
                          np.zeros(photo.rgb.shape[:2], bool))
    assert np.abs(a.rgb.astype(int) - b.rgb.astype(int)).mean() < 2.0


def test_bad_options():
    with pytest.raises(MeerError, match="--batch-size"):
        Restorer(tiny_meer(), None, aligned=True, batch_size=0)
    with pytest.raises(MeerError, match="--min-occlusion"):
        Restorer(tiny_meer(), None, aligned=True, min_occlusion=1.5)
    with pytest.raises(MeerError, match="detector is needed"):
        Restorer(tiny_meer(), None)


@pytest.mark.shared_data
def test_real_masked_photos_change_only_inside_the_regions(shared_data, detector):
    """Real in-the-wild masked photos (RWMFD): faces are found and nothing outside the regions moves."""
    paths = sorted((shared_data / "real_masked" / "rwmfd").glob("*/*.jpg"))[:3]
    if not paths:
        pytest.skip("no RWMFD photos in the shared data")
    restorer = Restorer(steer(tiny_meer(), lower_face()), detector, batch_size=4)
    images = [read_image(p) for p in paths]
    results = restorer.restore_images(images)
    assert sum(len(r.faces) for r in results) >= 2
    for im, res in zip(images, results):
        support = np.zeros(im.rgb.shape[:2], bool)
        for face in res.faces:
            assert face.status == "restored"
            support |= warped_support(face, im.rgb.shape)
        assert not np.any(changed_pixels(im.rgb, res.rgb) & ~support)
        assert changed_pixels(im.rgb, res.rgb).any() == bool(res.faces)
