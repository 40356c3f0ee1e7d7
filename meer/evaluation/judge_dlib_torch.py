"""dlib's face descriptor computed by our PyTorch port (``meer.models.dlib_resnet``): the judge
``dlib-torch``, batched and GPU-capable, beside the C++ ``dlib`` judge.

Same weights as ``dlib`` (so never independent of a model trained with the dlib teacher), same
metric (Euclidean distance between raw 128-d descriptors; dlib's same-person threshold 0.6), but a
fixed geometry instead of a per-face landmark fit: dlib's 150 px chip is warped straight from the
112 crop with the mean dlib points of aligned faces (``meer.faces.dlib_chip.crops112_to_dlib_chips``,
the rows below the crop filled by reflection, as in training), so every face enrols and a batch is one
forward pass.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from meer.evaluation.geometry import check_crops
from meer.evaluation.judge import Judge, JudgeOutput
from meer.faces.dlib_chip import crops112_to_dlib_chips
from meer.models.dlib_resnet import CACHE_FORMAT, file_digest, load_dlib_resnet
from meer.models.teacher import TEACHER_WEIGHTS
from meer.utils.dlib_models import RESNET, dlib_model_path
from meer.utils.tensors import images_to_tensor


class DlibTorchJudge(Judge):
    name = "dlib-torch"
    metric = "euclidean"
    weights = TEACHER_WEIGHTS["dlib"]

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 64, cache_dir: str | Path | None = None):
        dat = dlib_model_path(RESNET)
        self.device = torch.device(device)
        self.net = load_dlib_resnet(device=self.device, cache_dir=cache_dir)
        self.batch_size = int(batch_size)
        self.cache_key = f"dlib-torch-{file_digest(dat)}-f{CACHE_FORMAT}-crop112"

    def chips(self, crops: np.ndarray) -> torch.Tensor:
        """``N x 112 x 112 x 3`` uint8 crops -> ``N x 3 x 150 x 150`` dlib chips in [0, 1]."""
        return crops112_to_dlib_chips(images_to_tensor(crops, self.device), padding_mode="reflection")

    @torch.no_grad()
    def embed(self, crops: np.ndarray) -> JudgeOutput:
        crops = check_crops(crops, "the dlib-torch judge")
        out = [self.net(self.chips(crops[s:s + self.batch_size])).float().cpu().numpy()
               for s in range(0, len(crops), self.batch_size)]
        vectors = np.concatenate(out) if out else np.zeros((0, 128), np.float32)
        ok = np.isfinite(vectors).all(axis=1)
        vectors[~ok] = 0
        return JudgeOutput(vectors.astype(np.float32), ok)
