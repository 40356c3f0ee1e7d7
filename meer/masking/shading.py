"""Light and fabric structure, so a mask looks like a worn object rather than a flat sticker.

* Soft lighting from a random direction on an approximate surface (a wide cylinder for surgical and
  cloth masks, a dome for N95 cups, two folded planes for KN95), Lambert plus ambient, normalised so
  the mask's centre keeps its colour.
* Kind structure: surgical pleats (three or four bands, lighter at the top of each band, a shadow
  line at each fold) and the nose-wire strip; the KN95 centre seam and heat-sealed border;
  the N95 rim and (sometimes) an exhalation valve; the cloth centre seam; a hem line for cloth and
  procedural masks.
* Darkening in the last pixels inside the border (the edge turns away from the camera) and
  per-pixel fabric grain.
"""
from __future__ import annotations

import math

import torch

from meer.masking.noise import hash2d_uniform, hash_uniform, uniform_table, value_noise
from meer.masking.shapes import Outline, bottom_curve, top_curve
from meer.masking.spec import KINDS

# surface curvature (half-extent of the surface in face units: small = strongly curved), by kind
CURVATURE = {"surgical": (1.6, 2.6), "n95": (1.05, 0.95), "kn95": (1.4, 1.8), "cloth": (1.3, 1.9),
             "procedural": (1.2, 1.3)}


def _line(dist_px: torch.Tensor, width_px: float = 0.8) -> torch.Tensor:
    """1 on a line of ``width_px`` pixels (distance 0), smooth to 0 over a pixel."""
    return (1 - (dist_px.abs() - width_px / 2)).clamp(0, 1)


def lighting(kind: torch.Tensor, seed: torch.Tensor, a: torch.Tensor, b: torch.Tensor, out: Outline) -> torch.Tensor:
    """Lambert + ambient brightness factor, ~1 at the mask centre (B x H x W)."""
    dt = a.dtype
    tab = uniform_table(seed, dt)
    h = lambda key: tab[:, key]  # noqa: E731
    ax = torch.tensor([CURVATURE[k][0] for k in KINDS], device=a.device, dtype=dt)[kind][:, None, None]
    ay = torch.tensor([CURVATURE[k][1] for k in KINDS], device=a.device, dtype=dt)[kind][:, None, None]
    nx = (a - out.mid_u[:, None, None]) / ax
    ny = (b - out.pivot[:, 1, None, None]) / ay
    fold = (kind == KINDS.index("kn95"))[:, None, None]
    nx = torch.where(fold, nx * 0.5 + 0.32 * torch.tanh((a - out.mid_u[:, None, None]) * 40), nx)
    nz = torch.sqrt((1 - nx * nx - ny * ny).clamp_min(0.05))
    norm = torch.sqrt(nx * nx + ny * ny + nz * nz)
    az = 2 * math.pi * h(15)
    lz = 0.55 + 0.4 * h(16)
    lxy = torch.sqrt(1 - lz * lz)
    lx, ly = (lxy * torch.cos(az))[:, None, None], (lxy * torch.sin(az))[:, None, None]
    amb = (0.35 + 0.25 * h(18))[:, None, None]
    lam = ((nx * lx + ny * ly + nz * lz[:, None, None]) / norm).clamp_min(0)
    light = (amb + (1 - amb) * lam) / (amb + (1 - amb) * lz[:, None, None])
    return light.clamp(0.35, 1.3)


