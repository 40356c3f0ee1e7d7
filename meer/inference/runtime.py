"""Choosing the device and the numeric precision for inference: they live in :mod:`meer.utils.device` (the one
home every layer uses); re-exported here under their old name."""
from __future__ import annotations

from meer.utils.device import PRECISIONS, autocast, dtype_name, resolve_device, resolve_dtype  # noqa: F401

__all__ = ["PRECISIONS", "autocast", "dtype_name", "resolve_device", "resolve_dtype"]
