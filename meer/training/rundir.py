"""Numbered run directories: ``runs/00000-<name>/`` (like stylegan2-ada), found again for ``--resume``.

A run directory holds everything a run produces::

    config.yaml        the resolved config the run uses (overrides applied); a resume with overrides rewrites
                       it and keeps the one before as config-before-<step>.yaml
    log.txt            the text log (what the console showed)
    stats.jsonl        one JSON object per logged step
    events.out.tfevents.*   TensorBoard scalars and image grids
    grids/             image grids as PNG (masked / predicted mask / restored / clean)
    checkpoints/       full training state (``ckpt-<step>.pt``, keep-last-K, plus ``best.pt``)
    meer_inference.pt  the exported inference checkpoint (EMA weights) for ``meer-restore``
"""
from __future__ import annotations

import re
from pathlib import Path

from meer.utils.errors import MeerError

_RUN_RE = re.compile(r"^(\d{5,})-")
CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.yaml"


def slugify(name: str) -> str:
    """A file-system friendly run name (letters, digits, ``-``, ``_``, ``.``)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", name.strip()).strip("-.")
    return slug or "run"


def next_run_id(runs_dir: str | Path) -> int:
    """One more than the highest numbered run in ``runs_dir`` (0 when there is none)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return 0
    ids = [int(m.group(1)) for p in runs_dir.iterdir() if p.is_dir() and (m := _RUN_RE.match(p.name))]
    return max(ids, default=-1) + 1


def plan_run_dir(runs_dir: str | Path, name: str) -> Path:
    """The directory a new run would use (nothing is created)."""
    return Path(runs_dir) / f"{next_run_id(runs_dir):05d}-{slugify(name)}"


def create_run_dir(runs_dir: str | Path, name: str) -> Path:
    """Create and return the next numbered run directory; retries if another process took the id."""
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        path = plan_run_dir(runs_dir, name)
        try:
            path.mkdir()
        except FileExistsError:
            continue
        (path / CHECKPOINT_DIR).mkdir()
        return path
    raise MeerError(f"could not create a new run directory in {runs_dir}")


def resolve_resume(target: str | Path) -> tuple[Path, Path]:
    """``--resume`` accepts a run directory (its latest checkpoint is used) or a checkpoint file.

    Returns ``(run_dir, checkpoint_path)``."""
    target = Path(target)
    if target.is_file():
        run_dir = target.parent.parent if target.parent.name == CHECKPOINT_DIR else target.parent
        return run_dir, target
    if not target.is_dir():
        raise MeerError(f"--resume: no such run directory or checkpoint: {target}")
    ckpt = latest_checkpoint(target / CHECKPOINT_DIR)
    if ckpt is None:
        raise MeerError(f"--resume: {target} has no checkpoint to resume from (looked in {target / CHECKPOINT_DIR})")
    return target, ckpt


def latest_checkpoint(ckpt_dir: str | Path) -> Path | None:
    """The ``ckpt-<step>.pt`` with the highest step in ``ckpt_dir``, or None."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    found = []
    for p in ckpt_dir.glob("ckpt-*.pt"):
        m = re.fullmatch(r"ckpt-(\d+)\.pt", p.name)
        if m:
            found.append((int(m.group(1)), p))
    return max(found)[1] if found else None
