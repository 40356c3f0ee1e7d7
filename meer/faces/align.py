"""5-point similarity alignment to the ArcFace template: Umeyama's least-squares fit (batched, torch)
and a kornia warp.

Matrices are ``2 x 3`` and map *source image pixels to crop pixels* (OpenCV's ``warpAffine``
convention, pixel centres at integer coordinates); ``invert`` gives the crop -> image matrix used
by paste-back.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from kornia.geometry.transform import invert_affine_transform, warp_affine

from meer.faces.template import template_for_size
from meer.utils.errors import MeerError


@dataclass
class AlignedFace:
    crop: np.ndarray  # size x size x 3 uint8
    matrix: np.ndarray  # (2, 3) float64, source image -> crop
    landmarks: np.ndarray  # (5, 2) float32, the source landmarks in crop coordinates


def umeyama_torch(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) taking points
    ``src`` (B x N x 2) onto ``dst`` (B x N x 2 or N x 2). Returns B x 2 x 3 (computed in float64)."""
    if src.ndim != 3 or src.shape[-1] != 2:
        raise MeerError(f"landmarks must be B x N x 2, got {tuple(src.shape)}")
    s = src.to(torch.float64)
    d = dst.to(device=src.device, dtype=torch.float64).expand_as(s)
    mu_s, mu_d = s.mean(dim=1, keepdim=True), d.mean(dim=1, keepdim=True)
    sc, dc = s - mu_s, d - mu_d
    var_s = sc.pow(2).sum(dim=(1, 2)) / s.shape[1]
    cov = dc.transpose(1, 2) @ sc / s.shape[1]  # B x 2 x 2
    u, sv, vh = torch.linalg.svd(cov)
    sign = torch.sign(torch.linalg.det(u) * torch.linalg.det(vh))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    diag = torch.stack([torch.ones_like(sign), sign], dim=1)  # B x 2
    rot = u @ torch.diag_embed(diag) @ vh
    scale = (sv * diag).sum(dim=1) / var_s.clamp_min(1e-12)
    t = mu_d.squeeze(1) - scale[:, None] * (rot @ mu_s.transpose(1, 2)).squeeze(2)
    return torch.cat([scale[:, None, None] * rot, t[:, :, None]], dim=2)


def similarity_matrix(src_landmarks: np.ndarray, dst: np.ndarray | None = None, size: int = 112) -> np.ndarray:
    """``(2, 3)`` float64 similarity taking ``src_landmarks`` (5 x 2) onto ``dst`` (default: the
    ArcFace template for a ``size`` crop)."""
    src = _check_landmarks(src_landmarks)
    dst = template_for_size(size) if dst is None else np.asarray(dst, dtype=np.float64)
    return umeyama_torch(torch.from_numpy(src)[None], torch.from_numpy(np.asarray(dst, np.float64)))[0].numpy()


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a ``(2, 3)`` matrix to ``(N, 2)`` points."""
    pts = np.asarray(points, dtype=np.float64)
    return pts @ np.asarray(matrix)[:, :2].T + np.asarray(matrix)[:, 2]


def invert(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a ``(2, 3)`` affine matrix (crop -> image for an alignment matrix)."""
    m = torch.as_tensor(np.asarray(matrix, dtype=np.float64))[None]
    return invert_affine_transform(m)[0].numpy()


def warp(images: torch.Tensor, matrices: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """kornia ``warp_affine`` with OpenCV's pixel convention; ``size`` is (height, width); outside is 0."""
    return warp_affine(images, matrices.to(images.dtype), dsize=size, mode="bilinear", padding_mode="zeros",
                       align_corners=True)


def align_batch(images: torch.Tensor, landmarks: torch.Tensor, size: int = 112) -> tuple[torch.Tensor, torch.Tensor]:
    """Align B images (``B x C x H x W`` float) by their landmarks (``B x 5 x 2``): returns crops
    ``B x C x size x size`` and matrices ``B x 2 x 3`` (image -> crop, float64)."""
    if images.ndim != 4:
        raise MeerError(f"images must be B x C x H x W, got {tuple(images.shape)}")
    if landmarks.shape != (images.shape[0], 5, 2):
        raise MeerError(f"landmarks must be {images.shape[0]} x 5 x 2, got {tuple(landmarks.shape)}")
    dst = torch.from_numpy(template_for_size(size)).to(images.device)
    matrices = umeyama_torch(landmarks.to(images.device), dst)
    return warp(images, matrices, (size, size)), matrices


def align_face(image_rgb: np.ndarray, landmarks: np.ndarray, size: int = 112) -> AlignedFace:
    """Align one uint8 ``H x W x 3`` image by its 5 landmarks into a ``size`` x ``size`` crop."""
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise MeerError(f"image must be H x W x 3 uint8, got {image_rgb.dtype} {tuple(image_rgb.shape)}")
    lm = _check_landmarks(landmarks)
    matrix = similarity_matrix(lm, size=size)
    landmarks_crop = transform_points(lm, matrix).astype(np.float32)
    window = _source_window(matrix, size, image_rgb.shape[1], image_rgb.shape[0])
    if window is None:  # the face lies entirely outside the photo
        return AlignedFace(crop=np.zeros((size, size, 3), np.uint8), matrix=matrix, landmarks=landmarks_crop)
    x0, y0, x1, y1 = window
    # warp only the part of the photo the crop can see (large photos stay cheap)
    window = torch.from_numpy(np.ascontiguousarray(image_rgb[y0:y1, x0:x1])).permute(2, 0, 1)[None].float()
    shifted = matrix.copy()
    shifted[:, 2] += matrix[:, :2] @ np.array([x0, y0], dtype=np.float64)
    crop = warp(window, torch.from_numpy(shifted)[None].float(), (size, size))[0]
    crop = crop.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    return AlignedFace(crop=np.ascontiguousarray(crop), matrix=matrix, landmarks=landmarks_crop)


def _source_window(matrix: np.ndarray, size: int, width: int, height: int) -> tuple[int, int, int, int] | None:
    """Integer image window (x0, y0, x1, y1) covering the crop's footprint plus one pixel; ``None``
    when the footprint misses the photo (or leaves a sliver too thin to interpolate)."""
    corners = transform_points(np.array([[-1, -1], [size, -1], [-1, size], [size, size]], np.float64),
                               invert(matrix))
    x0 = int(np.clip(np.floor(corners[:, 0].min()) - 1, 0, width))
    y0 = int(np.clip(np.floor(corners[:, 1].min()) - 1, 0, height))
    x1 = int(np.clip(np.ceil(corners[:, 0].max()) + 2, 0, width))
    y1 = int(np.clip(np.ceil(corners[:, 1].max()) + 2, 0, height))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return x0, y0, x1, y1


def _check_landmarks(landmarks: np.ndarray) -> np.ndarray:
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.shape != (5, 2):
        raise MeerError(f"landmarks must be 5 x 2 (x, y), got {lm.shape}")
    if not np.isfinite(lm).all():
        raise MeerError("landmarks contain NaN or infinite values")
    return lm
