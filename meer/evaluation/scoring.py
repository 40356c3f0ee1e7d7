"""The one pair scorer: a judge's similarities of a list of pairs, with failure-to-enrol accounting.

Every verification number of ``meer-eval`` (the harness, the published protocols) and every per-pair view of the
notebook helpers (``meer.evaluation.plots``) comes from :func:`score_pairs`: pairs touching an image the judge could
not enrol are left out and counted, and the scored pairs are kept with their ids, so a score can always be traced
back to the two images behind it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Mapping, Sequence

import numpy as np

from meer.evaluation.judge import Judge
from meer.evaluation.metrics import MetricError, verification_summary

#: ``(probe id, reference id, same person, fold)``
PairRef = tuple[Hashable, Hashable, bool, int]


@dataclass
class PairScores:
    """What one judge made of one list of pairs."""

    scores: np.ndarray  # float64 similarities of the scored pairs (larger = same person)
    genuine: np.ndarray  # bool, same length
    folds: np.ndarray  # int, same length
    pairs: list[tuple[Hashable, Hashable]] = field(default_factory=list)  # (probe, reference) ids, same order
    total: int = 0  # pairs asked for
    images: int = 0  # distinct images the pairs touch
    failed: int = 0  # of those, images the judge could not enrol

    @property
    def scored(self) -> int:
        return int(self.scores.size)

    @property
    def has_both_kinds(self) -> bool:
        """Genuine and impostor pairs were both scored (what ROC curves and histograms need)."""
        return bool(self.genuine.any() and not self.genuine.all())

    def row(self, seed: int = 0, bootstrap: int = 1000) -> dict:
        """The verification entry: FTE accounting, then 10-fold accuracy, AUC, EER, TAR@FAR ... or ``error``."""
        out = {"pairs_total": self.total, "pairs_scored": self.scored, "pairs_excluded_fte": self.total - self.scored,
               "images": self.images, "fte_images": self.failed,
               "fte_rate": self.failed / self.images if self.images else 0.0}
        if not self.total:
            out["error"] = "no pairs of this kind"
            return out
        try:
            if np.unique(self.folds).size < 2:
                raise MetricError("fewer than 2 folds have scored pairs")
            out.update(verification_summary(self.scores, self.genuine, self.folds, seed=seed, bootstrap=bootstrap))
        except MetricError as exc:
            out["error"] = str(exc)
        return out


    def restrict(self, keep: set[tuple[Hashable, Hashable]]) -> "PairScores":
        """These scores on the pairs in ``keep`` only (``(probe, reference)`` ids; pairs not scored here are not
        added): comparing judges on the pairs every one of them enrolled. ``total`` becomes the pairs kept, so
        the restricted row has no failures to enrol of its own."""
        idx = np.array([i for i, pair in enumerate(self.pairs) if pair in keep], dtype=np.int64)
        pairs = [self.pairs[i] for i in idx]
        images = len({a for a, _ in pairs} | {("ref", b) for _, b in pairs})
        return PairScores(self.scores[idx], self.genuine[idx], self.folds[idx], pairs, len(pairs), images, 0)


def score_pairs(judge: Judge, pairs: Sequence[PairRef], probes: Mapping[Hashable, np.ndarray],
                references: Mapping[Hashable, np.ndarray] | None = None) -> PairScores:
    """Score ``pairs`` with ``judge``: ``probes`` / ``references`` map an id to the judge's embedding of that side's
    image (absent = not enrolled). ``references=None``: both sides read ``probes`` (one set of images, counted
    once); otherwise an image counts once per side it appears on."""
    refs = probes if references is None else references
    shared = references is None or references is probes
    images, failed = set(), set()
    kept: list[PairRef] = []
    for a, b, same, fold in pairs:
        ka, kb = (0, a), ((0 if shared else 1), b)
        images.update((ka, kb))
        ea, eb = probes.get(a), refs.get(b)
        if ea is None:
            failed.add(ka)
        if eb is None:
            failed.add(kb)
        if ea is not None and eb is not None:
            kept.append((a, b, bool(same), int(fold)))
    if kept:
        scores = judge.pair_scores(np.stack([probes[a] for a, _, _, _ in kept]), np.stack([refs[b] for _, b, _, _ in kept]))
    else:
        scores = np.zeros(0)
    return PairScores(np.asarray(scores, np.float64), np.array([k[2] for k in kept], bool),
                      np.array([k[3] for k in kept], np.int64), [(a, b) for a, b, _, _ in kept], len(pairs),
                      len(images), len(failed))
