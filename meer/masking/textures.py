"""Mask fabrics as tensor ops on the mask's own coordinates (so patterns follow tilt and scale).

Procedural: ``stripes``, ``checks``, ``dots`` (staggered polka dots), ``floral`` (five-petal flowers
on a jittered lattice over soft value noise). ``image``: a picture from a texture bank, mirror-tiled
(seamless) at about one tile per face unit. All patterns mix the mask colour with its second colour
with smooth (anti-aliased) transitions.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from meer.masking.noise import hash2d_uniform, hash_uniform, uniform_table, value_noise
from meer.masking.spec import TEXTURES, MaskSpecError

FREQ = {"stripes": (4.0, 8.0), "checks": (3.0, 6.0), "dots": (5.0, 8.0), "floral": (2.6, 4.2)}
FLOWER_CENTRES = torch.tensor([[0.96, 0.84, 0.35], [0.98, 0.98, 0.96], [0.85, 0.45, 0.2]])
BANK_SIZE = 128


def _smoothstep(e0: float, e1: float, x: torch.Tensor) -> torch.Tensor:
    t = ((x - e0) / (e1 - e0)).clamp(0, 1)
    return t * t * (3 - 2 * t)


def _rotated(a: torch.Tensor, b: torch.Tensor, angle: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c = torch.cos(angle)[:, None, None]
    s = torch.sin(angle)[:, None, None]
    return a * c + b * s, -a * s + b * c


def pattern(name: str, seed: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Procedural pattern ``name`` on coordinates ``a, b`` (B x H x W face units).

    Returns ``(weight of the second colour, weight of the flower-centre colour)``, each B x H x W.
    """
    dt = a.dtype
    tab = uniform_table(seed, dt)
    h = lambda key: tab[:, key]  # noqa: E731
    lo, hi = FREQ[name]
    f = (lo + (hi - lo) * h(19))[:, None, None]
    zero = torch.zeros_like(a)
    if name == "stripes":
        # mostly horizontal or vertical, sometimes diagonal
        choice = h(20)
        angle = torch.where(choice < 0.4, torch.zeros_like(choice),
                            torch.where(choice < 0.7, torch.full_like(choice, math.pi / 2), (h(29) - 0.5) * math.pi))
        ra, _ = _rotated(a, b, angle)
        duty = (0.25 + 0.5 * h(30))[:, None, None]
        q = torch.frac(ra * f)
        q = torch.where(q < 0, q + 1, q)
        edge = 0.06
        m = _smoothstep(0, edge, q) * (1 - _smoothstep(duty, duty + edge, q))
        return m, zero
    if name == "checks":
        angle = (h(20) < 0.3).to(dt) * (math.pi / 4)
        ra, rb = _rotated(a, b, angle)
        q = torch.sin(2 * math.pi * f * ra) * torch.sin(2 * math.pi * f * rb)
        return _smoothstep(-0.2, 0.2, q), zero
    gx, gy = a * f, b * f
    if name == "dots":
        row = torch.floor(gy)
        gx = gx + 0.5 * torch.remainder(row, 2)
        lx = gx - torch.floor(gx) - 0.5
        ly = gy - row - 0.5
        r = (0.16 + 0.14 * h(30))[:, None, None]
        d = torch.sqrt(lx * lx + ly * ly)
        return 1 - _smoothstep(0.0, 0.08, d - r), zero
    if name == "floral":
        ix, iy = torch.floor(gx), torch.floor(gy)
        jx = (hash2d_uniform(seed, 40, ix, iy).to(dt) - 0.5) * 0.3
        jy = (hash2d_uniform(seed, 41, ix, iy).to(dt) - 0.5) * 0.3
        rot = hash2d_uniform(seed, 42, ix, iy).to(dt) * (2 * math.pi)
        size = 0.22 + 0.08 * hash2d_uniform(seed, 43, ix, iy).to(dt)
        lx = gx - ix - 0.5 - jx
        ly = gy - iy - 0.5 - jy
        rho = torch.sqrt(lx * lx + ly * ly)
        phi = torch.atan2(ly, lx)
        petal = size * (0.45 + 0.55 * torch.abs(torch.cos(2.5 * phi + rot)))
        flower = 1 - _smoothstep(-0.03, 0.03, rho - petal)
        centre = 1 - _smoothstep(-0.025, 0.025, rho - 0.28 * size)
        # soft blotches of the second colour between the flowers ("floral-like noise")
        blotch = _smoothstep(0.55, 0.8, value_noise(seed, gx * 0.7, gy * 0.7, key=44)) * 0.5
        m = torch.maximum(flower, blotch)
        return m, centre
    raise MaskSpecError(f"unknown procedural texture {name!r}")


