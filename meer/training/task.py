"""What ``meer-train`` drives: the :class:`Task` interface every training task implements.

:func:`meer.training.loop.train` is the only training loop. It owns the run directory, logging, the
resumable data order, the augmentation generator, the RNG states, validation timing, checkpoints and
the time limit; a task owns its data, models, losses and optimisers, and says how one step runs. The
tasks are listed in one place, :data:`meer.training.tasks.TASKS` (``task:`` in the config).

A task class provides

* ``build_data(cfg, dist) -> TaskData`` (classmethod): the training dataset, its collate function and
  batch size, and what the task needs to size itself (e.g. the number of identities). Called before
  any model is built, so missing or bad data stops the run before step one;
* ``from_data(cfg, data, dist) -> Task`` (classmethod; default ``cls(cfg, data, dist)``): models, losses,
  optimisers, schedulers, GradScalers, EMA;
* ``make_batch(raw, generator)``: a collated loader batch -> what ``train_step`` takes (device
  transfer, on-device masking drawn from ``generator``, the loop's checkpointed augmentation generator);
* ``train_step(batch, step, nimg) -> {name: float}``: one optimisation step and the scalars to log
  (``loss/<part>``, ``grad_norm/...``, ``lr/...``; ``skipped = 1`` when an fp16 step was skipped).
  Non-finite losses raise :class:`NonFiniteLoss` in fp32/bf16; under fp16 the step is skipped and the
  GradScaler lowers its scale (:func:`scaled_step` does this for single-optimiser tasks);
* ``state_dict()`` / ``load_state_dict()``: everything the next step depends on besides the data
  position and the RNGs the loop saves (modules, EMA, optimisers, schedulers, GradScalers, own
  generators), so a resumed run is bit-identical on CPU;
* ``param_counts()``, ``live_model()`` (the module being trained), ``eval_model()`` (the one that is
  validated and exported: the EMA weights when a task keeps an EMA).

and may override the no-op hooks ``prepare`` (fresh runs only), ``notes``, ``validate``, ``grid`` and
``export`` (the same idea as stylegan2-ada's ``Loss`` base class, one level up).
"""
from __future__ import annotations

import contextlib
import math
import re
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from meer.config import ConfigError
from meer.training import distributed as dd
from meer.training.schedule import build_scheduler
from meer.utils.device import autocast as device_autocast
from meer.utils.errors import MeerError


class NonFiniteLoss(MeerError):
    """A loss or gradient became NaN/Inf."""


@dataclass
class TaskData:
    """What ``Task.build_data`` returns; the loop builds the resumable sampler and loader from it."""

    train: Dataset  # indexed by the loop's ResumableBatchSampler
    collate: Callable[[list], Any]  # DataLoader collate_fn (picklable when num_workers > 0)
    batch_size: int  # the global batch
    num_workers: int = 0
    summary: list[str] = field(default_factory=list)  # lines for --dry-run and log.txt
    notes: list[str] = field(default_factory=list)  # e.g. skipped files, logged as "note: ..."
    make_val: Callable[[], Any] | None = None  # the validation set (built on rank 0 only), for Task.validate
    info: dict[str, Any] = field(default_factory=dict)  # what the task sizes itself from (num_classes, ...)


class Task(ABC):
    """Base class of the training tasks (see the module docstring for the contract)."""

    #: the ``task:`` value of the config (the key in ``meer.training.tasks.TASKS``)
    name: str = ""

    # ---- required -----------------------------------------------------------------------------

    @classmethod
    @abstractmethod
    def build_data(cls, cfg, dist: dd.DistInfo) -> TaskData:
        """Check the configured data and build the training set (one-line errors naming the path)."""

    @classmethod
    def from_data(cls, cfg, data: TaskData, dist: dd.DistInfo) -> "Task":
        """Build the task for this data (models sized from ``data.info``)."""
        return cls(cfg, data, dist)

    @abstractmethod
    def make_batch(self, raw: Any, generator: torch.Generator) -> Any:
        """A collated loader batch -> the ``train_step`` input, on the task's device."""

    @abstractmethod
    def train_step(self, batch: Any, step: int, nimg: int) -> dict[str, float]:
        """One optimisation step (``nimg``: images seen after it); the scalars to log."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        ...

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        ...

    @abstractmethod
    def param_counts(self) -> dict[str, int]:
        ...

    @abstractmethod
    def live_model(self) -> nn.Module:
        ...

    @abstractmethod
    def eval_model(self) -> nn.Module:
        ...

    # ---- optional hooks (no-ops) ----------------------------------------------------------------

    def prepare(self, data: TaskData) -> str | None:
        """Initialise from the data before the first step of a fresh run (resumed runs load everything
        instead); a message for the log, or None."""
        return None

    def notes(self) -> list[str]:
        """Lines the loop logs once at the start of every run (fresh or resumed)."""
        return []

    def validate(self, val_set: Any) -> dict[str, float]:
        """Score ``eval_model()`` on ``TaskData.make_val()``'s set: ``{metric: value}`` (``val.best_metric``
        picks ``best.pt``). Only called when the task's data has a validation set."""
        return {}

    def grid(self, batch: Any, n: int) -> list[torch.Tensor] | None:
        """Rows of ``n`` images in [0, 1] for the image grid of ``batch``, or None (no grid)."""
        return None

    def export(self, run_dir: Path, meta: dict[str, Any]) -> Path | None:
        """Write the task's deliverable at the end of a run (``meta``: step, run, validation...), or None."""
        return None


