"""Full training state on disk: state_dicts only (never pickled code), written atomically.

A checkpoint is a plain nested dict of tensors, numbers, strings, lists and dicts, so it loads with
``torch.load(weights_only=True)``. Writes go through a temp file in the same folder and an atomic
rename, so a run killed while saving leaves the previous checkpoint intact. ``CheckpointKeeper``
keeps the last K step checkpoints plus ``best.pt``.
"""
from __future__ import annotations

import io
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meer.utils.errors import MeerError
from meer.utils.files import atomic_write_bytes
from meer.utils.torch_files import load_weights_only

FORMAT = "meer-train-state"
VERSION = 1


def save_state(state: dict[str, Any], path: str | Path) -> None:
    """Serialise ``state`` (plain containers of tensors/numbers/strings) to ``path`` atomically."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **state}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_state(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a training checkpoint with ``weights_only=True``; one-line ``MeerError`` when unusable."""
    path = Path(path)
    state = load_weights_only(path, map_location, what="training checkpoint")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise MeerError(f"{path}: not a meer training checkpoint (an inference checkpoint? use it with meer-restore)")
    if state.get("version") != VERSION:
        raise MeerError(f"{path}: training checkpoint version {state.get('version')} is not supported (expected {VERSION})")
    return state


# ----------------------------------------------------------------------------------------------
# random number generator states, in weights_only-loadable form


def rng_state(extra: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Python, numpy, torch (CPU and every CUDA device) RNG states, plus named ``torch.Generator`` s."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "python": _py_state_to_plain(random.getstate()),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {k: g.get_state() for k, g in (extra or {}).items()},
    }
    return state


def set_rng_state(state: dict[str, Any], extra: dict[str, torch.Generator] | None = None) -> None:
    """Restore what :func:`rng_state` captured (CUDA states only when the device count matches)."""
    random.setstate(_py_state_from_plain(state["python"]))
    n = state["numpy"]
    np.random.set_state({
        "bit_generator": n["bit_generator"],
        "state": {"key": n["key"].numpy().astype(np.uint32), "pos": int(n["pos"])},
        "has_gauss": int(n["has_gauss"]),
        "gauss": float(n["gauss"]),
    })
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
    for name, g in (extra or {}).items():
        saved = state.get("generators", {}).get(name)
        if saved is None:
            raise MeerError(f"checkpoint has no state for the '{name}' random generator")
        g.set_state(saved.cpu())


def _py_state_to_plain(st: tuple) -> dict[str, Any]:
    version, internal, gauss = st
    return {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
            "gauss": gauss if gauss is None else float(gauss)}


def _py_state_from_plain(d: dict[str, Any]) -> tuple:
    return (int(d["version"]), tuple(int(x) for x in d["internal"].tolist()), d["gauss"])


# ----------------------------------------------------------------------------------------------


class CheckpointKeeper:
    """Saves ``ckpt-<step>.pt`` in ``directory``, deleting all but the newest ``keep_last``; keeps
    ``best.pt`` for the best value of the tracked validation metric (higher is better)."""

    def __init__(self, directory: str | Path, keep_last: int = 3):
        if keep_last < 1:
            raise MeerError(f"checkpoint.keep_last must be at least 1, got {keep_last}")
        self.directory = Path(directory)
        self.keep_last = keep_last

    def path_for(self, step: int) -> Path:
        return self.directory / f"ckpt-{step:08d}.pt"

    def save(self, state: dict[str, Any], step: int) -> Path:
        path = self.path_for(step)
        save_state(state, path)
        self._prune()
        return path

    def save_best(self, state: dict[str, Any]) -> Path:
        path = self.directory / "best.pt"
        save_state(state, path)
        return path

    def step_checkpoints(self) -> list[Path]:
        found = []
        for p in self.directory.glob("ckpt-*.pt"):
            m = re.fullmatch(r"ckpt-(\d+)\.pt", p.name)
            if m:
                found.append((int(m.group(1)), p))
        return [p for _, p in sorted(found)]

    def _prune(self) -> None:
        for p in self.step_checkpoints()[:-self.keep_last]:
            p.unlink(missing_ok=True)
