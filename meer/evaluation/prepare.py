"""From image files to evaluation canvases: meer's own detection and alignment, then synthetic masks.

Every photo is located with meer's detector (``meer.faces.FaceDetector``: MTCNN with its masked-face
fallback), warped onto the canvas (``meer.evaluation.geometry``) and kept with its landmarks in
canvas pixels. A photo in which no face is found gets no canvas: it is a failure to enrol for every
judge and the report counts it. Landmarks are cached per file (path, size, mtime) so re-runs skip
detection. Aligned input (``--aligned``) is placed on the canvas from its known crop geometry.

Synthetic masks use ``meer.masking`` with a seed derived from the run seed and the image's key, so
an image gets the same mask whatever else is evaluated with it.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np
from tqdm import tqdm

from meer.utils.folder_report import FolderReport
from meer.evaluation.dataset import EvalData
from meer.evaluation.geometry import CANVAS_SCALE, CANVAS_OFFSET, canvas_matrix, crop_matrix_to_canvas, warp_to_canvas
from meer.faces.template import ARCFACE_112
from meer.utils.errors import MeerError
from meer.utils.files import atomic_write_bytes
from meer.utils.images import read_image

#: images -> 5 landmarks per image (``None`` when no face)
Locator = Callable[[list[np.ndarray]], list["np.ndarray | None"]]
#: (canvas, landmarks in canvas pixels, seed) -> (masked canvas, occlusion mask bool 224 x 224)
Masker = Callable[[np.ndarray, np.ndarray, int], "tuple[np.ndarray, np.ndarray]"]

#: the region a typical face mask covers (nose bridge to chin), ArcFace-112 pixels; used to tell
#: inpainting where to work on *real* masked photos, which have no pixel ground truth
TYPICAL_MASK_112 = np.array([[17, 63], [56, 60], [95, 63], [97, 92], [88, 110], [56, 121], [24, 110], [15, 92]],
                            dtype=np.float64)


@dataclass
class Face:
    canvas: np.ndarray  # 224 x 224 x 3 uint8
    landmarks: np.ndarray  # (5, 2) in canvas pixels


def meer_locator(device: str = "cpu", batch_size: int = 16) -> Locator:
    """meer's detector, keeping the largest face of each image."""
    from meer.faces.detect import FaceDetector, largest

    detector = FaceDetector(device=device, batch_size=batch_size)

    def locate(images: list[np.ndarray]) -> list[np.ndarray | None]:
        out = []
        for dets in detector.detect(images):
            best = largest(dets)
            out.append(None if best is None else np.asarray(best.landmarks, dtype=np.float64))
        return out

    return locate


