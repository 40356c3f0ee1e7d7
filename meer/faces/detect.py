"""Batched face detection with 5 landmarks: facenet-pytorch's MTCNN plus a fallback for masked faces.

MTCNN's weights ship inside the facenet-pytorch wheel, so detection works offline. Masks hide the
mouth and nose MTCNN keys on, and tight crops leave no context around the face; the detector
therefore (measured on real masked photos, see ``benchmarks/bench_align.py``):

* lowers the three stage thresholds (``thresholds``);
* runs a cascade of MTCNN passes (``passes``): images without a face after one pass get the next,
  which adds a constant border around the photo (so faces that fill the frame are seen whole by the
  pyramid), searches smaller faces than MTCNN's default (upsampling small photos), lowers the
  thresholds further with a wide border, then searches small photos enlarged 2x for faces of 6 px and
  up, and last searches with very low thresholds; these two last passes keep a face only when it is
  found on the mirrored photo too (:class:`DetectionPass`);
* optionally (``plausibility``, off by default) drops detections whose 5 landmarks are geometrically
  implausible for their box (:mod:`meer.faces.plausibility`), so the image goes on to the next pass;
* for images where MTCNN still finds nothing, asks dlib's CNN face detector (``fallback="dlib"``,
  optional ``judge`` extra) for boxes and places the 5 landmarks with MTCNN's ONet on those boxes.

``detect`` always returns one (possibly empty) list of :class:`FaceDetection` per image, never
``None`` or object arrays. The cascade runs through :mod:`meer.faces.mtcnn` (facenet-pytorch's ``detect_face``
with its slow CPU max-pools and per-box crop dispatch replaced; bit-identical results, ~1.5x faster).
"""
from __future__ import annotations

from typing import Literal, NamedTuple, Sequence

import cv2
import numpy as np
import torch

from meer.faces.detection import FaceDetection, largest  # noqa: F401 (their old home; re-exported)
from meer.faces.mtcnn import detect_faces, fast_nets
from meer.faces.plausibility import PlausibilityLimits, plausible
from meer.utils.device import resolve_device  # noqa: F401 (also imported from here)
from meer.utils.errors import MeerError

DEFAULT_THRESHOLDS = (0.5, 0.6, 0.6)
LAST_CHANCE_THRESHOLDS = (0.3, 0.4, 0.5)
MIRRORED_THRESHOLDS = (0.2, 0.3, 0.4)
UPSCALE_MAX_SIDE = 1024  # an upscaling pass enlarges a photo to at most this longer side (and skips larger ones)
MIRROR_IOU = 0.5  # a mirrored pass keeps a face found again at this overlap on the mirrored photo


class DetectionPass(NamedTuple):
    """One MTCNN pass of :class:`FaceDetector`'s cascade (it only sees photos no earlier pass found a face in).

    ``pad``: a border of the photo's mean colour on every side, as a fraction of its longer side (faces that
    fill the frame are seen whole); ``min_face_size``: the smallest face side searched, >= 12 (MTCNN's cell);
    ``thresholds``: P/R/O-Net score thresholds (``None``: the detector's); ``upscale``: the photo is first enlarged
    this much (bilinear; up to ``UPSCALE_MAX_SIDE``, a photo that cannot grow skips the pass), so that faces of
    ``min_face_size / upscale`` pixels are found; ``mirrored``: a face counts only when the pass also finds it on
    the left-right mirrored photo (overlap ``MIRROR_IOU``): the check that lets a pass search with thresholds or
    face sizes that alone find too many things that are not faces; ``max_face_size``: faces whose box is larger
    (shorter side, photo pixels) are dropped: an upscaling pass is there for faces smaller than the earlier passes
    search, and a larger "face" that only it sees was mostly not a face (measured on RWMFD)."""

    pad: float = 0.0
    min_face_size: int = 20
    thresholds: tuple[float, float, float] | None = None
    upscale: float = 1.0
    mirrored: bool = False
    max_face_size: float | None = None


