"""The training loop of ``meer-train``, the same for every task: set up, run steps, log, validate,
checkpoint, export.

Read top to bottom: :func:`train` checks data and builds everything before the first step (so bad
configs and missing data stop at once with one line), then each step is

    raw = stream.next()                             # resumable data order (timed: data wait)
    batch = task.make_batch(raw, aug_gen)           # device + on-device masking, own generator
    stats = task.train_step(batch, step, nimg)      # the task's optimisation step
    log / grid / validate / checkpoint when due

A task (``meer.training.task.Task``, listed in ``meer.training.tasks.TASKS``) says how its data is
built and how one step runs; the hooks ``prepare``, ``notes``, ``validate``, ``grid`` and ``export``
are no-ops unless it overrides them. What is saved in a checkpoint -- the task's state (modules,
optimisers, schedulers, GradScalers, EMA), the Python/numpy/torch RNGs, the augmentation generator and
the data position -- is exactly what the next step depends on, so a run resumed at step k ends
bit-identical (on CPU) to an uninterrupted one.

Resuming on another number of processes (``torchrun`` world size): the global batch and the data order
do not depend on the number of processes (``meer.training.sampler``), and every rank draws the masks
of the whole global batch, so a checkpoint resumes on any world size that divides the global batch and
continues with the same samples in the same order; the change is logged. A config whose global batch
differs from the checkpoint's is refused (one line): the saved data position counts global batches.
Only rank 0 writes (log, stats, grids, checkpoints, export); every rank reads the checkpoint to resume.

Data wait: the time a step spends in ``stream.next()`` (waiting for the loader) against the time of the
whole step (fetch, ``make_batch``, ``train_step``) is logged as ``train/data_wait_s`` (seconds per step,
mean over the logging window) and ``train/data_wait_share`` (running share since this process started),
both averaged over the ranks; a share near 1 means the loader, not the model, sets the pace.
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
from meer.training import distributed as dd
from meer.training import rundir
from meer.training.checkpoint import CheckpointKeeper, load_state, rng_state, set_rng_state
from meer.training.config import TrainConfig
from meer.training.logging import RunLogger
from meer.training.sampler import DataStream, ResumableBatchSampler
from meer.training.task import NonFiniteLoss, TaskData
from meer.training.tasks import TASKS
from meer.utils.errors import MeerError


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
    if cfg.task not in TASKS:
        raise MeerError(f"unknown task {cfg.task!r} (known: {', '.join(TASKS)})")
    info = dd.init_distributed(cfg.device)
    try:
        return _train(cfg, info, resume, dry_run, run_dir)
    finally:
        dd.shutdown(info)


def _record_resumed_config(cfg: TrainConfig, run_path: Path, step: int, log: RunLogger) -> None:
    """A resume with overrides changes the config the run continues with: ``config.yaml`` is rewritten to it (it
    always says what the run uses now), the one it replaces is kept as ``config-before-<step>.yaml``, and the
    changed keys are logged, so a run's history stays readable from its folder."""
    import yaml

    path = run_path / rundir.CONFIG_FILE
    now = to_dict(cfg)
    try:
        before = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        before = None
    if before == now:
        return

    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(d, dict):
            return {prefix: d}
        return {k: v for key, val in d.items() for k, v in flat(val, f"{prefix}{key}.").items()} if d else {prefix: d}

    old, new = flat(before or {}), flat(now)
    changed = sorted(k.rstrip(".") for k in set(old) | set(new) if old.get(k) != new.get(k))
    if path.is_file():
        path.replace(run_path / f"config-before-{step:08d}.yaml")
    dump_config(cfg, path)
    log.info(f"config changed on resume at step {step} ({', '.join(changed)}): {path.name} rewritten, "
             f"the previous one kept as config-before-{step:08d}.yaml")


