"""The training loop of ``meer-train``: set up, run steps, log, validate, checkpoint, export.

Read top to bottom: :func:`train` checks data and builds everything before the first step (so bad
configs and missing data stop at once with one line), then each step is

    batch = stream.next()                           # resumable data order
    clean, masked, mask, kind = augment(...)        # flip + on-device masking, own generator
    stats = task.train_step(batch, step, nimg)      # recognizer + G phases, D phase, EMA
    log / grid / validate / checkpoint when due

What is saved in a checkpoint -- every module, optimiser, scheduler, GradScaler, the EMA, the
Python/numpy/torch RNGs, the augmentation generator and the data position -- is exactly what the
next step depends on, so a run resumed at step k ends bit-identical (on CPU) to an uninterrupted one.
"""
from __future__ import annotations

import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from meer.config import dump_config, to_dict
from meer.masking.batch import MaskAugment
from meer.models.checkpoint import save_inference_checkpoint
from meer.training import distributed as dd
from meer.training import meer_task, rundir
from meer.training.tasks import eum_srt
from meer.training.checkpoint import CheckpointKeeper, load_state, rng_state, set_rng_state
from meer.training.config import TrainConfig
from meer.training.data import augment, build_splits, collate
from meer.training.logging import RunLogger
from meer.training.phases import Batch
from meer.training.sampler import DataStream, ResumableBatchSampler
from meer.training.validate import build_val_set, validate
from meer.utils.errors import MeerError

# task name -> step module (``build(cfg, num_classes, num_mask_kinds, dist)``); baselines add theirs
TASKS = {"meer": meer_task, "eum_srt": eum_srt}

EXPORT_NAME = "meer_inference.pt"


@dataclass
class TrainResult:
    run_dir: Path | None
    step: int
    last_checkpoint: Path | None
    export: Path | None
    val: dict[str, float]
    stats: dict[str, float]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(cfg: TrainConfig, resume: str | Path | None = None, dry_run: bool = False,
          run_dir: str | Path | None = None) -> TrainResult:
    """Run (or, with ``dry_run``, only prepare) a training job. ``run_dir`` forces a directory
    (tests); otherwise a new numbered one is created under ``cfg.runs_dir`` or the resumed one used."""
    if cfg.task == "maskmtl":  # its own data (attribute sets, not identity folders): see tasks/maskmtl.py
        from meer.training.tasks import maskmtl

        r = maskmtl.train(cfg, resume=resume, dry_run=dry_run, run_dir=run_dir)
        return TrainResult(run_dir=r.run_dir, step=r.step, last_checkpoint=r.last_checkpoint, export=None, val={},
                           stats=r.stats)
    info = dd.init_distributed(cfg.device)
    try:
        return _train(cfg, info, resume, dry_run, run_dir)
    finally:
        dd.shutdown(info)


