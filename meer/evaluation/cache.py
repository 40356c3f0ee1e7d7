"""Embedding cache: a judge's embedding of a crop is keyed by the crop's pixels.

Keys are SHA-1 digests of the crop's bytes (and shape), so any change upstream (detection, mask, restoration)
gives new keys and stale entries are never reused; each judge (``Judge.cache_key``) has its own file.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np

from meer.evaluation.judge import Judge, JudgeOutput
from meer.utils.files import atomic_write_bytes


def pixel_digest(image: np.ndarray) -> str:
    c = np.ascontiguousarray(image)
    return hashlib.sha1(f"{c.shape}{c.dtype}".encode() + c.tobytes()).hexdigest()


class EmbeddingCache:
    def __init__(self, folder: Path | None, judge: Judge):
        self.judge = judge
        self.path = folder / f"emb-{judge.cache_key}.npz" if folder is not None else None
        self.entries: dict[str, tuple[np.ndarray, bool]] = {}
        self.hits = 0
        self.misses = 0
        if self.path is not None and self.path.is_file():
            try:
                with np.load(self.path) as z:
                    for k, v, ok in zip(z["keys"].astype(str), z["vectors"], z["ok"]):
                        self.entries[k] = (v, bool(ok))
            except (OSError, ValueError, KeyError):
                self.entries = {}  # damaged: recompute
        self.dirty = False

    def embed(self, crops: np.ndarray) -> JudgeOutput:
        """Embeddings of ``crops``, computing only the ones not cached (each distinct crop reaches the judge once,
        exactly as given)."""
        digests = [pixel_digest(c) for c in crops]
        first = {}
        for i, d in enumerate(digests):
            if d not in self.entries:
                first.setdefault(d, i)
        todo = list(first.values())
        self.hits += len(digests) - len(todo)
        self.misses += len(todo)
        if todo:
            new = self.judge.embed(np.stack([crops[i] for i in todo]))
            for j, i in enumerate(todo):
                self.entries[digests[i]] = (new.vectors[j], bool(new.ok[j]))
            self.dirty = True
        if not digests:
            return JudgeOutput(np.zeros((0, 1), np.float32), np.zeros(0, bool))
        vectors = np.stack([self.entries[d][0] for d in digests]).astype(np.float32)
        ok = np.array([self.entries[d][1] for d in digests], dtype=bool)
        return JudgeOutput(vectors, ok)

    def save(self) -> None:
        if self.path is None or not self.dirty:
            return
        keys = np.array(list(self.entries), dtype="S40")
        vectors = np.stack([v for v, _ in self.entries.values()])
        ok = np.array([o for _, o in self.entries.values()], dtype=bool)
        buf = io.BytesIO()
        np.savez(buf, keys=keys, vectors=vectors, ok=ok)
        atomic_write_bytes(self.path, buf.getvalue())
        self.dirty = False
