"""Walking input folders and guarding output folders (never write into the input, never overwrite)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterator

from meer.utils.errors import MeerError, OutputExistsError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}


def iter_files(root: str | Path, recursive: bool = True) -> Iterator[Path]:
    """Every regular file under ``root`` (sorted, hidden files skipped). ``root`` may be a single file."""
    root = Path(root)
    if root.is_file():
        yield root
        return
    if not root.is_dir():
        raise MeerError(f"input not found: {root}")
    pattern = "**/*" if recursive else "*"
    for p in sorted(root.glob(pattern)):
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts):
            yield p


def iter_images(root: str | Path, recursive: bool = True, all_files: bool = False) -> Iterator[Path]:
    """Files under ``root`` with an image extension (or every file with ``all_files=True``, so that
    non-images can be reported as such rather than silently ignored)."""
    for p in iter_files(root, recursive):
        if all_files or p.suffix.lower() in IMAGE_EXTENSIONS:
            yield p


def check_output_dir(input_path: str | Path, output_dir: str | Path) -> Path:
    """Refuse an output folder that is the input folder or lies inside it; return it resolved."""
    inp = Path(input_path).resolve()
    out = Path(output_dir).resolve()
    in_dir = inp if inp.is_dir() else inp.parent
    if out == in_dir or in_dir in out.parents:
        raise MeerError(f"refusing to write inside the input folder: {output_dir} is inside {input_path}")
    return out


def ensure_new(path: str | Path, overwrite: bool = False) -> Path:
    """Return ``path`` if it may be written: absent, or ``overwrite`` is set."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists (use --overwrite to replace it)")
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes, durable: bool = True) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and an atomic rename: readers see the old
    file or the whole new one, never a part. ``durable=True`` also flushes the bytes to disk before the rename
    (checkpoints, reports); ``False`` skips that ``fsync`` for many small outputs that can be made again (a few
    ms per file, more than encoding a face crop takes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give results the usual permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def read_text(path: str | Path, what: str) -> str:
    """The UTF-8 text of a small input file; a one-line ``MeerError`` naming ``what`` when it is
    missing or unreadable (e.g. ``read_text(p, "pairs file")``)."""
    path = Path(path)
    if not path.is_file():
        raise MeerError(f"{what} not found: {path}")
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MeerError(f"cannot read {what} {path}: {exc}") from None
