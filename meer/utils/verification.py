"""Verification and identification metrics, pure numpy (re-exported by ``meer.evaluation.metrics``).

Conventions (the same as scikit-learn's ``roc_curve``): a *score* is a similarity, larger means
"same person", and a pair is accepted when ``score >= threshold``. Genuine pairs are the positives.

- ``roc_curve``: every distinct score is a threshold (no point is dropped), starting at ``+inf``
  (nothing accepted, FPR = TPR = 0) and ending at the lowest score (everything accepted).
- ``roc_auc``: trapezoid area under that curve; equals the Mann-Whitney probability
  ``P(genuine > impostor) + 0.5 P(genuine == impostor)``.
- ``eer``: the point where FNR = 1 - TPR meets FPR, linearly interpolated between the two ROC points
  around the crossing.
- ``tar_at_far``: the largest TAR over thresholds whose FAR is ``<= far`` on the impostor scores
  (FMR100 / FMR1000 of the EUM/SRT paper are ``1 - tar_at_far(., 1e-2)`` / ``(., 1e-3)``).
- ``kfold_accuracy``: the LFW protocol: for each fold the threshold maximising accuracy on the other
  folds is applied to the held-out fold.
- ``rank1``: closed-set identification of probes against a gallery.
- ``bootstrap_ci``: percentile bootstrap interval of a statistic, fixed seed; ``fold_bootstrap_ci`` the
  interval of the k-fold accuracy (pairs resampled within folds).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from meer.utils.errors import MeerError


_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 calls it trapz


class MetricError(MeerError):
    """Scores that cannot give the requested metric (e.g. no impostor pairs)."""


def _split(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).astype(bool).ravel()
    if scores.shape != labels.shape:
        raise MetricError(f"{scores.size} scores but {labels.size} labels")
    if not np.all(np.isfinite(scores)):
        raise MetricError("scores contain NaN or infinite values")
    if labels.all() or not labels.any():
        raise MetricError("need both genuine and impostor pairs (got only one kind)")
    return scores, labels


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` with thresholds decreasing from ``+inf``; accept when ``score >= t``."""
    scores, labels = _split(scores, labels)
    order = np.argsort(-scores, kind="mergesort")
    s = scores[order]
    y = labels[order]
    last_of_run = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tps = np.cumsum(y)[last_of_run]
    fps = (last_of_run + 1) - tps
    tpr = np.r_[0.0, tps / labels.sum()]
    fpr = np.r_[0.0, fps / (~labels).sum()]
    thresholds = np.r_[np.inf, s[last_of_run]]
    return fpr, tpr, thresholds


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    fpr, tpr, _ = roc_curve(scores, labels)
    return float(_trapezoid(tpr, fpr))


