"""What the evaluation reads: identity folders, optionally with real masked photos per identity.

Layouts under ``DATA`` (one folder per identity, either kind per identity):

* ``DATA/<identity>/*.jpg``: unmasked photos (LFW);
* ``DATA/<identity>/{masked,unmasked}/*``: real masked and unmasked photos (RMFRD).

An identity's *file list* (the one pairs files index, 1-based) is all its images sorted by path,
so for the paired layout ``masked/*`` come before ``unmasked/*``. ``--aligned`` data (112 x 112
ArcFace crops, e.g. what ``meer-align`` writes) use the same layouts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from meer.data.folders import identity_folders, image_files
from meer.utils.errors import MeerError

MASKED_DIR = "masked"
UNMASKED_DIR = "unmasked"


@dataclass(frozen=True)
class EvalImage:
    path: Path
    identity: str
    real_masked: bool  # a real photo of a masked face (no unmasked ground truth)

    @property
    def key(self) -> str:
        """Stable name for caches and reports: ``identity/relative/path``."""
        parts = self.path.parts
        i = len(parts) - 1 - parts[::-1].index(self.identity) if self.identity in parts else len(parts) - 1
        return "/".join(parts[i:])


@dataclass
class EvalData:
    root: Path
    files: dict[str, list[Path]]  # identity -> sorted paths (what pairs files index)
    images: dict[Path, EvalImage]
    aligned: bool = False
    missing_identities: list[str] = field(default_factory=list)  # named by --identities, absent here

    @property
    def has_real_masks(self) -> bool:
        return any(im.real_masked for im in self.images.values())

    def clean_files(self) -> dict[str, list[Path]]:
        return {k: [p for p in v if not self.images[p].real_masked] for k, v in self.files.items()}


def scan_eval_data(root: str | Path, identities: set[str] | None = None, aligned: bool = False) -> EvalData:
    """Index ``root``; with ``identities`` keep only those (names absent from ``root`` are recorded)."""
    root = Path(root)
    files: dict[str, list[Path]] = {}
    images: dict[Path, EvalImage] = {}
    for folder in identity_folders(root):
        name = folder.name
        if identities is not None and name not in identities:
            continue
        masked_dir, unmasked_dir = folder / MASKED_DIR, folder / UNMASKED_DIR
        if masked_dir.is_dir() or unmasked_dir.is_dir():
            masked = image_files(masked_dir) if masked_dir.is_dir() else []
            unmasked = image_files(unmasked_dir) if unmasked_dir.is_dir() else []
            for p in masked:
                images[p] = EvalImage(p, name, True)
            for p in unmasked:
                images[p] = EvalImage(p, name, False)
            lst = sorted(masked + unmasked)
        else:
            lst = image_files(folder)
            for p in lst:
                images[p] = EvalImage(p, name, False)
        if lst:
            files[name] = lst
    if not files:
        which = " of the listed identities" if identities is not None else ""
        raise MeerError(f"no images{which} found under {root} (expected {root}/<identity>/<images> "
                        f"or {root}/<identity>/{{masked,unmasked}}/<images>)")
    missing = sorted(set(identities) - set(files)) if identities is not None else []
    return EvalData(root, files, images, aligned, missing)
