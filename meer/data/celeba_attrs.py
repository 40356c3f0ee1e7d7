"""CelebA-style attribute tables (``list_attr_celeba.txt`` / ``.csv``) as multitask targets.

Text format (CelebA's own)::

    202599                                  <- number of rows
    5_o_Clock_Shadow Arched_Eyebrows ...    <- attribute names
    000001.jpg -1  1  1 -1 ...              <- file, one +1 / -1 per attribute

The CSV variant (``image_id,5_o_Clock_Shadow,...`` then ``000001.jpg,-1,1,...``) is read too. Values
become 1 (present) / 0 (absent); a row with the wrong number of fields or a value other than
+-1 / 0 / 1 is reported in ``.malformed`` (line number, reason) and left out.

Optional companions: ``list_landmarks_align_celeba.txt`` (5 points per image, CelebA's order is
meer's: left eye, right eye, nose, left/right mouth corner) to warp each image onto the ArcFace 112
template, and ``list_eval_partition.txt`` (``file 0|1|2`` = train/val/test). Without landmarks the
images are taken as already aligned crops and resized.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from meer.data.loading import resize_rgb, to_tensor
from meer.data.masked_item import item_generator, mask_item
from meer.utils.errors import MeerError
from meer.utils.images import read_image

PARTITIONS = {"train": 0, "val": 1, "test": 2}


@dataclass
class AttributeTable:
    names: list[str]
    files: list[str]
    values: np.ndarray  # N x A uint8, 1 = attribute present
    malformed: list[tuple[int, str]] = field(default_factory=list)

    def column(self, name: str) -> np.ndarray:
        if name not in self.names:
            raise MeerError(f"unknown attribute {name!r} (the table has {len(self.names)}, e.g. {', '.join(self.names[:4])})")
        return self.values[:, self.names.index(name)]


def _read_lines(path: Path, what: str) -> list[str]:
    if not path.is_file():
        raise MeerError(f"{what} not found: {path}")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise MeerError(f"cannot read {what} {path}: {exc}") from None


def read_attribute_table(path: str | Path) -> AttributeTable:
    """Read a CelebA attribute table (text or CSV); malformed rows are reported, not fatal."""
    path = Path(path)
    lines = _read_lines(path, "attribute table")
    csv = path.suffix.lower() == ".csv" or (lines and "," in lines[0])
    if csv:
        header = [h.strip() for h in lines[0].split(",")]
        names, rows, first = header[1:], lines[1:], 2
        split = lambda ln: [f.strip() for f in ln.split(",")]  # noqa: E731
    else:
        if len(lines) < 2:
            raise MeerError(f"{path}: expected a row count and a line of attribute names")
        names, rows, first = lines[1].split(), lines[2:], 3
        split = str.split  # noqa: E731
    if not names:
        raise MeerError(f"{path}: no attribute names")
    files, values, malformed = [], [], []
    for n, ln in enumerate(rows, start=first):
        if not ln.strip():
            continue
        f = split(ln)
        if len(f) != len(names) + 1:
            malformed.append((n, f"expected a file name and {len(names)} values, got {len(f)} fields"))
            continue
        try:
            v = [int(x) for x in f[1:]]
        except ValueError:
            malformed.append((n, "values must be -1, 0 or 1"))
            continue
        if any(x not in (-1, 0, 1) for x in v):
            malformed.append((n, "values must be -1, 0 or 1"))
            continue
        files.append(f[0])
        values.append([1 if x == 1 else 0 for x in v])
    if not files:
        raise MeerError(f"{path}: no valid rows")
    return AttributeTable(names, files, np.asarray(values, dtype=np.uint8), malformed)


def read_landmarks(path: str | Path) -> dict[str, np.ndarray]:
    """``{file: (5, 2)}`` from ``list_landmarks_align_celeba.txt`` (count line, header line, rows)."""
    path = Path(path)
    out = {}
    for n, ln in enumerate(_read_lines(path, "landmark file")[2:], start=3):
        f = ln.split()
        if not f:
            continue
        if len(f) != 11:
            raise MeerError(f"{path}:{n}: expected a file name and 10 coordinates, got {len(f)} fields")
        try:
            out[f[0]] = np.asarray([float(x) for x in f[1:]], dtype=np.float32).reshape(5, 2)
        except ValueError:
            raise MeerError(f"{path}:{n}: coordinates must be numbers") from None
    return out


def read_partition(path: str | Path) -> dict[str, int]:
    """``{file: 0 train | 1 val | 2 test}`` from ``list_eval_partition.txt``."""
    path = Path(path)
    out = {}
    for n, ln in enumerate(_read_lines(path, "partition file"), start=1):
        f = ln.replace(",", " ").split()
        if not f or f[0] == "image_id":
            continue
        if len(f) != 2 or f[1] not in ("0", "1", "2"):
            raise MeerError(f"{path}:{n}: expected 'file 0|1|2', got {ln.strip()!r}")
        out[f[0]] = int(f[1])
    return out


class CelebAAttributesDataset(Dataset):
    """Images with binary attribute targets ``attr_<Name>`` (0/1), optionally masked on the fly."""

    def __init__(self, image_dir: str | Path, attr_file: str | Path, attributes: Sequence[str] | None = None,
                 landmarks_file: str | Path | None = None, partition_file: str | Path | None = None,
                 split: str = "all", image_size: int = 112, masking: Callable | None = None,
                 seed: int | None = None):
        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise MeerError(f"image folder not found: {self.image_dir}")
        if split != "all" and split not in PARTITIONS:
            raise MeerError(f"split must be all, train, val or test, got {split!r}")
        if split != "all" and partition_file is None:
            raise MeerError(f"split '{split}' needs a partition file (list_eval_partition.txt)")
        table = read_attribute_table(attr_file)
        self.malformed = list(table.malformed)
        self.attributes = list(attributes) if attributes else list(table.names)
        columns = np.stack([table.column(a) for a in self.attributes], axis=1)
        self.landmarks = read_landmarks(landmarks_file) if landmarks_file else None
        part = read_partition(partition_file) if partition_file else None
        self.samples: list[tuple[Path, np.ndarray]] = []
        self.missing: list[str] = []
        for name, row in zip(table.files, columns):
            if part is not None and split != "all" and part.get(name) != PARTITIONS[split]:
                continue
            p = self.image_dir / name
            if not p.is_file():
                self.missing.append(name)
                continue
            if self.landmarks is not None and name not in self.landmarks:
                self.missing.append(name)
                continue
            self.samples.append((p, row))
        if not self.samples:
            extra = f" ({len(self.missing)} listed files missing)" if self.missing else ""
            raise MeerError(f"no images of {attr_file} found under {self.image_dir} in split '{split}'{extra}")
        self.image_size = int(image_size)
        self.masking = masking
        self.seed = seed
        self.epoch = 0

    @property
    def task_names(self) -> list[str]:
        return [f"attr_{a}" for a in self.attributes]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, path: Path) -> torch.Tensor:
        rgb = read_image(path).rgb
        size = self.image_size
        if self.landmarks is not None:
            from meer.faces.align import similarity_matrix

            m = similarity_matrix(self.landmarks[path.name], size=size)
            rgb = cv2.warpAffine(rgb, m, (size, size), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)
        else:
            rgb = resize_rgb(rgb, size)
        return to_tensor(rgb)

    def __getitem__(self, index: int) -> dict:
        path, row = self.samples[index]
        clean = self.load(path)
        item = {"clean": clean, "path": str(path)}
        item.update({f"attr_{a}": int(v) for a, v in zip(self.attributes, row)})
        if self.masking is not None:
            item.update(mask_item(self.masking, clean, self.image_size, None,
                                  item_generator(self.seed, self.epoch, index)))
        return item
