"""Decoupling loss: keep the identity code free of mask information and the occlusion code free of identity.

``DecouplingLoss(id_dim, occ_dim, num_identities, num_mask_kinds, ...)`` holds its own classifiers (train them
with the recognizer's optimizer: ``list(model.recognizer_parameters()) + list(decoupling_loss.parameters())``).
``forward(id_code, occ_code, labels, mask_kind) -> (loss, parts)`` with

* ``kind_adv``: an MLP predicts the mask kind from ``grad_reverse(id_code)``. The MLP learns to predict it, the
  encoder receives the reversed gradient and learns to remove mask-kind information from the identity code.
* ``id_adv``: an MLP predicts the identity from ``grad_reverse(occ_code)`` -- the identity classifier that must
  fail on the occlusion code.
* ``occ_kind``: a linear classifier predicts the mask kind from ``occ_code`` (ordinary gradient), so the
  occlusion code carries the mask and cannot satisfy ``id_adv`` by collapsing to a constant.
* ``decorr``: mean squared cross-correlation between the batch-standardised codes (XCov, Cheung et al. 2014),
  zero when no linear combination of one code predicts the other across the batch.

``loss = w_kind_adv * kind_adv + w_id_adv * id_adv + w_occ_kind * occ_kind + w_decorr * decorr``; a zero
weight skips the term (its classifier then gets no gradient; the trainer's explicit gradient all-reduce
sends zeros for it, so several processes need nothing special).
Labels / kinds ``-1`` (unknown identity, unmasked face) are ignored. ``parts`` also holds the adversaries'
accuracies (``kind_adv_acc``, ``id_adv_acc``; detached): near chance means the codes are decoupled.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from meer.losses.grad_reverse import grad_reverse


def _mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, out_dim))


def _ce(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy ignoring ``-1`` (0 with a live graph when nothing is labelled) and accuracy."""
    valid = target >= 0
    if not bool(valid.any()):
        zero = logits.float().sum() * 0.0
        return zero, zero.detach()
    loss = F.cross_entropy(logits.float(), target, ignore_index=-1)
    acc = (logits.detach().argmax(1)[valid] == target[valid]).float().mean()
    return loss, acc


def cross_correlation_penalty(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Mean squared entry of the ``dim_a x dim_b`` cross-correlation matrix of the batch-standardised codes."""
    if a.shape[0] < 2:
        return (a.float().sum() + b.float().sum()) * 0.0
    a = a.float()
    b = b.float()
    a = (a - a.mean(0)) / (a.std(0, unbiased=False) + eps)
    b = (b - b.mean(0)) / (b.std(0, unbiased=False) + eps)
    c = a.t() @ b / a.shape[0]
    return c.square().mean()


class DecouplingLoss(nn.Module):
    def __init__(
        self,
        id_dim: int,
        occ_dim: int,
        num_identities: int,
        num_mask_kinds: int,
        w_kind_adv: float = 0.1,
        w_id_adv: float = 0.1,
        w_occ_kind: float = 0.1,
        w_decorr: float = 1.0,
        grl_lambda: float = 1.0,
        hidden: int = 128,
    ) -> None:
        super().__init__()
        self.weights = {"kind_adv": w_kind_adv, "id_adv": w_id_adv, "occ_kind": w_occ_kind, "decorr": w_decorr}
        if any(w < 0 for w in self.weights.values()):
            raise ValueError(f"decoupling loss weights must be >= 0, got {self.weights}")
        self.grl_lambda = grl_lambda
        self.kind_adversary = _mlp(id_dim, hidden, num_mask_kinds)
        self.id_adversary = _mlp(occ_dim, hidden, num_identities)
        self.occ_kind = nn.Linear(occ_dim, num_mask_kinds)

    def forward(
        self, id_code: torch.Tensor, occ_code: torch.Tensor, labels: torch.Tensor, mask_kind: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.autocast(device_type=id_code.device.type, enabled=False):
            id_code, occ_code = id_code.float(), occ_code.float()
            total = id_code.new_zeros(())
            parts: dict[str, torch.Tensor] = {}
            w = self.weights
            if w["kind_adv"] > 0:
                parts["kind_adv"], parts["kind_adv_acc"] = _ce(
                    self.kind_adversary(grad_reverse(id_code, self.grl_lambda)), mask_kind
                )
                total = total + w["kind_adv"] * parts["kind_adv"]
            if w["id_adv"] > 0:
                parts["id_adv"], parts["id_adv_acc"] = _ce(self.id_adversary(grad_reverse(occ_code, self.grl_lambda)), labels)
                total = total + w["id_adv"] * parts["id_adv"]
            if w["occ_kind"] > 0:
                parts["occ_kind"], parts["occ_kind_acc"] = _ce(self.occ_kind(occ_code), mask_kind)
                total = total + w["occ_kind"] * parts["occ_kind"]
            if w["decorr"] > 0:
                parts["decorr"] = cross_correlation_penalty(id_code, occ_code)
                total = total + w["decorr"] * parts["decorr"]
        return total, parts
