"""The one home of device and precision choice (every command and library entry point resolves ``--device`` and
``--precision`` here), with one-line errors, and the autocast context of a chosen precision."""
from __future__ import annotations

import contextlib
from typing import ContextManager

import torch

from meer.utils.errors import MeerError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """``auto`` -> the first CUDA GPU if there is one, else the CPU; ``cpu``; ``cuda`` / ``cuda:N`` (a string or a
    ``torch.device``). A CUDA request on a machine without CUDA, or past its device count, is a one-line error."""
    name = str(name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise MeerError(f"--device {name}: CUDA is not available on this machine (use --device cpu)")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise MeerError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
        return device
    raise MeerError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """``auto`` -> fp32 on the CPU, bf16 on GPUs that support it (else fp16)."""
    precision = (precision or "auto").strip().lower()
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if precision not in _DTYPES:
        raise MeerError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device.type == "cpu":
        raise MeerError("--precision fp16 is not supported on the CPU (use fp32 or bf16)")
    return _DTYPES[precision]


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in _DTYPES.items()}.get(dtype, str(dtype).replace("torch.", ""))


def autocast(device: torch.device, dtype: torch.dtype) -> ContextManager:
    """Mixed precision for the model's forward pass (a no-op for fp32): weights stay fp32, matmuls and
    convolutions run in ``dtype``, numerically sensitive ops (norms, softmax) stay fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
