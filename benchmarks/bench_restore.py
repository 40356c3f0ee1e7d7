"""End-to-end speed of meer-restore: photos/s and faces/s, where the time goes.

    # meer-restore on a folder of LFW photos vs MTCNN alone and a Telea pipeline, same photos, same run
    python benchmarks/bench_restore.py folder [--photos 128] [--masks both|synthetic|none] [--input DIR]
                                              [--batch-size 8] [--threads N] [--io-threads 2 0] [--repeats 2]
                                              [--checkpoint PATH] [--json OUT]

    # fp32 vs bf16 on generated photos with a random model of a given size (the default mode)
    python benchmarks/bench_restore.py [precision] [--photos 24] [--batch-size 8] [--device cpu]
                                       [--model-config configs/meer_112_cpu.yaml] [--precisions fp32 bf16] [--json OUT]

``folder`` (see :func:`folder_main`) times, on the same photos in one run: ``meer-restore`` end to end with the
shipped checkpoint (decode, detection, alignment, model, paste-back, every output file written; what the command
prints as photos/s, model loading excluded), facenet-pytorch's MTCNN with its defaults on the decoded photos
(detection alone: no decoding, nothing written), and a Telea pipeline (decode, the same detector as meer-restore,
OpenCV's Telea inpainting of the lower face of every face found, the photo written), and prints the ratios of
photos/s. The photos: the first photo of each of the first ``--photos`` LFW identities (250 x 250 JPEGs), as they
are and with synthetic masks (``meer-mask --seed 0``, saved as JPEG quality 95). Each pipeline runs ``--repeats``
times, alternating, and the fastest run counts; meer-restore runs once per ``--io-threads`` value (2: decoding
ahead and writing behind in threads, the default; 0: one thread). For meer-restore it also prints the busy time of
each stage over the wall time and how many photos each detection pass and the dlib fallback saw; JSON with
``--json``. Busy cores (``load average`` is printed) make every figure slower: time on idle cores.

``precision`` (the rest of this docstring):

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
import inspect
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
# the meer package timed: this repository's, or another checkout's (before / after a change, same script, same
# machine): MEER_CHECKOUT=/path/to/checkout python benchmarks/bench_restore.py folder (its data and checkpoint
# are still this repository's)
CHECKOUT = Path(os.environ.get("MEER_CHECKOUT") or REPO).resolve()
sys.path.insert(0, str(CHECKOUT))

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


def precision_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="bench_restore.py precision", description=__doc__.split("\n\n")[0])
    ap.add_argument("--photos", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model-config", default=None)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)

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


# ---------------------------------------------------------------------------------------------------------- folder
# the lower face in ArcFace-112 crop pixels (nose to chin, cheek to cheek): what the Telea pipeline inpaints
TELEA_REGION_112 = np.array([[24, 62], [88, 62], [88, 108], [24, 108]], np.float64)


def shared_data() -> Path:
    env = os.environ.get("MEER_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def lfw_photos(n: int) -> list[Path]:
    """The first photo of each of the first ``n`` LFW identities (sorted): 250 x 250 JPEGs, one person each."""
    root = shared_data() / "faces" / "lfw"
    if not root.is_dir():
        sys.exit(f"LFW photos not found at {root} (set MEER_SHARED_DATA or pass --input)")
    picks = []
    for ident in sorted(p for p in root.iterdir() if p.is_dir()):
        first = sorted(ident.glob("*.jpg"))[:1]
        picks += first
        if len(picks) == n:
            break
    return picks


def make_folders(args: argparse.Namespace, work: Path) -> dict[str, Path]:
    """``{"as-is": folder, "synthetic masks": folder}`` of the benchmark photos (JPEG, quality 95 when masked)."""
    import shutil

    from meer.utils.images import read_image, write_image

    src = sorted(p for p in Path(args.input).rglob("*") if p.is_file()) if args.input else lfw_photos(args.photos)
    plain = work / "as_is"
    plain.mkdir(parents=True)
    for p in src[: args.photos]:
        shutil.copyfile(p, plain / p.name)
    folders = {}
    if args.masks in ("none", "both"):
        folders["as-is"] = plain
    if args.masks in ("synthetic", "both"):
        from meer.cli.mask import main as mask_main

        if mask_main([str(plain), str(work / "mask_out"), "--quiet", "--seed", "0"]) != 0:
            sys.exit("meer-mask failed on the benchmark photos")
        masked = work / "masked"
        masked.mkdir()
        for p in sorted((work / "mask_out" / "masked").rglob("*.png")):
            write_image(masked / (p.stem + ".jpg"), read_image(p).rgb, quality=95)
        folders["synthetic masks"] = masked
    return folders


def count_detection(detector) -> tuple[dict, Callable[[], None]]:
    """Instrument ``detector`` to count MTCNN passes (photos per pass) and fallback calls: (counters, undo)."""
    counts = {"passes": {}, "fallback_photos": 0, "fallback_found": 0}
    if not hasattr(detector, "_run_pass"):  # meer before the cascade's DetectionPass (timing an older checkout)
        mtcnn_batch = detector._mtcnn_batch

        def counted_batch(arrays, pad, min_face_size, thresholds, *rest, **kw):
            found = mtcnn_batch(arrays, pad, min_face_size, thresholds, *rest, **kw)
            c = counts["passes"].setdefault(f"pad {pad:g}, min face {min_face_size}, thresholds {tuple(thresholds)}",
                                            {"calls": 0, "photos": 0, "found": 0})
            c["calls"], c["photos"], c["found"] = c["calls"] + 1, c["photos"] + len(arrays), c["found"] + sum(map(bool, found))
            return found

        detector._mtcnn_batch = counted_batch
        return counts, lambda: detector.__dict__.pop("_mtcnn_batch", None)
    run_pass = detector._run_pass

    def counted(arrays, ps):
        found = run_pass(arrays, ps)
        key = (f"pass {detector.passes.index(ps) + 1} (pad {ps.pad:g}, min face {ps.min_face_size}"
               + (f", thresholds {ps.thresholds}" if ps.thresholds else "")
               + (f", upscale {ps.upscale:g}" if ps.upscale != 1 else "") + (", mirrored" if ps.mirrored else "") + ")")
        c = counts["passes"].setdefault(key, {"calls": 0, "photos": 0, "found": 0})
        c["calls"] += 1
        c["photos"] += len(arrays)
        c["found"] += sum(bool(d) for d in found)
        return found

    detector._run_pass = counted
    real = detector.fallback
    if real is not None:
        class Counted:
            name = getattr(real, "name", "fallback")

            def detect(self, rgb):
                dets = real.detect(rgb)
                counts["fallback_photos"] += 1
                counts["fallback_found"] += bool(dets)
                return dets

        detector.fallback = Counted()

    def undo() -> None:
        detector.__dict__.pop("_run_pass", None)
        detector.fallback = real

    return counts, undo


def time_mtcnn(arrays: list[np.ndarray], batch: int, device) -> float:
    """Seconds for facenet-pytorch's MTCNN with its defaults to detect faces in ``arrays`` (same-size batches)."""
    from facenet_pytorch import MTCNN

    mtcnn = MTCNN(device=device)
    groups: dict[tuple, list[np.ndarray]] = {}
    for a in arrays:
        groups.setdefault(a.shape, []).append(a)
    batches = [g[i:i + batch] for g in groups.values() for i in range(0, len(g), batch)]
    mtcnn.detect(batches[0])  # warm-up
    t0 = time.perf_counter()
    for b in batches:
        mtcnn.detect(b)
    return time.perf_counter() - t0