def meer_masker(kinds: Iterable[str] | None = None) -> Masker:
    """Synthetic masks from ``meer.masking`` (``sample_spec(seed)`` then ``apply_mask``)."""
    from meer.masking import apply_mask, sample_spec

    kinds = list(kinds) if kinds is not None else None

    def mask(canvas: np.ndarray, landmarks: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        r = apply_mask(canvas, landmarks, sample_spec(seed, kinds=kinds))
        return np.asarray(r.image, dtype=np.uint8), np.asarray(r.mask).astype(bool)

    return mask


def image_seed(seed: int, key: str) -> int:
    """Per-image mask seed: fixed by the run seed and the image's key, independent of order."""
    return (int(seed) * 1_000_003 + zlib.crc32(key.encode("utf-8"))) % (2**31 - 1)


def typical_mask_region() -> np.ndarray:
    """``224 x 224`` bool: ``TYPICAL_MASK_112`` filled on the canvas."""
    poly = np.round(TYPICAL_MASK_112 * CANVAS_SCALE + CANVAS_OFFSET).astype(np.int32)
    out = np.zeros((224, 224), np.uint8)
    cv2.fillPoly(out, [poly], 1)
    return out.astype(bool)


class LandmarkCache:
    """``{path|size|mtime: landmarks or None}`` in a JSON file (a changed file is detected again)."""

    def __init__(self, path: Path | None):
        self.path = path
        self.data: dict[str, list | None] = {}
        if path is not None and path.is_file():
            try:
                self.data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self.data = {}  # a damaged cache is rebuilt, never trusted
        self.dirty = False

    @staticmethod
    def key(p: Path) -> str:
        st = p.stat()
        return f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"

    def get(self, p: Path):
        return self.data.get(self.key(p), "absent")

    def put(self, p: Path, landmarks: np.ndarray | None) -> None:
        self.data[self.key(p)] = None if landmarks is None else np.asarray(landmarks, float).round(3).tolist()
        self.dirty = True

    def save(self) -> None:
        if self.path is not None and self.dirty:
            atomic_write_bytes(self.path, json.dumps(self.data).encode("utf-8"))
            self.dirty = False


def prepare_faces(data: EvalData, report: FolderReport, locator: Locator | None = None,
                  cache_dir: Path | None = None, batch_size: int = 16, progress: bool = True) -> dict[Path, Face]:
    """Canvas and landmarks for every readable image with a face; the others go to ``report``."""
    paths = [p for lst in data.files.values() for p in lst]
    faces: dict[Path, Face] = {}
    if data.aligned:
        for p in tqdm(paths, desc="reading aligned crops", unit="img", disable=not progress):
            rgb = _read(p, report)
            if rgb is None:
                continue
            h, w = rgb.shape[:2]
            if h != w:
                report.skip(p, f"aligned crops must be square, got {w}x{h}")
                continue
            m = crop_matrix_to_canvas(w)
            faces[p] = Face(warp_to_canvas(rgb, m, cv2.INTER_CUBIC), ARCFACE_112 * CANVAS_SCALE + CANVAS_OFFSET)
        return faces

    cache = LandmarkCache(cache_dir / "landmarks.json" if cache_dir is not None else None)
    todo: list[tuple[Path, np.ndarray]] = []
    images: dict[Path, np.ndarray] = {}
    for p in tqdm(paths, desc="reading images", unit="img", disable=not progress):
        rgb = _read(p, report)
        if rgb is None:
            continue
        images[p] = rgb
        if cache.get(p) == "absent":
            todo.append((p, rgb))
    if todo:
        if locator is None:
            locator = meer_locator(batch_size=batch_size)
        bar = tqdm(total=len(todo), desc="detecting faces (meer.faces)", unit="img", disable=not progress)
        for s in range(0, len(todo), batch_size):
            chunk = todo[s:s + batch_size]
            for (p, _), lm in zip(chunk, locator([im for _, im in chunk])):
                cache.put(p, lm)
            bar.update(len(chunk))
        bar.close()
        cache.save()
    for p, rgb in images.items():
        lm = cache.get(p)
        if lm is None or isinstance(lm, str):
            report.skip(p, "no face found by meer's detector (failure to enrol)")
            continue
        lm = np.asarray(lm, dtype=np.float64)
        m = canvas_matrix(lm)
        canvas_lm = lm @ m[:, :2].T + m[:, 2]
        faces[p] = Face(warp_to_canvas(rgb, m), canvas_lm)
    return faces


def _read(p: Path, report: FolderReport) -> np.ndarray | None:
    try:
        return read_image(p).rgb
    except MeerError as exc:
        report.skip(p, str(exc))
        return None


def synthetic_masks(faces: dict[Path, Face], keys: dict[Path, str], masker: Masker, seed: int,
                    progress: bool = True) -> dict[Path, tuple[np.ndarray, np.ndarray]]:
    """``{path: (masked canvas, mask)}`` for every face, one fixed-seed synthetic mask each."""
    out = {}
    for p, face in tqdm(faces.items(), desc="synthetic masks", unit="img", disable=not progress):
        masked, mask = masker(face.canvas, face.landmarks, image_seed(seed, keys[p]))
        if masked.shape != face.canvas.shape or mask.shape != face.canvas.shape[:2]:
            raise MeerError(f"masker returned shapes {masked.shape} / {mask.shape} for a {face.canvas.shape} canvas")
        out[p] = (masked, mask)
    return out
