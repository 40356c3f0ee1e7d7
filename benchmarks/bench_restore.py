"""End-to-end speed of meer-restore: photos/s and faces/s, fp32 vs bf16, where the time goes.

    python benchmarks/bench_restore.py [--photos 24] [--batch-size 8] [--device cpu]
                                       [--model-config configs/meer_112_cpu.yaml] [--precisions fp32 bf16] [--json OUT]

Speed does not depend on training, so the model is a randomly initialised MEER of the size given by
``--model-config`` (a YAML file whose ``model:`` section, or top level, is a ``MEERConfig``; default
``configs/meer_112_cpu.yaml`` when present, else ``MEERConfig()``), with its occlusion head forced to predict the
synthetic mask (so every face goes through restoration and paste-back, as with a trained model).
The photos are generated from ``examples/astronaut.png``: 512x512 single faces and 768x384 photos with
two faces, each with a synthetic mask drawn over the nose and mouth. Each precision first runs one
untimed warm-up batch; timings then cover detection, alignment, the model (restoration + the two
identity embeddings), paste-back, excluding file reading and writing (see ``meer-restore``'s
``summary.json`` for those).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from meer.config import from_dict  # noqa: E402
from meer.faces.detect import FaceDetector  # noqa: E402
from meer.inference.pipeline import Restorer  # noqa: E402
from meer.inference.runtime import resolve_device, resolve_dtype  # noqa: E402
from meer.models.meer import MEER, MEERConfig, count_parameters  # noqa: E402
from meer.utils.images import LoadedImage  # noqa: E402


def model_config(path: str | None) -> tuple[MEERConfig, str]:
    if path is None:
        default = REPO / "configs" / "meer_112_cpu.yaml"
        if not default.is_file():
            return MEERConfig(), "MEERConfig() defaults"
        path = str(default)
    data = yaml.safe_load(Path(path).read_text()) or {}
    section = data.get("model", data) if isinstance(data, dict) else {}
    return from_dict(MEERConfig, section, source=path), path


def masked_astronaut(size: int, seed: int) -> np.ndarray:
    """The bundled face with a flat mask-coloured polygon over nose, mouth and chin."""
    rng = np.random.default_rng(seed)
    img = Image.open(REPO / "examples" / "astronaut.png").convert("RGB").resize((size, size), Image.LANCZOS)
    arr = np.array(img)
    s = size / 512.0
    # nose-to-chin area of the astronaut photo (landmarks by hand, 512 px scale)
    poly = np.array([[180, 250], [330, 250], [345, 330], [300, 390], [210, 390], [170, 330]], np.float32) * s
    from matplotlib.path import Path as MplPath

    yy, xx = np.mgrid[0:size, 0:size]
    inside = MplPath(poly).contains_points(np.stack([xx.ravel(), yy.ravel()], 1)).reshape(size, size)
    colour = rng.integers(60, 240, size=3)
    arr[inside] = colour
    return arr


def make_photos(n: int) -> list[LoadedImage]:
    photos = []
    for i in range(n):
        if i % 2 == 0:
            rgb = masked_astronaut(512, i)
        else:
            rgb = np.concatenate([masked_astronaut(384, i), masked_astronaut(384, i + 1000)[:, ::-1]], axis=1)
        photos.append(LoadedImage(path=None, rgb=np.ascontiguousarray(rgb), rgb16=None, alpha=None, bit_depth=8,
                                  channels=3, mode="RGB"))
    return photos


def force_occlusion(model: MEER) -> None:
    """Make the random occlusion head predict the synthetic mask's area of the aligned crop."""
    size = model.cfg.image_size
    logits = torch.full((1, 1, size, size), -12.0)
    y0, y1 = int(size * 0.58), int(size * 0.95)
    x0, x1 = int(size * 0.2), int(size * 0.8)
    logits[..., y0:y1, x0:x1] = 12.0
    model.decoupling.occ_head.register_forward_hook(lambda mod, inp, out: logits.to(out).expand_as(out))


def run(restorer: Restorer, photos: list[LoadedImage], batch: int) -> dict:
    restorer.restore_images(photos[:batch])  # warm-up
    totals = {"detect": 0.0, "align": 0.0, "model": 0.0, "paste": 0.0}
    faces = restored = 0
    c0 = time.process_time()
    t0 = time.perf_counter()
    for i in range(0, len(photos), batch):
        for res in restorer.restore_images(photos[i:i + batch]):
            faces += len(res.faces)
            restored += len(res.restored_faces)
            for k, v in res.timings.items():
                totals[k] += v
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    return {"photos": len(photos), "faces": faces, "restored": restored, "seconds": round(wall, 3),
            "cpu_seconds_per_photo": round(cpu / len(photos), 3),
            "photos_per_s": round(len(photos) / wall, 3), "faces_per_s": round(faces / wall, 3),
            "share": {k: round(v / wall, 3) for k, v in totals.items()},
            "seconds_by_step": {k: round(v, 3) for k, v in totals.items()}}


def model_only(model: MEER, device: torch.device, dtype: torch.dtype, batch: int, reps: int = 5) -> dict:
    """faces/s and CPU seconds per face of the model alone (forward + embedding of the restored faces)."""
    from meer.inference.runtime import autocast

    x = torch.rand(batch, 3, model.cfg.image_size, model.cfg.image_size, device=device)
    with torch.inference_mode(), autocast(device, dtype):
        out = model(x)
        model.embed(out.restored.float())
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(reps):
            out = model(x)
            model.embed(out.restored.float())
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"faces_per_s": round(batch * reps / wall, 2), "cpu_seconds_per_face": round(cpu / (batch * reps), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model-config", default=None)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()

    torch.manual_seed(0)
    device = resolve_device(args.device)
    cfg, cfg_source = model_config(args.model_config)
    model = MEER(cfg).eval()
    force_occlusion(model)
    detector = FaceDetector(device=device)
    photos = make_photos(args.photos)
    results = {"machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
               "device": str(device), "torch": torch.__version__, "model_config": cfg_source,
               "parameters": count_parameters(model), "batch_size": args.batch_size,
               "load_before": [round(x, 2) for x in os.getloadavg()], "runs": {}}
    for prec in args.precisions:
        dtype = resolve_dtype(prec, device)
        restorer = Restorer(model, detector, device=device, dtype=dtype, batch_size=args.batch_size)
        r = run(restorer, photos, args.batch_size)
        r["model_only"] = model_only(model, device, dtype, args.batch_size)
        results["runs"][prec] = r

    print(f"meer-restore speed on {results['device']} ({results['machine']}), model {cfg_source} "
          f"({results['parameters'] / 1e6:.2f} M parameters), {args.photos} photos, batch {args.batch_size}")
    print(f"load average before: {results['load_before']} (other processes make wall-clock figures slower)")
    print("| precision | photos/s | faces/s | CPU s/photo | detection | alignment | model | paste-back | "
          "model alone: faces/s, CPU s/face |")
    print("|---|---|---|---|---|---|---|---|---|")
    for prec, r in results["runs"].items():
        s = r["share"]
        print(f"| {prec} | {r['photos_per_s']:.2f} | {r['faces_per_s']:.2f} | {r['cpu_seconds_per_photo']:.2f} | "
              f"{s['detect']:.0%} | {s['align']:.0%} | {s['model']:.0%} | {s['paste']:.0%} | "
              f"{r['model_only']['faces_per_s']:.1f}, {r['model_only']['cpu_seconds_per_face']:.3f} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
