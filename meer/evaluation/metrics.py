"""Verification and identification metrics: they live in :mod:`meer.utils.verification` (pure numpy, a
layer that training's validation and the evaluation harness can both import); this module re-exports
them under their evaluation name."""
from __future__ import annotations

from meer.utils.verification import (KFoldResult, MetricError, bootstrap_ci, best_threshold, eer,  # noqa: F401
                                     fold_bootstrap_ci, kfold_accuracy, rank1, roc_auc, roc_curve, tar_at_far,
                                     verification_summary)

__all__ = ["KFoldResult", "MetricError", "best_threshold", "bootstrap_ci", "eer", "fold_bootstrap_ci",
           "kfold_accuracy", "rank1", "roc_auc", "roc_curve", "tar_at_far", "verification_summary"]
