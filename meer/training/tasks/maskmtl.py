"""The ``task: maskmtl`` trainer: attributes of (masked) faces with one shared trunk and a head per task.

Data: UTKFace (age, age group, gender, race from the file names) and/or a CelebA-style attribute
table. Every batch is masked on the fly by ``MaskAugment`` with probability ``mask_prob`` (so the
model sees masked and unmasked faces), and the masking op's own draws become targets too:
``mask_kind``, ``mask_coverage``, ``mask_color`` (a coarse colour class of the mask's RGB) and
``masked`` (whether the face wears one). Those always carry real supervised signal, even without any
external labels. Rows from different sources leave the other sources' tasks unlabelled (-1 / NaN),
which :mod:`meer.losses.multitask` skips.

:func:`maskmtl_step` is one loss evaluation; :class:`MaskMTLTask` is the :class:`meer.training.task.Task`
that ``meer-train`` drives with the same loop as every other task (resumable data order, masks drawn
from the loop's checkpointed augmentation generator, the ``optim`` section's learning-rate schedule,
fp16 steps with a non-finite loss skipped, exact resume). Evaluate a run with ``meer.cli.maskmtl_eval``.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from meer.config import ConfigError, to_dict
from meer.data.multitask import (COLOR_NAMES, MaskMTLDataConfig, TaskSpec, build_dataset, collate_targets,
                                 mask_targets)
from meer.data.utkface import AGE_GROUP_EDGES, RACES
from meer.losses.multitask import MultiTaskLoss
from meer.masking.batch import MaskAugment
from meer.models.maskmtl import MaskMTL, MaskMTLConfig
from meer.training.distributed import DistInfo
from meer.training.task import Task, TaskData, autocast_factory, build_schedulers, scaled_step, step_schedulers
from meer.utils.errors import MeerError

AGE_SCALE = 50.0  # the age head predicts years / 50


@dataclass
class MaskMTLTaskConfig:
    data: MaskMTLDataConfig = field(default_factory=MaskMTLDataConfig)
    # trunk and heads; model.tasks empty = the default task list for the configured sources
    model: MaskMTLConfig = field(default_factory=MaskMTLConfig)
    age: Literal["regression", "group", "both", "none"] = "both"
    weighting: Literal["fixed", "uncertainty"] = "uncertainty"
    mask_prob: float = 0.7  # share of training faces that get a synthetic mask
    mask_tasks: bool = True  # train the mask attribute tasks
    lr: float = 1e-3  # AdamW (schedule: the optim section's schedule, warmup_steps, min_lr_ratio, ...)
    weight_decay: float = 5e-4
    eval_batches: int = 0  # not used by training (meer.cli.maskmtl_eval scores the whole test split)


def default_tasks(utkface: bool, celeba_attributes: list[str], age: str = "both", mask_tasks: bool = True
                  ) -> list[TaskSpec]:
    tasks = []
    if mask_tasks:
        tasks += [TaskSpec("mask_kind", num_classes=len(MaskAugment.KINDS)),
                  TaskSpec("mask_coverage", num_classes=len(MaskAugment.COVERAGES)),
                  TaskSpec("mask_color", num_classes=len(COLOR_NAMES)),
                  TaskSpec("masked", num_classes=2)]
    if utkface:
        tasks += [TaskSpec("gender", num_classes=2), TaskSpec("race", num_classes=len(RACES))]
        if age in ("regression", "both"):
            tasks.append(TaskSpec("age", kind="regression", scale=AGE_SCALE))
        if age in ("group", "both"):
            tasks.append(TaskSpec("age_group", num_classes=len(AGE_GROUP_EDGES) + 1))
    tasks += [TaskSpec(f"attr_{a}", num_classes=2) for a in celeba_attributes]
    if not tasks:
        raise ConfigError("maskmtl: no task to train (no data source with labels and mask_tasks: false)")
    return tasks


def mask_batch(batch: dict[str, Any], masking: MaskAugment, generator: torch.Generator | None = None,
               rank: int = 0, world_size: int = 1) -> dict[str, Any]:
    """Mask ``batch["clean"]`` (this rank's slice of the global batch) and add the mask's own targets.

    Returns the batch with ``inputs`` (the masked faces in [0, 1]) and ``mask_kind`` / ``mask_coverage``
    / ``mask_color`` / ``masked``. The draws are made for the whole global batch (other ranks' rows hold
    zeros), so they do not depend on the number of processes."""
    clean = batch["clean"]
    b = clean.shape[0]
    full = clean
    if world_size > 1:
        full = clean.new_zeros((b * world_size, *clean.shape[1:]))
        full[rank * b:(rank + 1) * b] = clean
    with torch.no_grad():
        masked, _mask, info = masking(full, None, generator=generator)
    sl = slice(rank * b, (rank + 1) * b)
    info = {k: info[k][sl] for k in ("kind", "coverage", "color")}
    out = dict(batch)
    out["inputs"] = masked[sl].clamp(0, 1)
    out.update({k: v.to(clean.device) for k, v in mask_targets(info).items()})
    return out


def maskmtl_step(batch: dict[str, Any], model: MaskMTL, loss_fn: MultiTaskLoss, masking: MaskAugment | None = None,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor],
                                                                     dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Run the model and the losses: ``(total, per-task losses, predictions, targets)``.

    The model reads ``batch["inputs"]`` when :func:`mask_batch` has masked the batch already, else
    ``batch["clean"]`` masked here by ``masking`` (or as it is when ``masking`` is None)."""
    if "inputs" not in batch and masking is not None:
        batch = mask_batch(batch, masking, generator)
    inputs = batch.get("inputs", batch["clean"])
    targets = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor) and k not in ("clean", "inputs")}
    preds = model(inputs)
    total, parts = loss_fn(preds, targets)
    return total, parts, preds, targets


