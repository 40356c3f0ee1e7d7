"""Training and validation splits for ``meer-train``, and the on-device batch augmentation.

* Evaluation-only identities (``data.eval_identities`` list files) are removed from both splits.
* ``data.val_identities`` of the remaining identities (chosen with the run's seed) are held out of
  training and used for validation only.
* Masks are drawn on the device, per batch, by ``MaskAugment`` with the run's augmentation
  generator (saved in checkpoints). In a run with ``w`` processes every rank draws the masks of
  the whole global batch and keeps its slice, so 1 process and ``w`` processes see the same masks.

:class:`IdentityFolderTask` is the data half of the tasks that train on identity folders (MEER and
EUM/SRT): ``build_data`` (the splits, the masking op, the validation set) and ``make_batch`` (flip +
mask on the device -> :class:`meer.training.phases.Batch`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from meer.data.identity_folders import IdentityFolderDataset
from meer.data.recordio import is_recordio
from meer.data.splits import bare_name, read_identity_list
from meer.masking.batch import MaskAugment
from meer.training.distributed import DistInfo
from meer.training.phases import Batch
from meer.training.real_masked import RealMaskedSet, summary as real_summary
from meer.training.task import Task, TaskData
from meer.training.validate import build_val_set
from meer.utils.errors import MeerError


class TrainSet(Dataset):
    """The labelled identity folders, then the faces of ``data.unlabeled_roots`` with identity ``-1``
    (one photo per person: restoration, occlusion and distillation train on them, the margin and
    identity-adversary losses ignore them)."""

    def __init__(self, labeled: IdentityFolderDataset, unlabeled: IdentityFolderDataset | None = None):
        self.labeled = labeled
        self.unlabeled = unlabeled

    @property
    def num_classes(self) -> int:
        return self.labeled.num_classes

    @property
    def identities(self) -> list[str]:
        return self.labeled.identities

    @property
    def num_unlabeled(self) -> int:
        return len(self.unlabeled) if self.unlabeled is not None else 0

    def __len__(self) -> int:
        return len(self.labeled) + self.num_unlabeled

    def __getitem__(self, index: int) -> dict:
        if index < len(self.labeled):
            return {**self.labeled[index], "index": index}
        item = self.unlabeled[index - len(self.labeled)]
        return {**item, "identity": -1, "index": index}


@dataclass
class Splits:
    train: TrainSet
    val: IdentityFolderDataset | None
    eval_only: set[str]
    val_names: list[str]
    real: RealMaskedSet | None = None  # data.real_masked_roots: photos with real masks of labelled identities


def build_splits(data_cfg, seed: int, image_size: int = 112) -> Splits:
    """Check the configured data and build the training and validation datasets (errors name the path)."""
    if not data_cfg.roots:
        raise MeerError("data.roots is empty: give at least one identity-folder root (<root>/<identity>/*.jpg)")
    for r in data_cfg.roots:
        if not (Path(r).is_dir() or (is_recordio(r) and Path(r).is_file())):  # identity folders or a train.rec
            raise MeerError(f"data root not found: {r} (data.roots; relative paths start at {Path.cwd()})")
    eval_only: set[str] = set()
    for f in data_cfg.eval_identities:
        if not Path(f).is_file():
            raise MeerError(f"evaluation-only identity list not found: {f} (data.eval_identities)")
        eval_only |= read_identity_list(f)
    full = IdentityFolderDataset(list(data_cfg.roots), split="train", eval_identities=eval_only,
                                 min_images=data_cfg.min_images, image_size=image_size)
    names = list(full.identities)
    n_val = data_cfg.val_identities
    if n_val and n_val >= len(names):
        raise MeerError(f"data.val_identities={n_val} leaves no identity to train on ({len(names)} available)")
    rng = np.random.default_rng(seed)
    val_names = sorted(names[i] for i in rng.choice(len(names), size=n_val, replace=False)) if n_val else []
    if val_names:
        train = IdentityFolderDataset(list(data_cfg.roots), split="train", eval_identities=eval_only | set(val_names),
                                      min_images=data_cfg.min_images, image_size=image_size)
        val = IdentityFolderDataset(list(data_cfg.roots), split="eval", eval_identities=list(val_names),
                                    min_images=data_cfg.min_images, image_size=image_size)
        # a bare-name match could pull in an identity of another root: keep exactly the chosen ones
        if set(val.identities) != set(val_names):
            raise MeerError("validation identities are ambiguous across data.roots (same folder name in two roots)")
    else:
        train, val = full, None
    held_out = eval_only | set(val_names)

    def extra_roots(roots: list[str], key: str, exclude: set[str]) -> IdentityFolderDataset:
        """Faces of ``data.<key>`` (one photo per person is enough) without the identities in ``exclude``; an
        evaluation or validation identity left in them is an error."""
        for r in roots:
            if not Path(r).is_dir():
                raise MeerError(f"data root not found: {r} (data.{key})")
        ds = IdentityFolderDataset(list(roots) if len(roots) > 1 else roots[0], split="train",
                                   eval_identities=exclude, min_images=1, image_size=image_size)
        overlap = {bare_name(n) for n in ds.identities} & (eval_only | {bare_name(n) for n in val_names})
        if overlap:  # cannot happen with meer.data.splits; kept as a last guard
            raise MeerError(f"evaluation or validation identity in data.{key}: {sorted(overlap)[0]}")
        return ds

    unlabeled = None
    if data_cfg.unlabeled_roots:
        unlabeled = extra_roots(list(data_cfg.unlabeled_roots), "unlabeled_roots", held_out)
    leaked = set(train.identities) & (eval_only | set(val_names))
    bare_leaked = {n for n in train.identities if bare_name(n) in eval_only}
    if leaked or bare_leaked:  # cannot happen with meer.data.splits; kept as a last guard
        raise MeerError(f"evaluation identity in the training split: {sorted(leaked | bare_leaked)[0]}")
    real = None
    if getattr(data_cfg, "real_masked_roots", None):
        # named like the labelled identities, by bare folder name: a validation identity's real photos are left out
        real = RealMaskedSet(extra_roots(list(data_cfg.real_masked_roots), "real_masked_roots",
                                         held_out | {bare_name(n) for n in val_names}), train)
    return Splits(train=TrainSet(train, unlabeled), val=val, eval_only=eval_only, val_names=val_names, real=real)


def collate(items: list[dict]) -> dict:
    out = {"clean": torch.stack([it["clean"] for it in items]),
           "identity": torch.tensor([it["identity"] for it in items], dtype=torch.long)}
    if all("index" in it for it in items):  # the training set's sample index (teacher target cache)
        out["index"] = torch.tensor([it["index"] for it in items], dtype=torch.long)
    return out


def degrade(images: torch.Tensor, scales: torch.Tensor, rows: range) -> torch.Tensor:
    """Each face ``i`` in ``rows`` with ``scales[i] < 1`` shrunk to that fraction of its side (area average, the
    detail a smaller face in the photo would have) and enlarged back (bilinear): a low-resolution copy at the
    same geometry. Other faces are returned as they are."""
    out = images.clone()
    h, w = images.shape[-2:]
    for i in rows:
        s = float(scales[i])
        if s < 1.0:
            small = F.interpolate(images[i:i + 1], size=(max(8, round(h * s)), max(8, round(w * s))), mode="area")
            out[i:i + 1] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    return out


def augment(clean: torch.Tensor, masking, generator: torch.Generator, rank: int, world_size: int,
            hflip: bool, lowres_p: float = 0.0, lowres_min_scale: float = 0.4,
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flip, mask and (with ``lowres_p`` > 0) lower the resolution of this rank's slice ``clean`` of the global batch.

    Returns ``(clean, masked, mask, kind, flipped)`` (``flipped``: bool per face). The random draws are made for the whole global batch
    (other ranks' slots hold zeros), so the result does not depend on the number of processes. A face drawn for
    the low-resolution copy (probability ``lowres_p``, side scale uniform in ``[lowres_min_scale, 1)``) gets it
    *after* masking, the same for its clean and masked images, so the mask is as blurred as the face (a real
    masked photo's is) and the clean target still matches the masked input outside the mask; the exact mask
    stays binary. With ``lowres_p`` = 0 nothing is drawn (older runs' random streams are unchanged)."""
    b = clean.shape[0]
    if world_size > 1:
        full = clean.new_zeros((b * world_size, *clean.shape[1:]))
        full[rank * b:(rank + 1) * b] = clean
    else:
        full = clean
    flip = torch.zeros(full.shape[0], dtype=torch.bool, device=full.device)
    if hflip:
        flip = torch.rand(full.shape[0], generator=generator, device=full.device) < 0.5
        full = torch.where(flip[:, None, None, None], full.flip(-1), full)
    with torch.no_grad():
        masked, mask, info = masking(full, None, generator=generator)
    sl = slice(rank * b, (rank + 1) * b)
    if lowres_p > 0:
        n = full.shape[0]
        pick = torch.rand(n, generator=generator, device=full.device) < lowres_p
        scale = lowres_min_scale + (1.0 - lowres_min_scale) * torch.rand(n, generator=generator, device=full.device)
        scale = torch.where(pick, scale, torch.ones_like(scale))
        rows = range(sl.start, sl.stop)
        full, masked = degrade(full, scale, rows), degrade(masked, scale, rows)
    kind = info["kind"].to(device=clean.device, dtype=torch.long)
    return full[sl], masked[sl].clamp(0, 1), mask[sl].float(), kind[sl], flip[sl]


