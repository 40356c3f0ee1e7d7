"""Real masked photos in training: a few per step, recognised and pulled towards their person.

Synthetic masks give pixel ground truth, but a recognizer trained only on them meets real masks (white
surgical masks, cloth, folds, other crops and lighting) as a new domain. ``data.real_masked_roots`` names
identity folders of aligned photos with **real** masks (e.g. RMFRD's masked photos of its training
identities, aligned with ``meer-align``). They have no pixel ground truth, so they train only the recognition
branch, through two terms:

* ``loss.w_real_distill``: ``1 - cos(embedding(real masked photo), t)``, ``t`` the frozen teacher's mean
  embedding of the same person's *clean* training photos (unit norm), i.e. masked probe vs clean reference,
  the verification the evaluation measures;
* ``loss.w_real_id``: the margin loss on the same embeddings with the person's label.

A real masked identity is used only when a labelled training identity has the same bare folder name (its
label and its clean photos); evaluation-only and validation identities are removed by the same split lists as
everywhere else. :class:`RealMaskedSet` holds the crops in memory (``uint8``) and draws ``n`` per step from
the loop's augmentation generator (so resume stays bit-identical); :class:`IdentityTargets` computes each
person's teacher target the first time it is drawn and keeps it with the run's state.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from meer.data.identity_folders import IdentityFolderDataset
from meer.data.splits import bare_name
from meer.training.teacher_targets import TargetTable
from meer.utils.errors import MeerError


class RealMaskedSet:
    """The real masked crops (``found``: their identity folders, evaluation-only and validation identities already
    left out) whose person is a labelled training identity of ``labeled``, matched by bare folder name."""

    def __init__(self, found: IdentityFolderDataset, labeled: IdentityFolderDataset):
        by_bare: dict[str, list[int]] = {}
        for label, name in enumerate(labeled.identities):
            by_bare.setdefault(bare_name(name), []).append(label)
        match: dict[int, int] = {}  # found's label -> labeled's label
        self.unmatched: list[str] = []
        for found_label, name in enumerate(found.identities):
            labels = by_bare.get(bare_name(name), [])
            if len(labels) > 1:
                raise MeerError(f"real masked identity {bare_name(name)!r} matches {len(labels)} labelled identities "
                                "(same folder name in two data.roots)")
            if labels:
                match[found_label] = labels[0]
            else:
                self.unmatched.append(name)
        kept = [i for i, s in enumerate(found.samples) if s.label in match]
        if not kept:
            where = ", ".join(str(r) for _, r in found.roots)
            raise MeerError(f"no real masked photo under {where} belongs to a labelled training identity")
        self.images = torch.stack([(found[i]["clean"] * 255.0).round().to(torch.uint8) for i in kept])
        self.labels = torch.tensor([match[found.samples[i].label] for i in kept], dtype=torch.long)

    def __len__(self) -> int:
        return int(self.labels.numel())

    @property
    def num_identities(self) -> int:
        return int(self.labels.unique().numel())

    def draw(self, n: int, generator: torch.Generator, device: torch.device, rank: int = 0, world_size: int = 1,
             hflip: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """``(images B x 3 x S x S in [0, 1], labels B)``: this rank's ``n`` of ``n * world_size`` photos drawn
        with replacement (and mirrored at random) from ``generator``, so the draw does not depend on the number
        of processes."""
        total = n * world_size
        idx = torch.randint(len(self), (total,), generator=generator, device=generator.device).cpu()
        flip = (torch.rand(total, generator=generator, device=generator.device) < 0.5).cpu() if hflip else \
            torch.zeros(total, dtype=torch.bool)
        sl = slice(rank * n, (rank + 1) * n)
        idx, flip = idx[sl], flip[sl]
        images = self.images[idx].to(device).float() / 255.0
        images = torch.where(flip.to(device)[:, None, None, None], images.flip(-1), images)
        return images, self.labels[idx].to(device)


class IdentityTargets(TargetTable):
    """``values[label]``: the teacher's mean embedding (unit norm) of a labelled identity's clean photos (both
    mirror images), computed the first time the identity is needed; ``filled`` marks computed ones."""

    what = "identity targets"

    def __init__(self, labeled: IdentityFolderDataset, dim: int, batch_size: int = 32) -> None:
        self.labeled = labeled
        self.batch_size = batch_size
        self.values = torch.zeros(labeled.num_classes, dim)
        self.filled = torch.zeros(labeled.num_classes, dtype=torch.bool)

    @torch.no_grad()
    def lookup(self, embed: Callable[[torch.Tensor], torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        for label in labels.detach().cpu().unique().tolist():
            if not self.filled[label]:
                self.values[label] = self._mean(embed, label, labels.device)
                self.filled[label] = True
        return self.values[labels.detach().cpu()].to(labels.device)

    def _mean(self, embed: Callable[[torch.Tensor], torch.Tensor], label: int, device: torch.device) -> torch.Tensor:
        idx = [i for i, s in enumerate(self.labeled.samples) if s.label == label]
        faces = torch.stack([self.labeled[i]["clean"] for i in idx]).to(device)
        faces = torch.cat([faces, faces.flip(-1)])
        emb = torch.cat([embed(faces[s:s + self.batch_size]).float() for s in range(0, len(faces), self.batch_size)])
        return nn.functional.normalize(emb.mean(dim=0), dim=0).cpu()



def summary(real: RealMaskedSet) -> str:
    return (f"real masked: {len(real)} photos of {real.num_identities} labelled identities"
            + (f" ({len(real.unmatched)} identities without a labelled counterpart left out)" if real.unmatched else ""))
