"""Counter-based random numbers as tensor ops: the same values on every device, for any batch order.

Every random choice of a mask is ``hash(seed, key, ...)`` rather than a draw from a stateful
generator, so a mask is a pure function of its seed: ``apply_mask`` on one image and ``MaskAugment``
on a batch (CPU or CUDA) give the same shape, colours and grain for the same seed.
The hash is a 32-bit integer mixer (xor-shift / multiply, Wellons' "lowbias32" structure) evaluated in
int64 with multipliers below 2**31, so no product overflows.
"""
from __future__ import annotations

import torch

_M32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9


def _mix32(x: torch.Tensor) -> torch.Tensor:
    x = x & _M32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x68E31DA5) & _M32
    x = x ^ (x >> 16)
    return x


def hash_u32(seed: torch.Tensor, *keys: torch.Tensor | int) -> torch.Tensor:
    """A uniformly mixed integer in ``[0, 2**32)`` for each broadcast ``(seed, *keys)`` tuple."""
    h = _mix32(seed.long() ^ _GOLDEN)
    for key in keys:
        k = key.long() if isinstance(key, torch.Tensor) else int(key)
        h = _mix32(h ^ ((k * 0x2C1B3C6D + _GOLDEN) & _M32))
    return h


def hash_uniform(seed: torch.Tensor, *keys: torch.Tensor | int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Uniform in ``[0, 1)`` (24-bit resolution) for each broadcast ``(seed, *keys)``."""
    return (hash_u32(seed, *keys) >> 8).to(dtype) * (1.0 / 16777216.0)


N_KEYS = 128  # per-sample parameter keys used by the masks (0-127)


def uniform_table(seed: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``hash_uniform(seed, k)`` for every key ``k < N_KEYS`` at once: B x N_KEYS (one vectorised call
    instead of dozens of tiny ones)."""
    keys = torch.arange(N_KEYS, device=seed.device)
    return hash_uniform(seed.reshape(-1, 1), keys[None], dtype=dtype)


def hash2d_uniform(seed: torch.Tensor, key: int, ix: torch.Tensor, iy: torch.Tensor) -> torch.Tensor:
    """Uniform in ``[0, 1)`` per integer lattice point ``(ix, iy)``; ``seed`` is B and broadcasts over
    the trailing dimensions of ``ix``/``iy`` (B x ...). One mixing round per point (fast per pixel)."""
    base = hash_u32(seed, key).reshape(seed.shape + (1,) * (ix.dim() - seed.dim()))
    h = _mix32(base ^ ((ix.long() * 0x1B873593 + iy.long() * 0x5BD1E995) & _M32))
    return (h >> 8).float() * (1.0 / 16777216.0)


def value_noise(seed: torch.Tensor, x: torch.Tensor, y: torch.Tensor, key: int) -> torch.Tensor:
    """Smooth 2-D value noise in ``[0, 1)``: hashed lattice values, smoothstep-interpolated.

    ``seed``: B; ``x``, ``y``: B x ... in lattice units (one cell per unit).
    """
    x0 = torch.floor(x)
    y0 = torch.floor(y)
    fx = x - x0
    fy = y - y0
    sx = fx * fx * (3 - 2 * fx)
    sy = fy * fy * (3 - 2 * fy)
    ix = x0.long()
    iy = y0.long()
    v00 = hash2d_uniform(seed, key, ix, iy).to(x.dtype)
    v10 = hash2d_uniform(seed, key, ix + 1, iy).to(x.dtype)
    v01 = hash2d_uniform(seed, key, ix, iy + 1).to(x.dtype)
    v11 = hash2d_uniform(seed, key, ix + 1, iy + 1).to(x.dtype)
    top = v00 + (v10 - v00) * sx
    bottom = v01 + (v11 - v01) * sx
    return top + (bottom - top) * sy
