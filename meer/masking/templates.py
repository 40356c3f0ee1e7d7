"""MaskTheFace mask templates (RGBA pictures with six anchor points each), warped onto a face.

A template folder holds ``masks.cfg`` (INI sections ``[name]`` with ``template: <path>`` and anchors
``mask_a`` ... ``mask_f``) and the PNGs (looked up by file name under ``templates/`` or next to the
cfg). Anchors: ``a``/``c`` the upper left/right corners, ``b`` the top middle (over the nose),
``d``/``f`` the lower left/right corners, ``e`` the bottom middle (under the chin). The same six points
are placed on the face from the landmarks (nose line and lower-face contour, see ``geometry``) and
the template is warped with the least-squares homography between them (kornia DLT +
``warp_perspective``, batched per template); its alpha is the coverage.
"""
from __future__ import annotations

import configparser
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from kornia.geometry.homography import find_homography_dlt
from kornia.geometry.transform import warp_perspective

from meer.masking.geometry import face_frame, predict_contour, rotate
from meer.masking.shapes import make_outline
from meer.masking.spec import MaskSpecError

ANCHORS = ("mask_a", "mask_b", "mask_c", "mask_d", "mask_e", "mask_f")


@dataclass
class Template:
    name: str
    path: Path
    anchors: np.ndarray  # 6 x 2 template pixels (a..f)

    @functools.cached_property
    def rgba(self) -> np.ndarray:
        img = cv2.imread(str(self.path), cv2.IMREAD_UNCHANGED)
        if img is None or img.ndim != 3 or img.shape[2] != 4:
            raise MaskSpecError(f"template {self.name}: {self.path} is not an RGBA image")
        return np.ascontiguousarray(img[..., [2, 1, 0, 3]])

    @functools.cached_property
    def mean_color(self) -> tuple[int, int, int]:
        rgba = self.rgba
        opaque = rgba[..., 3] > 128
        return tuple(int(round(c)) for c in rgba[opaque][:, :3].mean(0))  # type: ignore[return-value]


class TemplateLibrary:
    """The templates described by a ``masks.cfg`` (sections without anchors are skipped)."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        cfg_path = folder / "masks.cfg" if folder.is_dir() else folder
        if not cfg_path.is_file():
            raise MaskSpecError(f"no masks.cfg in template folder {folder}")
        parser = configparser.ConfigParser(inline_comment_prefixes=(";", "#"))
        try:
            parser.read(cfg_path, encoding="utf-8")
        except configparser.Error as exc:
            raise MaskSpecError(f"{cfg_path}: cannot parse ({str(exc).splitlines()[0]})") from None
        self.folder = cfg_path.parent
        self.templates: dict[str, Template] = {}
        for name in parser.sections():
            sec = parser[name]
            if "template" not in sec or not all(k in sec for k in ANCHORS):
                continue
            file_name = Path(sec["template"].strip()).name
            path = next((p for p in (self.folder / "templates" / file_name, self.folder / file_name) if p.is_file()), None)
            if path is None:
                continue
            try:
                anchors = np.array([[float(x) for x in sec[k].split(",")] for k in ANCHORS], dtype=np.float32)
            except ValueError:
                raise MaskSpecError(f"{cfg_path}: [{name}] has a malformed anchor point") from None
            self.templates[name] = Template(name=name, path=path, anchors=anchors)
        if not self.templates:
            raise MaskSpecError(f"{cfg_path}: no usable template (need template: and mask_a..mask_f)")

    @property
    def names(self) -> list[str]:
        return sorted(self.templates)

    @property
    def frontal_names(self) -> list[str]:
        """Templates drawn for a frontal face (the ``_left``/``_right`` views excluded)."""
        return [n for n in self.names if not n.endswith(("_left", "_right"))]

    def get(self, name: str) -> Template:
        if name not in self.templates:
            raise MaskSpecError(f"unknown template {name!r} (available: {', '.join(self.names)})")
        return self.templates[name]


def side_u(contour: torch.Tensor, v: torch.Tensor, side: int) -> torch.Tensor:
    """u of the jaw contour (B x 20 x 2, face units) at heights ``v`` (B); side 0: points 0-8
    (image left), side 1: points 16-8. Piecewise linear, clamped to the contour's ends."""
    pts = contour[:, 0:9] if side == 0 else contour[:, 8:17].flip(1)
    vs, us = pts[..., 1], pts[..., 0]
    v0, v1, u0, u1 = vs[:, :-1], vs[:, 1:], us[:, :-1], us[:, 1:]
    dv = v1 - v0
    t = (v[:, None] - v0) / torch.where(dv.abs() < 1e-9, torch.full_like(dv, 1e-9), dv)
    inside = (t >= 0) & (t <= 1)
    cand = u0 + (u1 - u0) * t.clamp(0, 1)
    first = inside.float().argmax(dim=1, keepdim=True)
    hit = torch.gather(cand, 1, first)[:, 0]
    top_u = torch.gather(us, 1, vs.argmin(dim=1, keepdim=True))[:, 0]
    low_u = torch.gather(us, 1, vs.argmax(dim=1, keepdim=True))[:, 0]
    clamped = torch.where(v < vs.min(dim=1).values, top_u, low_u)
    return torch.where(inside.any(dim=1), hit, clamped)