def texture_colors(texture: torch.Tensor, seed: torch.Tensor, color: torch.Tensor, color2: torch.Tensor,
                   a: torch.Tensor, b: torch.Tensor, image_index: torch.Tensor,
                   bank: torch.Tensor | None) -> torch.Tensor:
    """Albedo ``B x 3 x H x W`` of each sample's fabric at its local coordinates ``a, b``."""
    out = color[:, :, None, None].expand(-1, -1, *a.shape[1:]).clone()
    for t_idx, name in enumerate(TEXTURES):
        if name == "none":
            continue
        sel = (texture == t_idx).nonzero(as_tuple=True)[0]
        if sel.numel() == 0:
            continue
        sa, sb, ss = a[sel], b[sel], seed[sel]
        if name == "image":
            if bank is None or bank.shape[0] == 0:
                raise MaskSpecError("an image texture was requested but no texture images were given")
            idx = image_index[sel].clamp(0, bank.shape[0] - 1)
            tiles = bank.to(device=a.device, dtype=a.dtype)[idx]
            tab = uniform_table(ss, a.dtype)
            f = (0.7 + 0.5 * tab[:, 31])[:, None, None]
            off = tab[:, 32][:, None, None]

            def tri(x: torch.Tensor) -> torch.Tensor:  # mirror tiling: 0..1..0 with period 2
                return 1 - torch.abs(torch.remainder(x, 2) - 1)

            grid = torch.stack([tri(sa * f + off) * 2 - 1, tri(sb * f + off) * 2 - 1], dim=-1)
            out[sel] = F.grid_sample(tiles, grid, mode="bilinear", padding_mode="border", align_corners=False)
            continue
        m, centre = pattern(name, ss, sa, sb)
        c1 = color[sel][:, :, None, None]
        c2 = color2[sel][:, :, None, None]
        pick = (hash_uniform(ss, 27) * len(FLOWER_CENTRES)).long().clamp_max(len(FLOWER_CENTRES) - 1)
        c3 = FLOWER_CENTRES.to(a.device, a.dtype)[pick][:, :, None, None]
        mix = c1 + (c2 - c1) * m[:, None]
        out[sel] = mix + (c3 - mix) * centre[:, None]
    return out


def load_texture_bank(paths: Sequence[str | Path], size: int = BANK_SIZE) -> torch.Tensor:
    """Read texture images (any format ``read_image`` takes) into an ``N x 3 x size x size`` bank
    (centre-cropped square, resized with antialiasing)."""
    from meer.utils.images import read_image

    tiles = []
    for p in paths:
        rgb = read_image(p).rgb
        h, w = rgb.shape[:2]
        s = min(h, w)
        y0, x0 = (h - s) // 2, (w - s) // 2
        t = torch.from_numpy(np.ascontiguousarray(rgb[y0:y0 + s, x0:x0 + s]).copy()).permute(2, 0, 1)[None].float() / 255
        tiles.append(F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0])
    if not tiles:
        return torch.zeros(0, 3, size, size)
    return torch.stack(tiles).clamp(0, 1)
