"""Face alignment benchmarks (not timed tests).

    # aligned faces/s of meer-align on this machine (CPU by default): a folder is aligned end to end
    python benchmarks/bench_align.py speed [--input DIR] [--images 64] [--device cpu]

    # detection rate of each detector lever on real masked photos (needs ../shared/data)
    python benchmarks/bench_align.py detection [--limit N] [--sheet OUT.png] [--json OUT.json]

``detection`` counts, for every image of ``real_masked/rwmfd`` (953 in-the-wild photos) and every
masked crop of ``real_masked_pairs/rmfrd`` (568 tight 160x160 crops), whether at least one face is
found, adding one lever at a time: MTCNN defaults, lower thresholds, a border, smaller minimum face
size (upsampling), and dlib's CNN detector as a fallback. As a false-positive proxy it also counts
RMFRD crops (one face each) with more than one detection.

Measured 2026-11-23 (2-core CPU, all images; photos with >= 1 face found, cumulative):

| detector | RMFRD masked (568) | RWMFD (953) | RMFRD > 1 face |
|---|---|---|---|
| MTCNN, facenet-pytorch thresholds (0.6, 0.7, 0.7) | 68.8% | 79.5% | 4 |
| MTCNN, thresholds (0.5, 0.6, 0.6) | 75.9% | 83.8% | 7 |
| + retry with a 20% border | 88.0% | 86.8% | 8 |
| + retry with border and min face 12 px | 90.3% | 89.1% | 8 |
| + retry with a 50% border | 91.5% | 90.1% | 8 |
| + retry: thresholds (0.3, 0.4, 0.5), 100% border | 95.1% | 92.9% | 8 |
| + dlib CNN fallback, ONet landmarks (meer default) | 95.1% | 93.0% | 8 |

A contact sheet of what the last MTCNN pass adds (46 photos) shows roughly 1 in 5 of those
detections wrong (part of a face at the wrong scale, a hand, clothing): about 0.6% of all photos.

These rows are the levers of the five-pass cascade as it was on 2026-11-23. meer's detector has two more passes
since (2x upscaled, and very low thresholds with a wide border, both confirmed on the mirrored photo) and dlib's
fallback without upsampling: ``python benchmarks/bench_detect.py`` measures the cascade meer ships (RWMFD 95.3%,
RMFRD masked 96.0%, false faces unchanged).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    env = os.environ.get("MEER_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


THRESH_DEFAULT = (0.6, 0.7, 0.7)  # facenet-pytorch's defaults
THRESH_LOW = (0.5, 0.6, 0.6)
# MTCNN passes in cascade order: name -> (thresholds, border fraction, min face size). "default" and
# "low" run on every image (the baselines); each later pass only on images still without a face.
PASSES = {
    "default": (THRESH_DEFAULT, 0.0, 20),
    "low": (THRESH_LOW, 0.0, 20),
    "low+pad0.2": (THRESH_LOW, 0.2, 20),
    "low+pad0.2+min12": (THRESH_LOW, 0.2, 12),
    "low+pad0.5": (THRESH_LOW, 0.5, 20),
    "vlow+pad1.0": ((0.3, 0.4, 0.5), 1.0, 20),
}
CASCADE = ["low", "low+pad0.2", "low+pad0.2+min12", "low+pad0.5", "vlow+pad1.0"]  # DEFAULT_PASSES of 2026-11-23
ROWS = [  # (label, passes, dlib fallback on what is still missed)
    ("MTCNN, facenet-pytorch thresholds (0.6, 0.7, 0.7)", ["default"], False),
    ("MTCNN, thresholds (0.5, 0.6, 0.6)", ["low"], False),
    ("+ retry with a 20% border", CASCADE[:2], False),
    ("+ retry with border and min face 12 px (upsampled)", CASCADE[:3], False),
    ("+ retry with a 50% border", CASCADE[:4], False),
    ("+ retry: thresholds (0.3, 0.4, 0.5), 100% border", CASCADE[:5], False),
    ("+ dlib CNN fallback, ONet landmarks (meer default on 2026-11-23)", CASCADE[:5], True),
]


def detection(args: argparse.Namespace) -> None:
    """Record per image how many faces each pass finds (passes after "low" only where the cascade
    still has none, then dlib), appending to a JSONL so an interrupted run resumes; then print the
    cumulative table. Found = at least one face; RMFRD crops hold one face, so > 1 flags extras."""
    import torch
    from tqdm import tqdm

    from meer.faces.detect import FaceDetector
    from meer.utils.images import read_image

    torch.set_num_threads(max(1, args.threads))
    root = shared_data()
    if not root.is_dir():
        sys.exit(f"shared data not found at {root} (set MEER_SHARED_DATA)")
    sets = {
        "rmfrd_masked": sorted((root / "real_masked_pairs" / "rmfrd").glob("*/masked/*")),
        "rwmfd": sorted((root / "real_masked" / "rwmfd").glob("*/*")),
    }
    if args.limit:
        sets = {k: v[:: max(1, len(v) // args.limit)][: args.limit] for k, v in sets.items()}
    dets = {name: FaceDetector(thresholds=th, passes=[(pad, mfs)], fallback=None)
            for name, (th, pad, mfs) in PASSES.items()}
    fb = FaceDetector(fallback="dlib", fallback_upsample=args.dlib_upsample).fallback
    out = Path(args.records)
    done = {}
    if out.is_file():
        for line in out.read_text().splitlines():
            rec = json.loads(line)
            done[rec["path"]] = rec
    sheet_items = []
    with out.open("a") as fh:
        for set_name, files in sets.items():
            for f in tqdm(files, desc=set_name, unit="img"):
                if str(f) in done and not args.sheet:
                    rec = done[str(f)]
                    if not any(rec["n"].get(p) for p in CASCADE) and any(p not in rec["n"] for p in CASCADE):
                        rgb = read_image(f).rgb  # a pass added since this record was written
                        for name in CASCADE:
                            if name not in rec["n"] and not any(rec["n"].get(p) for p in CASCADE):
                                rec["n"][name] = len(dets[name].detect_one(rgb))
                        if not any(rec["n"].get(p) for p in CASCADE) and "dlib" not in rec["n"] and fb is not None:
                            rec["n"]["dlib"] = len(fb.detect(rgb))
                        fh.write(json.dumps(rec) + "\n")
                        fh.flush()
                    continue
                try:
                    rgb = read_image(f).rgb
                except Exception:
                    continue
                if str(f) in done:  # only redo the final detection for the contact sheet
                    rec = done[str(f)]
                    final = []
                    for name in CASCADE:
                        if rec["n"].get(name):
                            final = dets[name].detect_one(rgb)
                            break
                    if not final and rec["n"].get("dlib"):
                        final = fb.detect(rgb)
                    sheet_items.append((set_name, f, rgb, final))
                    continue
                n, final = {}, []
                for name in ["default"] + CASCADE:
                    if name in ("default", "low") or not final:
                        found = dets[name].detect_one(rgb)
                        n[name] = len(found)
                        if name != "default" and not final:
                            final = found
                if not final and fb is not None:
                    final = fb.detect(rgb)
                    n["dlib"] = len(final)
                rec = {"set": set_name, "path": str(f), "n": n}
                done[str(f)] = rec
                fh.write(json.dumps(rec) + "\n")
                fh.flush()
                sheet_items.append((set_name, f, rgb, final))
    records = {s: [done[str(f)] for f in files if str(f) in done] for s, files in sets.items()}
    print(table_markdown(records))
    if args.sheet:
        contact_sheet(sheet_items, Path(args.sheet), args.sheet_count, seed=0)


def table_markdown(records: dict[str, list[dict]]) -> str:
    lines = ["| detector (cumulative) | " + " | ".join(f"{s} ({len(r)} images)" for s, r in records.items())
             + " | RMFRD crops with > 1 face |", "|---|" + "---|" * (len(records) + 1)]
    for label, passes, use_dlib in ROWS:
        cells, multi = [], 0
        for s, recs in records.items():
            hit = 0
            for r in recs:
                n = next((r["n"].get(p, 0) for p in passes if r["n"].get(p, 0)), 0)
                if not n and use_dlib:
                    n = r["n"].get("dlib", 0)
                hit += n > 0
                multi += s == "rmfrd_masked" and n > 1
            cells.append(f"{100 * hit / max(len(recs), 1):.1f}% ({hit})")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {multi} |")
    return "\n".join(lines)


def contact_sheet(items, path: Path, count: int, seed: int = 0, tile: int = 160) -> None:
    """Random detections drawn on their photos (green MTCNN, orange dlib fallback), misses in red."""
    import cv2

    rng = np.random.default_rng(seed)
    pick = rng.choice(len(items), size=min(count, len(items)), replace=False)
    cols = 10
    rows = (len(pick) + cols - 1) // cols
    sheet = np.full((rows * tile, cols * tile, 3), 255, np.uint8)
    for k, i in enumerate(pick):
        _, _, rgb, dets = items[i]
        img = rgb.copy()
        for d in dets:
            colour = (0, 200, 0) if d.detector == "mtcnn" else (255, 140, 0)
            x1, y1, x2, y2 = (int(round(v)) for v in d.box)
            cv2.rectangle(img, (x1, y1), (x2, y2), colour, 2)
            for x, y in d.landmarks:
                cv2.circle(img, (int(round(x)), int(round(y))), 2, (255, 0, 0), -1)
        if not dets:
            cv2.rectangle(img, (0, 0), (img.shape[1] - 1, img.shape[0] - 1), (255, 0, 0), 6)
        s = tile / max(img.shape[:2])
        img = cv2.resize(img, (max(1, int(img.shape[1] * s)), max(1, int(img.shape[0] * s))), interpolation=cv2.INTER_AREA)
        r, c = divmod(k, cols)
        sheet[r * tile:r * tile + img.shape[0], c * tile:c * tile + img.shape[1]] = img
    from PIL import Image

    Image.fromarray(sheet).save(path)
    print(f"contact sheet: {path}")


def speed(args: argparse.Namespace) -> None:
    """Time ``meer-align`` end to end (decode, detect, align, encode, write) on a folder."""
    work = Path(tempfile.mkdtemp(prefix="meer_bench_align_"))
    try:
        if args.input:
            src = Path(args.input)
        else:  # the bundled face photo, repeated under different names
            from meer.utils.images import read_image, write_image

            src = work / "raw"
            rgb = read_image(REPO / "examples" / "astronaut.png").rgb
            for i in range(args.images):
                write_image(src / f"{i // 16:02d}" / f"img_{i:04d}.jpg", np.roll(rgb, i, axis=1))
        out = work / "aligned"
        cmd = [sys.executable, "-m", "meer.cli.align", str(src), str(out), "--device", args.device,
               "--batch-size", str(args.batch_size)]
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
        import resource

        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        crops = sum(1 for _ in out.rglob("*.jpg")) if out.is_dir() else 0
        print(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-2000:])
        print(f"{crops} aligned faces in {wall:.1f} s wall including start-up = {crops / wall:.2f} faces/s; "
              f"{cpu:.1f} CPU-s = {crops / max(cpu, 1e-9):.2f} faces per CPU-second "
              f"[device={args.device}, threads={args.threads}]")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("speed")
    sp.add_argument("--input", help="folder to align (default: generated copies of examples/astronaut.png)")
    sp.add_argument("--images", type=int, default=64)
    sp.add_argument("--device", default="cpu")
    sp.add_argument("--batch-size", type=int, default=16)
    sp.add_argument("--threads", type=int, default=1)
    sp.set_defaults(func=speed)
    dp = sub.add_parser("detection")
    dp.add_argument("--limit", type=int, default=0, help="images per set (0 = all)")
    dp.add_argument("--dlib-upsample", type=int, default=1)
    dp.add_argument("--threads", type=int, default=1)
    dp.add_argument("--records", default=str(REPO / "cache" / "detection_records.jsonl"),
                    help="per-image results (appended; a rerun resumes and only prints the table)")
    dp.add_argument("--sheet", help="save a contact sheet PNG of random final detections")
    dp.add_argument("--sheet-count", type=int, default=60)
    dp.set_defaults(func=detection)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