# The cascade, measured on real masked photos: the first five passes with benchmarks/bench_align.py detection
# (each adds faces; the fifth mostly finds extreme close-ups of masked faces cut at the forehead); the two mirrored
# passes with benchmarks/bench_detect.py on the RWMFD photos the first five and dlib missed: small faces in crowds
# and full-body shots (2x upscale), and close-ups behind dark masks (very low thresholds); without the mirror
# check these two passes found about as many non-faces as faces there.
DEFAULT_PASSES = (
    DetectionPass(0.0, 20),
    DetectionPass(0.2, 20),
    DetectionPass(0.2, 12),
    DetectionPass(0.5, 20),
    DetectionPass(1.0, 20, LAST_CHANCE_THRESHOLDS),
    DetectionPass(0.0, 12, None, upscale=2.0, mirrored=True, max_face_size=16),
    DetectionPass(1.0, 20, MIRRORED_THRESHOLDS, mirrored=True),
)


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Accept H x W (gray), H x W x 1/3/4 uint8 arrays; return H x W x 3 uint8 RGB."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise MeerError(f"images must be uint8 arrays, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise MeerError(f"images must be H x W x 3 arrays, got shape {tuple(arr.shape)}")
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif arr.shape[2] == 4:
        arr = arr[..., :3]
    if arr.shape[0] < 2 or arr.shape[1] < 2:
        raise MeerError(f"image too small for detection ({arr.shape[1]}x{arr.shape[0]})")
    return np.ascontiguousarray(arr)


