"""Building a ready ``Restorer`` from a checkpoint on disk (lookup, loading, device, detector)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from meer.inference.pipeline import Restorer
from meer.inference.runtime import dtype_name, resolve_device, resolve_dtype
from meer.inference.weights import find_checkpoint
from meer.utils.errors import MeerError


def load_model(path: str | Path, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """``meer.models.checkpoint.load_meer`` with any failure turned into a one-line ``MeerError``."""
    from meer.models.checkpoint import load_meer

    try:
        model, meta = load_meer(path)
    except MeerError:
        raise
    except Exception as exc:  # noqa: BLE001 - a corrupt or foreign file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MeerError(f"cannot load checkpoint {path}: {first}") from None
    return model.to(device).eval(), dict(meta or {})


def load_restorer(checkpoint: str | Path | None = None, *, device: str = "auto", precision: str = "auto",
                  detector=None, detector_fallback: bool = True, **options: Any) -> tuple[Restorer, dict[str, Any]]:
    """Find and load the checkpoint, build the face detector (unless ``aligned``; MTCNN, plus dlib's CNN
    detector on photos where MTCNN finds nothing when ``detector_fallback``), return the ``Restorer``
    and a description of the run (checkpoint path and metadata, device, precision)."""
    path = find_checkpoint(checkpoint)
    dev = resolve_device(device)
    dtype = resolve_dtype(precision, dev)
    model, meta = load_model(path, dev)
    if detector is None and not options.get("aligned", False):
        from meer.faces.detect import FaceDetector

        detector = FaceDetector(device=dev, fallback="dlib" if detector_fallback else None)
    restorer = Restorer(model, detector, device=dev, dtype=dtype, **options)
    info = {"checkpoint": str(path), "checkpoint_meta": _jsonable(meta), "device": str(dev),
            "precision": dtype_name(dtype), "detector": _describe_detector(detector)}
    return restorer, info


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return str(value)


def _describe_detector(detector) -> dict | None:
    if detector is None:
        return None
    desc = {"class": type(detector).__name__}
    for name in ("thresholds", "min_face_size", "pad"):
        if hasattr(detector, name):
            desc[name] = _jsonable(getattr(detector, name))
    if hasattr(detector, "fallback"):
        desc["fallback"] = None if detector.fallback is None else type(detector.fallback).__name__
    return desc
