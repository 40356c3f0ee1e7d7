"""Targets for multitask training on (masked) faces: attribute datasets combined, plus the mask's own attributes.

* ``build_dataset``: UTKFace and/or a CelebA-style table for a split, with notes on skipped files.
* ``collate_targets``: a batch in which every task has one target per row (-1 / NaN where the row's
  source has no such label).
* ``mask_targets``: the ``MaskAugment`` draws as targets (``mask_kind``, ``mask_coverage``,
  ``mask_color`` as a coarse colour class, ``masked``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch.utils.data import ConcatDataset, Dataset

from meer.config import ConfigError
from meer.data.celeba_attrs import CelebAAttributesDataset
from meer.data.utkface import UTKFaceDataset

#: coarse colour classes of a mask's RGB (the ``mask_color`` task)
COLOR_NAMES = ("white", "gray", "black", "red_orange", "yellow_green", "cyan_blue", "purple_pink")
MASK_TASKS = ("mask_kind", "mask_coverage", "mask_color", "masked")


@dataclass
class TaskSpec:
    """One target of a multitask batch: the item key, classification (``num_classes`` logits) or regression
    (one value trained on ``target / scale``). Models (``meer.models.maskmtl``), losses
    (``meer.losses.multitask``) and the collate function here all read it."""

    name: str  # the item key holding the target
    kind: Literal["classification", "regression"] = "classification"
    num_classes: int = 2  # classification only
    scale: float = 1.0  # regression only: the head predicts target / scale
    weight: float = 1.0  # fixed weight (ignored by uncertainty weighting, except 0 = task off)

    def __post_init__(self) -> None:
        if self.kind == "classification" and self.num_classes < 2:
            raise ValueError(f"task {self.name}: a classification needs num_classes >= 2, got {self.num_classes}")
        if self.kind == "regression" and self.scale <= 0:
            raise ValueError(f"task {self.name}: regression scale must be > 0, got {self.scale}")
        if self.weight < 0:
            raise ValueError(f"task {self.name}: weight must be >= 0, got {self.weight}")

    @property
    def out_dim(self) -> int:
        return self.num_classes if self.kind == "classification" else 1


@dataclass
class MaskMTLDataConfig:
    utkface_root: str | None = None  # folder of UTKFace chips
    utkface_test_list: str | None = None  # splits/utkface_test.txt: held out of training
    celeba_images: str | None = None
    celeba_attrs: str | None = None  # list_attr_celeba.txt / .csv
    celeba_landmarks: str | None = None  # list_landmarks_align_celeba.txt (optional: align to ArcFace 112)
    celeba_partition: str | None = None  # list_eval_partition.txt (optional; without it all rows train)
    celeba_attributes: list[str] = field(default_factory=list)  # empty: every column
    image_size: int = 112
    batch_size: int = 64
    num_workers: int = 0


def color_class(rgb: torch.Tensor) -> torch.Tensor:
    """``B x 3`` RGB in [0, 1] -> index into ``COLOR_NAMES`` (achromatic by brightness, else by hue)."""
    mx, mn = rgb.max(dim=1).values, rgb.min(dim=1).values
    chroma = mx - mn
    r, g, b = rgb.unbind(1)
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue = torch.where(mx == r, ((g - b) / safe) % 6, torch.where(mx == g, (b - r) / safe + 2, (r - g) / safe + 4)) * 60
    chromatic = torch.bucketize(hue, torch.tensor([45.0, 150.0, 255.0, 330.0], device=rgb.device))
    chromatic = torch.tensor([3, 4, 5, 6, 3], device=rgb.device)[chromatic]  # red wraps around 360
    achromatic = torch.where(mx > 0.75, 0, torch.where(mx > 0.3, 1, 2))
    return torch.where(chroma < 0.15, achromatic, chromatic).long()


def mask_targets(info: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Targets from ``MaskAugment``'s ``info`` (-1 where the face got no mask)."""
    kind = info["kind"].long()
    has = kind >= 0
    color = torch.where(has, color_class(info["color"].float()), torch.full_like(kind, -1))
    return {"mask_kind": kind, "mask_coverage": info["coverage"].long(), "mask_color": color,
            "masked": has.long()}


def collate_targets(items: list[dict], tasks: list[TaskSpec]) -> dict[str, Any]:
    """Stack images; every task gets a target per row (-1 / NaN where that row has no such label)."""
    batch: dict[str, Any] = {"clean": torch.stack([it["clean"] for it in items]), "path": [it["path"] for it in items]}
    for t in tasks:
        if t.name in MASK_TASKS:
            continue
        if t.kind == "regression":
            batch[t.name] = torch.tensor([float(it.get(t.name, math.nan)) for it in items], dtype=torch.float32)
        else:
            batch[t.name] = torch.tensor([int(it.get(t.name, -1)) for it in items], dtype=torch.long)
    return batch


def build_dataset(dc: MaskMTLDataConfig, split: Literal["train", "test"]) -> tuple[Dataset, list[str], list[str]]:
    """The configured sources for ``split``; returns ``(dataset, celeba attribute names, notes)``."""
    parts: list[Dataset] = []
    notes: list[str] = []
    attrs: list[str] = []
    if dc.utkface_root:
        if not dc.utkface_test_list:
            raise ConfigError("maskmtl.data.utkface_test_list is required (the test files are never trained on)")
        ds = UTKFaceDataset(dc.utkface_root, split, dc.utkface_test_list, image_size=dc.image_size)
        parts.append(ds)
        if ds.malformed:
            notes.append(ds.malformed_summary())
    if dc.celeba_attrs or dc.celeba_images:
        if not (dc.celeba_attrs and dc.celeba_images):
            raise ConfigError("maskmtl.data: give both celeba_images and celeba_attrs")
        csplit = split if dc.celeba_partition else ("train" if split == "train" else None)
        if csplit is not None:
            ds = CelebAAttributesDataset(dc.celeba_images, dc.celeba_attrs, dc.celeba_attributes or None,
                                         dc.celeba_landmarks, dc.celeba_partition,
                                         split=csplit if dc.celeba_partition else "all", image_size=dc.image_size)
            attrs = ds.attributes
            parts.append(ds)
            if ds.malformed:
                notes.append(f"{len(ds.malformed)} malformed rows in {dc.celeba_attrs} skipped")
        else:
            attrs = list(dc.celeba_attributes)
            notes.append("CelebA has no partition file: it is used for training only")
    if not parts:
        raise ConfigError("maskmtl.data: configure utkface_root and/or celeba_images + celeba_attrs")
    return (parts[0] if len(parts) == 1 else ConcatDataset(parts)), attrs, notes
