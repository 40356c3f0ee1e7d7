"""The fast MTCNN cascade (meer.faces.mtcnn) gives facenet-pytorch's results bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.functional import interpolate

from meer.faces.detect import FaceDetector
from meer.faces.mtcnn import StridedMaxPool2d, area_crops, detect_faces, fast_nets
from meer.utils.images import read_image


@pytest.fixture(scope="module")
def mtcnn():
    from facenet_pytorch import MTCNN

    return MTCNN(device="cpu")


@pytest.fixture(scope="module")
def photos(astronaut_path, no_face_path):
    """Four 256 x 256 photos: the astronaut, mirrored, darker, and a face-less cat."""
    face = read_image(astronaut_path).rgb[::2, ::2]
    cat = np.asarray(read_image(no_face_path).rgb[:256, :256])
    cat = np.pad(cat, ((0, 256 - cat.shape[0]), (0, 256 - cat.shape[1]), (0, 0)), mode="edge")
    return np.stack([face, face[:, ::-1], (face * 0.6).astype(np.uint8), cat])


@pytest.mark.parametrize("shape", [(3, 10, 31, 30), (2, 28, 22, 22), (2, 48, 9, 9), (1, 4, 3, 5), (2, 16, 2, 2)])
@pytest.mark.parametrize("kernel, stride", [(2, 2), (3, 2)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_strided_pool_is_max_pool2d(shape, kernel, stride, channels_last, one_thread):
    x = torch.randn(shape)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ref = nn.MaxPool2d(kernel, stride, ceil_mode=True)(x)
    out = StridedMaxPool2d(kernel, stride)(x)
    assert torch.equal(out, ref)
    assert out.stride() == ref.stride()  # same layout: the next convolution runs the same kernel


@pytest.mark.parametrize("channels_last", [False, True])
def test_area_crops_match_one_box_at_a_time(channels_last, one_thread):
    g = torch.Generator().manual_seed(0)
    imgs = torch.rand((2, 3, 60, 50), generator=g) * 255  # not integers: the border colour of padded passes is not
    if channels_last:
        imgs = imgs.contiguous(memory_format=torch.channels_last)
    n = 40
    y0 = torch.randint(0, 55, (n,), generator=g)
    x0 = torch.randint(0, 45, (n,), generator=g)
    y1 = (y0 + torch.randint(1, 70, (n,), generator=g)).clamp(max=60)
    x1 = (x0 + torch.randint(1, 70, (n,), generator=g)).clamp(max=50)
    inds = torch.randint(0, 2, (n,), generator=g)
    for size in (24, 48):
        fast = area_crops(imgs, inds, y0.numpy(), y1.numpy(), x0.numpy(), x1.numpy(), size)
        slow = torch.cat([interpolate(imgs[inds[k], :, y0[k]:y1[k], x0[k]:x1[k]].unsqueeze(0), size=(size, size),
                                      mode="area") for k in range(n)])
        assert torch.equal(fast, slow) and fast.stride() == slow.stride()


@pytest.mark.parametrize("thresholds", [(0.6, 0.7, 0.7), (0.5, 0.6, 0.6), (0.3, 0.4, 0.5)])
def test_detect_faces_equals_facenet_bit_for_bit(mtcnn, photos, thresholds, one_thread):
    from facenet_pytorch.models.utils.detect_face import detect_face

    batches = [torch.from_numpy(photos)]
    # a border of mean colour around a smaller photo (FaceDetector's padded passes)
    small = torch.from_numpy(photos[:2, ::2, ::2].copy()).float()
    padded = torch.full((2, 200, 200, 3), 117.37)
    padded[:, 36:164, 36:164] = small
    batches.append(padded)
    for batch, minsize in zip(batches, (20, 12)):
        with torch.no_grad():
            ref_boxes, ref_points = detect_face(batch, minsize, mtcnn.pnet, mtcnn.rnet, mtcnn.onet, list(thresholds),
                                                0.709, "cpu")
        boxes, points = detect_faces(batch, minsize, fast_nets(mtcnn), list(thresholds), 0.709, "cpu")
        assert len(boxes) == len(points) == len(batch)
        for rb, rp, b, p in zip(ref_boxes, ref_points, boxes, points):
            assert b.dtype == np.float32 and b.shape[1:] == (5,) and p.shape[1:] == (5, 2)
            np.testing.assert_array_equal(b, np.asarray(rb, np.float32).reshape(-1, 5))
            np.testing.assert_array_equal(p, np.asarray(rp, np.float32).reshape(-1, 5, 2))
    assert len(boxes[0]) >= 1  # the astronaut is found (the comparison is not vacuous)


def test_detector_shares_the_weights(mtcnn):
    det = FaceDetector("cpu", passes=[(0.0, 20)], fallback=None, mtcnn_module=mtcnn)
    pnet, rnet, onet = det.nets
    assert pnet.conv1.weight is mtcnn.pnet.conv1.weight and onet.dense6_1.weight is mtcnn.onet.dense6_1.weight
    assert isinstance(rnet.pool1, StridedMaxPool2d) and isinstance(mtcnn.rnet.pool1, nn.MaxPool2d)  # original kept


def test_detector_cascade_unchanged(mtcnn, photos, monkeypatch, one_thread):
    """FaceDetector on its default passes (plain, bordered, upsampled, low thresholds) gives the same boxes and
    landmarks with the fast cascade as with facenet-pytorch's detect_face."""
    import meer.faces.detect as detect_module
    from facenet_pytorch.models.utils.detect_face import detect_face

    det = FaceDetector("cpu", fallback=None, mtcnn_module=mtcnn)
    tight = np.ascontiguousarray(photos[0, 45:80, 95:130])  # cut at brows and chin: only a bordered pass finds it
    images = [photos[0], photos[3], tight, np.ascontiguousarray(photos[3, :40, :40])]
    fast = det.detect(images)

    def stock(batch, minsize, nets, thresholds, factor, device):
        boxes, points = detect_face(batch, minsize, mtcnn.pnet, mtcnn.rnet, mtcnn.onet, thresholds, factor, device)
        return ([np.asarray(b, np.float32).reshape(-1, 5) for b in boxes],
                [np.asarray(p, np.float32).reshape(-1, 5, 2) for p in points])

    monkeypatch.setattr(detect_module, "detect_faces", torch.no_grad()(stock))
    slow = det.detect(images)
    assert FaceDetector("cpu", passes=[(0.0, 20)], fallback=None, mtcnn_module=mtcnn).detect_one(tight) == []
    assert [len(d) for d in fast] == [len(d) for d in slow] and len(fast[0]) == 1 and len(fast[2]) == 1
    for a, b in zip(sum(fast, []), sum(slow, [])):
        np.testing.assert_array_equal(a.box, b.box)
        np.testing.assert_array_equal(a.landmarks, b.landmarks)
        assert a.score == b.score