class FaceDetector:
    """Find faces and their 5 landmarks in batches of RGB images.

    Args:
        device: ``"cpu"``, ``"cuda"``, ``"auto"`` or a ``torch.device``.
        thresholds: MTCNN P/R/O-net score thresholds (facenet-pytorch's default is 0.6, 0.7, 0.7).
        passes: the MTCNN passes (:class:`DetectionPass`, or tuples ``(pad, min_face_size[, thresholds[, upscale[,
            mirrored[, max_face_size]]]])``), tried in order on the images without a face yet.
        fallback: ``"dlib"`` to try dlib's CNN detector on images where MTCNN found nothing, or ``None``.
        fallback_upsample: how often dlib upsamples the image (each doubles the side and quadruples the cost; finds
            smaller faces). 0 by default: after the MTCNN passes (small faces included, upscaled) dlib is there for
            large faces MTCNN cannot score; on the photos of RWMFD / RMFRD / LFW that the passes miss, upsample 0 and
            1 each find one face (different photos), 1 takes 4.4x the time (1.2 s per 250 px photo, one thread).
        batch_size: images per MTCNN forward pass (images of the same size are batched together).
        mtcnn_module: an existing ``facenet_pytorch.MTCNN`` (tests pass one with random weights).
        max_overlap: a detection lying by more than this share of its own box inside a larger, higher-scoring one
            is dropped (on the clean LFW evaluation photos every such pair was a real face and a low-score false
            one on its forehead or eyes, which the restorer then repainted; MTCNN's own last suppression is alike,
            at 0.7). A larger box is never dropped for a smaller one: a face close to the camera can cover much of
            one behind it. ``None``: keep them.
        plausibility: :class:`~meer.faces.plausibility.PlausibilityLimits` that every detection's
            landmarks must meet (MTCNN passes and the fallback alike; rejected ones count as not
            found), or ``None`` (default) to keep every detection. With ``PlausibilityLimits()`` the
            measured alignment quality on RMFRD / LFW did not change (2026-11-23), hence off.
    """

    def __init__(
        self,
        device: str | torch.device = "cpu",
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        passes: Sequence[DetectionPass | tuple] = DEFAULT_PASSES,
        fallback: Literal["dlib"] | None = "dlib",
        fallback_upsample: int = 0,
        batch_size: int = 16,
        factor: float = 0.709,
        mtcnn_module=None,
        plausibility: PlausibilityLimits | None = None,
        max_overlap: float | None = 0.3,
    ):
        if len(thresholds) != 3 or not all(0.0 < t < 1.0 for t in thresholds):
            raise MeerError(f"thresholds must be three numbers in (0, 1), got {list(thresholds)}")
        if not passes:
            raise MeerError("at least one MTCNN pass is needed")
        self.passes: list[DetectionPass] = []
        for item in passes:
            if not 2 <= len(item) <= 6:
                raise MeerError("a pass is (pad, min_face_size[, thresholds[, upscale[, mirrored[, max_face_size]]]]), "
                                f"got {item!r}")
            pad, min_face_size = float(item[0]), int(item[1])
            th = tuple(float(t) for t in item[2]) if len(item) >= 3 and item[2] is not None else None
            if th is not None and (len(th) != 3 or not all(0.0 < t < 1.0 for t in th)):
                raise MeerError(f"thresholds must be three numbers in (0, 1), got {list(th)}")
            upscale = float(item[3]) if len(item) >= 4 else 1.0
            mirrored = bool(item[4]) if len(item) >= 5 else False
            max_face = float(item[5]) if len(item) >= 6 and item[5] is not None else None
            if min_face_size < 12:
                raise MeerError(f"min_face_size must be >= 12 (MTCNN's cell size), got {min_face_size}")
            if not 0.0 <= pad <= 1.0:
                raise MeerError(f"pad must be a fraction in [0, 1], got {pad}")
            if not 1.0 <= upscale <= 4.0:
                raise MeerError(f"upscale must be in [1, 4], got {upscale}")
            self.passes.append(DetectionPass(pad, min_face_size, th, upscale, mirrored, max_face))
        if batch_size < 1:
            raise MeerError(f"batch size must be >= 1, got {batch_size}")
        if max_overlap is not None and not 0.0 < max_overlap <= 1.0:
            raise MeerError(f"max_overlap must be a fraction in (0, 1], got {max_overlap}")
        self.max_overlap = max_overlap
        self.device = resolve_device(device)
        self.thresholds = tuple(float(t) for t in thresholds)
        self.factor = float(factor)
        self.batch_size = int(batch_size)
        self.plausibility = plausibility
        if mtcnn_module is None:
            from facenet_pytorch import MTCNN

            mtcnn_module = MTCNN(device=self.device)
        self.mtcnn = mtcnn_module.to(self.device).eval()
        self.nets = fast_nets(self.mtcnn)  # P-, R-, O-Net with the fast max-pools (same weights, same results)
        self.fallback = None
        if fallback == "dlib":
            from meer.faces.fallback import load_dlib_fallback

            self.fallback = load_dlib_fallback(self.nets[2], self.device, upsample=fallback_upsample)
        elif fallback is not None:
            raise MeerError(f"unknown fallback detector {fallback!r} (use 'dlib' or None)")

    def detect(self, images: Sequence[np.ndarray]) -> list[list[FaceDetection]]:
        """One list of detections per image (sorted by decreasing box area; empty when no face)."""
        arrays = [as_rgb_uint8(im) for im in images]
        results: list[list[FaceDetection]] = [[] for _ in arrays]
        for ps in self.passes:
            groups: dict[tuple[int, int], list[int]] = {}
            for i, arr in enumerate(arrays):
                if not results[i]:
                    groups.setdefault(arr.shape[:2], []).append(i)
            for idxs in groups.values():
                for start in range(0, len(idxs), self.batch_size):
                    chunk = idxs[start:start + self.batch_size]
                    found = self._run_pass([arrays[i] for i in chunk], ps)
                    for i, dets in zip(chunk, found):
                        results[i] = self._keep_plausible(dets, arrays[i].shape)
        if self.fallback is not None:
            for i, arr in enumerate(arrays):
                if not results[i]:
                    results[i] = self._keep_plausible(self.fallback.detect(arr), arr.shape)
        return [sorted(self._drop_nested(dets), key=lambda d: -d.area) for dets in results]

    def _drop_nested(self, dets: list[FaceDetection]) -> list[FaceDetection]:
        """Highest score first, drop each detection lying by more than ``max_overlap`` of its area inside a kept,
        larger one."""
        if self.max_overlap is None or len(dets) < 2:
            return dets
        kept: list[FaceDetection] = []
        for d in sorted(dets, key=lambda d: -d.score):
            if all(k.area <= d.area or overlap_of_smaller(d.box, k.box) <= self.max_overlap for k in kept):
                kept.append(d)
        return kept

    def _keep_plausible(self, dets: list[FaceDetection], shape: tuple[int, ...]) -> list[FaceDetection]:
        if self.plausibility is None:
            return dets
        return [d for d in dets if plausible(d.landmarks, d.box, shape, self.plausibility)]

    def detect_one(self, image: np.ndarray) -> list[FaceDetection]:
        return self.detect([image])[0]


    def _run_pass(self, arrays: list[np.ndarray], ps: DetectionPass) -> list[list[FaceDetection]]:
        """One pass on same-size images: upscaled, padded, and with the mirror check, as ``ps`` says."""
        th = ps.thresholds or self.thresholds
        upscale = min(ps.upscale, UPSCALE_MAX_SIDE / max(arrays[0].shape[:2]))
        if ps.upscale > 1.0 and upscale <= 1.0:  # too large to enlarge: earlier passes searched it as it is
            return [[] for _ in arrays]
        found = self._mtcnn_batch(arrays, ps.pad, ps.min_face_size, th, upscale=upscale)
        if ps.max_face_size is not None:
            found = [[d for d in dets if min(d.box[2] - d.box[0], d.box[3] - d.box[1]) <= ps.max_face_size]
                     for dets in found]
        if not ps.mirrored:
            return found
        todo = [i for i, dets in enumerate(found) if dets]
        if not todo:
            return found
        w = arrays[0].shape[1]
        again = self._mtcnn_batch([np.ascontiguousarray(arrays[i][:, ::-1]) for i in todo], ps.pad, ps.min_face_size,
                                  th, upscale=upscale)
        for i, mirrored in zip(todo, again):
            boxes = [np.array([w - d.box[2], d.box[1], w - d.box[0], d.box[3]], np.float32) for d in mirrored]
            found[i] = [d for d in found[i] if any(box_iou(d.box, b) > MIRROR_IOU for b in boxes)]
        return found

    @torch.no_grad()
    def _mtcnn_batch(self, arrays: list[np.ndarray], pad: float, min_face_size: int,
                     thresholds: tuple[float, ...], upscale: float = 1.0) -> list[list[FaceDetection]]:
        if upscale != 1.0:  # boxes and landmarks come back in the given images' pixels
            h0, w0 = arrays[0].shape[:2]
            size = (max(2, round(w0 * upscale)), max(2, round(h0 * upscale)))
            found = self._mtcnn_batch([cv2.resize(a, size, interpolation=cv2.INTER_LINEAR) for a in arrays], pad,
                                      min_face_size, thresholds)
            sx, sy = size[0] / w0, size[1] / h0
            scale, shift = np.array([sx, sy], np.float32), np.float32(0.5)  # pixel centres: x = (x' + 0.5) / s - 0.5
            return [[FaceDetection(box=((d.box.reshape(2, 2) + shift) / scale - shift).reshape(4).astype(np.float32),
                                   score=d.score, landmarks=((d.landmarks + shift) / scale - shift).astype(np.float32),
                                   detector=d.detector) for d in dets] for dets in found]
        h, w = arrays[0].shape[:2]
        p = int(round(pad * max(h, w)))
        if min(h, w) + 2 * p < min_face_size:  # smaller than MTCNN's first pyramid level
            return [[] for _ in arrays]
        batch = torch.from_numpy(np.stack(arrays)).to(self.device)  # B x H x W x 3 uint8
        if p > 0:
            fill = batch.float().mean(dim=(1, 2), keepdim=True)  # each image's mean colour
            padded = fill.expand(len(arrays), h + 2 * p, w + 2 * p, 3).clone()
            padded[:, p:p + h, p:p + w] = batch.float()
            batch = padded
        boxes, points = detect_faces(batch, min_face_size, self.nets, list(thresholds), self.factor, self.device)
        out = []
        for bx, pt in zip(boxes, points):
            dets = []
            for b, lm in zip(bx, pt):
                box = b[:4] - p
                cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
                if not (0 <= cx < w and 0 <= cy < h):  # a "face" in the padding
                    continue
                dets.append(FaceDetection(box=box.astype(np.float32), score=float(b[4]),
                                          landmarks=(lm - p).astype(np.float32), detector="mtcnn"))
            out.append(dets)
        return out


def _area(box: np.ndarray) -> float:
    return float((box[2] - box[0]) * (box[3] - box[1]))


def _intersection(a: np.ndarray, b: np.ndarray) -> float:
    """Area shared by two ``x1 y1 x2 y2`` boxes."""
    iw = max(0.0, float(min(a[2], b[2]) - max(a[0], b[0])))
    ih = max(0.0, float(min(a[3], b[3]) - max(a[1], b[1])))
    return iw * ih


def overlap_of_smaller(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection of two ``x1 y1 x2 y2`` boxes over the smaller one's area (1 = one lies inside the other)."""
    smaller = min(_area(a), _area(b))
    return _intersection(a, b) / smaller if smaller > 0 else 0.0


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two ``x1 y1 x2 y2`` boxes."""
    inter = _intersection(a, b)
    union = _area(a) + _area(b) - inter
    return inter / union if union > 0 else 0.0
