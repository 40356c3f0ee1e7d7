"""Teacher targets for the clean training faces, computed once and kept (``loss.teacher_cache``).

The identity teacher is frozen and in eval mode, and a clean training face is a stored image, maybe mirrored
(``data.hflip``): its teacher embedding is a function of (sample index, flipped) alone. So each one is computed
the first time the pair is drawn and looked up from then on; from the second epoch on the teacher runs only on
restored faces (the id-preserving loss needs their gradient). The table lives with the task's state, so a
resumed run looks up exactly the values an uninterrupted run would have used (resume stays bit-identical).

Under several processes each rank fills the entries of the samples it draws; a checkpoint holds rank 0's
table, so after a resume the other ranks recompute theirs (the same values up to float rounding).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class TargetTable:
    """Teacher embeddings kept with a run's state: ``values`` and the ``filled`` marks of the computed ones."""

    what = "targets"  # named in the error of a table that does not fit
    values: torch.Tensor
    filled: torch.Tensor

    def state_dict(self) -> dict[str, Any]:
        return {"values": self.values, "filled": self.filled}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if tuple(state["values"].shape) != tuple(self.values.shape):
            raise ValueError(f"{self.what} for {tuple(state['values'].shape)} do not fit {tuple(self.values.shape)}")
        self.values = state["values"].float().cpu().clone()
        self.filled = state["filled"].bool().cpu().clone()


class TeacherTargets(TargetTable):
    """``values[index, flipped]``: the teacher's embedding of that clean face; ``filled`` marks computed ones."""

    what = "teacher targets"

    def __init__(self, size: int, dim: int) -> None:
        self.values = torch.zeros(size, 2, dim)
        self.filled = torch.zeros(size, 2, dtype=torch.bool)
        self.hits = 0
        self.misses = 0

    @torch.no_grad()
    def lookup(self, teacher: nn.Module, clean: torch.Tensor, index: torch.Tensor, flipped: torch.Tensor) -> torch.Tensor:
        """The teacher's embeddings of ``clean`` (``B x 3 x H x W``), computing only the faces not seen before."""
        idx = index.detach().cpu().long()
        flip = flipped.detach().cpu().long()
        if idx.numel() and (idx.min() < 0 or idx.max() >= self.values.shape[0]):
            raise IndexError(f"teacher target index out of range 0..{self.values.shape[0] - 1}")
        missing = ~self.filled[idx, flip]
        todo = torch.nonzero(missing).flatten()
        if todo.numel():
            emb = teacher.embed(clean[todo.to(clean.device)]).detach().float().cpu()
            self.values[idx[todo], flip[todo]] = emb
            self.filled[idx[todo], flip[todo]] = True
        self.misses += int(todo.numel())
        self.hits += int(idx.numel() - todo.numel())
        return self.values[idx, flip].to(device=clean.device)

    @property
    def coverage(self) -> float:
        """The share of (sample, flip) entries computed so far."""
        return float(self.filled.float().mean()) if self.filled.numel() else 0.0
