"""Image file -> ``3 x S x S`` float tensor in [0, 1] (the form every dataset item uses)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from meer.utils.images import read_image
from meer.utils.tensors import images_to_tensor


def resize_rgb(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize an ``H x W x 3`` uint8 image to ``size x size`` (area filter when shrinking)."""
    h, w = rgb.shape[:2]
    if h == size and w == size:
        return rgb
    interp = cv2.INTER_AREA if size < min(h, w) else cv2.INTER_LINEAR
    return cv2.resize(rgb, (size, size), interpolation=interp)


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """``H x W x 3`` uint8 -> ``3 x H x W`` float32 in [0, 1] (:func:`meer.utils.tensors.images_to_tensor`)."""
    return images_to_tensor(np.require(rgb, np.uint8, ["C", "W"]))


def load_image_tensor(path: str | Path, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Read ``path`` (any format ``read_image`` takes) as a ``3 x size x size`` tensor.

    Returns the tensor and the file's original ``(width, height)`` (to rescale landmarks)."""
    img = read_image(path)
    return to_tensor(resize_rgb(img.rgb, size)), img.size
