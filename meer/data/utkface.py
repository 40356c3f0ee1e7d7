"""UTKFace: age, gender and race labels read from file names, faces re-aligned to the ArcFace 112 frame.

File names follow ``<age>_<gender>_<race>_<date&time>.jpg`` (the aligned-and-cropped set appends
``.chip.jpg``): age 0-116 in years, gender 0 male / 1 female, race 0 White, 1 Black, 2 Asian,
3 Indian, 4 Others. Some published files break the convention (a missing field, a missing dot);
they are collected in ``.malformed`` as ``(path, reason)`` and left out, never crashed on.

The "aligned & cropped" chips are all cut with one similarity transform, so their 5 landmarks sit at
nearly the same place in every chip: ``UTKFACE_CHIP_LANDMARKS`` is their mean over 114 chips of the
shared copy (dlib 68-point fit, std 3-7 px). Each chip is warped with the fixed transform onto the
ArcFace 112 template, so UTKFace faces share the frame of every other meer input (and synthetic
masks land where ``MaskAugment``'s template expects the face).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from meer.data.loading import to_tensor
from meer.data.masked_item import item_generator, mask_item
from meer.data.splits import read_identity_list
from meer.utils.errors import MeerError
from meer.utils.files import IMAGE_EXTENSIONS
from meer.utils.images import read_image

GENDERS = ("male", "female")
RACES = ("white", "black", "asian", "indian", "others")
#: age-group classes: [0,3) [3,13) [13,20) [20,30) [30,40) [40,50) [50,60) [60,70) [70,inf)
AGE_GROUP_EDGES = (3, 13, 20, 30, 40, 50, 60, 70)
MAX_AGE = 116

#: mean 5 landmarks (left eye, right eye, nose tip, left/right mouth corner) in a 200x200 UTKFace chip
UTKFACE_CHIP_LANDMARKS = np.array(
    [[59.6, 59.5], [136.5, 59.6], [98.1, 102.6], [62.9, 138.3], [134.0, 138.3]], dtype=np.float32)
UTKFACE_CHIP_SIZE = 200

_NAME = re.compile(r"^(\d+)_(\d+)_(\d+)_(\d+)\.jpg(?:\.chip\.jpg)?$", re.IGNORECASE)


@dataclass(frozen=True)
class UTKFaceLabel:
    age: int
    gender: int
    race: int
    timestamp: str

    @property
    def age_group(self) -> int:
        return age_group(self.age)


def age_group(age: float) -> int:
    """Index of the age group (``AGE_GROUP_EDGES``) an age in years falls into."""
    return int(np.searchsorted(np.asarray(AGE_GROUP_EDGES), age, side="right"))


def parse_utkface_name(name: str) -> UTKFaceLabel | str:
    """The labels in a UTKFace file name, or a one-line reason why the name does not follow the convention."""
    m = _NAME.match(name)
    if m is None:
        fields = name.split("_")
        if len(fields) != 4:
            return f"expected age_gender_race_datetime.jpg, found {len(fields)} '_'-separated fields"
        return "expected age_gender_race_datetime.jpg[.chip.jpg] with integer fields"
    age, gender, race, stamp = int(m.group(1)), int(m.group(2)), int(m.group(3)), m.group(4)
    if age > MAX_AGE:
        return f"age {age} out of range 0-{MAX_AGE}"
    if gender not in (0, 1):
        return f"gender {gender} is not 0 (male) or 1 (female)"
    if race not in range(len(RACES)):
        return f"race {race} is not in 0-4"
    return UTKFaceLabel(age, gender, race, stamp)


def chip_to_arcface_matrix(chip_size: int, out_size: int = 112) -> np.ndarray:
    """``(2, 3)`` similarity taking a ``chip_size`` UTKFace chip onto the ArcFace template at ``out_size``."""
    from meer.faces.align import similarity_matrix

    return similarity_matrix(UTKFACE_CHIP_LANDMARKS * (chip_size / UTKFACE_CHIP_SIZE), size=out_size)


class UTKFaceDataset(Dataset):
    """UTKFace chips as ArcFace-aligned tensors with age / age-group / gender / race targets.

    Items: ``{"clean": 3xSxS, "path", "age": float, "age_group": int, "gender": int, "race": int}`` plus
    ``masked``/``mask``/``mask_<key>`` when a masking op is given (as in ``IdentityFolderDataset``).

    Args:
        root: the folder of chips (flat).
        split: ``"train"`` (every file not in ``test_list``), ``"test"`` (those in it) or ``"all"``.
        test_list: file of test file names (``splits/utkface_test.txt``); required unless ``split="all"``.
        align: warp chips onto the ArcFace template (False: plain resize, for already aligned crops).
    """

    def __init__(self, root: str | Path, split: str = "train", test_list: str | Path | None = None,
                 image_size: int = 112, masking: Callable | None = None, seed: int | None = None,
                 align: bool = True):
        self.root = Path(root)
        if not self.root.is_dir():
            raise MeerError(f"UTKFace folder not found: {self.root}")
        if split not in ("train", "test", "all"):
            raise MeerError(f"UTKFace split must be train, test or all, got {split!r}")
        test_names: set[str] = set()
        if split != "all":
            if test_list is None:
                raise MeerError(f"UTKFace split '{split}' needs a test list (splits/utkface_test.txt)")
            test_names = read_identity_list(test_list)
        self.image_size = int(image_size)
        self.masking = masking
        self.seed = seed
        self.epoch = 0
        self.align = align
        self.samples: list[tuple[Path, UTKFaceLabel]] = []
        self.malformed: list[tuple[Path, str]] = []
        for p in sorted(self.root.iterdir()):
            if not p.is_file() or p.name.startswith(".") or p.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            if split == "train" and p.name in test_names or split == "test" and p.name not in test_names:
                continue
            label = parse_utkface_name(p.name)
            if isinstance(label, str):
                self.malformed.append((p, label))
            else:
                self.samples.append((p, label))
        if not self.samples:
            raise MeerError(f"no UTKFace images with valid names in split '{split}' under {self.root}")
        self._matrices: dict[int, np.ndarray] = {}

    def malformed_summary(self, limit: int = 3) -> str:
        """One line: how many names were skipped and the first few, with reasons."""
        if not self.malformed:
            return "all UTKFace names parsed"
        shown = "; ".join(f"{p.name}: {why}" for p, why in self.malformed[:limit])
        more = f"; ... {len(self.malformed) - limit} more" if len(self.malformed) > limit else ""
        return f"{len(self.malformed)} UTKFace file(s) with malformed names skipped ({shown}{more})"

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, path: Path) -> torch.Tensor:
        rgb = read_image(path).rgb
        size = self.image_size
        if self.align:
            h, w = rgb.shape[:2]
            if h != w:
                raise MeerError(f"{path}: UTKFace chips are square, got {w}x{h} (use align=False for other crops)")
            if h not in self._matrices:
                self._matrices[h] = chip_to_arcface_matrix(h, size)
            rgb = cv2.warpAffine(rgb, self._matrices[h], (size, size), flags=cv2.INTER_AREA,
                                 borderMode=cv2.BORDER_REPLICATE)
        elif rgb.shape[:2] != (size, size):
            rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
        return to_tensor(rgb)

    def __getitem__(self, index: int) -> dict:
        path, label = self.samples[index]
        clean = self.load(path)
        item = {"clean": clean, "path": str(path), "age": float(label.age), "age_group": label.age_group,
                "gender": label.gender, "race": label.race}
        if self.masking is not None:
            gen = item_generator(self.seed, self.epoch, index)
            item.update(mask_item(self.masking, clean, self.image_size, None, gen))
        return item
