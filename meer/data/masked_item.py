"""Masking one dataset item with a ``MaskAugment``-style op (a batch of one), reproducibly per item."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from meer.utils.errors import MeerError


def item_generator(seed: int | None, epoch: int, index: int) -> torch.Generator | None:
    """A generator whose draws depend only on ``(seed, epoch, index)``; None (global RNG) without a seed."""
    if seed is None:
        return None
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + epoch * 10_007 + index) % (2**63 - 1))
    return g


def mask_item(op: Callable, clean: torch.Tensor, image_size: int, landmarks: np.ndarray | None,
              generator: torch.Generator | None) -> dict:
    """``{"masked", "mask", "mask_kind", "mask_<key>"...}`` for one ``3 x S x S`` image.

    ``landmarks`` are the face's 5 points in this image's pixels; None means the ArcFace template
    (passed as None at 112, where the op uses its own template, else scaled to ``image_size``)."""
    lms = None
    if landmarks is not None:
        lms = torch.as_tensor(np.asarray(landmarks, dtype=np.float32))[None]
    elif image_size != 112:
        from meer.faces.template import template_for_size

        lms = torch.from_numpy(template_for_size(image_size))[None]
    with torch.no_grad():
        masked, mask, info = op(clean[None], lms, generator=generator)
    item = {"masked": masked[0].clamp(0, 1), "mask": mask[0].float()}
    for key, value in info.items():
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == 1:
            v = value[0]
            item[f"mask_{key}"] = int(v) if v.dim() == 0 and not v.is_floating_point() else v
    if "mask_kind" not in item:
        raise MeerError("the masking op must report info['kind'] per image")
    return item