def face_anchors(f5: torch.Tensor, contour: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
    """The six anchor points (B x 6 x 2, face units) for masks whose top edge is at height ``top`` (B)."""
    nose_u = f5[:, 2, 0]
    mouth_v = (f5[:, 3, 1] + f5[:, 4, 1]) / 2
    chin = contour[:, 8]
    side_top = top + 0.12
    side_low = mouth_v + 0.5 * (chin[:, 1] - mouth_v)
    pts = [
        (side_u(contour, side_top, 0), side_top),
        (nose_u, top),
        (side_u(contour, side_top, 1), side_top),
        (side_u(contour, side_low, 0), side_low),
        (chin[:, 0], chin[:, 1] + 0.04),
        (side_u(contour, side_low, 1), side_low),
    ]
    return torch.stack([torch.stack(p, dim=1) for p in pts], dim=1)


class TemplateBank:
    """Templates as premultiplied RGBA tensors (longest side at most ``max_side``; None = full size),
    with their anchors in the stored pixels."""

    def __init__(self, library: TemplateLibrary, names: Sequence[str] | None = None, max_side: int | None = 256):
        self.names = list(names) if names is not None else library.frontal_names
        if not self.names:
            raise MaskSpecError("no templates to draw from")
        self.images: list[torch.Tensor] = []
        anchors = []
        for name in self.names:
            tpl = library.get(name)
            rgba = torch.from_numpy(tpl.rgba.copy()).permute(2, 0, 1).float() / 255.0
            rgba = torch.cat([rgba[:3] * rgba[3:], rgba[3:]], dim=0)
            h, w = rgba.shape[1:]
            s = 1.0 if max_side is None else min(1.0, max_side / max(h, w))
            if s < 1.0:
                size = (max(2, round(h * s)), max(2, round(w * s)))
                rgba = F.interpolate(rgba[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
                sx, sy = size[1] / w, size[0] / h
            else:
                sx = sy = 1.0
            # pixel centres: x' + 0.5 = (x + 0.5) * s
            anchors.append(torch.from_numpy(tpl.anchors.copy()) * torch.tensor([sx, sy]) + torch.tensor([sx, sy]) * 0.5 - 0.5)
            self.images.append(rgba.contiguous())
        self.anchors = torch.stack(anchors).float()  # N x 6 x 2
        self.mean_colors = [library.get(n).mean_color for n in self.names]

    def __len__(self) -> int:
        return len(self.names)


def render_templates(images: torch.Tensor, landmarks: torch.Tensor, index: torch.Tensor, bank: TemplateBank,
                     seed: torch.Tensor, coverage: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                     tilt: torch.Tensor, contour: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp template ``index[i]`` of ``bank`` onto image ``i`` (B x 3 x H x W in [0, 1]) at its 5-point
    ``landmarks`` (B x 5 x 2 pixels; optional jaw + bridge ``contour`` B x 20 x 2 pixels). The top edge
    follows ``coverage`` as for procedural masks; jitter turns about the anchors' centre.
    Returns ``(masked, mask B x 1 x H x W)``, the mask being exactly the changed pixels."""
    from meer.masking.render import composite, eye_clip

    dev = images.device
    b, _, hgt, wid = images.shape
    lm = landmarks.to(dev, torch.float32)
    frame = face_frame(lm)
    f5 = frame.to_frame(lm)
    cont = frame.to_frame(contour.to(dev, torch.float32)) if contour is not None else predict_contour(f5, frame.iod)
    kinds = torch.zeros_like(seed)
    outline = make_outline(f5, cont, kinds, coverage, seed, scale.float(), shift.float(), tilt.float())
    anchors = face_anchors(f5, cont, outline.top)
    centre = anchors.mean(dim=1, keepdim=True)
    anchors = centre + rotate(anchors - centre, tilt.float()) * scale.float()[:, None, None] + shift.float()[:, None]
    anchors_px = frame.to_pixels(anchors)
    colour = torch.zeros(b, 3, hgt, wid, device=dev)
    alpha = torch.zeros(b, hgt, wid, device=dev)
    for t in torch.unique(index).tolist():
        sel = (index == t).nonzero(as_tuple=True)[0]
        n = sel.numel()
        src = bank.anchors[t].to(dev)[None].expand(n, -1, -1)
        hom = find_homography_dlt(src, anchors_px[sel])
        tpl = bank.images[t].to(dev)[None].expand(n, -1, -1, -1)
        warped = warp_perspective(tpl, hom, (hgt, wid), mode="bilinear", padding_mode="zeros", align_corners=True)
        a = warped[:, 3].clamp(0, 1)
        colour[sel] = (warped[:, :3] / a[:, None].clamp_min(1e-6)).clamp(0, 1)
        alpha[sel] = a
    ys = torch.arange(hgt, device=dev, dtype=torch.float32)[:, None]
    xs = torch.arange(wid, device=dev, dtype=torch.float32)[None]
    ey = frame.ey
    v_px = (xs[None] - frame.origin[:, 0, None, None]) * ey[:, 0, None, None] + \
        (ys[None] - frame.origin[:, 1, None, None]) * ey[:, 1, None, None]
    alpha = alpha * eye_clip(v_px, frame.unit[:, None, None])
    out, mask = composite(images, colour, alpha)
    return out, mask.to(images.dtype)
