"""Self-restrained triplet loss (SRT) for the Embedding Unmasking Model, plus plain triplet as ablation.

Definition (Boutros, Damer, Kirchbuchner, Kuijper, "Self-restrained triplet loss for accurate masked
face recognition", Pattern Recognition 124, 2022, arXiv:2103.01716, Sec. 3.2; checked against the
authors' code, github.com/fdbtrs/Self-restrained-Triplet-Loss, ``util/losses.py`` at 316eda1):

* all three embeddings are L2-normalised; ``d(x, y) = ||x - y||^2`` (squared Euclidean, in [0, 4]);
* anchor ``a = EUM(f(masked))``, positive ``p = f(unmasked)`` of the same identity, negative
  ``n = f(unmasked)`` of another identity (``f`` = the frozen recognizer);
* over the mini-batch, with ``mu_an = mean d(a, n)`` and ``mu_pn = mean d(p, n)``::

      L = mean_i max(d(a_i, p_i) + m - delta_i, 0)
      delta_i = mu_pn          if mu_an >= mu_pn   ("restrained": the anchors are already as far
                                                     from the negatives as the unmasked positives
                                                     are, so stop pushing them away and only pull
                                                     the anchor towards its positive)
              = d(a_i, n_i)    otherwise            (the ordinary triplet term)

  with margin ``m = 2.0`` for SRT (the authors' code) and ``m = 1.0`` for their plain triplet ablation.

The decision between the two cases is made once per batch on the means, as in the paper; the
restrained case gives gradients through ``d(a, p)`` only. Negatives can be given, or mined online
inside the batch among the unmasked embeddings of other identities (``random``, ``semihard``,
``hard``; distances for mining are computed without gradient).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from meer.utils.errors import MeerError

LossKind = Literal["srt", "triplet"]
Mining = Literal["random", "semihard", "hard"]


@dataclass
class SRTConfig:
    kind: LossKind = "srt"  # "triplet" = plain triplet loss (the paper's ablation)
    margin: float | None = None  # None: 2.0 for SRT, 1.0 for plain triplet (the authors' settings)
    mining: Mining = "semihard"  # how the negative of each anchor is picked inside the batch
    normalize: bool = True  # L2-normalise a, p, n before the distances (the paper does)

    def __post_init__(self) -> None:
        if self.margin is not None and self.margin < 0:
            raise ValueError(f"margin must be >= 0, got {self.margin}")

    @property
    def resolved_margin(self) -> float:
        if self.margin is not None:
            return float(self.margin)
        return 2.0 if self.kind == "srt" else 1.0


@dataclass
class TripletTerms:
    loss: torch.Tensor  # scalar
    d_ap: torch.Tensor  # (B,) squared distances anchor-positive
    d_an: torch.Tensor  # (B,) anchor-negative
    d_pn: torch.Tensor  # (B,) positive-negative
    restrained: bool  # SRT took the restrained branch for this batch (always False for triplet)

    def stats(self) -> dict[str, float]:
        return {"d_ap": float(self.d_ap.mean()), "d_an": float(self.d_an.mean()), "d_pn": float(self.d_pn.mean()),
                "restrained": float(self.restrained)}


def squared_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Row-wise ``||x_i - y_i||^2``."""
    return (x - y).pow(2).sum(dim=1)


