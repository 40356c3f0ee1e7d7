"""The ``task: maskmtl`` trainer: attributes of (masked) faces with one shared trunk and a head per task.

Data: UTKFace (age, age group, gender, race from the file names) and/or a CelebA-style attribute
table. Every batch is masked on the fly by ``MaskAugment`` with probability ``mask_prob`` (so the
model sees masked and unmasked faces), and the masking op's own draws become targets too:
``mask_kind``, ``mask_coverage``, ``mask_color`` (a coarse colour class of the mask's RGB) and
``masked`` (whether the face wears one). Those always carry real supervised signal, even without any
external labels. Rows from different sources leave the other sources' tasks unlabelled (-1 / NaN),
which :mod:`meer.losses.multitask` skips.

:func:`maskmtl_step` is one loss evaluation; :func:`train` runs the whole job with the conventions of
``meer-train`` (run directory, resolved config, tqdm, TensorBoard + stats.jsonl through ``RunLogger``,
checkpoints with optimiser and RNG state, ``--resume``, AMP).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from meer.config import ConfigError, dump_config, to_dict
from meer.data.multitask import COLOR_NAMES, MaskMTLDataConfig, build_dataset, collate_targets, mask_targets
from meer.data.utkface import AGE_GROUP_EDGES, RACES
from meer.losses.multitask import MultiTaskLoss
from meer.masking.batch import MaskAugment
from meer.models.maskmtl import MaskMTL, MaskMTLConfig, TaskSpec
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
    lr: float = 1e-3  # AdamW
    weight_decay: float = 5e-4
    eval_batches: int = 0  # 0: evaluate on the whole test split at the end


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


def maskmtl_step(batch: dict[str, Any], model: MaskMTL, loss_fn: MultiTaskLoss, masking: MaskAugment | None,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor],
                                                                     dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Mask the batch, run the model and the losses: ``(total, per-task losses, predictions, targets)``."""
    clean = batch["clean"]
    targets = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor) and k != "clean"}
    if masking is not None:
        masked, _mask, info = masking(clean, None, generator=generator)
        targets.update({k: v.to(clean.device) for k, v in mask_targets(info).items()})
        inputs = masked.clamp(0, 1)
    else:
        inputs = clean
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


class MaskMTLTrainer:
    """Model, loss, optimiser and data of one MaskMTL run (also used by the evaluation)."""

    def __init__(self, cfg, device: torch.device):
        tc: MaskMTLTaskConfig = cfg.maskmtl
        self.cfg = cfg
        self.device = device
        self.train_set, attrs, self.notes = build_dataset(tc.data, "train")
        tasks = list(tc.model.tasks) or default_tasks(bool(tc.data.utkface_root), attrs, tc.age, tc.mask_tasks)
        self.model_cfg = MaskMTLConfig(trunk=tc.model.trunk, width=tc.model.width, head_hidden=tc.model.head_hidden,
                                       dropout=tc.model.dropout, tasks=tasks)
        self.model = MaskMTL(self.model_cfg).to(device)
        self.loss_fn = MultiTaskLoss(tasks, tc.weighting).to(device)
        params = list(self.model.parameters()) + list(self.loss_fn.parameters())
        self.opt = torch.optim.AdamW(params, lr=tc.lr, weight_decay=tc.weight_decay)
        self.masking = MaskAugment(p=tc.mask_prob).to(device)
        self.mask_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
        self.epoch = 0
        self.position = 0

    def loader(self) -> DataLoader:
        dc = self.cfg.maskmtl.data
        g = torch.Generator().manual_seed(self.cfg.seed * 1000 + self.epoch)
        order = torch.randperm(len(self.train_set), generator=g).tolist()
        bs = dc.batch_size
        batches = [order[i:i + bs] for i in range(0, len(order) - bs + 1, bs)] or [order]
        tasks = self.model_cfg.tasks
        # an own generator: creating the iterator must not draw from the global RNG (exact resume)
        return DataLoader(self.train_set, batch_sampler=batches[self.position:], num_workers=dc.num_workers,
                          collate_fn=lambda items: collate_targets(items, tasks),
                          generator=torch.Generator().manual_seed(self.cfg.seed + self.epoch))

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "loss": self.loss_fn.state_dict(), "opt": self.opt.state_dict(),
                "mask_gen": self.mask_gen.get_state(), "epoch": self.epoch, "position": self.position,
                "model_cfg": to_dict(self.model_cfg)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.loss_fn.load_state_dict(state["loss"])
        self.opt.load_state_dict(state["opt"])
        self.mask_gen.set_state(state["mask_gen"])
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def _autocast(amp: str, device: torch.device):
    import contextlib

    if amp == "none":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("amp: fp16 needs a CUDA device (use amp=bf16 on CPU)")
    return torch.autocast(device_type=device.type, dtype=torch.float16 if amp == "fp16" else torch.bfloat16)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise MeerError("device: cuda requested but no CUDA device is available")
    return torch.device(name)


@dataclass
class MaskMTLResult:
    run_dir: Path | None
    step: int
    last_checkpoint: Path | None
    stats: dict[str, float]


