"""Process groups for ``torchrun``: started only when ``WORLD_SIZE > 1``.

A single-process run never touches ``torch.distributed``. Under ``torchrun --nproc_per_node N`` the
environment gives ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; the backend is NCCL on CUDA and gloo on CPU.

Gradients are averaged explicitly (one ``all_reduce`` over a flattened buffer per optimiser, as
stylegan2-ada does) rather than through ``DistributedDataParallel``: the MEER step trains several
modules in separate phases, some parameters are idle in some phases, and lazy R1 adds a second
backward through the discriminator, all of which plain all-reduce handles without special cases.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable

import torch
import torch.distributed as dist

from meer.utils.device import resolve_device
from meer.utils.errors import MeerError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """The training device: :func:`meer.utils.device.resolve_device` (``auto``/``cpu``/``cuda``, one-line
    errors), with a CUDA choice pinned to GPU ``local_rank`` (under ``torchrun`` each process takes the GPU
    of its local rank; a single process takes GPU 0). The one message of its own says ``device=`` (the config
    key of ``meer-train``, which has no ``--device`` flag)."""
    if str(name).strip().lower().startswith("cuda") and not torch.cuda.is_available():
        raise MeerError(f"device={name} requested but no CUDA GPU is available (use device=cpu)")
    device = resolve_device(name)
    if device.type != "cuda" or device.index is not None:
        return device
    if local_rank >= torch.cuda.device_count():
        raise MeerError(f"local rank {local_rank} needs GPU {local_rank}, but only {torch.cuda.device_count()} "
                        "CUDA device(s) are visible (--nproc_per_node must not exceed the GPUs of a node)")
    return torch.device("cuda", local_rank)


def init_distributed(device_name: str = "auto") -> DistInfo:
    """Read the torchrun environment and start the process group when ``WORLD_SIZE > 1``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=pick_device(device_name))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    device = pick_device(device_name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def average_gradients(params: Iterable[torch.nn.Parameter], info: DistInfo) -> None:
    """All-reduce the gradients of ``params`` to their mean over the ranks (no-op on one process).

    Parameters without a gradient on this step contribute zeros, so every rank sends the same shapes."""
    if not info.enabled:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten() for p in params])
    dist.all_reduce(flat)
    flat /= info.world_size
    offset = 0
    for p in params:
        n = p.numel()
        g = flat[offset:offset + n].view_as(p)
        if p.grad is None:
            p.grad = g.clone()
        else:
            p.grad.copy_(g)
        offset += n


def all_true(flag: bool, info: DistInfo) -> bool:
    """True only when ``flag`` holds on every rank (used for the NaN/Inf check)."""
    if not info.enabled:
        return flag
    t = torch.tensor([0.0 if flag else 1.0], device=info.device)
    dist.all_reduce(t)
    return bool(t.item() == 0.0)


def global_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of a (detached) tensor over the ranks."""
    t = value.detach().clone()
    if info.enabled:
        dist.all_reduce(t)
        t /= info.world_size
    return t


def mean_scalars(values: dict[str, float], info: DistInfo) -> dict[str, float]:
    """Average logged scalars over the ranks (same keys on every rank)."""
    if not info.enabled or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], device=info.device, dtype=torch.float64)
    dist.all_reduce(t)
    t /= info.world_size
    return dict(zip(keys, t.tolist()))


def broadcast_object(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
