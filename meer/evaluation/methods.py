"""Methods that turn a masked face into a "restored" one, compared by the judges, all in crop space.

Every method takes ``N x 112 x 112 x 3`` uint8 ArcFace crops and returns :class:`Restored`: the restored crops, in
the same space and pixel grid (nothing is resampled), and the region it replaced, as the method itself reports it
(pixels outside that region are bit-identical to its input; the harness checks this). What a method is told about
the mask is part of its definition (``given``), so every table can say which rows had the ground truth:

* ``none``: the masked face as it is (the baseline every gap is measured from); given nothing;
* ``meer``: MEER on the crop, replacing its own predicted occlusion region (binarised, dilated map): given nothing,
  *blind* -- what ``meer-restore`` does;
* ``meer-oracle``: MEER with the ground-truth mask as its region (the model's ``mask=`` argument): *oracle*;
* ``telea``: OpenCV's Telea inpainting of the ground-truth mask: *oracle*;
* ``telea-blind``: Telea inpainting of exactly the region ``meer`` replaced: *blind*, with the same mask information
  as ``meer``.

Oracle rows need pixel ground truth (synthetic masks); on real masked photos they are skipped with a note. Methods
that give an *embedding* rather than a face (MEER's identity embedding, EUM/SRT) are scored in their own embedding
space; see ``meer.evaluation.harness.EmbeddingMethod``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from meer.evaluation.geometry import check_crops
from meer.utils.errors import MeerError
from meer.utils.tensors import images_to_tensor, tensor_to_images

#: ``RestorationMethod.given`` of oracle methods: the ground-truth mask
TRUTH = "ground truth"
#: ``RestorationMethod.given`` of methods told nothing (they find the region themselves, or restore nothing)
NOTHING = "nothing"


def given_label(given: str) -> str:
    """``ground truth``, ``nothing`` or ``region of <method>``: what a method was told (``results.json``)."""
    return given if given in (TRUTH, NOTHING) else f"region of {given}"


@dataclass(frozen=True)
class Restored:
    """A method's output: restored crops and, per crop, the pixels it replaced (``N x 112 x 112`` bool)."""

    crops: np.ndarray
    regions: np.ndarray


class RestorationMethod(ABC):
    """A method the harness compares on 112 crops (not :class:`meer.inference.pipeline.Restorer`, the photo
    restoration pipeline)."""

    name: str = "method"
    #: what the method is told about the mask: ``NOTHING``, ``TRUTH`` (an oracle row) or the name of another method
    #: of the run whose reported region it is given (a blind row with that method's information)
    given: str = NOTHING

    @property
    def oracle(self) -> bool:
        """Whether the method is given the ground-truth mask."""
        return self.given == TRUTH

    @property
    def mask_given(self) -> str:
        return given_label(self.given)

    def restore(self, crops: np.ndarray, mask: np.ndarray | None = None) -> Restored:
        """Restore ``N x 112 x 112 x 3`` uint8 crops; ``mask`` (``N x 112 x 112`` bool) is what ``given`` says (the
        ground truth, or another method's region), and ``None`` exactly when the method is given nothing."""
        crops = check_crops(crops, f"method {self.name}")
        if (mask is None) != (self.given == NOTHING):
            raise MeerError(f"method {self.name} is given {self.mask_given}, got "
                            + ("no mask" if mask is None else "a mask"))
        if mask is not None:
            mask = np.asarray(mask, bool)
            if mask.shape != crops.shape[:3]:
                raise MeerError(f"method {self.name}: mask shape {mask.shape} does not match crops {crops.shape}")
        return self._restore(crops, mask)

    @abstractmethod
    def _restore(self, crops: np.ndarray, mask: np.ndarray | None) -> Restored:
        """The method itself (inputs checked)."""


class NoRestore(RestorationMethod):
    name = "none"

    def _restore(self, crops: np.ndarray, mask: np.ndarray | None) -> Restored:
        return Restored(crops, np.zeros(crops.shape[:3], bool))


class TeleaInpainting(RestorationMethod):
    """``cv2.inpaint(..., INPAINT_TELEA)`` of exactly the mask it is given (the ground truth: ``telea``; the region
    ``meer`` replaced: ``telea-blind``); that mask is the region it reports."""

    def __init__(self, name: str = "telea", given: str = TRUTH, radius: int = 3):
        if given == NOTHING:
            raise MeerError("Telea inpainting needs a region: the ground truth or another method's")
        self.name = name
        self.given = given
        self.radius = int(radius)

    def _restore(self, crops: np.ndarray, mask: np.ndarray | None) -> Restored:
        out = np.empty_like(crops)
        for i, (c, m) in enumerate(zip(crops, mask)):
            out[i] = cv2.inpaint(np.ascontiguousarray(c), m.astype(np.uint8), self.radius, cv2.INPAINT_TELEA)
        return Restored(out, mask.copy())


class MeerRestoration(RestorationMethod):
    """MEER's generator on the 112 crop: the composite ``M * G(x) + (1 - M) * x`` with ``M`` its own binarised,
    dilated occlusion prediction (``meer``, blind) or the ground-truth mask (``meer-oracle``); the region it
    reports is ``M > 0``, the model's own ``composite_mask``."""

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "cpu", batch_size: int = 32,
                 oracle: bool = False):
        self.model = model.eval()
        self.name = "meer-oracle" if oracle else "meer"
        self.given = TRUTH if oracle else NOTHING
        self.device = torch.device(device)
        self.batch_size = int(batch_size)

    @torch.no_grad()
    def _restore(self, crops: np.ndarray, mask: np.ndarray | None) -> Restored:
        out, regions = [], []
        for s in range(0, len(crops), self.batch_size):
            x = images_to_tensor(crops[s:s + self.batch_size], self.device)
            m = None if mask is None else torch.from_numpy(mask[s:s + self.batch_size, None]).to(self.device, x.dtype)
            res = self.model(x, mask=m)
            out.append(tensor_to_images(res.restored))
            regions.append((res.composite_mask[:, 0] > 0).cpu().numpy())
        if not out:
            return Restored(crops.copy(), np.zeros(crops.shape[:3], bool))
        return Restored(np.concatenate(out), np.concatenate(regions))