def describe_splits(splits: Splits, images_per_identity: int) -> str:
    return (f"train: {len(splits.train) - splits.train.num_unlabeled} images of {splits.train.num_classes} identities"
            + (f" + {splits.train.num_unlabeled} unlabelled faces" if splits.train.num_unlabeled else "") + "; "
            f"validation: {len(splits.val_names)} held-out identities (up to {images_per_identity} images each); "
            f"{len(splits.eval_only)} evaluation-only identities excluded"
            + (f"; {real_summary(splits.real)}" if splits.real is not None else ""))


class IdentityFolderTask(Task):
    """Tasks trained on identity folders (``data`` section): masked on the fly, validated on held-out
    identities. ``data.info`` holds ``num_classes``, ``num_mask_kinds``, ``masking`` (the ``MaskAugment``
    op) and ``splits``; a subclass sets ``self.cfg``, ``self.dist`` and ``self.masking``."""

    cfg: object
    dist: DistInfo
    masking: MaskAugment | None
    real: RealMaskedSet | None = None  # drawn into every batch when set (data.real_masked_roots)

    @classmethod
    def build_data(cls, cfg, dist: DistInfo) -> TaskData:
        dc = cfg.data
        splits = build_splits(dc, cfg.seed, cfg.model.image_size)
        masking = MaskAugment(**cfg.masking) if cfg.masking else MaskAugment()
        make_val = None
        if splits.val is not None:
            def make_val():
                return build_val_set(splits.val, dc.val_images_per_identity, cfg.val.pairs, masking, cfg.seed)
        return TaskData(train=splits.train, collate=collate, batch_size=dc.batch_size, num_workers=dc.num_workers,
                        summary=[describe_splits(splits, dc.val_images_per_identity)], make_val=make_val,
                        info={"num_classes": splits.train.num_classes, "num_mask_kinds": len(MaskAugment.KINDS),
                              "masking": masking, "splits": splits})

    def make_batch(self, raw: dict, generator: torch.Generator) -> Batch:
        if self.masking is None:
            raise MeerError(f"{type(self).__name__} was built without a masking op: build it with from_data")
        device = self.dist.device
        clean, masked, mask, kind, flipped = augment(raw["clean"].to(device, non_blocking=True), self.masking,
                                                     generator, self.dist.rank, self.dist.world_size,
                                                     self.cfg.data.hflip, self.cfg.data.lowres_p,
                                                     self.cfg.data.lowres_min_scale)
        index = raw.get("index")
        real = real_labels = None
        if self.real is not None:
            real, real_labels = self.real.draw(self.cfg.data.real_masked_per_step, generator, device, self.dist.rank,
                                               self.dist.world_size, self.cfg.data.hflip)
        return Batch(clean=clean, masked=masked, mask=mask, labels=raw["identity"].to(device), kind=kind,
                     index=index.to(device) if index is not None else None, flipped=flipped, real=real,
                     real_labels=real_labels)