def _train(cfg: TrainConfig, info: dd.DistInfo, resume, dry_run: bool, forced_dir) -> TrainResult:
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    device = info.device
    task_cls = TASKS[cfg.task]

    # ---- data: everything that can be wrong with it fails here, before any model is built
    data = task_cls.build_data(cfg, info)
    sampler = ResumableBatchSampler(len(data.train), data.batch_size, cfg.seed, info.rank, info.world_size)
    loader = DataLoader(data.train, batch_sampler=sampler, num_workers=data.num_workers, collate_fn=data.collate,
                        pin_memory=device.type == "cuda", persistent_workers=False,
                        generator=torch.Generator().manual_seed(cfg.seed))
    stream = DataStream(loader, sampler)

    # ---- model, losses, optimisers
    task = task_cls.from_data(cfg, data, info)
    counts = task.param_counts()

    if dry_run:
        planned = Path(resume) if resume else (Path(forced_dir) if forced_dir else rundir.plan_run_dir(cfg.runs_dir, cfg.name))
        if info.is_main:
            print(describe(cfg, data, counts, planned, sampler))
            for note in data.notes:
                print(f"note: {note}")
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
        if state.get("config", {}).get("task", cfg.task) != cfg.task:
            raise MeerError(f"{ckpt_path} was written by task {state['config']['task']!r}, this config trains {cfg.task!r}")
        saved_batch = state.get("global_batch")
        if saved_batch is not None and int(saved_batch) != data.batch_size:
            raise MeerError(f"{ckpt_path} was written with global batch {saved_batch}, this config has {data.batch_size}: "
                            f"the saved data position counts global batches; resume with data.batch_size={saved_batch}")
        task.load_state_dict(state["task"])
        stream.load_state_dict(state["data"])
        set_rng_state(state["rng"], {"augment": aug_gen})
        start_step = int(state["step"])
        best = float(state.get("best", -math.inf))
        log.info(f"resumed from {ckpt_path} at step {start_step}")
        if info.is_main:
            _record_resumed_config(cfg, run_path, start_step, log)
        saved_world = state.get("world_size")
        if saved_world is not None and int(saved_world) != info.world_size:
            log.info(f"checkpoint written by {saved_world} process(es), resumed on {info.world_size}: the global "
                     f"batch ({data.batch_size}) and the data order do not depend on the process count, so the run "
                     f"continues with the same samples ({data.batch_size // info.world_size} per process per step)")
    else:
        log.info(f"run directory {run_path}")
        message = task.prepare(data)  # per-task initialisation from data (fresh runs only)
        if message:
            log.info(message)
    log.info(describe(cfg, data, counts, run_path, sampler), console=False)
    for note in data.notes:
        log.info(f"note: {note}")
    for note in task.notes():
        log.info(note)

    val_set = data.make_val() if data.make_val is not None and info.is_main else None

    end_step = cfg.stop_at_step if cfg.stop_at_step is not None else cfg.total_steps
    if start_step >= end_step:
        log.info(f"nothing to do: checkpoint is at step {start_step}, run ends at {end_step}")
    last_ckpt = ckpt_path
    last_val: dict[str, float] = {}
    stats: dict[str, float] = {}

    def full_state(step: int) -> dict[str, Any]:
        return {"step": step, "config": to_dict(cfg), "task": task.state_dict(), "data": stream.state_dict(),
                "rng": rng_state({"augment": aug_gen}), "best": best,
                "global_batch": data.batch_size, "world_size": info.world_size}

    bar = tqdm(total=end_step, initial=start_step, desc="meer-train", unit="step", dynamic_ncols=True,
               disable=not (info.is_main and cfg.log.progress), file=sys.stderr)
    window_t, window_img = time.perf_counter(), 0
    wait_window = steps_window = 0  # seconds waiting for batches and steps, since the last log line
    wait_total = spent_total = 0.0  # seconds waiting for batches / in steps, since this process started
    t_start = time.perf_counter()
    global_batch = data.batch_size
    final_step = start_step
    for step in range(start_step + 1, end_step + 1):
        t_fetch = time.perf_counter()
        raw = stream.next()
        t_data = time.perf_counter()
        batch = task.make_batch(raw, aug_gen)
        try:
            stats = task.train_step(batch, step, step * global_batch)
            t_done = time.perf_counter()
        except NonFiniteLoss as exc:
            where = f"; last good checkpoint: {last_ckpt}" if last_ckpt else "; no checkpoint was saved yet"
            log.info(f"training stopped: {exc}{where}")
            bar.close()
            log.close()
            raise MeerError(f"training stopped: {exc}{where}") from None
        if stats.get("skipped"):
            log.info(f"step {step}: non-finite loss or gradient under fp16 AMP, step skipped "
                     f"(GradScaler scale now {stats.get('amp_scale')})")
        wait_window += t_data - t_fetch
        steps_window += 1
        wait_total += t_data - t_fetch
        spent_total += t_done - t_fetch
        window_img += global_batch
        bar.update(1)
        final_step = step
        in_time = cfg.time_limit_min is None or (time.perf_counter() - t_start) / 60.0 < cfg.time_limit_min
        out_of_time = not dd.all_true(in_time, info)  # every rank stops at the same step
        is_last = step == end_step or out_of_time

        if cfg.log.every and (step % cfg.log.every == 0 or is_last):
            now = time.perf_counter()
            stats["data_wait_s"] = wait_window / max(steps_window, 1)
            stats["data_wait_share"] = wait_total / spent_total if spent_total > 0 else 0.0
            stats = dd.mean_scalars(stats, info)
            stats["throughput_img_s"] = window_img / max(now - window_t, 1e-9)
            stats["epoch"] = stream.epoch
            window_t, window_img = now, 0
            wait_window = steps_window = 0
            log.scalars(step, stats, prefix="train/")
            log.info(f"step {step}/{cfg.total_steps} " + " ".join(
                f"{k.split('/', 1)[-1]}={v:.4g}" for k, v in stats.items() if k.startswith("loss/")) +
                f" img/s={stats['throughput_img_s']:.1f} data_wait={stats['data_wait_share']:.0%}", console=False)
            bar.set_postfix(loss=f"{stats.get('loss/total', float('nan')):.3f}")
        if info.is_main and cfg.log.grid_every and (step % cfg.log.grid_every == 0 or is_last):
            rows = task.grid(batch, cfg.log.grid_images)
            if rows:
                log.grid(step, rows)
        if val_set is not None and ((cfg.val.every and step % cfg.val.every == 0) or is_last):
            last_val = task.validate(val_set)
            log.scalars(step, last_val, prefix="val/")
            log.info(f"val step {step}: " + " ".join(f"{k}={v:.4f}" for k, v in last_val.items()))
            if cfg.val.best_metric not in last_val:
                raise MeerError(f"val.best_metric {cfg.val.best_metric!r} is not reported by task {cfg.task} "
                                f"(it reports {', '.join(last_val) or 'nothing'})")
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
    if info.is_main and final_step > start_step:
        # a run stopped early exports too (meta says the step)
        export = task.export(run_path, {"step": final_step, "run": str(run_path), "task": cfg.task, "val": last_val})
        if export is not None:
            log.info(f"exported {export}")
    if info.is_main and final_step < cfg.total_steps:
        log.info(f"stopped at step {final_step} of {cfg.total_steps}; continue with: meer-train --resume {run_path}")
    log.close()
    return TrainResult(run_dir=run_path, step=final_step, last_checkpoint=last_ckpt, export=export, val=last_val,
                       stats=stats)


def describe(cfg: TrainConfig, data: TaskData, counts: dict[str, int], run_dir: Path,
             sampler: ResumableBatchSampler) -> str:
    lines = [
        f"task {cfg.task}, {cfg.total_steps} steps of global batch {data.batch_size} "
        f"({sampler.batches_per_epoch} steps/epoch), amp={cfg.amp}, device={cfg.device}",
        *data.summary,
        "parameters: " + ", ".join(f"{k} {v / 1e6:.3f}M" for k, v in counts.items()) +
        f" (total {sum(counts.values()) / 1e6:.3f}M)",
        f"run directory: {run_dir}",
    ]
    return "\n".join(lines)
