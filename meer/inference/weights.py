"""Finding MEER weights on this machine (never downloads).

Lookup order, first existing file wins:

1. the path given on the command line (``--checkpoint``); when given, nothing else is tried;
2. ``$MEER_CHECKPOINT``;
3. ``<repo>/checkpoints/meer_112.pt`` (the checkpoint shipped with the repository);
4. ``$XDG_CACHE_HOME/meer/meer_112.pt`` (``~/.cache/meer/meer_112.pt`` when the variable is unset).

When nothing is found the error lists every place that was looked at, in order.
"""
from __future__ import annotations

import os
from pathlib import Path

from meer.utils.errors import MeerError

CHECKPOINT_NAME = "meer_112.pt"
ENV_VAR = "MEER_CHECKPOINT"
REPO_ROOT = Path(__file__).resolve().parents[2]


class CheckpointNotFoundError(MeerError):
    """No checkpoint file at any of the places looked at."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "meer"


def candidate_paths(explicit: str | Path | None = None) -> list[tuple[str, Path]]:
    """``(where, path)`` pairs in lookup order; ``where`` says how the place was chosen."""
    if explicit is not None and str(explicit) != "":
        return [("--checkpoint", Path(explicit).expanduser())]
    places: list[tuple[str, Path]] = []
    env = os.environ.get(ENV_VAR)
    if env:
        places.append((f"${ENV_VAR}", Path(env).expanduser()))
    places.append(("shipped", REPO_ROOT / "checkpoints" / CHECKPOINT_NAME))
    places.append(("cache", cache_dir() / CHECKPOINT_NAME))
    return places


def find_checkpoint(explicit: str | Path | None = None) -> Path:
    """The first existing checkpoint file in lookup order, or ``CheckpointNotFoundError`` naming every
    place looked at."""
    places = candidate_paths(explicit)
    for _, path in places:
        if path.is_file():
            return path
    if explicit is not None and str(explicit) != "":
        path = places[0][1]
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise CheckpointNotFoundError(f"checkpoint {path} {what}")
    looked = "; ".join(f"{path} ({where})" for where, path in places)
    if not os.environ.get(ENV_VAR):
        looked += f"; ${ENV_VAR} (not set)"
    raise CheckpointNotFoundError(
        f"no MEER checkpoint found, looked at: {looked}. Pass --checkpoint PATH, set ${ENV_VAR}, "
        f"or train one with meer-train")
