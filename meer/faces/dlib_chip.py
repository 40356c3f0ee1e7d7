"""dlib's 150 x 150 face-chip geometry, and the fixed warp from meer's ArcFace 112 crop into it.

dlib's face descriptor runs on the chip ``dlib.get_face_chip(image, shape5, size=150, padding=0.25)``
(what ``compute_face_descriptor(image, shape)`` extracts). ``get_face_chip_details`` fits a
least-squares similarity from dlib's 5-point chip template (``DLIB_CHIP_TEMPLATE``, padded by
``padding`` on every side and scaled to ``size``) onto the face's 5 points (right eye outer and inner
corner, left eye outer and inner corner, nose base), keeps its angle and scale, and the chip is
sampled so that its corner pixels land on the corners of a rotated rectangle of side
``size * scale - 1`` around the image of the chip point ``(size/2, size/2)``; pixels are bilinear,
zero outside the image. ``dlib_chip_matrix`` reproduces that mapping exactly.

On a meer crop the face's dlib points are, on average, ``DLIB_POINTS_112`` (measured), so one fixed
similarity takes the crop to dlib's chip: ``crops112_to_dlib_chips`` applies it to a batch with
``grid_sample`` (differentiable, on any device). dlib's chip shows a little more than the 112 crop:
its bottom rows (below the crop's bottom edge, the chin) are filled by mirroring the crop
(``padding_mode="reflection"``: on 593 LFW training faces its descriptors came closest to those of
dlib's own chips, ahead of zeros and border; see docs/dlib_resnet.md).
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from meer.faces.align import umeyama_torch
from meer.utils.errors import MeerError

#: dlib's 5-point chip template (``get_face_chip_details``), in units of the unpadded chip side
DLIB_CHIP_TEMPLATE = np.array([
    [0.8595674595992, 0.2134981538014],
    [0.6460604764104, 0.2289674387677],
    [0.1205750620789, 0.2137274526848],
    [0.3340850613712, 0.2290642403242],
    [0.4901123135679, 0.6277975316475],
])
DLIB_CHIP_SIZE = 150
DLIB_CHIP_PADDING = 0.25

#: where dlib's 5-point shape predictor puts its points (right eye outer/inner, left eye outer/inner,
#: nose base) on meer's ArcFace-112 crops: the mean over 78 clean LFW faces in the judge's fixed box
#: (std <= 2.5 px); with dlib's own HOG boxes on 593 LFW training faces the means differ by <= 0.7 px
DLIB_POINTS_112 = np.array([[79.3, 52.5], [65.7, 52.8], [31.6, 52.5], [45.0, 52.9], [54.5, 79.1]])

PADDING_MODES = ("reflection", "zeros", "border")


def chip_template(size: int = DLIB_CHIP_SIZE, padding: float = DLIB_CHIP_PADDING) -> np.ndarray:
    """dlib's 5 template points in the pixels of a ``size`` chip with ``padding``."""
    return (padding + DLIB_CHIP_TEMPLATE) / (2 * padding + 1) * size


def dlib_chip_matrix(points: np.ndarray, size: int = DLIB_CHIP_SIZE, padding: float = DLIB_CHIP_PADDING) -> np.ndarray:
    """``(2, 3)`` float64 matrix taking chip pixels ``(x, y)`` to image pixels, as dlib's
    ``extract_image_chip(img, get_face_chip_details(shape, size, padding))`` samples them; ``points``
    are the face's 5 dlib points (5 x 2, image pixels)."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.shape != (5, 2):
        raise MeerError(f"dlib chip geometry needs 5 (x, y) points, got shape {pts.shape}")
    tform = umeyama_torch(torch.from_numpy(chip_template(size, padding))[None], torch.from_numpy(pts))[0].numpy()
    lin = tform[:, :2]
    angle = np.arctan2(lin[1, 0], lin[0, 0])
    scale = float(np.hypot(lin[0, 0], lin[1, 0]))
    center = lin @ np.array([size / 2.0, size / 2.0]) + tform[:, 2]
    side = size * scale - 1.0  # dlib's centered_drect takes one off the width
    k = side / (size - 1.0)  # image pixels per chip pixel
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]]) * k
    offset = center - rot @ np.array([(size - 1) / 2.0, (size - 1) / 2.0])
    return np.concatenate([rot, offset[:, None]], axis=1)


def chip_points(points: np.ndarray, size: int = DLIB_CHIP_SIZE, padding: float = DLIB_CHIP_PADDING) -> np.ndarray:
    """Where ``points`` (5 x 2 image pixels) land in their dlib chip (dlib's ``map_det_to_chip``)."""
    m = dlib_chip_matrix(points, size, padding)
    inv = np.linalg.inv(np.vstack([m, [0.0, 0.0, 1.0]]))[:2]
    pts = np.asarray(points, dtype=np.float64)
    return pts @ inv[:, :2].T + inv[:, 2]


def template_to_chip_matrix(scale: float = 1.0, offset: float = 0.0, size: int = DLIB_CHIP_SIZE,
                            padding: float = DLIB_CHIP_PADDING, points_112: np.ndarray = DLIB_POINTS_112) -> np.ndarray:
    """``(2, 3)`` chip pixels -> pixels of an image in which the ArcFace-112 template sits at
    ``scale * p + offset`` (a crop of side S: ``scale = S / 112``; meer's evaluation canvas: 1.5, 28)."""
    return dlib_chip_matrix(np.asarray(points_112, np.float64) * scale + offset, size, padding)


def crop_to_chip_matrix(crop_size: int = 112, size: int = DLIB_CHIP_SIZE, padding: float = DLIB_CHIP_PADDING,
                        points_112: np.ndarray = DLIB_POINTS_112) -> np.ndarray:
    """``(2, 3)`` chip pixels -> pixels of a ``crop_size`` ArcFace crop (the template scaled with the crop)."""
    return template_to_chip_matrix(crop_size / 112.0, 0.0, size, padding, points_112)


def chip_grid(crop_size: int = 112, size: int = DLIB_CHIP_SIZE, padding: float = DLIB_CHIP_PADDING,
              points_112: np.ndarray = DLIB_POINTS_112, scale: float | None = None, offset: float = 0.0) -> torch.Tensor:
    """``1 x size x size x 2`` sampling grid for ``F.grid_sample(..., align_corners=False)`` on a
    ``crop_size`` square image whose template sits at ``scale * p + offset`` (default: a crop)."""
    scale = crop_size / 112.0 if scale is None else scale
    m = template_to_chip_matrix(scale, offset, size, padding, points_112)
    ys, xs = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64), indexing="ij")
    src_x = m[0, 0] * xs + m[0, 1] * ys + m[0, 2]
    src_y = m[1, 0] * xs + m[1, 1] * ys + m[1, 2]
    # pixel centres at integers -> grid_sample's normalised coordinates (align_corners=False)
    grid = np.stack([(2 * src_x + 1) / crop_size - 1, (2 * src_y + 1) / crop_size - 1], axis=-1)
    return torch.from_numpy(grid).float()[None]