def telea_pipeline(files: list[Path], out: Path, detector, batch: int) -> tuple[float, int]:
    """Decode, detect (batches), inpaint the lower face of every face with Telea, write the photo: (seconds, faces)."""
    import cv2

    from meer.faces.align import invert, similarity_matrix, transform_points
    from meer.utils.images import read_image, write_image

    faces = 0
    t0 = time.perf_counter()
    for i in range(0, len(files), batch):
        chunk = files[i:i + batch]
        images = [read_image(p) for p in chunk]
        for path, image, dets in zip(chunk, images, detector.detect([im.rgb for im in images])):
            rgb = image.rgb.copy()
            h, w = rgb.shape[:2]
            for det in dets:
                poly = transform_points(TELEA_REGION_112, invert(similarity_matrix(det.landmarks)))
                x0, y0 = np.clip(np.floor(poly.min(0)) - 8, 0, [w, h]).astype(int)
                x1, y1 = np.clip(np.ceil(poly.max(0)) + 8, 0, [w, h]).astype(int)
                if x1 - x0 < 2 or y1 - y0 < 2:
                    continue
                mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
                cv2.fillConvexPoly(mask, np.round(poly - [x0, y0]).astype(np.int32), 255)
                rgb[y0:y1, x0:x1] = cv2.inpaint(np.ascontiguousarray(rgb[y0:y1, x0:x1]), mask, 3, cv2.INPAINT_TELEA)
                faces += 1
            write_image(out / path.name, image.to_native(rgb))
    return time.perf_counter() - t0, faces