def pairwise_squared_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``D[i, j] = ||x_i - y_j||^2`` (clamped at 0 against rounding)."""
    d = x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1)[None] - 2.0 * x @ y.t()
    return d.clamp_min(0)


def _check(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> None:
    if anchor.dim() != 2 or anchor.shape != positive.shape or anchor.shape != negative.shape:
        raise MeerError(f"triplet embeddings must share one B x D shape, got {tuple(anchor.shape)}, "
                        f"{tuple(positive.shape)}, {tuple(negative.shape)}")
    if anchor.shape[0] == 0:
        raise MeerError("triplet loss needs at least one triplet")


def _normed(*xs: torch.Tensor, normalize: bool) -> list[torch.Tensor]:
    return [F.normalize(x.float(), dim=1) if normalize else x.float() for x in xs]


def self_restrained_triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                                 margin: float = 2.0, normalize: bool = True) -> TripletTerms:
    """SRT exactly as defined above (batch-level restraint on the mean distances)."""
    _check(anchor, positive, negative)
    a, p, n = _normed(anchor, positive, negative, normalize=normalize)
    d_ap, d_an, d_pn = squared_distance(a, p), squared_distance(a, n), squared_distance(p, n)
    restrained = bool(d_an.mean() >= d_pn.mean())
    delta = d_pn.mean().expand_as(d_an) if restrained else d_an
    loss = F.relu(d_ap + margin - delta).mean()
    return TripletTerms(loss, d_ap.detach(), d_an.detach(), d_pn.detach(), restrained)


def triplet_loss(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                 margin: float = 1.0, normalize: bool = True) -> TripletTerms:
    """Plain triplet loss ``mean max(d(a,p) - d(a,n) + m, 0)`` on the same distances (the ablation)."""
    _check(anchor, positive, negative)
    a, p, n = _normed(anchor, positive, negative, normalize=normalize)
    d_ap, d_an, d_pn = squared_distance(a, p), squared_distance(a, n), squared_distance(p, n)
    loss = F.relu(d_ap + margin - d_an).mean()
    return TripletTerms(loss, d_ap.detach(), d_an.detach(), d_pn.detach(), False)


def mine_negatives(anchor: torch.Tensor, positive: torch.Tensor, labels: torch.Tensor, candidates: torch.Tensor,
                   candidate_labels: torch.Tensor, strategy: Mining = "semihard", normalize: bool = True,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick for every anchor one candidate of a different identity.

    * ``random``: uniformly among the other identities' candidates;
    * ``hard``: the closest one to the anchor (smallest ``d(a, n)``);
    * ``semihard``: the closest one still farther than the positive (``d(a, n) > d(a, p)``, FaceNet);
      when none is, the farthest one (as TensorFlow's ``triplet_semihard_loss`` does).

    Returns ``(index into candidates (B,), valid (B,) bool)``; an anchor whose batch holds no other
    identity is not valid (its index is 0 and must be ignored)."""
    if strategy not in ("random", "semihard", "hard"):
        raise MeerError(f"unknown mining strategy {strategy!r} (random, semihard, hard)")
    with torch.no_grad():
        a, p, c = _normed(anchor.detach(), positive.detach(), candidates.detach(), normalize=normalize)
        other = labels[:, None] != candidate_labels[None, :]  # (B, N)
        valid = other.any(dim=1)
        if strategy == "random":
            scores = torch.rand(other.shape, generator=generator, device="cpu").to(other.device)
            idx = torch.where(other, scores, torch.full_like(scores, -1.0)).argmax(dim=1)
            return idx, valid
        d_an = pairwise_squared_distance(a, c)
        inf = torch.finfo(d_an.dtype).max
        if strategy == "hard":
            idx = torch.where(other, d_an, torch.full_like(d_an, inf)).argmin(dim=1)
            return idx, valid
        d_ap = squared_distance(a, p)[:, None]
        semi = other & (d_an > d_ap)
        closest_semi = torch.where(semi, d_an, torch.full_like(d_an, inf)).argmin(dim=1)
        farthest = torch.where(other, d_an, torch.full_like(d_an, -1.0)).argmax(dim=1)
        idx = torch.where(semi.any(dim=1), closest_semi, farthest)
        return idx, valid


class SRTLoss(torch.nn.Module):
    """Batch loss for EUM training: negatives are mined among the batch's unmasked embeddings.

    ``forward(anchor, positive, labels, generator=None) -> TripletTerms``, where ``anchor`` is the
    EUM output for the masked faces, ``positive`` the frozen embeddings of the unmasked faces (row
    ``i`` of both from the same identity ``labels[i]``), and the negative of anchor ``i`` is a positive
    row ``j`` with ``labels[j] != labels[i]``. Anchors without any other identity in the batch are
    left out; a batch with a single identity is an error."""

    def __init__(self, cfg: SRTConfig | None = None):
        super().__init__()
        self.cfg = cfg or SRTConfig()

    def forward(self, anchor: torch.Tensor, positive: torch.Tensor, labels: torch.Tensor,
                generator: torch.Generator | None = None) -> TripletTerms:
        cfg = self.cfg
        idx, valid = mine_negatives(anchor, positive, labels, positive, labels, cfg.mining, cfg.normalize, generator)
        if not bool(valid.any()):
            raise MeerError("a triplet batch needs at least two identities (got one); use an identity-balanced "
                            "sampler or a larger batch")
        a, p, n = anchor[valid], positive[valid], positive[idx[valid]]
        fn = self_restrained_triplet_loss if cfg.kind == "srt" else triplet_loss
        return fn(a, p, n, margin=cfg.resolved_margin, normalize=cfg.normalize)
