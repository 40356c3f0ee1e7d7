"""Drawing masks on a batch of images with tensor ops only (no loop over pixels or samples).

Per pixel: face-frame coordinates -> inside/outside the mask outline (polar table lookup, the
outline stored as its radius along 256 rays from the mask centre) -> anti-aliased coverage from the
signed distance (finite-difference gradient of the implicit function) -> fabric colour, texture,
light and structure -> alpha composite.

Ground truth: ``mask = alpha > 0``, the pixels whose value the composite changed. Pixels with
``alpha == 0`` are returned bit-identical; coverage below 1/16 is dropped (not drawn, not in the
mask) and a covered pixel that would round back to its old value is moved by one level, so
``mask`` is exactly the set of changed pixels. Nothing is ever drawn within ``0.12`` face units +
1 pixel of the eye line.
"""
from __future__ import annotations

import torch

from meer.masking.geometry import Frame, face_frame, lookup_radius, polar_radii, predict_contour
from meer.masking.sampling import MaskParams
from meer.masking.shading import grain, lighting, structure
from meer.masking.shapes import make_outline
from meer.masking.spec import KINDS
from meer.masking.textures import texture_colors

N_RAYS = 256
EYE_MARGIN = 0.12  # face units kept free under the eye line (plus one pixel)
MIN_ALPHA = 1.0 / 16
LOOP_WIDTH = 0.022  # face units (at least one pixel)


