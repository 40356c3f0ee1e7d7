"""Embed the largest face of every photo under a folder (what ``meer-embed`` runs).

Photos go through meer's detector in batches (``FaceDetector``: MTCNN, retries, dlib's CNN as a
fallback), the largest face is aligned by its 5 landmarks and prepared for the embedder; with
``aligned=True`` every image is taken as an ArcFace-aligned square crop and nothing is detected.
Unreadable files, non-square aligned inputs and photos without a face are listed, never fatal.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from meer.utils.errors import ImageError, MeerError
from meer.utils.files import iter_images
from meer.utils.images import read_image


@dataclass
class EmbedRun:
    paths: list[str] = field(default_factory=list)  # relative to the input folder (posix)
    embeddings: np.ndarray | None = None  # N x D float32, unit rows
    skipped: list[tuple[str, str]] = field(default_factory=list)
    images: int = 0
    seconds: float = 0.0


def embed_batch(embedder, images: list[np.ndarray], flip: bool = False) -> np.ndarray:
    """``embedder.embed(images)``; with ``flip`` the L2-normalised sum of each image's and its horizontal mirror's
    embeddings (insightface's test-time protocol; for dlib's Euclidean descriptor the same direction as the mean)."""
    e = embedder.embed(images)
    if not flip:
        return e
    e = e + embedder.embed([np.ascontiguousarray(im[:, ::-1]) for im in images])
    return (e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def embed_folder(root: str | Path, embedder, detector=None, *, aligned: bool = False, batch_size: int = 16,
                 progress: bool = True, flip: bool = False) -> EmbedRun:
    """``embedder``: see ``meer.inference.embedders``; ``detector``: a ``FaceDetector`` (not needed
    with ``aligned=True``); ``flip``: see :func:`embed_batch`."""
    root = Path(root)
    if not root.exists():
        raise MeerError(f"input not found: {root}")
    base = root.resolve() if root.is_dir() else root.resolve().parent
    files = list(iter_images(root, all_files=True))
    if not files:
        raise MeerError(f"no files found in {root}")
    if not aligned and detector is None:
        raise MeerError("photos need a face detector (or pass aligned=True for aligned crops)")
    run = EmbedRun()
    vectors: list[np.ndarray] = []
    t0 = time.perf_counter()
    bar = tqdm(total=len(files), desc="meer-embed", unit="img", disable=not progress)
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        loaded = []
        for path in chunk:
            run.images += 1
            try:
                loaded.append((path, read_image(path).rgb))
            except ImageError as exc:
                run.skipped.append((str(path), _reason(exc, path)))
        ready: list[tuple[Path, np.ndarray]] = []
        if aligned:
            for path, rgb in loaded:
                if rgb.shape[0] != rgb.shape[1]:
                    run.skipped.append((str(path), f"not a square aligned crop ({rgb.shape[1]}x{rgb.shape[0]})"))
                    continue
                ready.append((path, embedder.prepare_aligned(rgb)))
        elif loaded:
            for (path, rgb), dets in zip(loaded, detector.detect([rgb for _, rgb in loaded])):
                if not dets:
                    run.skipped.append((str(path), "no face found"))
                    continue
                ready.append((path, embedder.prepare_photo(rgb, dets[0].landmarks)))  # largest face first
        if ready:
            vectors.append(embed_batch(embedder, [im for _, im in ready], flip))
            run.paths += [p.resolve().relative_to(base).as_posix() for p, _ in ready]
        bar.update(len(chunk))
        bar.set_postfix(embedded=len(run.paths), skipped=len(run.skipped), refresh=False)
    bar.close()
    run.seconds = time.perf_counter() - t0
    dim = int(getattr(embedder, "dim", 0))
    run.embeddings = np.concatenate(vectors).astype(np.float32) if vectors else np.zeros((0, dim), np.float32)
    return run


def _reason(exc: Exception, path: Path) -> str:
    text = str(exc)
    prefix = f"{path}: "
    return text[len(prefix):] if text.startswith(prefix) else text
