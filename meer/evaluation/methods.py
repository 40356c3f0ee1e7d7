"""Methods that turn a masked face into a "restored" one, compared by the judges.

* ``none``: the masked face as it is (the baseline every gap is measured from);
* ``telea``: OpenCV's Telea inpainting of the occlusion region (the synthetic mask's ground truth,
  or for real masked photos the typical mask region, since they have no pixel ground truth);
* ``meer``: the MEER generator (``model.restore`` on the ArcFace 112 crop, pasted back into the
  canvas only where MEER changed pixels).

Methods that give an *embedding* rather than a face (MEER's identity embedding, EUM/SRT) are
scored in their own embedding space; see ``meer.evaluation.harness``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import cv2
import numpy as np
import torch

from meer.evaluation.geometry import CANVAS_OFFSET, CANVAS_SIZE, arcface_crops
from meer.utils.tensors import images_to_tensor, tensor_to_images


class RestorationMethod(ABC):
    """A method the harness compares on canvases (not :class:`meer.inference.pipeline.Restorer`, the photo
    restoration pipeline)."""

    name: str = "restorer"
    #: whether ``restore`` works from the mask it is given (images evaluated as given have none)
    uses_mask: bool = False
    #: identifies the method's output for caches (change it when weights/settings change)
    cache_key: str = "restorer"

    @abstractmethod
    def restore(self, canvases: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """``N x 224 x 224 x 3`` uint8 restored canvases from masked ones and ``N x 224 x 224`` bool masks
        (ground truth for synthetic masks, the typical region for real ones; methods may ignore it)."""


class NoRestore(RestorationMethod):
    name = "none"
    cache_key = "none"

    def restore(self, canvases: np.ndarray, masks: np.ndarray) -> np.ndarray:
        return canvases


class TeleaRestorer(RestorationMethod):
    """``cv2.inpaint(..., INPAINT_TELEA)`` of the mask, grown by ``dilate`` pixels to cover its rim."""

    name = "telea"
    uses_mask = True

    def __init__(self, radius: int = 5, dilate: int = 3):
        self.radius = int(radius)
        self.dilate = int(dilate)
        self.cache_key = f"telea-r{self.radius}-d{self.dilate}"

    def restore(self, canvases: np.ndarray, masks: np.ndarray) -> np.ndarray:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * self.dilate + 1, 2 * self.dilate + 1))
        out = np.empty_like(canvases)
        for i, (c, m) in enumerate(zip(canvases, masks)):
            m8 = cv2.dilate(m.astype(np.uint8), kernel) if self.dilate > 0 else m.astype(np.uint8)
            out[i] = cv2.inpaint(np.ascontiguousarray(c), m8, self.radius, cv2.INPAINT_TELEA)
        return out


class MeerRestorer(RestorationMethod):
    """MEER's generator on the 112 crop; only the pixels MEER replaced are pasted into the canvas."""

    name = "meer"

    def __init__(self, model: torch.nn.Module, cache_key: str, device: str | torch.device = "cpu",
                 batch_size: int = 32):
        self.model = model.eval()
        self.cache_key = cache_key
        self.device = torch.device(device)
        self.batch_size = int(batch_size)

    @torch.no_grad()
    def restore(self, canvases: np.ndarray, masks: np.ndarray) -> np.ndarray:
        out = canvases.copy()
        crops = arcface_crops(canvases)
        a = int(round(CANVAS_OFFSET))
        side = CANVAS_SIZE - 2 * a
        for s in range(0, len(crops), self.batch_size):
            x = images_to_tensor(crops[s:s + self.batch_size], self.device)
            restored, _ = self.model.restore(x)
            r = tensor_to_images(restored)
            changed = (r != crops[s:s + self.batch_size]).any(axis=-1).astype(np.uint8)
            for j in range(len(r)):
                up = cv2.resize(r[j], (side, side), interpolation=cv2.INTER_CUBIC)
                region = cv2.resize(cv2.dilate(changed[j], np.ones((3, 3), np.uint8)), (side, side),
                                    interpolation=cv2.INTER_NEAREST).astype(bool)
                window = out[s + j, a:a + side, a:a + side]
                window[region] = up[region]
        return out
