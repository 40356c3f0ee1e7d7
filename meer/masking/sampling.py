"""Drawing masks: every per-sample parameter is a hash of the sample's seed (see ``noise.py``).

``params_from_seeds`` draws everything (kind, coverage, colours, texture, jitter, details) from seeds;
``params_from_specs`` takes the top-level choices from ``MaskSpec``s and the details from their
seeds. Both use ``details_from_seeds``, so a spec drawn by ``sample_spec`` and re-rendered from its
JSON, or drawn inside ``MaskAugment``, gives the same mask.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np
import torch

from meer.masking.noise import hash_uniform, uniform_table
from meer.masking.spec import (COVERAGES, KINDS, PALETTE, SCALE_RANGE, SHIFT_RANGE, TEXTURES, TILT_RANGE,
                               MaskSpec, MaskSpecError)

KIND_WEIGHTS = {"surgical": 0.35, "n95": 0.15, "kn95": 0.15, "cloth": 0.2, "procedural": 0.15}
COVERAGE_WEIGHTS = {"over_nose": 0.55, "below_nose": 0.3, "chin_only": 0.15}
# rows: kinds; columns: TEXTURES (none, stripes, checks, dots, floral, image)
TEXTURE_WEIGHTS = {
    "surgical": (0.82, 0.04, 0.04, 0.05, 0.05, 0.0),
    "n95": (0.90, 0.0, 0.0, 0.05, 0.05, 0.0),
    "kn95": (0.80, 0.05, 0.05, 0.05, 0.05, 0.0),
    "cloth": (0.30, 0.15, 0.15, 0.13, 0.15, 0.12),
    "procedural": (0.30, 0.15, 0.15, 0.15, 0.15, 0.10),
}
# probability of a random (HSV) colour instead of a palette colour, and palette weights per kind
RANDOM_COLOR_P = {"surgical": 0.05, "n95": 0.05, "kn95": 0.1, "cloth": 0.25, "procedural": 0.35}
PALETTE_WEIGHTS = {
    "surgical": {"light_blue": 4, "surgical_blue": 3, "white": 2, "surgical_green": 1.5, "pink": 1, "black": 1.5, "sky": 1},
    "n95": {"white": 6, "off_white": 3, "grey": 1, "black": 0.5, "light_blue": 0.5},
    "kn95": {"white": 4, "black": 3, "grey": 1.5, "pink": 1, "light_blue": 1, "navy": 0.5},
    "cloth": {**{n: 1.0 for n in PALETTE}, "black": 2.0, "navy": 1.5, "grey": 1.5},
    "procedural": {n: 1.0 for n in PALETTE},
}
_PALETTE_NAMES = tuple(PALETTE)


@dataclass
class MaskParams:
    """Everything the renderer needs, one row per sample (tensors on one device)."""

    seed: torch.Tensor  # B long
    kind: torch.Tensor  # B long, index into KINDS
    coverage: torch.Tensor  # B long, index into COVERAGES
    texture: torch.Tensor  # B long, index into TEXTURES
    image_index: torch.Tensor  # B long, texture image in the bank (-1: none)
    color: torch.Tensor  # B x 3 in [0, 1]
    color2: torch.Tensor  # B x 3, the texture's second colour
    scale: torch.Tensor  # B
    shift: torch.Tensor  # B x 2 face units
    tilt: torch.Tensor  # B radians

    def to(self, device: torch.device | str) -> "MaskParams":
        return MaskParams(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def __len__(self) -> int:
        return int(self.seed.shape[0])

    def select(self, index: torch.Tensor) -> "MaskParams":
        """The rows ``index`` (a long tensor)."""
        return MaskParams(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def _choose(u: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Index per row of ``weights`` (B x N, rows need not sum to 1) for uniforms ``u`` (B)."""
    cum = torch.cumsum(weights, dim=1)
    cum = cum / cum[:, -1:].clamp_min(1e-12)
    return (u[:, None] >= cum).sum(dim=1).clamp_max(weights.shape[1] - 1)


def _allowed(names: Sequence[str] | None, universe: Sequence[str], what: str) -> torch.Tensor:
    if names is None:
        return torch.ones(len(universe))
    names = list(names)
    if not names:
        raise MaskSpecError(f"no {what} allowed (empty list)")
    bad = [n for n in names if n not in universe]
    if bad:
        raise MaskSpecError(f"unknown {what} {bad[0]!r} (choose from {', '.join(universe)})")
    return torch.tensor([1.0 if n in names else 0.0 for n in universe])


def hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Vectorised HSV -> RGB, all in [0, 1]; returns ``(..., 3)``."""
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], dim=-1)
    f = v[..., None] - v[..., None] * s[..., None] * (torch.minimum(k, 4 - k).clamp(0, 1))
    return f


def params_from_seeds(seeds: torch.Tensor, kinds: Sequence[str] | None = None,
                      coverages: Sequence[str] | None = None, textures: Sequence[str] | None = None,
                      n_images: int = 0) -> MaskParams:
    """Draw complete mask parameters from ``seeds`` (B long), vectorised, on the seeds' device.

    ``kinds``/``coverages``/``textures`` restrict the choices (names from ``KINDS`` etc.); the
    "image" texture needs ``n_images`` > 0 texture images in the renderer's bank.
    """
    seeds = seeds.long()
    dev = seeds.device
    b = seeds.shape[0]
    tab = uniform_table(seeds)
    h = lambda key: tab[:, key]  # noqa: E731
    kind_w = torch.tensor([KIND_WEIGHTS[k] for k in KINDS]) * _allowed(kinds, KINDS, "mask kind")
    cov_w = torch.tensor([COVERAGE_WEIGHTS[c] for c in COVERAGES]) * _allowed(coverages, COVERAGES, "coverage")
    tex_allowed = _allowed(textures, TEXTURES, "texture")
    if n_images <= 0:
        if textures is not None and list(textures) == ["image"]:
            raise MaskSpecError("texture 'image' needs texture images (give a texture folder)")
        tex_allowed[TEXTURES.index("image")] = 0.0
    kind = _choose(h(100), kind_w.to(dev).expand(b, -1))
    coverage = _choose(h(101), cov_w.to(dev).expand(b, -1))
    tex_table = torch.tensor([TEXTURE_WEIGHTS[k] for k in KINDS]) * tex_allowed
    empty_rows = tex_table.sum(1) <= 0
    tex_table[empty_rows] = tex_allowed
    texture = _choose(h(102), tex_table.to(dev)[kind])
    image_index = torch.where(texture == TEXTURES.index("image"),
                              (h(112) * max(n_images, 1)).long().clamp_max(max(n_images - 1, 0)),
                              torch.full_like(seeds, -1))
    pal = torch.tensor([PALETTE[n] for n in _PALETTE_NAMES], dtype=torch.float32) / 255.0
    pal_w = torch.tensor([[PALETTE_WEIGHTS[k].get(n, 0.0) for n in _PALETTE_NAMES] for k in KINDS])
    pal_idx = _choose(h(104), pal_w.to(dev)[kind])
    rand_p = torch.tensor([RANDOM_COLOR_P[k] for k in KINDS], device=dev)[kind]
    rand_rgb = hsv_to_rgb(h(105), 0.15 + 0.65 * h(106), 0.25 + 0.7 * h(107))
    color = torch.where((h(103) < rand_p)[:, None], rand_rgb, pal.to(dev)[pal_idx])
    color = (color * 255).round() / 255  # what a MaskSpec can hold
    color2 = second_color(seeds, color, tab)
    lo, hi = SCALE_RANGE
    scale = lo + (hi - lo) * h(108)
    shift = torch.stack([h(109), h(110)], dim=1) * (2 * SHIFT_RANGE) - SHIFT_RANGE
    tilt = (h(111) * 2 - 1) * math.radians(TILT_RANGE)
    return MaskParams(seed=seeds, kind=kind, coverage=coverage, texture=texture, image_index=image_index,
                      color=color, color2=color2, scale=scale, shift=shift, tilt=tilt)


def second_color(seeds: torch.Tensor, color: torch.Tensor, tab: torch.Tensor | None = None) -> torch.Tensor:
    """The texture's second colour: a lighter/darker shade of ``color`` or another palette colour
    (``tab``: the seeds' ``uniform_table`` when already computed)."""
    tab = uniform_table(seeds) if tab is None else tab
    pal = torch.tensor([PALETTE[n] for n in _PALETTE_NAMES], dtype=torch.float32, device=seeds.device) / 255.0
    other = pal[(tab[:, 25] * len(_PALETTE_NAMES)).long().clamp_max(len(_PALETTE_NAMES) - 1)]
    lum = (color * torch.tensor([0.299, 0.587, 0.114], device=seeds.device)).sum(1, keepdim=True)
    t = 0.45 + 0.4 * tab[:, 26][:, None]
    shade = torch.where(lum > 0.5, color * (1 - t), color + (1 - color) * t)
    c2 = torch.where((tab[:, 24] < 0.5)[:, None], shade, other)
    # never (almost) the same colour as the base: fall back to the shade
    same = (c2 - color).abs().sum(1, keepdim=True) < 0.15
    c2 = torch.where(same, shade, c2)
    return (c2 * 255).round() / 255


def params_from_specs(specs: Sequence[MaskSpec], image_index: Sequence[int] | None = None,
                      device: torch.device | str = "cpu") -> MaskParams:
    """Stack ``MaskSpec``s (procedural kinds only) into renderer parameters."""
    for s in specs:
        if s.is_template:
            raise MaskSpecError(f"{s.kind}: template masks are rendered by meer.masking.templates")
    idx = list(image_index) if image_index is not None else [-1] * len(specs)

    def t(values, dtype=torch.float32):
        return torch.tensor(values, dtype=dtype, device=device)

    return MaskParams(
        seed=t([s.seed for s in specs], torch.long),
        kind=t([KINDS.index(s.kind) for s in specs], torch.long),
        coverage=t([COVERAGES.index(s.coverage) for s in specs], torch.long),
        texture=t([TEXTURES.index("image") if s.texture_path else TEXTURES.index(s.texture) for s in specs],
                  torch.long),
        image_index=t(idx, torch.long),
        color=t([s.color for s in specs]) / 255.0,
        color2=t([s.texture_color for s in specs]) / 255.0,
        scale=t([s.scale for s in specs]),
        shift=t([s.shift for s in specs]),
        tilt=t([math.radians(s.tilt) for s in specs]),
    )


def spec_from_params(params: MaskParams, i: int, texture_names: Sequence[str] | None = None) -> MaskSpec:
    """Row ``i`` of ``params`` as a ``MaskSpec``; image textures are named from ``texture_names``."""
    tex = TEXTURES[int(params.texture[i])]
    if tex == "image":
        k = int(params.image_index[i])
        name = texture_names[k] if texture_names is not None and 0 <= k < len(texture_names) else str(k)
        tex = f"image:{name}"
    rgb = lambda c: tuple(int(v) for v in np.round(c.detach().cpu().numpy() * 255))  # noqa: E731
    return MaskSpec(kind=KINDS[int(params.kind[i])], coverage=COVERAGES[int(params.coverage[i])],
                    color=rgb(params.color[i]), texture=tex, texture_color=rgb(params.color2[i]),
                    scale=float(params.scale[i]), shift=tuple(float(v) for v in params.shift[i]),
                    tilt=math.degrees(float(params.tilt[i])), seed=int(params.seed[i]))


def sample_spec(rng: np.random.Generator | int, kinds: Sequence[str] | None = None,
                coverages: Sequence[str] | None = None, textures: Sequence[str] | None = None,
                texture_images: Sequence[str] | None = None, templates: Sequence[str] | None = None,
                template_p: float = 0.0) -> MaskSpec:
    """Draw a ``MaskSpec``: a seed from ``rng`` (a numpy Generator or an int seed), the rest from it.

    ``texture_images``: paths usable as ``image:<path>`` textures. ``templates``: template names
    that replace a procedural kind with probability ``template_p`` (or always, when ``kinds`` is
    empty and templates are given).
    """
    if isinstance(rng, (int, np.integer)):
        seed = int(rng)
        if not 0 <= seed < 2**31:
            raise MaskSpecError(f"seed must be within 0..2**31-1, got {seed}")
    elif isinstance(rng, np.random.Generator):
        seed = int(rng.integers(0, 2**31 - 1))
    else:
        raise MaskSpecError(f"rng must be a numpy Generator or an int seed, got {type(rng).__name__}")
    seeds = torch.tensor([seed])
    images = list(texture_images or [])
    if kinds is not None and len(kinds) == 0 and not templates:
        raise MaskSpecError("no mask kind allowed (empty list)")
    use_template = bool(templates) and (
        (kinds is not None and len(kinds) == 0) or float(hash_uniform(seeds, 120)) < template_p)
    p = params_from_seeds(seeds, kinds if (kinds is None or len(kinds)) else None, coverages, textures, len(images))
    spec = spec_from_params(p, 0, images)
    if use_template:
        names = list(templates)  # type: ignore[arg-type]
        spec.kind = "template:" + names[int(float(hash_uniform(seeds, 121)) * len(names)) % len(names)]
    return spec
