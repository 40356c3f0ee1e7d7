"""Loading torch checkpoint files safely: ``weights_only=True`` and one-line errors."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from meer.utils.errors import MeerError


def load_weights_only(path: str | Path, map_location: Any = "cpu", what: str = "checkpoint",
                      error: type[MeerError] = MeerError) -> Any:
    """``torch.load(path, weights_only=True)``; raises ``error`` naming ``what`` when the file is
    missing or cannot be unpickled as plain tensors and containers (never runs pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for truncated / foreign files
        text = str(exc).strip()
        reason = text.splitlines()[0] if text else type(exc).__name__
        raise error(f"{path}: not a readable {what} ({reason[:160]})") from None
