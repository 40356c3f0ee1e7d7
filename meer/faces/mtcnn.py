"""MTCNN's three-stage cascade, computed faster on CPU with the same results as facenet-pytorch's ``detect_face``.

Two things made facenet-pytorch's implementation slow on a CPU, neither of them the networks' arithmetic
(measured on 250 x 250 LFW photos, batches of 8, one thread):

* ``nn.MaxPool2d(ceil_mode=True)`` on NCHW tensors runs PyTorch's scalar kernel, 5-10x slower than taking the
  maximum of strided views: :class:`StridedMaxPool2d` computes the same maxima (max is exact, so the output is
  bit-identical) and :func:`fast_nets` swaps it into copies of P-, R- and O-Net that share their weights;
* stages 2 and 3 cut every candidate box out of the photo and resize it to 24 / 48 px one box at a time
  (~70-90 boxes per photo), indexing with 0-d tensors and dispatching ``interpolate`` per box: :func:`area_crops`
  runs the same ``adaptive_avg_pool2d`` on the same views with plain integers (half the time, same values).

Everything else (pyramid, box regression, the NMS calls, batches of 512 through R- and O-Net) is facenet-pytorch's
own code or a line-by-line port of it (MIT licence, Tim Esler), so :func:`detect_faces` returns what
``detect_face`` returns: ``tests/test_faces_mtcnn.py`` compares them bit for bit.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn
from torch.nn.functional import interpolate
from torchvision.ops.boxes import batched_nms


def _pool_dim(x: torch.Tensor, kernel: int, stride: int, dim: int) -> torch.Tensor:
    """Max-pool one spatial dimension (``dim`` = 2 or 3) with ``ceil_mode=True`` and no padding."""
    n = x.shape[dim]
    out = math.ceil((n - kernel) / stride) + 1
    if (out - 1) * stride >= n:  # PyTorch: the last window must start inside the input
        out -= 1
    full = max(0, (n - kernel) // stride + 1)  # windows that lie inside the input
    result = None
    for d in range(kernel if full else 0):
        view = x.narrow(dim, d, (full - 1) * stride + 1)
        view = view[:, :, ::stride] if dim == 2 else view[:, :, :, ::stride]
        result = view if result is None else torch.maximum(result, view)
    if out > full:  # ceil_mode: one more window that runs past the end and sees only the input
        start = (out - 1) * stride
        last = x.narrow(dim, start, n - start).amax(dim=dim, keepdim=True)
        result = last if result is None else torch.cat([result, last], dim=dim)
    return result


def _layout(x: torch.Tensor) -> torch.memory_format:
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


class StridedMaxPool2d(nn.Module):
    """``nn.MaxPool2d(kernel, stride, ceil_mode=True)`` (no padding, no dilation) as the maximum of strided views,
    one dimension after the other: the same values, several times faster on CPU for NCHW tensors."""

    def __init__(self, kernel_size: int, stride: int):
        super().__init__()
        self.kernel_size, self.stride = int(kernel_size), int(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _pool_dim(_pool_dim(x, self.kernel_size, self.stride, 3), self.kernel_size, self.stride, 2)
        # the input's memory layout, as max_pool2d keeps it: the layout decides which convolution kernel runs next
        # (and so the last bit of its output); P-Net's input is channels-last (the pyramid of a B x H x W x 3 batch)
        target = torch.empty(out.shape, dtype=out.dtype, device=out.device, memory_format=_layout(x))
        return out if target.stride() == out.stride() else target.copy_(out)


def _as_int(v) -> int | None:
    if isinstance(v, int):
        return v
    if isinstance(v, (tuple, list)) and len(set(v)) == 1:
        return int(v[0])
    return None


def with_fast_pools(net: nn.Module) -> nn.Module:
    """A shallow copy of ``net`` (same parameter tensors) whose ``ceil_mode`` max-pools are :class:`StridedMaxPool2d`."""
    fast = copy.copy(net)
    fast._modules = dict(net._modules)
    for name, mod in net._modules.items():
        if isinstance(mod, nn.MaxPool2d):
            k, s = _as_int(mod.kernel_size), _as_int(mod.stride if mod.stride is not None else mod.kernel_size)
            if (k is not None and s is not None and mod.ceil_mode and _as_int(mod.padding) == 0
                    and _as_int(mod.dilation) == 1):
                fast._modules[name] = StridedMaxPool2d(k, s)
    return fast


def fast_nets(mtcnn: nn.Module) -> tuple[nn.Module, nn.Module, nn.Module]:
    """``(pnet, rnet, onet)`` of a ``facenet_pytorch.MTCNN`` with the fast pools (weights shared, not copied)."""
    return with_fast_pools(mtcnn.pnet), with_fast_pools(mtcnn.rnet), with_fast_pools(mtcnn.onet)


def area_crops(imgs: torch.Tensor, image_inds: torch.Tensor, y0, y1, x0, x1, size: int) -> torch.Tensor:
    """``N x C x size x size``: for each box ``k``, rows ``y0[k]:y1[k]`` and columns ``x0[k]:x1[k]`` of image
    ``image_inds[k]`` of ``imgs`` (``B x C x H x W``) resized with ``interpolate(mode="area")``, as facenet-pytorch
    does box by box: the same ``adaptive_avg_pool2d`` per box (so the same values and layout), without indexing by
    0-d tensors and the dispatch of ``interpolate``, and on an NCHW copy of the batch (the channels-last kernel,
    which the permuted photo batch gets otherwise, is slower with 3 channels and sums in the same order).
    ``tests/test_faces_mtcnn.py`` checks values and strides against the box-by-box original."""
    pool = torch.nn.functional.adaptive_avg_pool2d
    imgs = imgs.contiguous()
    rows = zip(torch.as_tensor(image_inds).tolist(), np.asarray(y0).tolist(), np.asarray(y1).tolist(),
               np.asarray(x0).tolist(), np.asarray(x1).tolist())
    return torch.cat([pool(imgs[i, :, a:b, c:d].unsqueeze(0), (size, size)) for i, a, b, c, d in rows], dim=0)


@torch.no_grad()
def detect_faces(imgs: torch.Tensor, minsize: float, nets: tuple[nn.Module, nn.Module, nn.Module],
                 threshold, factor: float, device) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """facenet-pytorch's ``detect_face`` for a ``B x H x W x 3`` batch (uint8, or float with integer values):
    per image, boxes ``(n, 5)`` (x1 y1 x2 y2 score) and landmarks ``(n, 5, 2)``, both float32 numpy."""
    from facenet_pytorch.models.utils.detect_face import (batched_nms_numpy, bbreg, fixed_batch_process,
                                                          generateBoundingBox, pad, rerec)

    pnet, rnet, onet = nets
    model_dtype = next(pnet.parameters()).dtype
    imgs = torch.as_tensor(imgs, device=device).permute(0, 3, 1, 2).type(model_dtype)
    batch_size = len(imgs)
    h, w = imgs.shape[2:4]

    def normalise(pixels: torch.Tensor) -> torch.Tensor:  # MTCNN's input range: (x - 127.5) / 128
        return (pixels - 127.5) * 0.0078125

    def refine(net: nn.Module, boxes: torch.Tensor, image_inds: torch.Tensor, size: int):
        """R-Net / O-Net outputs for the candidate ``boxes``: each cropped from its image (squared, clipped to the
        photo as facenet-pytorch's ``pad`` does) and resized to ``size`` px."""
        y, ey, x, ex = pad(boxes, w, h)
        return fixed_batch_process(normalise(area_crops(imgs, image_inds, y - 1, ey, x - 1, ex, size)), net)

    m = 12.0 / minsize
    minl = min(h, w) * m
    scales = []
    scale_i = m
    while minl >= 12:
        scales.append(scale_i)
        scale_i = scale_i * factor
        minl = minl * factor

    # first stage: P-Net on the image pyramid
    boxes, image_inds, scale_picks = [], [], []
    offset = 0
    for scale in scales:
        reg, probs = pnet(normalise(interpolate(imgs, size=(int(h * scale + 1), int(w * scale + 1)), mode="area")))
        boxes_scale, image_inds_scale = generateBoundingBox(reg, probs[:, 1], scale, threshold[0])
        boxes.append(boxes_scale)
        image_inds.append(image_inds_scale)
        pick = batched_nms(boxes_scale[:, :4], boxes_scale[:, 4], image_inds_scale, 0.5)
        scale_picks.append(pick + offset)
        offset += boxes_scale.shape[0]
    boxes = torch.cat(boxes, dim=0)
    image_inds = torch.cat(image_inds, dim=0)
    scale_picks = torch.cat(scale_picks, dim=0)
    boxes, image_inds = boxes[scale_picks], image_inds[scale_picks]
    pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
    boxes, image_inds = boxes[pick], image_inds[pick]
    regw = boxes[:, 2] - boxes[:, 0]
    regh = boxes[:, 3] - boxes[:, 1]
    qq1 = boxes[:, 0] + boxes[:, 5] * regw
    qq2 = boxes[:, 1] + boxes[:, 6] * regh
    qq3 = boxes[:, 2] + boxes[:, 7] * regw
    qq4 = boxes[:, 3] + boxes[:, 8] * regh
    boxes = torch.stack([qq1, qq2, qq3, qq4, boxes[:, 4]]).permute(1, 0)
    boxes = rerec(boxes)

    # second stage: R-Net on 24 px crops of the candidates
    if len(boxes) > 0:
        out = refine(rnet, boxes, image_inds, 24)
        out0 = out[0].permute(1, 0)
        out1 = out[1].permute(1, 0)
        score = out1[1, :]
        ipass = score > threshold[1]
        boxes = torch.cat((boxes[ipass, :4], score[ipass].unsqueeze(1)), dim=1)
        image_inds = image_inds[ipass]
        mv = out0[:, ipass].permute(1, 0)
        pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
        boxes, image_inds, mv = boxes[pick], image_inds[pick], mv[pick]
        boxes = bbreg(boxes, mv)
        boxes = rerec(boxes)

    # third stage: O-Net on 48 px crops: scores, boxes, landmarks
    points = torch.zeros(0, 5, 2, device=device)
    if len(boxes) > 0:
        out = refine(onet, boxes, image_inds, 48)
        out0 = out[0].permute(1, 0)
        out1 = out[1].permute(1, 0)
        out2 = out[2].permute(1, 0)
        score = out2[1, :]
        points = out1
        ipass = score > threshold[2]
        points = points[:, ipass]
        boxes = torch.cat((boxes[ipass, :4], score[ipass].unsqueeze(1)), dim=1)
        image_inds = image_inds[ipass]
        mv = out0[:, ipass].permute(1, 0)
        w_i = boxes[:, 2] - boxes[:, 0] + 1
        h_i = boxes[:, 3] - boxes[:, 1] + 1
        points_x = w_i.repeat(5, 1) * points[:5, :] + boxes[:, 0].repeat(5, 1) - 1
        points_y = h_i.repeat(5, 1) * points[5:10, :] + boxes[:, 1].repeat(5, 1) - 1
        points = torch.stack((points_x, points_y)).permute(2, 1, 0)
        boxes = bbreg(boxes, mv)
        pick = batched_nms_numpy(boxes[:, :4], boxes[:, 4], image_inds, 0.7, "Min")
        boxes, image_inds, points = boxes[pick], image_inds[pick], points[pick]

    boxes = boxes.cpu().numpy()
    points = points.cpu().numpy()
    image_inds = image_inds.cpu().numpy()
    out_boxes, out_points = [], []
    for b_i in range(batch_size):
        sel = np.where(image_inds == b_i)
        out_boxes.append(np.asarray(boxes[sel], dtype=np.float32).reshape(-1, 5))
        out_points.append(np.asarray(points[sel], dtype=np.float32).reshape(-1, 5, 2))
    return out_boxes, out_points