def batch_metrics(model: MaskMTL, preds: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]
                  ) -> dict[str, tuple[float, int]]:
    """``{task: (sum of correct or of absolute errors, count)}`` over the labelled rows of a batch."""
    out = {}
    for name, y in preds.items():
        if name not in targets:
            continue
        y = y.detach()
        t = model.tasks[name]
        tgt = targets[name]
        if t.kind == "classification":
            keep = tgt >= 0
            if keep.any():
                out[name] = (float((y[keep].argmax(1) == tgt[keep]).sum()), int(keep.sum()))
        else:
            keep = torch.isfinite(tgt)
            if keep.any():
                out[name] = (float((y[keep].float() * t.scale - tgt[keep]).abs().sum()), int(keep.sum()))
    return out


class MaskMTLTask(Task):
    """Model, loss and optimiser of one MaskMTL run (``task: maskmtl``; own data section ``maskmtl.data``)."""

    name = "maskmtl"

    def __init__(self, cfg, data: TaskData, dist: DistInfo):
        tc: MaskMTLTaskConfig = cfg.maskmtl
        self.cfg = cfg
        self.dist = dist
        device = dist.device
        self.model_cfg: MaskMTLConfig = data.info["model_cfg"]
        self.model = MaskMTL(self.model_cfg)
        if dist.enabled and device.type == "cuda":
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)  # statistics over the global batch
        self.model.to(device)
        self.loss_fn = MultiTaskLoss(self.model_cfg.tasks, tc.weighting).to(device)
        self.params = list(self.model.parameters()) + list(self.loss_fn.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=tc.lr, weight_decay=tc.weight_decay)
        self.schedulers = build_schedulers({"maskmtl": self.opt}, cfg)
        self.scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16")
        self.autocast = autocast_factory(cfg.amp, device)
        self.masking = MaskAugment(p=tc.mask_prob).to(device)

    @classmethod
    def build_data(cls, cfg, dist: DistInfo) -> TaskData:
        tc: MaskMTLTaskConfig = cfg.maskmtl
        train_set, attrs, notes = build_dataset(tc.data, "train")
        tasks = list(tc.model.tasks) or default_tasks(bool(tc.data.utkface_root), attrs, tc.age, tc.mask_tasks)
        model_cfg = MaskMTLConfig(trunk=tc.model.trunk, width=tc.model.width, head_hidden=tc.model.head_hidden,
                                  dropout=tc.model.dropout, tasks=tasks)
        summary = (f"maskmtl: {len(train_set)} training faces, tasks "
                   + ", ".join(f"{t.name}({t.kind[:5]}{'' if t.kind == 'regression' else ' ' + str(t.num_classes)})"
                               for t in tasks))
        return TaskData(train=train_set, collate=functools.partial(collate_targets, tasks=tasks),
                        batch_size=tc.data.batch_size, num_workers=tc.data.num_workers, summary=[summary],
                        notes=notes, info={"model_cfg": model_cfg})

    def make_batch(self, raw: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
        device = self.dist.device
        batch = {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in raw.items()}
        return mask_batch(batch, self.masking, generator, self.dist.rank, self.dist.world_size)

    def train_step(self, batch: dict[str, Any], step: int, nimg: int) -> dict[str, float]:
        self.model.train()
        self.loss_fn.train()
        with self.autocast():
            total, parts, preds, targets = maskmtl_step(batch, self.model, self.loss_fn)
        skipped, norm = scaled_step(total.float(), self.opt, self.params, self.scaler, self.dist, step,
                                    what="MaskMTL loss")
        step_schedulers(self.schedulers)
        stats = {"loss/total": float(total.detach())}
        stats.update({f"loss/{k}": float(v) for k, v in parts.items()})
        for k, (s, n) in batch_metrics(self.model, preds, targets).items():  # this batch's labelled rows
            stats[f"{'mae' if self.model.tasks[k].kind == 'regression' else 'acc'}/{k}"] = s / max(n, 1)
        stats.update({f"weight/{k}": w for k, w in self.loss_fn.task_weights().items()})
        stats["grad_norm/maskmtl"] = norm
        stats["lr/maskmtl"] = self.opt.param_groups[0]["lr"]
        if self.scaler.is_enabled():
            stats["amp_scale"] = self.scaler.get_scale()
        stats["skipped"] = float(skipped)
        return stats

    def param_counts(self) -> dict[str, int]:
        return {"maskmtl": sum(p.numel() for p in self.model.parameters())}  # + one log-variance per task

    def live_model(self) -> nn.Module:
        return self.model

    def eval_model(self) -> nn.Module:
        return self.model

    def state_dict(self) -> dict[str, Any]:
        # "model" and "model_cfg" are what meer.evaluation.maskmtl_eval.load_maskmtl_checkpoint reads
        return {"model": self.model.state_dict(), "loss": self.loss_fn.state_dict(), "opt": self.opt.state_dict(),
                "model_cfg": to_dict(self.model_cfg),
                "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
                "scalers": {"maskmtl": self.scaler.state_dict()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "schedulers" not in state:
            raise MeerError("checkpoint of an older maskmtl trainer (no learning-rate schedule state): retrain")
        self.model.load_state_dict(state["model"])
        self.loss_fn.load_state_dict(state["loss"])
        self.opt.load_state_dict(state["opt"])
        for k, s in self.schedulers.items():
            s.load_state_dict(state["schedulers"][k])
        if state["scalers"]["maskmtl"]:
            self.scaler.load_state_dict(state["scalers"]["maskmtl"])