def eer(scores: np.ndarray, labels: np.ndarray) -> float:
    """Equal error rate, interpolated where FNR and FPR cross on the ROC."""
    fpr, tpr, _ = roc_curve(scores, labels)
    fnr = 1.0 - tpr
    diff = fnr - fpr  # starts at 1 (nothing accepted), ends at -1 (everything accepted), non-increasing
    i = int(np.flatnonzero(diff <= 0)[0])
    if diff[i] == 0:
        return float(fpr[i])
    # the crossing lies on the segment (i-1, i): interpolate both rates linearly along it
    t = diff[i - 1] / (diff[i - 1] - diff[i])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def tar_at_far(scores: np.ndarray, labels: np.ndarray, far: float) -> tuple[float, float]:
    """``(tar, threshold)``: the best true-accept rate among thresholds with false-accept rate ``<= far``."""
    if not 0.0 <= far <= 1.0:
        raise MetricError(f"FAR target must lie in [0, 1], got {far}")
    fpr, tpr, thr = roc_curve(scores, labels)
    ok = np.flatnonzero(fpr <= far + 1e-12)
    i = int(ok[-1])  # fpr is non-decreasing and tpr with it: the last allowed point is the best
    return float(tpr[i]), float(thr[i])


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """Threshold maximising accuracy of ``score >= t`` (the lowest one among ties, midway between scores)."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels).astype(bool).ravel()
    s = np.unique(scores)
    candidates = np.r_[s[0] - 1.0, (s[:-1] + s[1:]) / 2.0, s[-1] + 1.0]
    accepted = scores[None, :] >= candidates[:, None]
    acc = (accepted == labels[None, :]).mean(axis=1)
    return float(candidates[int(np.argmax(acc))])


@dataclass
class KFoldResult:
    accuracy: float  # mean of the per-fold accuracies
    std: float  # their standard deviation (population, as the LFW protocol reports)
    fold_accuracies: np.ndarray
    thresholds: np.ndarray  # one per fold, chosen on the other folds
    correct: np.ndarray  # per pair: decision with its fold's threshold was right


def kfold_accuracy(scores: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> KFoldResult:
    """LFW-style verification accuracy: each fold is judged with the threshold fitted on the others."""
    scores, labels = _split(scores, labels)
    folds = np.asarray(folds).ravel()
    if folds.shape != scores.shape:
        raise MetricError(f"{folds.size} fold ids for {scores.size} scores")
    ids = np.unique(folds)
    if ids.size < 2:
        raise MetricError("k-fold accuracy needs at least 2 folds")
    accs, ths = [], []
    correct = np.zeros(scores.size, dtype=bool)
    for f in ids:
        test = folds == f
        t = best_threshold(scores[~test], labels[~test])
        decided = (scores[test] >= t) == labels[test]
        correct[test] = decided
        accs.append(decided.mean())
        ths.append(t)
    accs = np.asarray(accs)
    return KFoldResult(float(accs.mean()), float(accs.std()), accs, np.asarray(ths), correct)


def rank1(similarity: np.ndarray, probe_labels: np.ndarray, gallery_labels: np.ndarray) -> float:
    """Share of probes whose most similar gallery entry (first among ties) has the probe's label."""
    sim = np.asarray(similarity, dtype=np.float64)
    probe_labels = np.asarray(probe_labels)
    gallery_labels = np.asarray(gallery_labels)
    if sim.shape != (probe_labels.size, gallery_labels.size):
        raise MetricError(f"similarity is {sim.shape}, expected ({probe_labels.size}, {gallery_labels.size})")
    if probe_labels.size == 0:
        raise MetricError("rank-1 needs at least one probe")
    return float((gallery_labels[np.argmax(sim, axis=1)] == probe_labels).mean())


def bootstrap_ci(values: np.ndarray, statistic: Callable[[np.ndarray], float] = np.mean, n: int = 1000,
                 level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(values)`` (resampling ``values`` with replacement)."""
    values = np.asarray(values)
    if values.size == 0:
        raise MetricError("bootstrap of an empty sample")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.shape[0], size=(n, values.shape[0]))
    if statistic is np.mean:
        stats = values[idx].mean(axis=1)
    else:
        stats = np.array([statistic(values[i]) for i in idx])
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def fold_bootstrap_ci(correct: np.ndarray, folds: np.ndarray, n: int = 1000, level: float = 0.95,
                      seed: int = 0) -> tuple[float, float]:
    """Bootstrap interval of the k-fold accuracy (mean of per-fold accuracies): pairs are resampled with
    replacement within each fold, so unequal folds are weighted as the estimate weights them."""
    correct = np.asarray(correct, dtype=np.float64).ravel()
    folds = np.asarray(folds).ravel()
    rng = np.random.default_rng(seed)
    per_fold = []
    for f in np.unique(folds):
        c = correct[folds == f]
        per_fold.append(c[rng.integers(0, c.size, size=(n, c.size))].mean(axis=1))
    stats = np.mean(per_fold, axis=0)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def verification_summary(scores: np.ndarray, labels: np.ndarray, folds: np.ndarray, seed: int = 0,
                         bootstrap: int = 1000) -> dict:
    """Every verification number the report shows, as plain floats (JSON-ready); ``bootstrap`` resamples for the
    accuracy interval."""
    scores, labels = _split(scores, labels)
    kf = kfold_accuracy(scores, labels, folds)
    lo, hi = fold_bootstrap_ci(kf.correct, np.asarray(folds).ravel(), n=bootstrap, seed=seed)
    tar2, _ = tar_at_far(scores, labels, 1e-2)
    tar3, _ = tar_at_far(scores, labels, 1e-3)
    return {
        "pairs": int(scores.size),
        "genuine": int(labels.sum()),
        "impostor": int((~labels).sum()),
        "accuracy": kf.accuracy,
        "accuracy_std": kf.std,
        "accuracy_ci95": [lo, hi],
        "auc": roc_auc(scores, labels),
        "eer": eer(scores, labels),
        "tar_at_far_1e-2": tar2,
        "tar_at_far_1e-3": tar3,
        "fmr100": 1.0 - tar2,
        "fmr1000": 1.0 - tar3,
    }
