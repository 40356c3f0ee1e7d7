"""MaskTheFace mask templates (RGBA pictures with six anchor points each), warped onto a face.

A template folder holds ``masks.cfg`` (INI sections ``[name]`` with ``template: <path>`` and anchors
``mask_a`` ... ``mask_f``) and the PNGs (looked up by file name under ``templates/`` or next to the
cfg). Anchors: ``a``/``c`` the upper left/right corners, ``b`` the top middle (over the nose),
``d``/``f`` the lower left/right corners, ``e`` the bottom middle (under the chin). The same six points
are placed on the face from the landmarks (nose line and lower-face contour, see ``geometry``) and
the template is warped with the least-squares homography between them; its alpha is the coverage.
"""
from __future__ import annotations

import configparser
import functools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

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


def _side_u(contour: np.ndarray, v: float, side: int) -> float:
    """u of the jaw contour at height ``v`` (side 0: points 0-8, side 1: points 16-8)."""
    pts = contour[0:9] if side == 0 else contour[16:7:-1]
    vs, us = pts[:, 1], pts[:, 0]
    order = np.argsort(vs)
    return float(np.interp(v, vs[order], us[order]))


def face_anchors(f5: np.ndarray, contour: np.ndarray, top: float) -> np.ndarray:
    """The six anchor points (face units) for a mask whose top edge is at height ``top``."""
    nose_u = f5[2, 0]
    mouth_v = (f5[3, 1] + f5[4, 1]) / 2
    chin = contour[8]
    side_top = top + 0.12
    side_low = mouth_v + 0.5 * (chin[1] - mouth_v)
    return np.array([
        [_side_u(contour, side_top, 0), side_top],
        [nose_u, top],
        [_side_u(contour, side_top, 1), side_top],
        [_side_u(contour, side_low, 0), side_low],
        [chin[0], chin[1] + 0.04],
        [_side_u(contour, side_low, 1), side_low],
    ], dtype=np.float32)


def warp_template(template: Template, anchors_px: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Warp ``template`` so its anchors land on ``anchors_px`` (6 x 2) in an image of ``size`` (w, h).
    Returns ``(rgb float32 H x W x 3 in [0, 1], alpha float32 H x W in [0, 1])``."""
    hmat, _ = cv2.findHomography(template.anchors.astype(np.float64), anchors_px.astype(np.float64), 0)
    if hmat is None or not np.isfinite(hmat).all():
        raise MaskSpecError(f"template {template.name}: cannot place it on these landmarks")
    rgba = template.rgba.astype(np.float32) / 255.0
    # premultiplied alpha so colours at the template's edge do not bleed
    pre = np.concatenate([rgba[..., :3] * rgba[..., 3:], rgba[..., 3:]], axis=-1)
    warped = cv2.warpPerspective(pre, hmat, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    alpha = warped[..., 3].clip(0, 1)
    rgb = np.where(alpha[..., None] > 1e-6, warped[..., :3] / np.maximum(alpha[..., None], 1e-6), 0).clip(0, 1)
    return rgb.astype(np.float32), alpha.astype(np.float32)
