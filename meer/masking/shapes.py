"""Mask outlines in the face frame, one family per kind, with per-sample variation and jitter.

Each kind is a convex region between a top curve and a bottom curve (surgical: nearly straight with a
nose-clip ridge and a flat bottom under the chin; KN95: a ridge up to the nose bridge and a folded
point under the chin; cloth: smooth round curves; N95: a domed super-ellipse cup; procedural: a
Fourier-perturbed ellipse). The region is intersected with the lower-face contour (slightly widened)
so the mask's sides follow the cheeks. Coverage sets the top edge:

* ``over_nose``: between the eye line and the nose tip (30-55 % of the way down);
* ``below_nose``: under the nose tip (0.08 face units plus 5-30 % of the way from nose tip to
  mouth), mouth covered;
* ``chin_only``: from just above the mouth line to a third of the way to the chin (the mouth may
  show).

The bottom edge lies 0-0.12 face units under the chin. Jitter (scale, tilt) turns about the top
edge's middle, so the top edge stays where the coverage puts it (up to the shift). Everything is in face units (see
``geometry.Frame``); the outlines are star-shaped from ``center`` so they can be stored as polar tables.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from meer.masking.geometry import rotate
from meer.masking.noise import uniform_table
from meer.masking.spec import COVERAGES, KINDS

N_SIDE = 24  # points on the top curve and on the bottom curve
N_POLY = 2 * N_SIDE
HALF_WIDTH = 1.8  # kind outlines are wider than any face; the contour clips their sides
EPS_RIDGE = 0.02  # rounding of the surgical nose ridge
EPS_FOLD = 0.004  # rounding of the KN95 folds

# ranges of the per-seed shape details (uniform), by kind
DROP = {"surgical": (0.05, 0.14), "n95": (0.0, 0.0), "kn95": (0.24, 0.38), "cloth": (0.14, 0.3), "procedural": (0.0, 0.0)}
BOTTOM_CURVE = {"surgical": (0.04, 0.16), "n95": (0.0, 0.0), "kn95": (0.3, 0.45), "cloth": (0.22, 0.4), "procedural": (0.0, 0.0)}
TOP_T = {"over_nose": (0.3, 0.55), "below_nose": (0.05, 0.3), "chin_only": (-0.1, 0.3)}
BELOW_NOSE_GAP = 0.08  # face units always left between the nose tip and a below_nose top edge
BOTTOM_T = (0.0, 0.12)
LOW_DROP = 0.35  # top-edge curvature factor for below_nose / chin_only
CLIP_W = (1.0, 1.07)
MOUTH_MARGIN = 0.22  # face units the contour clip always leaves beside each mouth corner


def _lerp(u: torch.Tensor, lo_hi: tuple[float, float]) -> torch.Tensor:
    return lo_hi[0] + (lo_hi[1] - lo_hi[0]) * u


def _per_kind(kind: torch.Tensor, table: dict[str, tuple[float, float]], u: torch.Tensor) -> torch.Tensor:
    lo = torch.tensor([table[k][0] for k in KINDS], device=u.device, dtype=u.dtype)[kind]
    hi = torch.tensor([table[k][1] for k in KINDS], device=u.device, dtype=u.dtype)[kind]
    return lo + (hi - lo) * u


@dataclass
class Outline:
    """A drawn mask outline, everything in face units, B rows."""

    poly: torch.Tensor  # B x N_POLY x 2, jittered kind outline
    clip: torch.Tensor  # B x 20 x 2, face contour clip (not jittered)
    center: torch.Tensor  # B x 2, jittered centre (star point)
    pivot: torch.Tensor  # B x 2, centre before jitter
    anchor: torch.Tensor  # B x 2, the point jitter turns about (middle of the top edge)
    top: torch.Tensor  # B, top edge height (v) at the nose
    bottom: torch.Tensor  # B, bottom edge height at the mouth centre
    nose_u: torch.Tensor  # B
    mid_u: torch.Tensor  # B, the mask's vertical axis
    drop: torch.Tensor  # B, top curve parameter
    bcurve: torch.Tensor  # B, bottom curve parameter
    loops: torch.Tensor  # B x 2 sides x 2 loops x 2 ends x 2 (u, v): ear-loop segments, face units
    has_loops: torch.Tensor  # B bool

    def local(self, uv: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, tilt: torch.Tensor) -> torch.Tensor:
        """Undo the jitter: face-frame points ``B x N x 2`` -> the mask's own (un-jittered) frame."""
        rel = uv - self.anchor[:, None] - shift[:, None]
        return self.anchor[:, None] + rotate(rel, -tilt) / scale[:, None, None]

    def local_maps(self, u: torch.Tensor, v: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                   tilt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``local`` for coordinate maps ``u, v`` (B x H x W)."""
        c = torch.cos(tilt)[:, None, None] / scale[:, None, None]
        s = torch.sin(tilt)[:, None, None] / scale[:, None, None]
        du = u - self.anchor[:, 0, None, None] - shift[:, 0, None, None]
        dv = v - self.anchor[:, 1, None, None] - shift[:, 1, None, None]
        return (self.anchor[:, 0, None, None] + c * du + s * dv,
                self.anchor[:, 1, None, None] - s * du + c * dv)


def top_curve(kind: torch.Tensor, u: torch.Tensor, nose_u: torch.Tensor, top: torch.Tensor,
              drop: torch.Tensor) -> torch.Tensor:
    """Height of the top edge at ``u`` for top-and-bottom kinds (rows broadcast over ``u``)."""
    du = u - nose_u
    ridge = torch.sqrt(du * du + EPS_RIDGE) - math.sqrt(EPS_RIDGE)
    fold = torch.sqrt(du * du + EPS_FOLD) - math.sqrt(EPS_FOLD)
    quad = du * du
    is_kn95 = kind == KINDS.index("kn95")
    is_surgical = kind == KINDS.index("surgical")
    shape = torch.where(is_kn95, fold, torch.where(is_surgical, ridge, quad))
    return top + drop * shape


def bottom_curve(kind: torch.Tensor, u: torch.Tensor, mid_u: torch.Tensor, bottom: torch.Tensor,
                 bcurve: torch.Tensor) -> torch.Tensor:
    du = u - mid_u
    fold = torch.sqrt(du * du + EPS_FOLD) - math.sqrt(EPS_FOLD)
    is_kn95 = kind == KINDS.index("kn95")
    return torch.where(is_kn95, bottom + 0.04 - bcurve * fold, bottom - bcurve * du * du)


def make_outline(f5: torch.Tensor, contour: torch.Tensor, kind: torch.Tensor, coverage: torch.Tensor,
                 seed: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, tilt: torch.Tensor) -> Outline:
    """Outline of each sample's mask from its landmarks ``f5`` (B x 5 x 2) and contour (B x 20 x 2),
    both in face units."""
    dt = f5.dtype
    dev = f5.device
    tab = uniform_table(seed, dt)
    h = lambda key: tab[:, key]  # noqa: E731
    nose_u, nose_v = f5[:, 2, 0], f5[:, 2, 1]
    mid_u = (f5[:, 3, 0] + f5[:, 4, 0]) / 2
    mouth_v = (f5[:, 3, 1] + f5[:, 4, 1]) / 2
    chin_v = contour[:, 8, 1]

    t = h(1)
    over = _lerp(t, TOP_T["over_nose"]) * nose_v
    below = nose_v + BELOW_NOSE_GAP + _lerp(t, TOP_T["below_nose"]) * (mouth_v - nose_v)
    chin = mouth_v + _lerp(t, TOP_T["chin_only"]) * (chin_v - mouth_v)
    top = torch.where(coverage == COVERAGES.index("over_nose"), over,
                      torch.where(coverage == COVERAGES.index("below_nose"), below, chin))
    bottom = chin_v + _lerp(h(2), BOTTOM_T)
    # a mask worn low sits flatter (and must keep covering the mouth corners)
    drop = _per_kind(kind, DROP, h(4)) * torch.where(coverage == COVERAGES.index("over_nose"), 1.0, LOW_DROP)
    bcurve = _per_kind(kind, BOTTOM_CURVE, h(5))
    axis_u = (nose_u + mid_u) / 2
    centre = torch.stack([axis_u, (top + torch.minimum(bottom, chin_v)) / 2], dim=1)
    anchor = torch.stack([axis_u, top], dim=1)  # jitter pivot

    # top-and-bottom kinds
    us = torch.linspace(-HALF_WIDTH, HALF_WIDTH, N_SIDE, device=dev, dtype=dt)[None] + axis_u[:, None]
    k2 = kind[:, None]
    top_pts = torch.stack([us, top_curve(k2, us, nose_u[:, None], top[:, None], drop[:, None])], dim=-1)
    bot_us = us.flip(1)
    bot_pts = torch.stack([bot_us, bottom_curve(k2, bot_us, mid_u[:, None], bottom[:, None], bcurve[:, None])], dim=-1)
    band = torch.cat([top_pts, bot_pts], dim=1)

    # ellipse kinds: N95 super-ellipse cup, procedural Fourier ellipse
    theta = -math.pi + 2 * math.pi * torch.arange(N_POLY, device=dev, dtype=dt) / N_POLY
    ax = 0.95 + 0.2 * h(6)
    by = (bottom - top) / 2
    c, s = torch.cos(theta)[None], torch.sin(theta)[None]
    n = 2.5
    se_x = torch.sign(c) * c.abs() ** (2 / n)
    se_y = torch.sign(s) * s.abs() ** (2 / n)
    cup = torch.stack([axis_u[:, None] + ax[:, None] * se_x, centre[:, 1:2] + by[:, None] * se_y], dim=-1)
    rad = torch.ones_like(theta)[None].expand(len(seed), -1).clone()
    for i, k in enumerate(range(2, 6)):
        amp = 0.085 / math.sqrt(k) * h(7 + i)
        phase = 2 * math.pi * h(11 + i)
        rad = rad + amp[:, None] * torch.cos(k * theta[None] + phase[:, None])
    blob_v = torch.maximum(centre[:, 1:2] + 1.02 * by[:, None] * s * rad, top[:, None])  # never above the top edge
    blob = torch.stack([axis_u[:, None] + ax[:, None] * c * rad, blob_v], dim=-1)
    is_cup = (kind == KINDS.index("n95"))[:, None, None]
    is_blob = (kind == KINDS.index("procedural"))[:, None, None]
    poly = torch.where(is_cup, cup, torch.where(is_blob, blob, band))

    # jitter: scale and tilt about the anchor, then shift; the star centre moves with the mask
    def jitter(pts: torch.Tensor) -> torch.Tensor:
        return anchor[:, None] + shift[:, None] + rotate(pts - anchor[:, None], tilt) * scale[:, None, None]

    poly = jitter(poly)
    center = jitter(centre[:, None])[:, 0]

    # clip: the lower-face contour widened about the pivot, closed high above the eyes
    jaw = contour[:, :17]
    w = _lerp(h(3), CLIP_W)
    jaw = centre[:, None] + (jaw - centre[:, None]) * w[:, None, None]
    # at mouth height, never narrower than the mouth plus a margin (smiles, jaw points hugging the cheeks)
    half = torch.maximum((f5[:, 3, 0] - axis_u).abs(), (f5[:, 4, 0] - axis_u).abs()) + MOUTH_MARGIN
    side_sign = torch.tensor([-1.0] * 8 + [0.0] + [1.0] * 8, device=dev, dtype=dt)
    ju = (jaw[..., 0] - axis_u[:, None]) * side_sign
    near_mouth = (jaw[..., 1] < (mouth_v + 0.3)[:, None]) & (side_sign != 0)
    ju = torch.where(near_mouth, torch.maximum(ju, half[:, None]), ju)
    jaw = torch.stack([torch.where(side_sign != 0, axis_u[:, None] + ju * side_sign, jaw[..., 0]), jaw[..., 1]], dim=-1)
    up = torch.full_like(jaw[:, :1, 1], -3.0)
    left_up = torch.stack([jaw[:, :1, 0], up], dim=-1)
    right_up = torch.stack([jaw[:, -1:, 0], up], dim=-1)
    clip = torch.cat([left_up, jaw, right_up], dim=1)

    # ear loops: from near the mask's upper/lower side corners to the contour by the ears
    loops = []
    for side, (ear_top, ear_bot, corner) in enumerate(((1, 2, 3), (15, 14, 13))):
        sgn = -1.0 if side == 0 else 1.0
        top_corner = torch.stack([contour[:, corner, 0] * 0.8 + axis_u * 0.2, top + 0.12 + drop * 0.3], dim=1)
        bot_corner = torch.stack([contour[:, corner + 2 * int(sgn), 0] * 0.8 + axis_u * 0.2,
                                  torch.minimum(bottom, mouth_v + 0.35)], dim=1)
        ear_a = contour[:, ear_top] + torch.stack([torch.full_like(top, 0.06 * sgn), torch.zeros_like(top)], 1)
        ear_b = contour[:, ear_bot] + torch.stack([torch.full_like(top, 0.06 * sgn), torch.zeros_like(top)], 1)
        tc = jitter(top_corner[:, None])[:, 0]
        bc = jitter(bot_corner[:, None])[:, 0]
        loops.append(torch.stack([torch.stack([tc, ear_a], 1), torch.stack([bc, ear_b], 1)], 1))
    loops_t = torch.stack(loops, dim=1)  # B x side x (top, bottom) x (start, end) x 2
    has_loops = (kind == KINDS.index("surgical")) | (kind == KINDS.index("kn95")) | (kind == KINDS.index("cloth"))
    return Outline(poly=poly, clip=clip, center=center, pivot=centre, anchor=anchor, top=top, bottom=bottom, nose_u=nose_u,
                   mid_u=mid_u, drop=drop, bcurve=bcurve, loops=loops_t, has_loops=has_loops)
