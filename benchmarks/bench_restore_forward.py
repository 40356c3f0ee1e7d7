"""Restore-forward speed of the MEER model alone: faces/s of ``MEER.restore`` on aligned 112x112 faces.

    python benchmarks/bench_restore_forward.py [--model-config configs/meer_112_cpu.yaml] [--device cpu]
        [--batch-size 32] [--precisions fp32 bf16] [--seconds 20] [--threads 2] [--json OUT]

Only the network: occlusion prediction, binarise + dilate, generator, composite (no detection, alignment or
paste-back; ``benchmarks/bench_restore.py`` measures the whole ``meer-restore`` pipeline). Speed does not depend
on training, so the model is randomly initialised with the sizes of ``--model-config`` (a YAML file whose
``model:`` section, or top level, is a ``MEERConfig``; default ``configs/meer_112_cpu.yaml`` if present).
Inputs are the bundled face photo resized to 112 px with a synthetic lower-face mask. Each precision runs one
untimed warm-up batch, then timed batches until ``--seconds`` have passed (at least ``--min-batches``).
Precisions: ``fp32``; ``bf16`` (autocast, CPU or CUDA); ``fp16`` (autocast, CUDA only).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from meer.config import from_dict  # noqa: E402
from meer.models.meer import MEER, MEERConfig, count_parameters  # noqa: E402
from meer.utils.images import read_image  # noqa: E402

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def load_model_config(path: Path | None) -> MEERConfig:
    if path is None:
        default = REPO / "configs" / "meer_112_cpu.yaml"
        path = default if default.is_file() else None
    if path is None:
        return MEERConfig()
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    section = raw.get("model", raw)
    return from_dict(MEERConfig, section, source=str(path), prefix="model.")


def make_batch(batch_size: int, size: int, device: torch.device) -> torch.Tensor:
    rgb = torch.from_numpy(read_image(REPO / "examples" / "astronaut.png").rgb.copy()).permute(2, 0, 1).float() / 255
    face = F.interpolate(rgb[None, :, 20:400, 70:450], size=(size, size), mode="area")
    mask = torch.zeros(1, 1, size, size)
    mask[..., int(size * 0.55) : int(size * 0.95), int(size * 0.15) : int(size * 0.85)] = 1
    masked = face * (1 - mask) + mask * torch.tensor([0.35, 0.55, 0.85]).view(1, 3, 1, 1)
    return masked.expand(batch_size, -1, -1, -1).contiguous().to(device)


def time_precision(model: MEER, x: torch.Tensor, precision: str, seconds: float, min_batches: int) -> dict:
    device = x.device
    dtype = DTYPES[precision]
    if precision == "fp16" and device.type != "cuda":
        return {"precision": precision, "skipped": "fp16 autocast is CUDA only"}

    def run() -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            model.restore(x)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    run()  # warm-up (kernel selection, allocator)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    start = time.perf_counter()
    cpu_start = time.process_time()
    while len(times) < min_batches or time.perf_counter() - start < seconds:
        t = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - t)
    cpu_per_face = (time.process_time() - cpu_start) / (len(times) * x.shape[0])
    times.sort()
    median = times[len(times) // 2]
    result = {
        "precision": precision,
        "batches": len(times),
        "batch_size": x.shape[0],
        "median_batch_s": round(median, 4),
        "faces_per_s": round(x.shape[0] / median, 1),
        "ms_per_face": round(1000 * median / x.shape[0], 2),
        # CPU time of this process per face (all threads): less sensitive than wall time to other load
        "cpu_ms_per_face": round(1000 * cpu_per_face, 2),
    }
    if device.type == "cuda":
        result["peak_mem_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-config", type=Path, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=sorted(DTYPES))
    p.add_argument("--seconds", type=float, default=20.0, help="timed seconds per precision (at least --min-batches)")
    p.add_argument("--min-batches", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = load_model_config(args.model_config)
    torch.manual_seed(0)
    model = MEER(cfg).to(device).eval()
    x = make_batch(args.batch_size, cfg.image_size, device)
    info = {
        "model_config": str(args.model_config or "configs/meer_112_cpu.yaml"),
        "params_total": count_parameters(model),
        "params_generator": count_parameters(model.generator),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "torch": torch.__version__,
        "image_size": cfg.image_size,
        "results": [],
    }
    print(f"MEER restore forward: {info['params_total'] / 1e6:.2f} M parameters "
          f"({info['params_generator'] / 1e6:.2f} M generator), {device}, {info['threads']} threads, batch {args.batch_size}, "
          f"load average {info['load_average_1min']}")
    for precision in args.precisions:
        r = time_precision(model, x, precision, args.seconds, args.min_batches)
        info["results"].append(r)
        if "skipped" in r:
            print(f"  {precision:>4}: skipped ({r['skipped']})")
        else:
            mem = f", peak {r['peak_mem_mib']} MiB" if "peak_mem_mib" in r else ""
            print(f"  {precision:>4}: {r['faces_per_s']:8.1f} faces/s  ({r['ms_per_face']} ms/face wall, "
                  f"{r['cpu_ms_per_face']} ms/face CPU time, median of {r['batches']} batches{mem})")
    if args.json:
        args.json.write_text(json.dumps(info, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
