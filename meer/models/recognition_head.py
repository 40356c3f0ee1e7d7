"""Recognition head: identity code -> L2-normalised face embedding (default 512-d).

``Dropout -> Linear -> BN1d -> L2-normalise``, the insightface embedding head applied to the identity code
from :class:`meer.models.decoupling.MaskDecoupling`. The margin classifier (ArcFace / CosFace) that trains it
lives in :mod:`meer.losses.margin` because its size depends on the training identities.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RecognitionHead(nn.Module):
    """``norm=False`` drops the BN1d: the head is then one linear map, e.g. dlib's descriptor projection
    (``fc_no_bias``) on top of its pooled features (``model.encoder: dlib``)."""

    def __init__(self, id_dim: int = 256, embedding_dim: int = 512, dropout: float = 0.0, norm: bool = True) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            nn.Linear(id_dim, embedding_dim, bias=False),
            nn.BatchNorm1d(embedding_dim) if norm else nn.Identity(),
        )

    def forward(self, id_code: torch.Tensor) -> torch.Tensor:
        """``B x id_dim`` -> ``B x embedding_dim`` float32, unit L2 norm."""
        return F.normalize(self.net(id_code).float(), dim=1)
