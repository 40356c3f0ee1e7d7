"""Scanning ``root/<identity>/<images>`` trees, with one-line errors for the cases users hit."""
from __future__ import annotations

from pathlib import Path

from meer.utils.errors import MeerError
from meer.utils.files import IMAGE_EXTENSIONS


def image_files(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (sorted by name, hidden files skipped)."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)


def identity_folders(root: str | Path) -> list[Path]:
    """The identity sub-folders of ``root`` (sorted, hidden ones skipped); errors if there are none."""
    root = Path(root)
    if not root.exists():
        raise MeerError(f"dataset root not found: {root}")
    if not root.is_dir():
        raise MeerError(f"dataset root is not a folder: {root}")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise MeerError(f"no identity folders in {root} (expected {root}/<identity>/<images>)")
    return folders


#: in the paired layout ``root/<identity>/{masked,unmasked}/`` the unmasked side holds the clean photos
CLEAN_SUBFOLDER = "unmasked"


def scan_identity_root(root: str | Path) -> dict[str, list[Path]]:
    """``{identity name: sorted image paths}`` for ``root/<identity>/*``.

    A folder of the paired layout (RMFRD: ``<identity>/{masked,unmasked}/``, no image directly
    inside) contributes its ``unmasked/`` photos: identity-folder datasets yield clean faces, and real
    masked photos have no clean ground truth. An identity folder without a single usable image is an
    error naming that folder (a half-copied or mis-laid dataset should stop a run before its first
    step, not thin it out silently)."""
    out: dict[str, list[Path]] = {}
    for folder in identity_folders(root):
        files = image_files(folder)
        if not files and (folder / CLEAN_SUBFOLDER).is_dir():
            files = image_files(folder / CLEAN_SUBFOLDER)
        if not files:
            raise MeerError(f"identity folder has no images: {folder}")
        out[folder.name] = files
    return out