def folder_run(name: str, folder: Path, work: Path, args: argparse.Namespace, restorer, info: dict) -> dict:
    import shutil

    from meer.inference.folder import restore_folder
    from meer.utils.images import read_image

    files = sorted(p for p in folder.iterdir() if p.is_file())
    arrays = [read_image(p).rgb for p in files]
    n = len(files)
    best: dict[str, dict] = {}
    for rep in range(args.repeats):
        # MTCNN alone
        secs = time_mtcnn(arrays, args.batch_size, restorer.device)
        if "mtcnn" not in best or secs < best["mtcnn"]["seconds"]:
            best["mtcnn"] = {"seconds": secs}
        # meer-restore end to end, once per I/O threading setting
        for io in args.io_threads:
            key = f"meer-restore io_threads={io}"
            out = work / f"out_{io}"
            shutil.rmtree(out, ignore_errors=True)
            counts, undo = count_detection(restorer.detector)
            threads = {"io_threads": io} if "io_threads" in inspect.signature(restore_folder).parameters else {}
            try:
                run = restore_folder(folder, out, restorer, progress=False, run_info=info, **threads)
            finally:
                undo()
            t = run.totals
            if key not in best or run.seconds < best[key]["seconds"]:
                best[key] = {"seconds": run.seconds, "faces": t["faces"], "restored": t["faces_restored"],
                             "photos_ok": t["photos_ok"], "timings": dict(run.timings), "detection": counts}
        # Telea pipeline
        out = work / "out_telea"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        secs, faces = telea_pipeline(files, out, restorer.detector, args.batch_size)
        if "telea" not in best or secs < best["telea"]["seconds"]:
            best["telea"] = {"seconds": secs, "faces": faces}
    for r in best.values():
        r["photos_per_s"] = round(n / r["seconds"], 2)
        r["seconds"] = round(r["seconds"], 3)
    for key, r in best.items():
        if key.startswith("meer-restore"):
            wall = r["seconds"]
            r["share_of_wall"] = {k: round(v / wall, 3) for k, v in r["timings"].items()}
            r["timings"] = {k: round(v, 3) for k, v in r["timings"].items()}
            r["ratio_to_mtcnn"] = round(r["photos_per_s"] / best["mtcnn"]["photos_per_s"], 3)
            r["ratio_to_telea"] = round(r["photos_per_s"] / best["telea"]["photos_per_s"], 3)
    best["telea"]["ratio_to_mtcnn"] = round(best["telea"]["photos_per_s"] / best["mtcnn"]["photos_per_s"], 3)
    return {"photos": n, "size": f"{arrays[0].shape[1]}x{arrays[0].shape[0]}" if arrays else "", "runs": best}


