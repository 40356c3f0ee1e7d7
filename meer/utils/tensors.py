"""Small tensor helpers shared by every layer."""
from __future__ import annotations

import torch


def hw(t: torch.Tensor) -> tuple[int, int]:
    """``(height, width)`` of an ``... x H x W`` tensor as plain ints. Model code sizes resampling with it so that a
    traced graph (ONNX / TorchScript export, ``meer.inference.export``) holds the model's fixed spatial sizes as
    constants rather than shape arithmetic on a dynamic batch (which ONNX's area / adaptive pooling cannot take)."""
    return int(t.shape[-2]), int(t.shape[-1])


def images_to_tensor(images, device: str | torch.device | None = None) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1], channels first: ``H x W x C`` -> ``C x H x W``, ``N x H x W x C`` ->
    ``N x C x H x W`` (numpy arrays or uint8 tensors; moved to ``device`` before the conversion). The one
    uint8 -> tensor conversion of meer (datasets, judges, restorers, the inference pipeline)."""
    import numpy as np

    t = images if isinstance(images, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(images))
    if device is not None:
        t = t.to(device)
    if t.dim() not in (3, 4):
        raise ValueError(f"expected H x W x C or N x H x W x C images, got shape {tuple(t.shape)}")
    perm = (2, 0, 1) if t.dim() == 3 else (0, 3, 1, 2)
    return t.permute(*perm).float().div_(255.0)


def tensor_to_images(t: torch.Tensor):
    """float images in [0, 1] (``C x H x W`` or ``N x C x H x W``, clamped) -> uint8 numpy, channels last
    (``round(255 x)``): the inverse of :func:`images_to_tensor`."""
    u8 = (t.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8)
    return u8.permute(*((1, 2, 0) if u8.dim() == 3 else (0, 2, 3, 1))).cpu().numpy()
