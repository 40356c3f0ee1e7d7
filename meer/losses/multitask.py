"""Per-task losses and task weighting for MaskMTL.

* classification: cross-entropy over the samples that carry a label (target ``-1`` = no label);
* regression: smooth-L1 (Huber, beta 1) between the prediction and ``target / scale`` over the
  samples with a finite target (``NaN`` = no label).

A batch may mix sources (UTKFace rows have ages, CelebA rows attributes, every row its synthetic mask
attributes), so each task averages over its own labelled samples; a task without any label in the
batch contributes nothing.

Weighting: ``fixed`` sums ``weight_t * L_t``. ``uncertainty`` learns one log-variance ``s_t`` per task
(Kendall, Gal and Cipolla, "Multi-task learning using uncertainty to weigh losses", CVPR 2018,
eqs. 7 and 10 with ``s = log sigma^2``): ``exp(-s_t) L_t + s_t / 2`` for a classification and
``exp(-s_t) L_t / 2 + s_t / 2`` for a regression. Tasks with ``weight = 0`` are off in both modes.
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from meer.data.multitask import TaskSpec
from meer.utils.errors import MeerError

Weighting = Literal["fixed", "uncertainty"]


def task_loss(spec: TaskSpec, pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(mean loss over labelled samples, number of labelled samples)``; (0, 0) when none is labelled."""
    if spec.kind == "classification":
        target = target.long()
        keep = target >= 0
        n = int(keep.sum())
        if n == 0:
            return pred.sum() * 0.0, 0
        if int(target[keep].max()) >= spec.num_classes:
            raise MeerError(f"task {spec.name}: label {int(target[keep].max())} >= num_classes {spec.num_classes}")
        return F.cross_entropy(pred[keep].float(), target[keep]), n
    target = target.float()
    keep = torch.isfinite(target)
    n = int(keep.sum())
    if n == 0:
        return pred.sum() * 0.0, 0
    return F.smooth_l1_loss(pred[keep].float(), target[keep] / spec.scale), n


class MultiTaskLoss(nn.Module):
    """``forward(preds, targets) -> (total, {task: unweighted loss})`` (tasks absent from the batch skipped)."""

    def __init__(self, tasks: Sequence[TaskSpec], weighting: Weighting = "fixed") -> None:
        super().__init__()
        if weighting not in ("fixed", "uncertainty"):
            raise MeerError(f"weighting must be fixed or uncertainty, got {weighting!r}")
        self.tasks = [t for t in tasks if t.weight > 0]
        if not self.tasks:
            raise MeerError("every task has weight 0: nothing to train")
        self.weighting = weighting
        self.log_vars = nn.ParameterDict(
            {t.name: nn.Parameter(torch.zeros(())) for t in self.tasks}) if weighting == "uncertainty" else None

    def task_weights(self) -> dict[str, float]:
        """The effective weight of each task's loss right now (fixed weight, or its learned precision)."""
        if self.log_vars is None:
            return {t.name: t.weight for t in self.tasks}
        return {t.name: float(torch.exp(-self.log_vars[t.name].detach()) * (1.0 if t.kind == "classification" else 0.5))
                for t in self.tasks}

    def forward(self, preds: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        total = None
        parts: dict[str, torch.Tensor] = {}
        for t in self.tasks:
            if t.name not in targets or t.name not in preds:
                continue
            loss, n = task_loss(t, preds[t.name], targets[t.name])
            if n == 0:
                continue
            parts[t.name] = loss.detach()
            if self.log_vars is None:
                term = t.weight * loss
            else:
                s = self.log_vars[t.name]
                term = torch.exp(-s) * loss * (1.0 if t.kind == "classification" else 0.5) + 0.5 * s
            total = term if total is None else total + term
        if total is None:
            raise MeerError("no task in this batch has a label: check the task names against the dataset's keys")
        return total, parts
