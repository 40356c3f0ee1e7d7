"""Evaluation-only identities and the train / eval split of identity folders.

The shared face data marks some identities as evaluation-only (``splits/*_eval_identities.txt``).
A training split must never contain them; every dataset in ``meer.data`` filters its identities
through :func:`select_identities`, which is the single place where that rule lives.

An identity matches the evaluation list by its bare folder name (``George_W_Bush``) or by its
prefixed name when several roots are combined (``lfw/George_W_Bush``); either match excludes it
from ``split="train"`` (the conservative choice: a collision can only remove training data).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Literal, Union

from meer.utils.errors import MeerError
from meer.utils.files import read_text

Split = Literal["train", "eval", "all"]
SPLITS = ("train", "eval", "all")

#: What ``eval_identities=`` accepts: a set/list of names, a path to a list file, several paths, or None.
EvalIdentities = Union[None, str, Path, Iterable[Union[str, Path]]]

EVAL_LIST_FILES = ("lfw_eval_identities.txt", "rmfrd_eval_identities.txt")


def shared_data_root() -> Path:
    """Where the shared face data lives: ``$MEER_SHARED_DATA`` or ``<repo>/../shared/data``.

    The folder may be absent (fresh clone); callers decide whether that is an error or a skip."""
    env = os.environ.get("MEER_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def read_identity_list(path: str | Path) -> set[str]:
    """Names in a list file, one per line; blank lines and ``#`` comments are ignored."""
    path = Path(path)
    text = read_text(path, "identity list")
    names = set()
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(line)
    return names


def default_eval_identities(shared_root: str | Path | None = None) -> set[str]:
    """The union of the LFW and RMFRD evaluation-only lists under ``<shared_root>/splits``."""
    root = Path(shared_root) if shared_root is not None else shared_data_root()
    names: set[str] = set()
    for fname in EVAL_LIST_FILES:
        names |= read_identity_list(root / "splits" / fname)
    return names


def resolve_eval_identities(value: EvalIdentities) -> set[str]:
    """Turn any accepted ``eval_identities=`` value into a set of names.

    A ``str``/``Path`` is a list file; an iterable may mix names and ``Path`` objects (files to read).
    Plain strings inside an iterable are names, never paths."""
    if value is None:
        return set()
    if isinstance(value, (str, Path)):
        return read_identity_list(value)
    names: set[str] = set()
    for item in value:
        if isinstance(item, Path):
            names |= read_identity_list(item)
        elif isinstance(item, str):
            names.add(item)
        else:
            raise MeerError(f"eval_identities must hold names or paths, got {type(item).__name__}")
    return names


def check_split(split: str) -> Split:
    if split not in SPLITS:
        raise MeerError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return split  # type: ignore[return-value]


def bare_name(name: str) -> str:
    """An identity's folder name without its root prefix (``lfw/George_W_Bush`` -> ``George_W_Bush``)."""
    return name.split("/", 1)[-1]


def is_eval_identity(name: str, bare_name: str, eval_identities: set[str]) -> bool:
    """True when either the (prefixed) ``name`` or its ``bare_name`` is listed as evaluation-only."""
    return name in eval_identities or bare_name in eval_identities


def in_split(name: str, bare_name: str, split: Split, eval_identities: set[str]) -> bool:
    """Whether an identity belongs to ``split`` ("all" keeps everything)."""
    if split == "all":
        return True
    evaluation = is_eval_identity(name, bare_name, eval_identities)
    return evaluation if split == "eval" else not evaluation
