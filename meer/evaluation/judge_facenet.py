"""facenet-pytorch's InceptionResnetV1 (VGGFace2) as a second independent judge.

Only used when its weights are already in the local torch cache (``$TORCH_HOME/checkpoints``):
evaluation never downloads. The face crop is the MTCNN box facenet was trained on, taken from the
112 crop geometry (``MTCNN_BOX_112``: mean MTCNN box of clean aligned LFW faces; it reaches 5 px below
the crop, filled by reflection), resized to 160 px and standardised as facenet-pytorch does.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from meer.evaluation.geometry import check_crops, reflect_pad
from meer.evaluation.judge import Judge, JudgeOutput
from meer.faces.template import MTCNN_BOX_112
from meer.models.facenet import WEIGHTS_FILE, facenet_weights_path, load_facenet  # noqa: F401 - re-exported
from meer.models.teacher import TEACHER_WEIGHTS


class FacenetJudge(Judge):
    """512-d InceptionResnetV1 embedding, cosine similarity."""

    name = "facenet"
    metric = "cosine"
    weights = TEACHER_WEIGHTS["facenet"]

    def __init__(self, device: str | torch.device = "cpu", batch_size: int = 32, model: torch.nn.Module | None = None,
                 weights: str | Path | None = None):
        if model is None:
            model, path = load_facenet(weights)
            self.cache_key = f"facenet-vggface2-{path.stat().st_size}"
        else:
            self.cache_key = f"facenet-custom-{id(model)}"
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.batch_size = int(batch_size)
        self.box = tuple(int(round(v)) for v in MTCNN_BOX_112)  # x1, y1, x2, y2 in crop pixels

    def inputs(self, crops: np.ndarray) -> torch.Tensor:
        """``N x 112 x 112 x 3`` uint8 crops -> facenet's standardised ``N x 3 x 160 x 160`` input."""
        x1, y1, x2, y2 = self.box
        pad = max(0, -x1, -y1, x2 - 112, y2 - 112)
        faces = np.stack([cv2.resize(reflect_pad(c, pad)[y1 + pad:y2 + pad, x1 + pad:x2 + pad], (160, 160),
                                     interpolation=cv2.INTER_LINEAR) for c in crops])
        t = torch.from_numpy(faces).permute(0, 3, 1, 2).float()
        return (t - 127.5) / 128.0  # facenet_pytorch.fixed_image_standardization

    @torch.no_grad()
    def embed(self, crops: np.ndarray) -> JudgeOutput:
        crops = check_crops(crops, "the facenet judge")
        out = []
        for s in range(0, len(crops), self.batch_size):
            batch = self.inputs(crops[s:s + self.batch_size]).to(self.device)
            out.append(self.model(batch).float().cpu().numpy())
        vectors = np.concatenate(out) if out else np.zeros((0, 512), np.float32)
        return JudgeOutput(vectors.astype(np.float32), np.ones(len(crops), dtype=bool))
