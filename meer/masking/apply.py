"""``apply_mask``: one synthetic mask on one uint8 image, with its exact ground-truth mask.

    face = apply_mask(image_rgb, landmarks, np.random.default_rng(0))   # or a MaskSpec, or an int seed
    face.image   # H x W x 3 uint8, the masked photo
    face.mask    # H x W bool, True exactly where face.image differs from image_rgb
    face.spec    # MaskSpec; face.spec.to_dict() is JSON, MaskSpec.from_dict(...) redraws it

Landmarks are 5 points (``ARCFACE_112`` order) or dlib's 68 points (then the jaw line shapes the
mask's sides and bottom). Procedural kinds go through the same tensor renderer as ``MaskAugment``;
``template:<name>`` kinds warp a MaskTheFace template (``TemplateLibrary``). Only a region around
the face is rendered, so large photos cost no more than small ones.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from meer.masking.geometry import face_frame, five_from_68
from meer.masking.render import render_masks
from meer.masking.sampling import params_from_specs, sample_spec
from meer.masking.spec import COVERAGES, MaskSpec, MaskSpecError
from meer.masking.templates import TemplateBank, TemplateLibrary, render_templates
from meer.masking.textures import load_texture_bank

ROI_U = 2.7  # face units either side of the eye midpoint
ROI_V = (-0.3, 3.6)  # face units above/below the eye line


@dataclass
class MaskedFace:
    image: np.ndarray  # H x W x 3 uint8
    mask: np.ndarray  # H x W bool, True = occluded (= changed)
    spec: MaskSpec


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise MaskSpecError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise MaskSpecError(f"image must be an H x W x 3 uint8 array, got {image.dtype} {tuple(image.shape)}")
    if image.shape[0] < 8 or image.shape[1] < 8:
        raise MaskSpecError(f"image too small for a mask ({image.shape[1]}x{image.shape[0]})")
    return image


def _check_landmarks(landmarks: np.ndarray) -> np.ndarray:
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape not in ((5, 2), (68, 2)):
        raise MaskSpecError(f"landmarks must be 5 x 2 or 68 x 2 (x, y) points, got shape {lm.shape}")
    if not np.isfinite(lm).all():
        raise MaskSpecError("landmarks contain NaN or infinite values")
    if np.linalg.norm(lm[1] - lm[0] if len(lm) == 5 else lm[42:48].mean(0) - lm[36:42].mean(0)) < 2.0:
        raise MaskSpecError("landmarks are degenerate (the eyes are less than 2 pixels apart)")
    return lm


@functools.lru_cache(maxsize=32)
def _texture_tile(path: str) -> torch.Tensor:
    return load_texture_bank([path])


@functools.lru_cache(maxsize=8)
def _library(folder: str) -> TemplateLibrary:
    return TemplateLibrary(folder)


def split_landmarks(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``(5 points, jaw + nose-bridge contour or None)`` in pixels from 5 or 68 landmarks."""
    if len(lm) == 68:
        t = torch.as_tensor(lm[None], dtype=torch.float64)
        five = five_from_68(t)[0].numpy()
        return five, np.concatenate([lm[:17], lm[27:30]], axis=0)
    return lm, None