def folder_main(argv: list[str]) -> None:
    import tempfile

    ap = argparse.ArgumentParser(prog="bench_restore.py folder", description="meer-restore vs MTCNN alone vs Telea")
    ap.add_argument("--photos", type=int, default=128, help="LFW photos (first photo of the first N identities)")
    ap.add_argument("--input", help="a folder of photos instead of LFW")
    ap.add_argument("--masks", choices=["both", "synthetic", "none"], default="both",
                    help="run on the photos with synthetic masks (meer-mask, seed 0), as they are, or both")
    ap.add_argument("--batch-size", type=int, default=8, help="meer-restore --batch-size, MTCNN's and Telea's batch")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--io-threads", type=int, nargs="+", default=[2, 0],
                    help="meer-restore decode threads to time (0: decode, restore and write in one thread)")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each; the fastest counts")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--checkpoint", default=None, help="default: the shipped checkpoints/meer_112.pt")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from meer.inference.loading import load_restorer

    load_before = [round(x, 2) for x in os.getloadavg()]
    restorer, info = load_restorer(args.checkpoint, device=args.device, precision="auto", batch_size=args.batch_size)
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                          f"{torch.get_num_threads()} torch threads",
               "torch": torch.__version__, "checkpoint": info["checkpoint"], "device": info["device"],
               "precision": info["precision"], "batch_size": args.batch_size, "load_before": load_before,
               "meer": str(Path(sys.modules["meer"].__file__).resolve().parents[1]), "sets": {}}
    with tempfile.TemporaryDirectory(prefix="meer_bench_restore_") as tmp:
        work = Path(tmp)
        folders = make_folders(args, work)
        # warm-up: first calls build kernels and caches
        from meer.inference.folder import restore_folder

        warm = work / "warm"
        warm.mkdir()
        for p in sorted(next(iter(folders.values())).iterdir())[: args.batch_size]:
            (warm / p.name).write_bytes(p.read_bytes())
        restore_folder(warm, work / "warm_out", restorer, progress=False)
        for name, folder in folders.items():
            results["sets"][name] = folder_run(name, folder, work, args, restorer, info)
    results["load_after"] = [round(x, 2) for x in os.getloadavg()]

    print(f"meer-restore vs MTCNN alone vs Telea on {results['machine']}; checkpoint {info['checkpoint']} "
          f"({info['device']}, {info['precision']}), batch {args.batch_size}, best of {args.repeats}; "
          f"meer from {results['meer']}")
    print(f"load average before {load_before}, after {results['load_after']} (busy cores make every figure slower)")
    for name, res in results["sets"].items():
        runs = res["runs"]
        print(f"\n{name}: {res['photos']} photos of {res['size']}")
        print("| pipeline | photos/s | ratio to MTCNN alone | ratio to Telea | faces | restored |")
        print("|---|---|---|---|---|---|")
        print(f"| MTCNN alone (facenet-pytorch defaults, decoded photos, no output) | {runs['mtcnn']['photos_per_s']:.2f} "
              f"| 1 | | | |")
        print(f"| Telea (decode, meer's detector, inpaint lower face, write photo) | {runs['telea']['photos_per_s']:.2f} "
              f"| {runs['telea']['ratio_to_mtcnn']:.2f} | 1 | {runs['telea']['faces']} | |")
        for key, r in runs.items():
            if key.startswith("meer-restore"):
                print(f"| {key} (end to end, every output) | {r['photos_per_s']:.2f} | {r['ratio_to_mtcnn']:.2f} | "
                      f"{r['ratio_to_telea']:.2f} | {r['faces']} | {r['restored']} |")
        for key, r in runs.items():
            if key.startswith("meer-restore"):
                shares = ", ".join(f"{k} {v:.0%}" for k, v in r["share_of_wall"].items())
                print(f"{key}: busy time per stage as a share of the wall time: {shares} (read and write run in "
                      f"their own threads when io_threads > 0, so shares can add up to more than 100%)")
                det = r["detection"]
                passes = "; ".join(f"{k}: {v['photos']} photos in {v['calls']} calls, {v['found']} found"
                                   for k, v in det["passes"].items())
                print(f"  detection passes: {passes}; fallback: {det['fallback_photos']} photos, "
                      f"{det['fallback_found']} found")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nfigures: {args.json}")


def main() -> None:
    argv = sys.argv[1:]
    if argv and argv[0] == "folder":
        folder_main(argv[1:])
    else:
        precision_main(argv[1:] if argv and argv[0] == "precision" else argv)


if __name__ == "__main__":
    main()
