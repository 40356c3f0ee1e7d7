"""From image files to evaluation crops: meer's own detection and alignment, then synthetic masks.

Every photo is located with meer's detector (``meer.faces.FaceDetector``: MTCNN with its masked-face
fallback), warped once into the 112 ArcFace crop (``meer.evaluation.geometry.crop_from_photo``, the
alignment ``meer-restore`` uses) and kept with its landmarks in crop pixels. A photo in which no face
is found gets no crop: it is a failure to enrol for every judge and the report counts it. Landmarks
are cached per file (path, size, mtime) so re-runs skip detection. Aligned input (``--aligned``) is
used as it is (``crop_from_aligned``).

Synthetic masks are drawn on the crop with ``meer.masking`` (their occlusion mask is exactly the pixels
that changed: the ground truth of the oracle rows and of the masked-region quality metrics), with a seed
derived from the run seed and the image's key, so an image gets the same mask whatever else is evaluated
with it.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from tqdm import tqdm

from meer.utils.folder_report import FolderReport
from meer.evaluation.dataset import EvalData
from meer.evaluation.geometry import crop_from_aligned, crop_from_photo
from meer.faces.template import ARCFACE_112
from meer.utils.errors import MeerError
from meer.utils.files import atomic_write_bytes
from meer.utils.images import read_image

#: images -> 5 landmarks per image (``None`` when no face)
Locator = Callable[[list[np.ndarray]], list["np.ndarray | None"]]
#: (crop, landmarks in crop pixels, seed) -> (masked crop, occlusion mask bool 112 x 112)
Masker = Callable[[np.ndarray, np.ndarray, int], "tuple[np.ndarray, np.ndarray]"]


@dataclass
class Face:
    crop: np.ndarray  # 112 x 112 x 3 uint8 ArcFace crop
    landmarks: np.ndarray  # (5, 2) in crop pixels


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

    def mask(crop: np.ndarray, landmarks: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        r = apply_mask(crop, landmarks, sample_spec(seed, kinds=kinds))
        return np.asarray(r.image, dtype=np.uint8), np.asarray(r.mask).astype(bool)

    return mask


def image_seed(seed: int, key: str) -> int:
    """Per-image mask seed: fixed by the run seed and the image's key, independent of order."""
    return (int(seed) * 1_000_003 + zlib.crc32(key.encode("utf-8"))) % (2**31 - 1)


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
    """Crop and landmarks for every readable image with a face; the others go to ``report``."""
    paths = [p for lst in data.files.values() for p in lst]
    faces: dict[Path, Face] = {}
    if data.aligned:
        for p in tqdm(paths, desc="reading aligned crops", unit="img", disable=not progress):
            rgb = _read(p, report)
            if rgb is None:
                continue
            try:
                faces[p] = Face(crop_from_aligned(rgb), ARCFACE_112.astype(np.float64))
            except MeerError as exc:
                report.skip(p, str(exc))
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
        crop, crop_lm = crop_from_photo(rgb, np.asarray(lm, dtype=np.float64))
        faces[p] = Face(crop, crop_lm)
    return faces


def _read(p: Path, report: FolderReport) -> np.ndarray | None:
    try:
        return read_image(p).rgb
    except MeerError as exc:
        report.skip(p, str(exc))
        return None


def synthetic_masks(faces: dict[Path, Face], keys: dict[Path, str], masker: Masker, seed: int,
                    progress: bool = True) -> dict[Path, tuple[np.ndarray, np.ndarray]]:
    """``{path: (masked crop, mask)}`` for every face, one fixed-seed synthetic mask each."""
    out = {}
    for p, face in tqdm(faces.items(), desc="synthetic masks", unit="img", disable=not progress):
        masked, mask = masker(face.crop, face.landmarks, image_seed(seed, keys[p]))
        if masked.shape != face.crop.shape or mask.shape != face.crop.shape[:2]:
            raise MeerError(f"masker returned shapes {masked.shape} / {mask.shape} for a {face.crop.shape} crop")
        out[p] = (np.asarray(masked, np.uint8), np.asarray(mask, bool))
    return out