def _roi(five: np.ndarray, contour: np.ndarray | None, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    frame = face_frame(torch.as_tensor(five[None], dtype=torch.float64))
    corners = torch.tensor([[[-ROI_U, ROI_V[0]], [ROI_U, ROI_V[0]], [-ROI_U, ROI_V[1]], [ROI_U, ROI_V[1]]]],
                           dtype=torch.float64)
    pts = frame.to_pixels(corners)[0].numpy()
    if contour is not None:
        pts = np.concatenate([pts, contour + (contour - contour.mean(0)) * 0.3], axis=0)
    h, w = shape
    x0, y0 = np.floor(pts.min(0)).astype(int) - 2
    x1, y1 = np.ceil(pts.max(0)).astype(int) + 3
    x0, y0 = max(int(x0), 0), max(int(y0), 0)
    x1, y1 = min(int(x1), w), min(int(y1), h)
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise MaskSpecError("the landmarks place the face outside the image")
    return x0, y0, x1, y1


def apply_mask(image: np.ndarray, landmarks: np.ndarray, spec: MaskSpec | np.random.Generator | int,
               *, templates: TemplateLibrary | str | None = None) -> MaskedFace:
    """Put one synthetic mask on ``image`` (H x W x 3 uint8 RGB) at the face given by ``landmarks``.

    ``spec``: a ``MaskSpec``, or a numpy Generator / int seed to draw one with ``sample_spec``.
    ``templates``: a ``TemplateLibrary`` (or its folder) for ``template:<name>`` kinds.
    """
    img = _check_image(image)
    lm = _check_landmarks(landmarks)
    if isinstance(spec, (np.random.Generator, int, np.integer)) and not isinstance(spec, bool):
        spec = sample_spec(spec)
    if not isinstance(spec, MaskSpec):
        raise MaskSpecError(f"spec must be a MaskSpec, a numpy Generator or an int seed, got {type(spec).__name__}")
    five, contour = split_landmarks(lm)
    x0, y0, x1, y1 = _roi(five, contour, img.shape[:2])
    crop = img[y0:y1, x0:x1]
    off = np.array([x0, y0], dtype=np.float64)
    five_c = five - off
    contour_c = contour - off if contour is not None else None
    if spec.is_template:
        lib = _library(str(templates)) if isinstance(templates, str) else templates
        if lib is None:
            raise MaskSpecError(f"{spec.kind} needs a template folder (masks.cfg)")
        out_crop, mask_crop, spec = _render_template(crop, five_c, contour_c, spec, lib)
    else:
        out_crop, mask_crop = _render_procedural(crop, five_c, contour_c, spec, (x0, y0))
    out = img.copy()
    out[y0:y1, x0:x1] = out_crop
    mask = np.zeros(img.shape[:2], dtype=bool)
    mask[y0:y1, x0:x1] = mask_crop
    return MaskedFace(image=out, mask=mask, spec=spec)


def _finish(crop: np.ndarray, colour: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 composite: untouched outside ``mask``, and every masked pixel changed by at least one level."""
    out = np.where(mask[..., None], np.clip(np.round(colour * 255.0), 0, 255).astype(np.uint8), crop)
    same = mask & (out == crop).all(axis=-1)
    if same.any():
        first = out[..., 0]
        first[same] = np.where(crop[..., 0][same] < 128, crop[..., 0][same] + 1, crop[..., 0][same] - 1)
    return out, mask


def _render_procedural(crop: np.ndarray, five: np.ndarray, contour: np.ndarray | None,
                       spec: MaskSpec, offset: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    bank = None
    index = None
    if spec.texture_path is not None:
        bank = _texture_tile(spec.texture_path)
        index = [0]
    params = params_from_specs([spec], image_index=index)
    x = torch.tensor(crop).permute(2, 0, 1)[None].float() / 255.0
    lm = torch.as_tensor(five[None], dtype=torch.float32)
    cont = torch.as_tensor(contour[None], dtype=torch.float32) if contour is not None else None
    out, mask = render_masks(x, lm, params, contour=cont, bank=bank, offset=offset)
    return _finish(crop, out[0].permute(1, 2, 0).numpy(), mask[0, 0].numpy() > 0)


@functools.lru_cache(maxsize=64)
def _template_bank(lib: TemplateLibrary, name: str) -> TemplateBank:
    return TemplateBank(lib, [name], max_side=None)  # full resolution for single photos


def _render_template(crop: np.ndarray, five: np.ndarray, contour: np.ndarray | None, spec: MaskSpec,
                     lib: TemplateLibrary) -> tuple[np.ndarray, np.ndarray, MaskSpec]:
    bank = _template_bank(lib, lib.get(spec.template_name or "").name)
    x = torch.tensor(crop).permute(2, 0, 1)[None].float() / 255.0
    cont = torch.as_tensor(contour[None], dtype=torch.float32) if contour is not None else None
    out, mask = render_templates(
        x, torch.as_tensor(five[None], dtype=torch.float32), torch.zeros(1, dtype=torch.long), bank,
        seed=torch.tensor([spec.seed]), coverage=torch.tensor([COVERAGES.index(spec.coverage)]),
        scale=torch.tensor([spec.scale]), shift=torch.tensor([spec.shift]), tilt=torch.tensor([math.radians(spec.tilt)]),
        contour=cont)
    image, m = _finish(crop, out[0].permute(1, 2, 0).numpy(), mask[0, 0].numpy() > 0)
    spec = MaskSpec(**{**spec.__dict__, "color": bank.mean_colors[0], "texture": "none"})
    return image, m, spec