def _train(cfg: TrainConfig, info: dd.DistInfo, resume, dry_run: bool, forced_dir) -> TrainResult:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    device = info.device

    # ---- data: everything that can be wrong with it fails here, before any model is built
    splits = build_splits(cfg.data, cfg.seed, cfg.model.image_size)
    masking = MaskAugment(**cfg.masking) if cfg.masking else MaskAugment()
    sampler = ResumableBatchSampler(len(splits.train), cfg.data.batch_size, cfg.seed, info.rank, info.world_size)
    loader = DataLoader(splits.train, batch_sampler=sampler, num_workers=cfg.data.num_workers, collate_fn=collate,
                        pin_memory=device.type == "cuda", persistent_workers=False,
                        generator=torch.Generator().manual_seed(cfg.seed))
    stream = DataStream(loader, sampler)

    # ---- model, losses, optimisers
    if cfg.task not in TASKS:
        raise MeerError(f"unknown task {cfg.task!r} (known: {', '.join(TASKS)})")
    task = TASKS[cfg.task].build(cfg, splits.train.num_classes, len(MaskAugment.KINDS), info)
    counts = task.param_counts()

    if dry_run:
        planned = Path(resume) if resume else (Path(forced_dir) if forced_dir else rundir.plan_run_dir(cfg.runs_dir, cfg.name))
        if info.is_main:
            print(describe(cfg, splits, counts, planned, sampler))
        return TrainResult(run_dir=None, step=0, last_checkpoint=None, export=None, val={}, stats={})

    # ---- run directory, logger, checkpoints
    start_step = 0
    if resume is not None:
        run_path, ckpt_path = rundir.resolve_resume(resume)
    else:
        ckpt_path = None
        if forced_dir is not None:
            run_path = Path(forced_dir)
            if info.is_main:
                (run_path / rundir.CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
        else:
            run_path = rundir.create_run_dir(cfg.runs_dir, cfg.name) if info.is_main else None
        run_path = dd.broadcast_object(run_path, info)
    log = RunLogger(run_path, enabled=info.is_main)
    if info.is_main and resume is None:
        dump_config(cfg, run_path / rundir.CONFIG_FILE)
    keeper = CheckpointKeeper(run_path / rundir.CHECKPOINT_DIR, cfg.checkpoint.keep_last)
    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    best = -math.inf
    if ckpt_path is not None:
        state = load_state(ckpt_path, map_location=device)
        task.load_state_dict(state["task"])
        stream.load_state_dict(state["data"])
        set_rng_state(state["rng"], {"augment": aug_gen})
        start_step = int(state["step"])
        best = float(state.get("best", -math.inf))
        log.info(f"resumed from {ckpt_path} at step {start_step}")
    else:
        log.info(f"run directory {run_path}")
        prepare = getattr(task, "prepare", None)  # per-task initialisation from data (fresh runs only)
        message = prepare(splits.train) if prepare is not None else None
        if message:
            log.info(message)
    log.info(describe(cfg, splits, counts, run_path, sampler), console=False)
    if getattr(task, "recon", None) is not None and cfg.loss.w_lpips > 0 and not task.recon.lpips_is_real:
        log.info("LPIPS: no pretrained trunk in the local cache; training with a random-trunk feature "
                 "distance (logged as loss/perceptual_random_trunk, never reported as LPIPS)")

    val_set = None
    if splits.val is not None and info.is_main:
        val_set = build_val_set(splits.val, cfg.data.val_images_per_identity, cfg.val.pairs, masking, cfg.seed)

    end_step = cfg.stop_at_step if cfg.stop_at_step is not None else cfg.total_steps
    if start_step >= end_step:
        log.info(f"nothing to do: checkpoint is at step {start_step}, run ends at {end_step}")
    last_ckpt = ckpt_path
    last_val: dict[str, float] = {}
    stats: dict[str, float] = {}

    def full_state(step: int) -> dict[str, Any]:
        return {"step": step, "config": to_dict(cfg), "task": task.state_dict(), "data": stream.state_dict(),
                "rng": rng_state({"augment": aug_gen}), "best": best}

    bar = tqdm(total=end_step, initial=start_step, desc="meer-train", unit="step", dynamic_ncols=True,
               disable=not (info.is_main and cfg.log.progress), file=sys.stderr)
    window_t, window_img = time.perf_counter(), 0
    t_start = time.perf_counter()
    global_batch = cfg.data.batch_size
    final_step = start_step
    for step in range(start_step + 1, end_step + 1):
        raw = stream.next()
        clean, masked, mask, kind = augment(raw["clean"].to(device, non_blocking=True), masking, aug_gen,
                                            info.rank, info.world_size, cfg.data.hflip)
        batch = Batch(clean=clean, masked=masked, mask=mask, labels=raw["identity"].to(device), kind=kind)
        try:
            stats = task.train_step(batch, step, step * global_batch)
        except meer_task.NonFiniteLoss as exc:
            where = f"; last good checkpoint: {last_ckpt}" if last_ckpt else "; no checkpoint was saved yet"
            log.info(f"training stopped: {exc}{where}")
            bar.close()
            log.close()
            raise MeerError(f"training stopped: {exc}{where}") from None
        if stats.get("skipped"):
            log.info(f"step {step}: non-finite loss or gradient under fp16 AMP, step skipped "
                     f"(GradScaler scale now {stats.get('amp_scale')})")
        window_img += global_batch
        bar.update(1)
        final_step = step
        in_time = cfg.time_limit_min is None or (time.perf_counter() - t_start) / 60.0 < cfg.time_limit_min
        out_of_time = not dd.all_true(in_time, info)  # every rank stops at the same step
        is_last = step == end_step or out_of_time

        if cfg.log.every and (step % cfg.log.every == 0 or is_last):
            now = time.perf_counter()
            stats = dd.mean_scalars(stats, info)
            stats["throughput_img_s"] = window_img / max(now - window_t, 1e-9)
            stats["epoch"] = stream.epoch
            window_t, window_img = now, 0
            log.scalars(step, stats, prefix="train/")
            log.info(f"step {step}/{cfg.total_steps} " + " ".join(
                f"{k.split('/', 1)[-1]}={v:.4g}" for k, v in stats.items() if k.startswith("loss/")) +
                f" img/s={stats['throughput_img_s']:.1f}", console=False)
            bar.set_postfix(loss=f"{stats.get('loss/total', float('nan')):.3f}")
        if info.is_main and cfg.log.grid_every and (step % cfg.log.grid_every == 0 or is_last) \
                and hasattr(task.eval_model(), "restore"):
            save_grid(log, task, batch, step, cfg.log.grid_images)
        if val_set is not None and ((cfg.val.every and step % cfg.val.every == 0) or is_last):
            if hasattr(task, "validate"):  # baseline tasks score themselves
                last_val = task.validate(val_set, cfg.val.batch_size, device)
            else:
                last_val = validate(task.eval_model(), val_set, cfg.val.batch_size, device, task.autocast)
            log.scalars(step, last_val, prefix="val/")
            log.info(f"val step {step}: " + " ".join(f"{k}={v:.4f}" for k, v in last_val.items()))
            if last_val[cfg.val.best_metric] > best:
                best = last_val[cfg.val.best_metric]
                keeper.save_best(full_state(step))
        if (cfg.checkpoint.every and step % cfg.checkpoint.every == 0) or is_last:
            if info.is_main:
                last_ckpt = keeper.save(full_state(step), step)
            dd.barrier(info)
        if out_of_time:
            log.info(f"time limit of {cfg.time_limit_min} min reached at step {step}")
            break
    bar.close()

    export = None
    if info.is_main and cfg.task == "meer" and final_step > start_step:
        # the EMA weights for meer-restore; a run stopped early exports too (meta says the step)
        export = run_path / EXPORT_NAME
        save_inference_checkpoint(task.eval_model(), export, meta={
            "step": final_step, "run": str(run_path), "task": cfg.task, "val": last_val,
            "ema": cfg.ema.enabled, "train_config": to_dict(cfg)})
        log.info(f"exported inference checkpoint {export} (use it with meer-restore --checkpoint)")
    if info.is_main and final_step < cfg.total_steps:
        log.info(f"stopped at step {final_step} of {cfg.total_steps}; continue with: meer-train --resume {run_path}")
    log.close()
    return TrainResult(run_dir=run_path, step=final_step, last_checkpoint=last_ckpt, export=export, val=last_val,
                       stats=stats)


def save_grid(log: RunLogger, task, batch: Batch, step: int, n: int) -> None:
    """Rows: masked input / predicted occlusion map / restored (EMA) / clean target."""
    model = task.eval_model()
    was = model.training
    model.eval()
    with torch.no_grad(), task.autocast():
        restored, occ = model.restore(batch.masked[:n])
    model.train(was)
    log.grid(step, [batch.masked[:n], occ.float(), restored.float(), batch.clean[:n]])


def describe(cfg: TrainConfig, splits, counts: dict[str, int], run_dir: Path, sampler: ResumableBatchSampler) -> str:
    lines = [
        f"task {cfg.task}, {cfg.total_steps} steps of global batch {cfg.data.batch_size} "
        f"({sampler.batches_per_epoch} steps/epoch), amp={cfg.amp}, device={cfg.device}",
        f"train: {len(splits.train) - splits.train.num_unlabeled} images of {splits.train.num_classes} identities"
        + (f" + {splits.train.num_unlabeled} unlabelled faces" if splits.train.num_unlabeled else "") + "; "
        f"validation: {len(splits.val_names)} held-out identities (up to {cfg.data.val_images_per_identity} images each); "
        f"{len(splits.eval_only)} evaluation-only identities excluded",
        "parameters: " + ", ".join(f"{k} {v / 1e6:.3f}M" for k, v in counts.items()) +
        f" (total {sum(counts.values()) / 1e6:.3f}M)",
        f"run directory: {run_dir}",
    ]
    return "\n".join(lines)
