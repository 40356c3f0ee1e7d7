"""What a *judge* is: a face recognizer that scores the faces the harness shows it.

A judge receives ArcFace-aligned crops (``N x 112 x 112 x 3`` uint8, ``meer.evaluation.geometry``), exactly the
pixels a restoration method returned, and returns one embedding per face plus an ``ok`` flag; a face the
judge cannot enrol (``ok=False``) is counted as a failure-to-enrol, never silently dropped.
Scores are similarities (larger = same person): cosine for most judges, negative Euclidean
distance for dlib, whose descriptor was trained for that distance.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass
class JudgeOutput:
    vectors: np.ndarray  # N x D float32 (rows of failed faces are zero)
    ok: np.ndarray  # N bool: False = failure to enrol


class Judge(ABC):
    """Base class; subclasses set ``name``, ``metric`` and ``cache_key`` and implement ``embed``."""

    name: str = "judge"
    metric: Literal["cosine", "euclidean"] = "cosine"
    #: identifies the weights: embeddings cached under another key are never reused
    cache_key: str = "judge"
    #: the pretrained weights behind the judge (judges sharing them are not independent of each other,
    #: nor of a model trained with a teacher of the same weights); "" = the judge's own
    weights: str = ""

    @abstractmethod
    def embed(self, crops: np.ndarray) -> JudgeOutput:
        """Embeddings of ``N x 112 x 112 x 3`` uint8 ArcFace crops."""

    def pair_scores(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Similarity of rows ``a[i]`` and ``b[i]``."""
        a = np.asarray(a, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        if self.metric == "euclidean":
            return -np.linalg.norm(a - b, axis=1)
        return np.sum(normalize(a) * normalize(b), axis=1)

    def similarity_matrix(self, probes: np.ndarray, gallery: np.ndarray) -> np.ndarray:
        """``P x G`` similarities."""
        p = np.asarray(probes, dtype=np.float64)
        g = np.asarray(gallery, dtype=np.float64)
        if self.metric == "euclidean":
            d2 = (p ** 2).sum(1)[:, None] + (g ** 2).sum(1)[None, :] - 2 * p @ g.T
            return -np.sqrt(np.clip(d2, 0, None))
        return normalize(p) @ normalize(g).T


def normalize(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(n > 0, n, 1.0)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity (the judge-independent "identity kept" measure of the report)."""
    return np.sum(normalize(np.asarray(a, np.float64)) * normalize(np.asarray(b, np.float64)), axis=1)
