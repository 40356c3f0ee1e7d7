"""Inference checkpoints of a MEER model: fp16 state_dict + model config + metadata, no pickled code.

``save_inference_checkpoint(model, path, meta)`` writes ``{"format": "meer-inference", "version": 1,
"config": <MEERConfig as a plain dict>, "state_dict": <floating tensors as float16>, "meta": meta}`` through a
temp file and an atomic rename. ``load_meer(path, map_location="cpu")`` reads it back with
``torch.load(weights_only=True)``, rebuilds ``MEER`` from the config (checked like a YAML config), loads the
weights as float32 and returns ``(model.eval(), meta)``. A missing, corrupt or incompatible file raises
:class:`CheckpointError` with one line.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from meer.config import ConfigError, from_dict, to_dict
from meer.models.meer import MEER, MEERConfig
from meer.utils.errors import MeerError
from meer.utils.files import atomic_write_bytes
from meer.utils.torch_files import load_weights_only

FORMAT = "meer-inference"
VERSION = 1


class CheckpointError(MeerError):
    """A model checkpoint that cannot be used (missing, corrupt, or for another model)."""


def _plain(value: Any, where: str) -> Any:
    """Check that ``meta`` holds only what ``weights_only=True`` can load back (no custom classes)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v, where) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    raise TypeError(f"{where}: {type(value).__name__} cannot be stored in a checkpoint (use plain values)")


def save_inference_checkpoint(model: MEER, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Save ``model`` (unwrapped from a ``.module`` wrapper such as DDP, if given one) for inference; floating
    weights stored as float16."""
    model = getattr(model, "module", model)
    if not isinstance(model, MEER):
        raise TypeError(f"save_inference_checkpoint expects a MEER model, got {type(model).__name__}")
    state = {
        k: (v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().cpu())
        for k, v in model.state_dict().items()
    }
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": to_dict(model.cfg),
        "state_dict": state,
        "meta": _plain(meta or {}, "meta"),
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_meer(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[MEER, dict[str, Any]]:
    """``(model in eval mode, meta)`` from a file written by :func:`save_inference_checkpoint`."""
    path = Path(path)
    payload = load_weights_only(path, map_location, what="meer checkpoint", error=CheckpointError)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a meer inference checkpoint (training checkpoints hold more; export one)")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload.get('version')} is not supported (expected {VERSION})")
    try:
        cfg = from_dict(MEERConfig, payload["config"], source=str(path), prefix="config.")
    except ConfigError as exc:
        raise CheckpointError(f"incompatible checkpoint: {exc}") from None
    except KeyError:
        raise CheckpointError(f"{path}: checkpoint has no model config") from None
    model = MEER(cfg)
    expected = model.state_dict()
    state = payload.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: checkpoint has no state_dict")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CheckpointError(f"{path}: weights do not fit the model in this meer version ({what})")
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise CheckpointError(f"{path}: weight {k} has shape {tuple(v.shape)}, the model expects {tuple(expected[k].shape)}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model.eval(), payload.get("meta", {})


__all__ = ["CheckpointError", "load_meer", "save_inference_checkpoint"]
