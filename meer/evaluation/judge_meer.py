"""The MEER recognition branch as a judge: ``model.embed`` on the 112 crops exactly as given (``meer``), or the sum
of the crop's and its horizontal mirror's embeddings (``meer-flip``, insightface's test-time protocol)."""
from __future__ import annotations

import numpy as np
import torch

from meer.evaluation.geometry import check_crops
from meer.evaluation.judge import Judge, JudgeOutput
from meer.utils.tensors import images_to_tensor


class MeerJudge(Judge):
    """Any model with ``embed(images Bx3x112x112 in [0,1]) -> B x D`` (MEER's recognition branch)."""

    metric = "cosine"

    def __init__(self, model: torch.nn.Module, cache_key: str, name: str = "meer", device: str | torch.device = "cpu",
                 batch_size: int = 64, flip: bool = False):
        self.model = model.eval()
        self.flip = bool(flip)
        self.name = name
        self.cache_key = cache_key
        self.device = torch.device(device)
        self.batch_size = int(batch_size)

    @torch.no_grad()
    def embed(self, crops: np.ndarray) -> JudgeOutput:
        crops = check_crops(crops, "the meer judge")
        out = []
        for s in range(0, len(crops), self.batch_size):
            x = images_to_tensor(crops[s:s + self.batch_size], self.device)
            e = self.model.embed(x).float()
            if self.flip:
                e = torch.nn.functional.normalize(e + self.model.embed(x.flip(-1)).float(), dim=1)
            out.append(e.cpu().numpy())
        vectors = np.concatenate(out) if out else np.zeros((0, 1), np.float32)
        ok = np.isfinite(vectors).all(axis=1)
        vectors[~ok] = 0
        return JudgeOutput(vectors.astype(np.float32), ok)