def _segment_distance(u: torch.Tensor, v: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    """Distance from the points ``(u, v)`` (B x H x W) to the nearest of the segments ``seg``
    (B x S x 2 x 2), in the same units."""
    best = None
    for i in range(seg.shape[1]):
        ax, ay = seg[:, i, 0, 0, None, None], seg[:, i, 0, 1, None, None]
        bx, by = seg[:, i, 1, 0, None, None], seg[:, i, 1, 1, None, None]
        abx, aby = bx - ax, by - ay
        inv = 1.0 / (abx * abx + aby * aby).clamp_min(1e-9)
        px, py = u - ax, v - ay
        t = ((px * abx + py * aby) * inv).clamp(0, 1)
        dx, dy = px - t * abx, py - t * aby
        d2 = dx * dx + dy * dy
        best = d2 if best is None else torch.minimum(best, d2)
    return torch.sqrt(best)


def eye_clip(v_px: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
    """Coverage allowed at ``v_px`` pixels under the eye line: 0 within ``EYE_MARGIN`` face units + 1 px
    (minus half a pixel of anti-aliasing), 1 from half a pixel further down."""
    return (v_px - (EYE_MARGIN * unit + 1.0) + 0.5).clamp(0, 1)


def composite(images: torch.Tensor, colour: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend ``colour`` (B x 3 x H x W) over ``images`` with coverage ``alpha`` (B x H x W).

    Coverage below ``MIN_ALPHA`` is dropped; pixels with no coverage are returned bit-identical and
    every covered pixel changes (one level nudge where the blend would round back), so the returned
    mask (B x 1 x H x W, bool) is exactly the set of changed pixels.
    """
    alpha = torch.where(alpha >= MIN_ALPHA, alpha, torch.zeros_like(alpha))
    x = images.float()
    a4 = alpha[:, None]
    mask = a4 > 0
    out = torch.where(mask, x + (colour - x) * a4, x).to(images.dtype)
    same = mask[:, 0] & (out == images).all(dim=1)
    if bool(same.any()):
        first = images[:, 0]
        step = torch.where(first < 0.5, 1.0 / 255, -1.0 / 255).to(images.dtype)
        out[:, 0] = torch.where(same, first + step, out[:, 0])
    return out, mask


def render_masks(images: torch.Tensor, landmarks: torch.Tensor, params: MaskParams,
                 contour: torch.Tensor | None = None, bank: torch.Tensor | None = None,
                 offset: tuple[int, int] = (0, 0)) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one mask per image.

    Args:
        images: B x 3 x H x W in [0, 1] (any float dtype, any device).
        landmarks: B x 5 x 2 pixels (x, y), order of ``ARCFACE_112``.
        params: per-sample ``MaskParams`` (moved to the images' device).
        contour: optional B x 20 x 2 jaw + nose-bridge points in pixels (from 68 landmarks);
            predicted from the 5 points when None.
        bank: N x 3 x S x S texture images for the "image" texture.
        offset: ``(x, y)`` of the images' top-left pixel in a larger picture (the fabric grain is
            fixed to picture pixels, so rendering a crop equals rendering the whole picture).

    Returns:
        ``(masked B x 3 x H x W, mask B x 1 x H x W)`` in the images' dtype, mask in {0, 1}.
    """
    dev = images.device
    out_dtype = images.dtype
    b, _, hgt, wid = images.shape
    p = params.to(dev)
    lm = landmarks.to(dev, torch.float32)
    frame: Frame = face_frame(lm)
    f5 = frame.to_frame(lm)
    cont = frame.to_frame(contour.to(dev, torch.float32)) if contour is not None else predict_contour(f5, frame.iod)
    outline = make_outline(f5, cont, p.kind, p.coverage, p.seed, p.scale.float(), p.shift.float(), p.tilt.float())
    table = torch.minimum(polar_radii(outline.poly, outline.center, N_RAYS),
                          polar_radii(outline.clip, outline.center, N_RAYS))

    ys = torch.arange(hgt, device=dev, dtype=torch.float32)
    xs = torch.arange(wid, device=dev, dtype=torch.float32)
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    unit = frame.unit[:, None, None]
    exx, exy = frame.ex[:, 0, None, None], frame.ex[:, 1, None, None]
    dx = gx[None] - frame.origin[:, 0, None, None]
    dy = gy[None] - frame.origin[:, 1, None, None]
    u = (dx * exx + dy * exy) / unit
    v = (dy * exx - dx * exy) / unit
    # nothing is drawn above the eye line: work only on the rows below it (about half an aligned crop)
    margin = EYE_MARGIN * unit + 1.0
    rows = (v * unit > margin - 0.5).flatten(0)
    rows = rows.reshape(b, hgt, wid).any(dim=2).any(dim=0)
    if not bool(rows.any()):
        return images.clone(), torch.zeros_like(images[:, :1])
    r0 = int(torch.nonzero(rows)[0, 0])
    full_x = images
    u, v, gx, gy = u[:, r0:], v[:, r0:], gx[r0:], gy[r0:]
    images = images[:, :, r0:]
    hgt = hgt - r0

    # inside test and anti-aliased coverage
    du = u - outline.center[:, 0, None, None]
    dv = v - outline.center[:, 1, None, None]
    rho = torch.sqrt(du * du + dv * dv)
    radius = lookup_radius(table, torch.atan2(dv, du))
    f = (rho - radius) * unit  # pixels along the ray, > 0 outside
    if hgt > 1 and wid > 1:
        fy, fx = torch.gradient(f, dim=(1, 2))
        slope = torch.sqrt(fx * fx + fy * fy).clamp_min(0.25)
    else:
        slope = torch.ones_like(f)
    sd = f / slope
    alpha_shape = (0.5 - sd).clamp(0, 1)

    # ear loops
    seg = outline.loops.reshape(b, 4, 2, 2)
    d_loop = _segment_distance(u, v, seg) * unit
    width = (LOOP_WIDTH * unit).clamp_min(1.0)
    alpha_loop = (width / 2 + 0.5 - d_loop).clamp(0, 1) * outline.has_loops[:, None, None].float()

    # nothing near the eyes
    alpha = torch.maximum(alpha_shape, alpha_loop) * eye_clip(v * unit, unit)

    # appearance, in the mask's own frame
    a, bb = outline.local_maps(u, v, p.scale.float(), p.shift.float(), p.tilt.float())
    albedo = texture_colors(p.texture, p.seed, p.color.float(), p.color2.float(), a, bb, p.image_index, bank)
    shade = lighting(p.kind, p.seed, a, bb, outline)
    mult, valve, valve_color = structure(p.kind, p.seed, a, bb, outline, -sd, frame.unit)
    shade = shade * mult
    colour = albedo * shade[:, None] + grain(p.seed, gx.long() + int(offset[0]), gy.long() + int(offset[1]))[:, None]
    colour = colour + (valve_color[:, :, None, None] * shade[:, None] - colour) * valve[:, None]
    surgical_white = (p.kind == KINDS.index("surgical"))[:, None, None, None]
    loop_colour = torch.where(surgical_white, torch.full_like(colour, 0.94), p.color.float()[:, :, None, None] * 0.85)
    loop_colour = loop_colour * shade.clamp(0.6, 1.1)[:, None]
    w_loop = ((alpha_loop - alpha_shape).clamp_min(0) / alpha_loop.clamp_min(1e-6))[:, None]
    colour = (colour + (loop_colour - colour) * w_loop).clamp(0, 1)

    out, mask = composite(images, colour, alpha)
    if r0 > 0:
        out = torch.cat([full_x[:, :, :r0], out], dim=2)
        mask = torch.cat([mask.new_zeros(b, 1, r0, wid), mask], dim=2)
    return out, mask.to(out_dtype)