def train(cfg, resume: str | Path | None = None, dry_run: bool = False, run_dir: str | Path | None = None
          ) -> MaskMTLResult:
    """Run a MaskMTL job from a ``TrainConfig`` with a ``maskmtl`` section (``task: maskmtl``)."""
    from meer.training import rundir
    from meer.training.checkpoint import CheckpointKeeper, load_state, rng_state, set_rng_state
    from meer.training.logging import RunLogger

    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    device = _device(cfg.device)
    trainer = MaskMTLTrainer(cfg, device)
    tasks = trainer.model_cfg.tasks
    summary = (f"maskmtl: {len(trainer.train_set)} training faces, tasks "
               + ", ".join(f"{t.name}({t.kind[:5]}{'' if t.kind == 'regression' else ' ' + str(t.num_classes)})"
                           for t in tasks)
               + f"; {sum(p.numel() for p in trainer.model.parameters()):,} parameters; device {device}")
    if dry_run:
        print(summary)
        for note in trainer.notes:
            print(f"note: {note}")
        return MaskMTLResult(None, 0, None, {})

    start = 0
    if resume is not None:
        run_path, ckpt = rundir.resolve_resume(resume)
    else:
        ckpt = None
        run_path = Path(run_dir) if run_dir is not None else rundir.create_run_dir(cfg.runs_dir, cfg.name)
        (run_path / rundir.CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
        dump_config(cfg, run_path / rundir.CONFIG_FILE)
    log = RunLogger(run_path)
    keeper = CheckpointKeeper(run_path / rundir.CHECKPOINT_DIR, cfg.checkpoint.keep_last)
    if ckpt is not None:
        state = load_state(ckpt, map_location=device)
        trainer.load_state_dict(state["task"])
        set_rng_state(state["rng"])
        start = int(state["step"])
        log.info(f"resumed from {ckpt} at step {start}")
    log.info(summary)
    for note in trainer.notes:
        log.info(f"note: {note}")

    end = cfg.stop_at_step if cfg.stop_at_step is not None else cfg.total_steps
    scaler = torch.amp.GradScaler("cuda") if cfg.amp == "fp16" else None
    bar = tqdm(total=end, initial=start, desc="meer-train maskmtl", unit="step", dynamic_ncols=True,
               disable=not cfg.log.progress, file=sys.stderr)
    it = iter(trainer.loader())
    losses: dict[str, list[float]] = {}
    metrics: dict[str, list[float]] = {}  # name -> [sum, count]
    last_ckpt, stats = ckpt, {}
    t0, n_img = time.perf_counter(), 0
    for step in range(start + 1, end + 1):
        try:
            batch = next(it)
        except StopIteration:
            trainer.epoch, trainer.position = trainer.epoch + 1, 0
            it = iter(trainer.loader())
            batch = next(it)
        trainer.position += 1
        batch = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        trainer.model.train()
        with _autocast(cfg.amp, device):
            total, parts, preds, targets = maskmtl_step(batch, trainer.model, trainer.loss_fn, trainer.masking,
                                                        trainer.mask_gen)
        if not torch.isfinite(total):
            raise MeerError(f"training stopped: non-finite MaskMTL loss at step {step}; last checkpoint: {last_ckpt}")
        trainer.opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.step(trainer.opt)
            scaler.update()
        else:
            total.backward()
            trainer.opt.step()
        n_img += batch["clean"].shape[0]
        losses.setdefault("loss/total", []).append(total.item())
        for k, v in parts.items():
            losses.setdefault(f"loss/{k}", []).append(float(v))
        for k, (s, n) in batch_metrics(trainer.model, preds, targets).items():
            m = metrics.setdefault(f"{'mae' if trainer.model.tasks[k].kind == 'regression' else 'acc'}/{k}", [0.0, 0.0])
            m[0] += s
            m[1] += n
        bar.update(1)
        if cfg.log.every and (step % cfg.log.every == 0 or step == end):
            stats = {k: sum(v) / len(v) for k, v in losses.items()}
            stats.update({k: v[0] / max(v[1], 1) for k, v in metrics.items()})
            stats.update({f"weight/{k}": w for k, w in trainer.loss_fn.task_weights().items()})
            now = time.perf_counter()
            stats["throughput_img_s"] = n_img / max(now - t0, 1e-9)
            t0, n_img, losses, metrics = now, 0, {}, {}
            log.scalars(step, stats, prefix="train/")
            log.info(f"step {step}/{cfg.total_steps} loss={stats['loss/total']:.4f} " + " ".join(
                f"{k}={v:.3f}" for k, v in stats.items() if k.startswith(("acc/", "mae/"))), console=False)
            bar.set_postfix(loss=f"{stats['loss/total']:.3f}")
        if (cfg.checkpoint.every and step % cfg.checkpoint.every == 0) or step == end:
            last_ckpt = keeper.save({"step": step, "config": to_dict(cfg), "task": trainer.state_dict(),
                                     "rng": rng_state()}, step)
    bar.close()
    if end < cfg.total_steps:
        log.info(f"stopped at step {end} of {cfg.total_steps}; continue with: meer-train --resume {run_path}")
    else:
        log.info(f"done: {end} steps; checkpoint {last_ckpt}; evaluate with: "
                 f"python -m meer.cli.maskmtl_eval --checkpoint {last_ckpt}")
    log.close()
    return MaskMTLResult(run_path, max(start, end), last_ckpt, stats)