def structure(kind: torch.Tensor, seed: torch.Tensor, a: torch.Tensor, b: torch.Tensor, out: Outline,
              inside_px: torch.Tensor, unit_px: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Kind-specific brightness factor (B x H x W), plus the N95 valve: its coverage (B x H x W)
    and colour (B x 3). ``inside_px``: distance to the outline in pixels (positive inside)."""
    dt = a.dtype
    mult = torch.ones_like(a)
    valve = torch.zeros_like(a)
    valve_color = torch.zeros(a.shape[0], 3, device=a.device, dtype=dt)
    upx = unit_px[:, None, None]
    tab = uniform_table(seed, dt)
    # edge turning away from the camera
    mult = mult * (0.86 + 0.14 * (inside_px / (0.06 * upx).clamp_min(1.5)).clamp(0, 1))
    for k_idx, name in enumerate(KINDS):
        sel = (kind == k_idx).nonzero(as_tuple=True)[0]
        if sel.numel() == 0:
            continue
        sa, sb, ss, ins, u = a[sel], b[sel], seed[sel], inside_px[sel], upx[sel]
        h = lambda key, sel=sel: tab[sel, key][:, None, None]  # noqa: E731
        mid = out.mid_u[sel][:, None, None]
        f = torch.ones_like(sa)
        if name == "surgical":
            kk = kind[sel][:, None, None]
            top = top_curve(kk, sa, out.nose_u[sel][:, None, None], out.top[sel][:, None, None],
                            out.drop[sel][:, None, None])
            bot = bottom_curve(kk, sa, mid, out.bottom[sel][:, None, None], out.bcurve[sel][:, None, None])
            w = (sb - top) / (bot - top).clamp_min(1e-3)
            n_pleats = 3 + (h(23) < 0.4).to(dt)
            p0, p1 = 0.2, 0.86
            p = (w - p0) / (p1 - p0) * n_pleats
            ph = p - torch.floor(p)
            in_pleats = ((p > 0) & (p < n_pleats)).to(dt)
            band_px = ((p1 - p0) * (bot - top) * u / n_pleats).clamp_min(2.0)
            fold_line = torch.exp(-(((1 - ph) * band_px) / 0.9) ** 2) + torch.exp(-((ph * band_px) / 0.7) ** 2) * 0.5
            f = f * (1 + in_pleats * (0.07 - 0.14 * ph - 0.22 * fold_line))
            # nose wire strip along the top edge, and stitched hems at the top and bottom
            wire = ((w > 0.02) & (w < 0.09)).to(dt) * ((sa - out.nose_u[sel][:, None, None]).abs() < 0.45).to(dt)
            f = f * (1 + 0.05 * wire)
            hem = _line(ins - 0.045 * u, 0.9) * 0.12
            f = f * (1 - hem)
        elif name == "kn95":
            seam = _line((sa - mid) * u, 1.0)
            f = f * (1 - 0.28 * seam)
            border = ((ins > 0) & (ins < 0.07 * u)).to(dt)
            dots = 0.5 + 0.5 * torch.sin(sa * 90) * torch.sin(sb * 90)
            f = f * (1 - border * (0.06 + 0.08 * dots))
        elif name == "n95":
            rim = ((ins > 0) & (ins < 0.06 * u)).to(dt)
            f = f * (1 - 0.1 * rim) * (1 - 0.2 * _line(ins - 0.06 * u, 1.0))
            has_valve = (h(21) < 0.35).to(dt)
            side = torch.where(h(22) < 0.5, -1.0, 1.0).to(dt)
            vx = mid + side * 0.42
            vy = out.pivot[sel][:, 1, None, None] + 0.12
            d = torch.sqrt((sa - vx) ** 2 + (sb - vy) ** 2) * u
            r = 0.19 * u
            vmask = ((r - d + 0.5).clamp(0, 1)) * has_valve
            ring = _line(d - 0.72 * r, 1.2) + 0.6 * _line(d - 0.45 * r, 1.0)
            slots = 0.5 + 0.5 * torch.sin(8 * torch.atan2(sb - vy, sa - vx))
            valve_f = (1 - 0.25 * ring) * (0.92 + 0.08 * slots)
            f = torch.where(vmask > 0, f * valve_f, f)
            valve[sel] = vmask
            dark = h(33)[:, 0, 0] < 0.5
            base = torch.where(dark[:, None], torch.tensor([0.32, 0.33, 0.36], device=a.device, dtype=dt),
                               torch.tensor([0.88, 0.88, 0.9], device=a.device, dtype=dt))
            valve_color[sel] = base
        elif name == "cloth":
            bend = 0.04 * (sb - out.pivot[sel][:, 1, None, None]) ** 2
            seam = _line((sa - mid - bend) * u, 1.0)
            f = f * (1 - 0.22 * seam)
            f = f * (1 - 0.14 * _line(ins - 0.05 * u, 0.9))
            # soft mottling of a washed fabric
            f = f * (0.95 + 0.1 * value_noise(ss, sa * 6, sb * 6, key=50))
        else:  # procedural
            f = f * (1 - 0.12 * _line(ins - 0.05 * u, 0.9))
        mult[sel] = mult[sel] * f
    return mult, valve, valve_color


def grain(seed: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-pixel fabric grain (B x H x W), zero-mean, amplitude 0.02-0.05 per sample."""
    amp = (0.02 + 0.03 * hash_uniform(seed, 28))[:, None, None]
    return (hash2d_uniform(seed, 60, x.expand(len(seed), *x.shape[-2:]), y.expand(len(seed), *y.shape[-2:])) - 0.5) * amp
