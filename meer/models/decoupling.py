"""Mask-decoupling module: soft occlusion map + split of the deepest features into identity / occlusion codes.

Given the encoder levels ``feats`` (stem first, deepest last):

1. **Occlusion head** (FPN-lite): 1x1 laterals on every level from the deepest up to level 1, top-down
   upsample-and-add, ``conv3x3 -> BN -> PReLU -> conv1x1`` to one logit channel at level-1 resolution, then
   bilinear upsampling to the input size. ``occ_map = sigmoid(occ_logits)`` (1 = occluded) is supervised by
   the exact synthetic mask (BCE + Dice, :mod:`meer.losses.occlusion`).
2. **Gate**: the occlusion map area-downsampled to the deepest level, ``g`` in [0, 1]. By default the gate is
   *detached*, so recognition losses cannot bend the occlusion prediction (it is trained by its own
   supervision only) -- ``detach_gate=False`` lets them. ``gate_identity=False`` (an ablation: no decoupling)
   reads the identity code from every position, masked or not.
3. **Identity code**: ``BN(conv1x1(F)) * (1 - g)`` -- identity features read only from visible positions --
   flattened with its spatial layout (as the insightface embedding head does) and mapped by
   ``Linear -> BN1d`` to ``id_dim``.
4. **Occlusion code**: ``PReLU(BN(conv1x1(F)))`` averaged over the occluded positions (weights ``g``),
   concatenated with the occluded fraction, mapped by ``Linear`` to ``occ_dim``. It describes the mask
   (kind, colour, extent); :class:`meer.losses.decoupling.DecouplingLoss` keeps the two codes apart.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from meer.utils.tensors import hw


class OcclusionHead(nn.Module):
    """Top-down feature pyramid from the deepest level to level 1 that predicts occlusion logits."""

    def __init__(self, channels: list[int], width: int) -> None:
        super().__init__()
        if len(channels) < 2:
            raise ValueError("occlusion head needs at least the stem and one stage")
        # Laterals for levels 1..N (level 0, the stem, is too shallow to be worth its cost).
        self.laterals = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels[1:])
        self.out = nn.Sequential(
            nn.Conv2d(width, width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.PReLU(width),
            nn.Conv2d(width, 1, 1),
        )

    def forward(self, feats: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        levels = feats[1:]
        p = self.laterals[-1](levels[-1])
        for lat, f in zip(reversed(self.laterals[:-1]), reversed(levels[:-1])):
            p = F.interpolate(p, size=hw(f), mode="nearest") + lat(f)
        logits = self.out(p)
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


class MaskDecoupling(nn.Module):
    """Predicts the occlusion map and splits the deepest features into identity and occlusion codes."""

    def __init__(
        self,
        channels: list[int],
        deep_size: int,
        id_dim: int = 256,
        occ_dim: int = 64,
        split_channels: int = 64,
        occ_head_width: int = 32,
        detach_gate: bool = True,
        dropout: float = 0.0,
        id_pool: bool = False,
        gate_identity: bool = True,
    ) -> None:
        super().__init__()
        deep = channels[-1]
        self.detach_gate = detach_gate
        self.gate_identity = gate_identity
        self.id_pool = id_pool
        self.occ_head = OcclusionHead(channels, occ_head_width)
        if not id_pool:
            self.id_proj = nn.Sequential(nn.Conv2d(deep, split_channels, 1, bias=False), nn.BatchNorm2d(split_channels))
            self.id_fc = nn.Sequential(
                nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
                nn.Linear(split_channels * deep_size * deep_size, id_dim, bias=False),
                nn.BatchNorm1d(id_dim),
            )
        self.occ_proj = nn.Sequential(
            nn.Conv2d(deep, split_channels, 1, bias=False), nn.BatchNorm2d(split_channels), nn.PReLU(split_channels)
        )
        self.occ_fc = nn.Linear(split_channels + 1, occ_dim)

    def forward(self, feats: list[torch.Tensor], image_size: tuple[int, int], pooled: torch.Tensor | None = None,
                to_pooled: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """``feats``: the crop-aligned levels. With ``id_pool``: ``pooled`` is the map the identity code is
        pooled from (dlib's last block, in chip geometry) and ``to_pooled`` warps a crop-space map into its
        geometry; the identity code is its mean over the cells weighted by their visibility (``1 - gate``)."""
        deep = feats[-1]
        occ_logits = self.occ_head(feats, image_size)
        occ_map = torch.sigmoid(occ_logits.float())
        gate = F.interpolate(occ_map, size=hw(deep), mode="area")
        if self.detach_gate:
            gate = gate.detach()
        if self.id_pool:
            if pooled is None or to_pooled is None:
                raise ValueError("a pooled identity code needs the map to pool and its warp (MEER's dlib encoder)")
            g = F.adaptive_avg_pool2d(to_pooled(occ_map), hw(pooled))
            w = (1.0 - (g.detach() if self.detach_gate else g)).clamp_min(1e-3).to(pooled.dtype)
            if not self.gate_identity:
                w = torch.ones_like(w)
            id_code = (pooled * w).sum(dim=(2, 3)) / w.sum(dim=(2, 3))
        else:
            visible = 1.0 - gate if self.gate_identity else torch.ones_like(gate)
            id_feat = self.id_proj(deep) * visible.to(deep.dtype)
            id_code = self.id_fc(id_feat.flatten(1))
        occ_feat = self.occ_proj(deep)
        g = gate.to(occ_feat.dtype)
        denom = g.sum(dim=(2, 3)) + 1e-3
        pooled = (occ_feat * g).sum(dim=(2, 3)) / denom
        coverage = gate.mean(dim=(2, 3)).to(pooled.dtype)
        occ_code = self.occ_fc(torch.cat([pooled, coverage], dim=1))
        return {"occ_logits": occ_logits, "occ_map": occ_map, "gate": gate, "id_code": id_code, "occ_code": occ_code}
