"""Training speed and peak memory of a MEER step: fp32 vs bf16 autocast (CPU), fp32 vs fp16 (CUDA).

    python benchmarks/bench_train.py                                   # configs/meer_v2_cpu.yaml, CPU
    python benchmarks/bench_train.py --config configs/meer_112_gpu.yaml --device cuda --batch 64
    python benchmarks/bench_train.py --json out.json --steps 5 --profile

With a teacher in the config, each precision runs twice: the clean faces' teacher targets recomputed every
step (``loss.teacher_cache=false``) and looked up from the cache (as from a run's second sight of a face on).
``--profile`` adds a torch.profiler pass over two more steps and prints the share of the step in each part the
trainer names (``meer/forward``, ``meer/backward``, ``meer/d_phase``, ...). The share of step time spent waiting
for data is a property of the real loader: ``meer-train`` logs it (``data_wait_share`` in its log and stats).

Each precision runs in its own subprocess, so the peak resident memory (``ru_maxrss``) of one does
not hide the other's; on CUDA ``torch.cuda.max_memory_allocated`` is reported too. A step is the
full ``meer-train`` step (recognizer + G phases, D phase with lazy R1 on its interval, EMA update),
on a fixed batch of the config's size drawn from the synthetic masking op (no disk I/O measured).
Throughput is global-batch images per second over the timed steps, after ``--warmup`` steps; CPU
seconds per step (process time, all threads) are reported too, being steadier on a shared machine.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_one(config: str, amp: str, device: str, batch: int, steps: int, warmup: int, threads: int,
            cache: bool = False, profile: bool = False) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    from meer.config import load_config
    from meer.masking.batch import MaskAugment
    from meer.training import meer_task
    from meer.training.config import TrainConfig
    from meer.training.data import augment
    from meer.training.distributed import DistInfo
    from meer.training.phases import Batch
    from meer.training.teacher_targets import TeacherTargets

    overrides = [f"amp={amp}", f"device={device}"] + ([f"data.batch_size={batch}"] if batch else [])
    cfg = load_config(TrainConfig, REPO / config, overrides)
    dev = torch.device(device)
    torch.manual_seed(0)
    classes = 500
    task = meer_task.build(cfg, num_classes=classes, num_mask_kinds=len(MaskAugment.KINDS), dist=DistInfo(device=dev))
    b = cfg.data.batch_size
    s = cfg.model.image_size
    g = torch.Generator(device=dev).manual_seed(0)
    # smooth random "faces" (low-frequency noise upsampled): realistic enough for conv timing
    clean = torch.nn.functional.interpolate(torch.rand(b, 3, s // 8, s // 8, device=dev), size=(s, s),
                                            mode="bilinear", align_corners=False)
    clean, masked, mask, kind, _ = augment(clean, MaskAugment().to(dev), g, 0, 1, hflip=False)
    batch_ = Batch(clean=clean, masked=masked, mask=mask, labels=torch.arange(b, device=dev) % classes, kind=kind,
                   index=torch.arange(b, device=dev), flipped=torch.zeros(b, dtype=torch.bool, device=dev))
    if cache and task.teacher is not None:  # filled by the warm-up steps, looked up by the timed ones
        task.targets = TeacherTargets(b, task.teacher.dim)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for i in range(warmup):
        task.train_step(batch_, step=i + 1, nimg=(i + 1) * b)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(steps):
        task.train_step(batch_, step=warmup + i + 1, nimg=(warmup + i + 1) * b)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    cpu = time.process_time() - c0
    out = {
        "config": config, "amp": amp, "device": device, "batch": b, "steps": steps, "threads": torch.get_num_threads(),
        "img_per_s": steps * b / dt, "s_per_step": dt / steps,
        # CPU seconds per step (all threads): on a shared machine this is steadier than wall time
        "cpu_s_per_step": cpu / steps, "img_per_cpu_s": steps * b / cpu,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "params_m": {k: round(v / 1e6, 3) for k, v in task.param_counts().items()},
    }
    out["teacher"] = cfg.loss.teacher or None
    out["teacher_cache"] = task.targets is not None
    if dev.type == "cuda":
        out["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
        out["gpu"] = torch.cuda.get_device_name()
    if profile:
        out["profile_share"] = profile_steps(task, batch_, warmup + steps, b, dev)
    return out


def profile_steps(task, batch, done: int, b: int, dev, steps: int = 2) -> dict[str, float]:
    """Share of the profiled steps' wall time in each ``meer/*`` scope the trainer records."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    t0 = time.perf_counter()
    with profile(activities=acts) as prof:
        for i in range(steps):
            task.train_step(batch, step=done + i + 1, nimg=(done + i + 1) * b)
        if dev.type == "cuda":
            torch.cuda.synchronize()
    wall_us = (time.perf_counter() - t0) * 1e6
    shares = {}
    for ev in prof.key_averages():
        if ev.key.startswith("meer/"):
            shares[ev.key] = round(ev.cpu_time_total / wall_us, 4)
    shares["other (grad norms, clipping, schedulers, logging)"] = round(max(0.0, 1 - sum(shares.values())), 4)
    return shares


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/meer_v2_cpu.yaml")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--amp", nargs="*", default=None, help="precisions to compare (default: none bf16 on CPU, none fp16 on CUDA)")
    p.add_argument("--batch", type=int, default=0, help="override the config's global batch")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: the config's / torch default)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--profile", action="store_true", help="share of the step per part (torch.profiler)")
    p.add_argument("--teacher-cache", choices=["off", "on", "both"], default="both")
    p.add_argument("--cache", action="store_true", help=argparse.SUPPRESS)  # internal
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one precision in this process
    args = p.parse_args()
    if args.one:
        res = run_one(args.config, args.one, args.device, args.batch, args.steps, args.warmup, args.threads,
                      cache=args.cache, profile=args.profile)
        print(json.dumps(res))
        return 0
    amps = args.amp or (["none", "bf16"] if args.device == "cpu" else ["none", "fp16"])
    results = []
    caches = {"off": [False], "on": [True], "both": [False, True]}[args.teacher_cache]
    runs = [(amp, cache) for amp in amps for cache in caches]
    for amp, cache in runs:
        cmd = [sys.executable, __file__, "--one", amp, "--config", args.config, "--device", args.device,
               "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--threads", str(args.threads)] + (["--cache"] if cache else []) + (["--profile"] if args.profile else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ})
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            return 1
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(res)
        name = {"none": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 AMP"}[amp]
        extra = f", peak CUDA {res['peak_cuda_mib']:.0f} MiB" if "peak_cuda_mib" in res else ""
        if res["teacher"]:
            name += ", targets cached" if res["teacher_cache"] else ", targets recomputed"
        print(f"{name:36s} {res['img_per_s']:7.1f} img/s  ({res['s_per_step']:.2f} s/step wall, "
              f"{res['cpu_s_per_step']:.2f} CPU-s/step, batch {res['batch']}, {res['threads']} threads)  "
              f"peak RSS {res['peak_rss_mib']:.0f} MiB{extra}")
        if "profile_share" in res:
            print("    step shares: " + ", ".join(f"{k.removeprefix('meer/')} {100 * v:.0f}%"
                                                  for k, v in res["profile_share"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