# ------------------------------------------------------------------------------------------------
# helpers the tasks share


_AMP_DTYPES = {"none": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_factory(amp: str, device: torch.device) -> Callable[[], contextlib.AbstractContextManager]:
    """``amp`` (none / bf16 / fp16) -> a factory of :func:`meer.utils.device.autocast` contexts (the one
    autocast of the package; ``nullcontext`` for ``none``). ``device`` is the task's resolved device."""
    if amp not in _AMP_DTYPES:
        raise ConfigError(f"amp must be one of {', '.join(_AMP_DTYPES)}, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("amp: fp16 needs a CUDA device (use amp=bf16 on CPU)")
    dtype = _AMP_DTYPES[amp]
    return lambda: device_autocast(device, dtype)


def build_schedulers(optimizers: dict[str, torch.optim.Optimizer], cfg) -> dict[str, torch.optim.lr_scheduler.LRScheduler]:
    """The ``optim`` section's learning-rate schedule (warmup, constant / cosine / step over
    ``total_steps``) for every optimiser of a task."""
    oc = cfg.optim
    return {k: build_scheduler(o, kind=oc.schedule, total_steps=cfg.total_steps, warmup_steps=oc.warmup_steps,
                               min_ratio=oc.min_lr_ratio, milestones=oc.milestones, gamma=oc.gamma)
            for k, o in optimizers.items()}


def step_schedulers(schedulers) -> None:
    with warnings.catch_warnings():  # a skipped fp16 step makes the scheduler warn about the order
        warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()`"))
        for sched in schedulers.values():
            sched.step()


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> float:
    """Global gradient norm of ``params`` before clipping to ``max_norm`` (0 or less: no clipping)."""
    grads = [p for p in params if p.grad is not None]
    if not grads:
        return 0.0
    return float(torch.nn.utils.clip_grad_norm_(grads, max_norm if max_norm > 0 else float("inf")))


def scaled_step(total: torch.Tensor, optimizer: torch.optim.Optimizer, params: list[nn.Parameter],
                scaler: torch.amp.GradScaler, dist: dd.DistInfo, step: int, what: str = "loss",
                max_norm: float = 0.0) -> tuple[bool, float]:
    """Backward, all-reduce, unscale, clip and step one optimiser, with the loop's NaN/Inf policy.

    Returns ``(skipped, grad_norm)``. fp32/bf16 (scaler disabled): a non-finite loss or gradient raises
    :class:`NonFiniteLoss`. fp16: the step is skipped and the GradScaler lowers its scale (it is saved in
    the task's state, so a resumed run continues with the same scale)."""
    fp16 = scaler.is_enabled()
    finite = dd.all_true(bool(torch.isfinite(total.detach())), dist)
    if not finite and not fp16:
        raise NonFiniteLoss(f"non-finite {what} at step {step}")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(total).backward()
    dd.average_gradients(params, dist)
    scaler.unscale_(optimizer)
    norm = clip_grad_norm(params, max_norm)
    grads_ok = dd.all_true(math.isfinite(norm), dist)
    if not grads_ok and not fp16:
        raise NonFiniteLoss(f"non-finite gradient norm at step {step}")
    skipped = fp16 and not (finite and grads_ok)
    if not skipped:
        scaler.step(optimizer)
    scaler.update()
    return skipped, norm


def count_params(params) -> int:
    return sum(p.numel() for p in params)
