"""Align every photo of a folder tree into an aligned-crop cache (what ``meer-align`` runs).

``OUT_DIR`` mirrors ``RAW_DIR``'s sub-folders (identity folders stay identity folders) and gets:

* ``<rel dir>/<stem>.<ext>`` per photo (largest face), or ``<stem>_NN.<ext>`` per face (all faces,
  ``NN`` counting from 00 by decreasing face size);
* ``alignment.jsonl``: one JSON object per crop (see :func:`crop_record`);
* ``skipped.txt``: ``path<TAB>reason`` for every input that gave no crop.

Coordinates are in the photo's displayed orientation (EXIF rotation applied), ``source_size`` is
``[width, height]`` in that frame.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from meer.faces.align import AlignedFace, align_face
from meer.faces.detect import FaceDetection, FaceDetector
from meer.utils.errors import ImageError, MeerError, OutputExistsError
from meer.utils.files import atomic_write_bytes, check_output_dir, iter_images
from meer.utils.images import LoadedImage, read_image, write_image

JSONL_NAME = "alignment.jsonl"
SKIPPED_NAME = "skipped.txt"


@dataclass
class AlignSummary:
    images: int = 0  # inputs seen
    aligned_images: int = 0  # inputs with at least one crop written
    faces: int = 0  # crops written
    seconds: float = 0.0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    detectors: dict[str, int] = field(default_factory=dict)  # crops per detector

    @property
    def faces_per_second(self) -> float:
        return self.faces / self.seconds if self.seconds > 0 else 0.0


def crop_record(source: Path, raw_dir: Path, crop: Path, out_dir: Path, index: int, det: FaceDetection,
                aligned: AlignedFace, image: LoadedImage) -> dict:
    """The ``alignment.jsonl`` line of one crop."""
    return {
        "source": source.relative_to(raw_dir).as_posix(),
        "crop": crop.relative_to(out_dir).as_posix(),
        "face_index": index,
        "box": [round(float(v), 2) for v in det.box],
        "score": round(float(det.score), 5),
        "detector": det.detector,
        "landmarks_source": [[round(float(x), 3), round(float(y), 3)] for x, y in det.landmarks],
        "landmarks_crop": [[round(float(x), 3), round(float(y), 3)] for x, y in aligned.landmarks],
        "matrix": [[float(v) for v in row] for row in aligned.matrix],
        "source_size": list(image.size),
        "crop_size": int(aligned.crop.shape[0]),
    }


def align_folder(raw_dir: str | Path, out_dir: str | Path, detector: FaceDetector, *,
                 mode: Literal["largest", "all"] = "largest", size: int = 112, fmt: str = "jpg",
                 quality: int = 95, overwrite: bool = False, batch_size: int = 16,
                 progress: bool = True) -> AlignSummary:
    """Detect, align and write every image under ``raw_dir``; bad inputs are listed, never fatal."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if not raw_dir.is_dir():
        raise MeerError(f"input folder not found: {raw_dir}")
    out_dir = check_output_dir(raw_dir, out_dir)
    raw_dir = raw_dir.resolve()
    if mode not in ("largest", "all"):
        raise MeerError(f"mode must be 'largest' or 'all', got {mode!r}")
    if fmt not in ("jpg", "png"):
        raise MeerError(f"format must be jpg or png, got {fmt!r}")
    if size < 16:
        raise MeerError(f"crop size must be >= 16 pixels, got {size}")
    jsonl = out_dir / JSONL_NAME
    if jsonl.exists() and not overwrite:
        raise OutputExistsError(f"{jsonl} already exists (use --overwrite to replace it)")
    files = list(iter_images(raw_dir, all_files=True))
    if not files:
        raise MeerError(f"no files found in {raw_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = AlignSummary()
    written: dict[Path, Path] = {}
    lines: list[str] = []
    t0 = time.perf_counter()
    bar = tqdm(total=len(files), desc="meer-align", unit="img", disable=not progress)
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        loaded: list[tuple[Path, LoadedImage]] = []
        for path in chunk:
            summary.images += 1
            try:
                loaded.append((path, read_image(path)))
            except ImageError as exc:
                summary.skipped.append((str(path), _reason(exc, path)))
        found = detector.detect([im.rgb for _, im in loaded]) if loaded else []
        for (path, image), dets in zip(loaded, found):
            if not dets:
                summary.skipped.append((str(path), "no face found"))
                continue
            faces = dets if mode == "all" else dets[:1]  # detections come sorted by decreasing area
            rel = path.relative_to(raw_dir)
            n_written = 0
            for idx, det in enumerate(faces):
                name = f"{rel.stem}.{fmt}" if mode == "largest" else f"{rel.stem}_{idx:02d}.{fmt}"
                crop_path = out_dir / rel.parent / name
                if crop_path in written:
                    summary.skipped.append((str(path), f"crop name clashes with {written[crop_path]}"))
                    break
                try:
                    aligned = align_face(image.rgb, det.landmarks, size=size)
                    write_image(crop_path, aligned.crop, overwrite=overwrite, quality=quality)
                except OutputExistsError as exc:
                    summary.skipped.append((str(path), str(exc)))
                    break
                written[crop_path] = path
                lines.append(json.dumps(crop_record(path, raw_dir, crop_path, out_dir, idx, det, aligned, image)))
                summary.detectors[det.detector] = summary.detectors.get(det.detector, 0) + 1
                n_written += 1
            summary.faces += n_written
            summary.aligned_images += n_written > 0
        bar.update(len(chunk))
        bar.set_postfix(faces=summary.faces, skipped=len(summary.skipped), refresh=False)
    bar.close()
    summary.seconds = time.perf_counter() - t0
    atomic_write_bytes(jsonl, "".join(line + "\n" for line in lines).encode("utf-8"))
    skipped_text = "".join(f"{p}\t{r}\n" for p, r in summary.skipped)
    atomic_write_bytes(out_dir / SKIPPED_NAME, skipped_text.encode("utf-8"))
    return summary


def _reason(exc: Exception, path: Path) -> str:
    """The error message without its leading ``<path>: `` (the report prints the path already)."""
    text = str(exc)
    prefix = f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else text


def read_alignment(out_dir: str | Path) -> list[dict]:
    """The records of an ``alignment.jsonl`` (matrices and landmarks as numpy arrays)."""
    path = Path(out_dir) / JSONL_NAME
    if not path.is_file():
        raise MeerError(f"{path} not found (run meer-align first)")
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MeerError(f"{path}:{n}: invalid JSON ({exc.msg})") from None
        if "crop" not in rec or "landmarks_crop" not in rec:
            raise MeerError(f"{path}:{n}: a record needs 'crop' and 'landmarks_crop' (as meer-align writes them)")
        for key in ("matrix", "landmarks_source", "landmarks_crop", "box"):
            if key in rec:
                rec[key] = np.asarray(rec[key], dtype=np.float64)
        if rec["landmarks_crop"].shape != (5, 2):
            raise MeerError(f"{path}:{n}: landmarks_crop must be 5 (x, y) points, got shape {rec['landmarks_crop'].shape}")
        records.append(rec)
    return records
