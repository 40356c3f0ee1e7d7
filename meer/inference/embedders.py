"""Face embedders for ``meer-embed``: one interface over dlib's ResNet and a MEER checkpoint.

``embedder.prepare_photo(rgb, landmarks)`` and ``embedder.prepare_aligned(crop)`` turn one face (uint8
RGB) into the float32 ``H x W x 3`` image in [0, 1] the network reads; ``embedder.embed(images)`` embeds
a list of them in one batch and returns ``N x dim`` L2-normalised float32.

* ``DlibEmbedder``: dlib's ResNet (``meer.models.dlib_resnet``) on dlib's 150 px chip; from a photo the
  chip is cut straight from the photo through meer's alignment (``photo_to_dlib_chip``), from an
  ArcFace crop it is warped from the crop (``aligned_to_dlib_chips``, any crop size).
* ``MeerEmbedder``: a MEER inference checkpoint's recognition embedding (``model.embed``) on the
  112 x 112 ArcFace crop.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from meer.faces.align import align_face, similarity_matrix
from meer.faces.dlib_chip import aligned_to_dlib_chips, photo_to_dlib_chip
from meer.models.checkpoint import load_meer
from meer.models.dlib_resnet import l2_normalize, load_dlib_resnet
from meer.utils.errors import MeerError


def _to_tensor(images: list[np.ndarray], device: torch.device) -> torch.Tensor:
    """``H x W x 3`` float32 images in [0, 1] -> ``N x 3 x H x W`` on ``device``."""
    return torch.from_numpy(np.ascontiguousarray(np.stack(images))).to(device).permute(0, 3, 1, 2).float()


def _unit(image: np.ndarray) -> np.ndarray:
    return np.asarray(image, dtype=np.float32) / 255.0


class DlibEmbedder:
    name = "dlib"
    dim = 128

    def __init__(self, device: torch.device, cache_dir: str | Path | None = None):
        self.device = device
        self.net = load_dlib_resnet(device=device, cache_dir=cache_dir)

    def prepare_photo(self, rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        return _unit(photo_to_dlib_chip(rgb, similarity_matrix(landmarks, size=112)))

    def prepare_aligned(self, crop: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(_unit(crop)).permute(2, 0, 1)[None]
        return aligned_to_dlib_chips(x)[0].permute(1, 2, 0).numpy()

    @torch.no_grad()
    def embed(self, images: list[np.ndarray]) -> np.ndarray:
        return l2_normalize(self.net(_to_tensor(images, self.device))).float().cpu().numpy()


class MeerEmbedder:
    name = "meer"

    def __init__(self, checkpoint: str | Path, device: torch.device):
        self.device = device
        self.model, meta = load_meer(checkpoint, map_location=device)
        self.model = self.model.to(device).eval()
        self.dim = int(self.model.cfg.embedding_dim)
        self.name = f"meer:{Path(checkpoint).name}"

    def prepare_photo(self, rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        return _unit(align_face(rgb, landmarks, size=112).crop)

    def prepare_aligned(self, crop: np.ndarray) -> np.ndarray:
        if crop.shape[0] != 112:
            interp = cv2.INTER_AREA if crop.shape[0] > 112 else cv2.INTER_LINEAR
            crop = cv2.resize(crop, (112, 112), interpolation=interp)
        return _unit(crop)

    @torch.no_grad()
    def embed(self, images: list[np.ndarray]) -> np.ndarray:
        e = self.model.embed(_to_tensor(images, self.device))
        return l2_normalize(e.float()).cpu().numpy()


def build_embedder(model: str, device: torch.device, cache_dir: str | Path | None = None):
    """``"dlib"`` or the path of a MEER inference checkpoint."""
    if model == "dlib":
        return DlibEmbedder(device, cache_dir=cache_dir)
    path = Path(model)
    if not path.is_file():
        raise MeerError(f"--model must be 'dlib' or a MEER checkpoint file; {model} not found")
    return MeerEmbedder(path, device)
