"""Additive margin classifiers for face recognition: ArcFace (additive angular) and CosFace (additive cosine).

``MarginHead(embedding_dim, num_classes, kind, s, m)(embeddings, labels)`` returns scaled logits for
``F.cross_entropy``: ``s * cos(theta_j)`` for every class ``j`` except the target, which gets

* ArcFace (Deng et al., 2019): ``s * cos(theta_y + m)``; past ``theta_y + m > pi`` (where ``cos(theta + m)``
  stops decreasing) the insightface fallback ``s * (cos(theta_y) - m * sin(m))`` keeps the logit monotonic.
* CosFace (Wang et al., 2018): ``s * (cos(theta_y) - m)``.

``cos(theta + m)`` is computed as ``cos * cos(m) - sin * sin(m)`` (no ``acos``, whose gradient explodes at
+-1). Everything runs in float32 with autocast disabled; weights and embeddings are L2-normalised inside.
Rows with label ``-1`` get no margin (and are ignored by :meth:`MarginHead.loss`).
"""
from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_MARGIN = {"arcface": 0.5, "cosface": 0.35}


class MarginHead(nn.Module):
    def __init__(
        self,
        embedding_dim: int,
        num_classes: int,
        kind: Literal["arcface", "cosface"] = "arcface",
        s: float = 64.0,
        m: float | None = None,
    ) -> None:
        super().__init__()
        if kind not in DEFAULT_MARGIN:
            raise ValueError(f"margin kind must be 'arcface' or 'cosface', got {kind!r}")
        if num_classes < 2:
            raise ValueError(f"a margin head needs at least 2 classes, got {num_classes}")
        self.kind = kind
        self.s = float(s)
        self.m = float(DEFAULT_MARGIN[kind] if m is None else m)
        self.num_classes = num_classes
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.normal_(self.weight, std=0.01)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[1]} -> {self.num_classes}, kind={self.kind}, s={self.s}, m={self.m}"

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``B x C`` cosine similarity between the embeddings and every class centre (float32)."""
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            return F.normalize(embeddings.float(), dim=1) @ F.normalize(self.weight.float(), dim=1).t()

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if labels.shape != embeddings.shape[:1]:
            raise ValueError(f"labels must have shape ({embeddings.shape[0]},), got {tuple(labels.shape)}")
        cos = self.cosine(embeddings)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            valid = labels >= 0
            idx = labels.clamp(min=0).unsqueeze(1)
            target = cos.gather(1, idx).squeeze(1)
            if self.kind == "arcface":
                c = target.clamp(-1.0, 1.0)
                sin = torch.sqrt((1.0 - c * c).clamp(min=1e-12))
                shifted = c * math.cos(self.m) - sin * math.sin(self.m)
                threshold = math.cos(math.pi - self.m)  # theta + m <= pi  <=>  cos(theta) >= cos(pi - m)
                shifted = torch.where(c > threshold, shifted, c - self.m * math.sin(self.m))
            else:
                shifted = target - self.m
            new_target = torch.where(valid, shifted, target)
            logits = cos.scatter(1, idx, new_target.unsqueeze(1))
            return logits * self.s

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the margin logits (labels ``-1`` ignored; 0 when every label is ignored)."""
        logits = self(embeddings, labels)
        if not bool((labels >= 0).any()):
            return logits.sum() * 0.0
        return F.cross_entropy(logits, labels, ignore_index=-1)
