"""Small tensor helpers shared by every layer."""
from __future__ import annotations

import torch


def hw(t: torch.Tensor) -> tuple[int, int]:
    """``(height, width)`` of an ``... x H x W`` tensor as plain ints. Model code sizes resampling with it so that a
    traced graph (ONNX / TorchScript export, ``meer.inference.export``) holds the model's fixed spatial sizes as
    constants rather than shape arithmetic on a dynamic batch (which ONNX's area / adaptive pooling cannot take)."""
    return int(t.shape[-2]), int(t.shape[-1])