_GRIDS: dict[tuple, torch.Tensor] = {}


def aligned_to_dlib_chips(x: torch.Tensor, scale: float | None = None, offset: float = 0.0,
                          padding_mode: str = "reflection", size: int = DLIB_CHIP_SIZE) -> torch.Tensor:
    """Square aligned images ``B x C x S x S`` whose ArcFace-112 template sits at ``scale * p + offset``
    (default ``scale = S / 112``: an ArcFace crop) -> dlib chips ``B x C x size x size``; bilinear,
    differentiable with respect to ``x``, on ``x``'s device and dtype."""
    if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
        raise MeerError(f"aligned faces must be B x C x S x S, got {tuple(x.shape)}")
    if padding_mode not in PADDING_MODES:
        raise MeerError(f"padding_mode must be one of {', '.join(PADDING_MODES)}, got {padding_mode!r}")
    s = int(x.shape[-1])
    scale = s / 112.0 if scale is None else float(scale)
    key = (s, scale, float(offset), int(size), x.device, x.dtype)
    grid = _GRIDS.get(key)
    if grid is None:
        grid = _GRIDS[key] = chip_grid(s, size, scale=scale, offset=offset).to(device=x.device, dtype=x.dtype)
    return F.grid_sample(x, grid.expand(x.shape[0], -1, -1, -1), mode="bilinear", padding_mode=padding_mode,
                         align_corners=False)


def crops112_to_dlib_chips(x: torch.Tensor, padding_mode: str = "reflection", size: int = DLIB_CHIP_SIZE) -> torch.Tensor:
    """ArcFace-aligned crops ``B x 3 x S x S`` (any S; 112 for meer's crops) in [0, 1] -> dlib chips
    ``B x 3 x size x size`` (bilinear; differentiable with respect to ``x``; same device and dtype).
    ``padding_mode``: how chip pixels outside the crop are filled (reflection, zeros, border)."""
    return aligned_to_dlib_chips(x, padding_mode=padding_mode, size=size)


def photo_to_dlib_chip(rgb: np.ndarray, image_to_crop: np.ndarray, crop_size: int = 112,
                       size: int = DLIB_CHIP_SIZE) -> np.ndarray:
    """dlib's chip (``size x size x 3`` uint8) cut straight from a photo, given meer's alignment matrix
    (``image_to_crop``, 2 x 3, image -> ``crop_size`` ArcFace crop): no detour through the 112 crop, so
    the chin below the crop is real and the face keeps the photo's resolution. Faces much larger than
    the chip are first shrunk with area averaging (dlib uses an image pyramid there); zero outside."""
    a = np.vstack([np.asarray(image_to_crop, np.float64), [0.0, 0.0, 1.0]])
    chip_to_crop = np.vstack([crop_to_chip_matrix(crop_size, size), [0.0, 0.0, 1.0]])
    m = (np.linalg.inv(a) @ chip_to_crop)[:2]  # chip -> photo
    k = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))  # photo pixels per chip pixel
    img = np.ascontiguousarray(rgb)
    if k > 1.5:
        h, w = img.shape[:2]
        nw, nh = max(1, int(round(w / k))), max(1, int(round(h / k)))
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
        sx, sy = nw / w, nh / h
        m = np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]]) @ np.vstack([m, [0.0, 0.0, 1.0]])
    return cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
