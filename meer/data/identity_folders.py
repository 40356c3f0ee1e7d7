"""Identity-folder datasets (``root/<identity>/*.jpg``) with on-the-fly synthetic masking.

Each item is a dict::

    {"clean": 3xSxS float [0,1], "identity": int label, "path": str}
    # plus, when a masking op is given:
    {"masked": 3xSxS, "mask": 1xSxS (1 = occluded), "mask_kind": int, "mask_<key>": ... for every
     other per-image entry the op reports (e.g. "mask_coverage")}

Labels are contiguous ``0..N-1`` over the identities of the chosen split, in the order of
``.identities``. Several roots combine into one label space with prefixed names
(``lfw/George_W_Bush``, ``glint24/Barack Obama``) so that folder names never collide.

The masking op follows ``meer.masking.batch.MaskAugment``'s call convention
``masked, mask, info = op(images Bx3xHxW, landmarks Bx5x2 | None, generator=...)`` and is called
with a batch of one. The roots are expected to hold aligned crops: landmarks are ``None`` (the
ArcFace template) unless the root has an ``alignment.jsonl`` (written by ``meer-align``) giving
each crop's own landmarks.

A root may also be an insightface RecordIO set (``.../train.rec`` with ``train.idx`` beside it; read
by :mod:`meer.data.recordio`, no mxnet): its identities are the integer labels of the set (named
``<label>``, prefixed by the folder that holds the ``.rec`` when several roots are combined) and its
items' ``path`` is ``<file>.rec#<record>``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from meer.data.folders import scan_identity_root
from meer.data.loading import load_image_tensor, resize_rgb, to_tensor
from meer.data.masked_item import item_generator, mask_item
from meer.data.recordio import is_recordio, open_recordio
from meer.data.splits import EvalIdentities, check_split, in_split, resolve_eval_identities
from meer.faces.folder import JSONL_NAME as ALIGNMENT_FILE, read_alignment
from meer.utils.errors import MeerError

MaskingOp = Callable[..., tuple[torch.Tensor, torch.Tensor, dict]]
Roots = str | Path | Sequence[str | Path] | Mapping[str, str | Path]



@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    landmarks: np.ndarray | None  # (5, 2) in the file's own pixels, or None = template
    record: int | None = None  # the record key when ``path`` is a RecordIO ``.rec``


def named_roots(roots: Roots) -> list[tuple[str, Path]]:
    """``[(prefix, root)]``: a single root has an empty prefix; several are prefixed with their
    mapping key or folder name (duplicates are an error, since labels would silently merge)."""
    if isinstance(roots, (str, Path)):
        return [("", Path(roots))]
    if isinstance(roots, Mapping):
        items = [(str(k), Path(v)) for k, v in roots.items()]
    else:
        # a RecordIO root is named by its folder (every insightface set calls its file train.rec)
        items = [(Path(r).parent.name if is_recordio(r) else Path(r).name, Path(r)) for r in roots]
    if not items:
        raise MeerError("no dataset roots given")
    if len(items) == 1:
        return [("", items[0][1])]
    names = [k for k, _ in items]
    dup = sorted({k for k in names if names.count(k) > 1})
    if dup:
        raise MeerError(f"dataset roots share the name {dup[0]!r}; pass a mapping {{prefix: root}} to tell them apart")
    return items


def read_crop_landmarks(root: Path) -> dict[Path, np.ndarray]:
    """``{resolved crop path: (5,2) landmarks in crop pixels}`` from ``root/alignment.jsonl`` if present."""
    if not (root / ALIGNMENT_FILE).is_file():
        return {}
    out: dict[Path, np.ndarray] = {}
    for rec in read_alignment(root):
        crop = Path(rec["crop"])
        out[(crop if crop.is_absolute() else root / crop).resolve()] = rec["landmarks_crop"].astype(np.float32)
    return out


class IdentityFolderDataset(Dataset):
    """Images under ``root/<identity>/`` with identity labels and optional synthetic masking.

    Args:
        root: one root, a list of roots (prefixed by folder name) or ``{prefix: root}``.
        split: ``"train"`` (evaluation-only identities removed), ``"eval"`` (only them) or ``"all"``.
        eval_identities: names, a list file, or several (see ``meer.data.splits``).
        masking: a ``MaskAugment``-like op, or None for clean images only.
        image_size: side of the square tensors (files are resized if needed; landmarks follow).
        min_images: identities with fewer images are left out.
        seed: when set, the mask drawn for item ``i`` depends only on ``(seed, epoch, i)``
            (reproducible runs whatever the DataLoader workers); else the global torch RNG is used.
    """

    def __init__(self, root: Roots, split: str = "train", eval_identities: EvalIdentities = None,
                 masking: MaskingOp | None = None, image_size: int = 112, min_images: int = 1,
                 seed: int | None = None):
        self.split = check_split(split)
        if image_size < 8:
            raise MeerError(f"image_size must be at least 8, got {image_size}")
        if min_images < 1:
            raise MeerError(f"min_images must be at least 1, got {min_images}")
        self.image_size = int(image_size)
        self.masking = masking
        self.seed = seed
        self.epoch = 0
        self.eval_identities = resolve_eval_identities(eval_identities)
        self.roots = named_roots(root)

        self.identities: list[str] = []
        self.files: dict[str, list[Path]] = {}
        self.samples: list[Sample] = []
        dropped_small = 0
        for prefix, r in self.roots:
            rec = open_recordio(r) if is_recordio(r) else None
            tree = ({str(k): v for k, v in sorted(rec.identities.items())} if rec is not None
                    else scan_identity_root(r))
            landmarks = read_crop_landmarks(r) if rec is None else {}
            for bare, files in tree.items():
                name = f"{prefix}/{bare}" if prefix else bare
                if not in_split(name, bare, self.split, self.eval_identities):
                    continue
                if len(files) < min_images:
                    dropped_small += 1
                    continue
                label = len(self.identities)
                self.identities.append(name)
                if rec is not None:
                    self.files[name] = [Path(f"{r}#{k}") for k in files]
                    self.samples += [Sample(Path(r), label, None, int(k)) for k in files]
                    continue
                self.files[name] = files
                for f in files:
                    self.samples.append(Sample(f, label, landmarks.get(f.resolve()) if landmarks else None))
        if not self.samples:
            where = ", ".join(str(r) for _, r in self.roots)
            why = f" with at least {min_images} images" if dropped_small else ""
            raise MeerError(f"no identities{why} in split '{self.split}' under {where}")

    @property
    def num_classes(self) -> int:
        return len(self.identities)

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    def set_epoch(self, epoch: int) -> None:
        """Draw different (still reproducible) masks each epoch when ``seed`` is set."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        s = self.samples[index]
        if s.record is not None:
            rgb = open_recordio(s.path).image(s.record)
            clean, (w, h) = to_tensor(resize_rgb(rgb, self.image_size)), (rgb.shape[1], rgb.shape[0])
            item = {"clean": clean, "identity": s.label, "path": f"{s.path}#{s.record}"}
        else:
            clean, (w, h) = load_image_tensor(s.path, self.image_size)
            item = {"clean": clean, "identity": s.label, "path": str(s.path)}
        if self.masking is None:
            return item
        landmarks = None
        if s.landmarks is not None:
            landmarks = s.landmarks * np.array([self.image_size / w, self.image_size / h], dtype=np.float32)
        gen = item_generator(self.seed, self.epoch, index)
        item.update(mask_item(self.masking, clean, self.image_size, landmarks, gen))
        return item
