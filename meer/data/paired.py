"""Paired real sets: masked and unmasked photos of the same people (RMFRD layout).

Layout: ``root/<identity>/masked/*`` and ``root/<identity>/unmasked/*`` (the raw RMFRD copy and the
aligned cache ``meer-align`` writes keep it). Identities with photos on only one side are kept out
of the item list (a pair needs both) and listed in ``.one_sided`` so callers can report them.

Items (one per masked photo)::

    {"masked": 3xSxS, "clean": 3xSxS (an unmasked photo of the same identity), "identity": int,
     "path": masked file, "clean_path": unmasked file}

The unmasked partner of the ``k``-th masked photo of an identity is its ``(k + epoch)``-th unmasked
photo (cyclically): deterministic, every unmasked photo gets used, and ``set_epoch`` varies pairings.
For evaluation (probe vs gallery) use ``.masked_files`` / ``.unmasked_files`` directly.
"""
from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from meer.data.folders import identity_folders, image_files
from meer.data.loading import load_image_tensor
from meer.data.splits import EvalIdentities, check_split, in_split, resolve_eval_identities
from meer.utils.errors import MeerError

MASKED_DIR = "masked"
UNMASKED_DIR = "unmasked"


class PairedMaskedDataset(Dataset):
    """Masked / unmasked photos per identity from ``root/<id>/{masked,unmasked}/``."""

    def __init__(self, root: str | Path, split: str = "train", eval_identities: EvalIdentities = None,
                 image_size: int = 112):
        self.root = Path(root)
        self.split = check_split(split)
        self.image_size = int(image_size)
        self.eval_identities = resolve_eval_identities(eval_identities)
        self.epoch = 0
        self.identities: list[str] = []
        self.masked_files: dict[str, list[Path]] = {}
        self.unmasked_files: dict[str, list[Path]] = {}
        self.one_sided: list[str] = []
        for folder in identity_folders(self.root):
            name = folder.name
            if not in_split(name, name, self.split, self.eval_identities):
                continue
            sides = {}
            for side in (MASKED_DIR, UNMASKED_DIR):
                d = folder / side
                sides[side] = image_files(d) if d.is_dir() else []
            if not sides[MASKED_DIR] and not sides[UNMASKED_DIR]:
                raise MeerError(f"identity folder has no images in {MASKED_DIR}/ or {UNMASKED_DIR}/: {folder}")
            if not sides[MASKED_DIR] or not sides[UNMASKED_DIR]:
                self.one_sided.append(name)
                continue
            self.identities.append(name)
            self.masked_files[name] = sides[MASKED_DIR]
            self.unmasked_files[name] = sides[UNMASKED_DIR]
        if not self.identities:
            raise MeerError(f"no identity with both masked and unmasked photos in split '{self.split}' under {self.root}")
        self.samples: list[tuple[int, int]] = [
            (label, k) for label, name in enumerate(self.identities) for k in range(len(self.masked_files[name]))
        ]

    @property
    def num_classes(self) -> int:
        return len(self.identities)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        label, k = self.samples[index]
        name = self.identities[label]
        masked_path = self.masked_files[name][k]
        unmasked = self.unmasked_files[name]
        clean_path = unmasked[(k + self.epoch) % len(unmasked)]
        masked, _ = load_image_tensor(masked_path, self.image_size)
        clean, _ = load_image_tensor(clean_path, self.image_size)
        return {"masked": masked, "clean": clean, "identity": label, "path": str(masked_path),
                "clean_path": str(clean_path)}
