"""Synthetic masking benchmarks (not timed tests).

    # masked faces/s of the batched op (MaskAugment) and of the per-image API (apply_mask) on CPU
    python benchmarks/bench_masking.py speed [--sizes 112 224] [--batch 64] [--threads 1 2] [--repeats 3] [--json OUT]

    # coverage rules on real photos (needs ../shared/data): LFW training identities, MTCNN landmarks as
    # the reference, masks placed from 5 points and from dlib's 68 points
    python benchmarks/bench_masking.py rules [--photos 120] [--json OUT]

    # contact sheet: masked astronaut crops (kinds x coverages x textures), exact GT mask inset
    python benchmarks/bench_masking.py sheet [--out /tmp/meer_mask_sheet.png] [--seed 0] [--size 160]
        [--texture-dir ../shared/data/mask_templates/textures] [--template-dir ../shared/data/mask_templates]

``speed`` times ``MaskAugment`` on random batches of aligned-crop size (landmarks = the ArcFace template
scaled to the crop) after one untimed warm-up batch, for every kind mix the op draws by default; and
``apply_mask`` on the bundled 512x512 photo (one face per call, only the face region is rendered).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from meer.faces.template import ARCFACE_112  # noqa: E402
from meer.masking import COVERAGES, KINDS, MaskAugment, MaskSpec, apply_mask  # noqa: E402
from meer.utils.images import read_image, write_image  # noqa: E402

# MTCNN's landmarks for examples/astronaut.png
ASTRONAUT_5 = np.array([[205.01, 101.73], [246.76, 103.71], [224.67, 128.97], [201.72, 139.25], [245.27, 141.86]])


def speed(args: argparse.Namespace) -> None:
    results = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for size in args.sizes:
            op = MaskAugment()
            x = torch.rand(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0))
            g = torch.Generator().manual_seed(1)
            op(x, None, generator=g)  # warm-up
            t0 = time.perf_counter()
            for _ in range(args.repeats):
                op(x, None, generator=g)
            dt = (time.perf_counter() - t0) / args.repeats
            row = {"what": "MaskAugment", "threads": threads, "size": size, "batch": args.batch,
                   "faces_per_s": round(args.batch / dt, 1), "ms_per_batch": round(dt * 1000, 1)}
            results.append(row)
            print(json.dumps(row))
        photo = read_image(REPO / "examples" / "astronaut.png").rgb
        apply_mask(photo, ASTRONAUT_5, 0)
        n = max(8, args.repeats * 8)
        t0 = time.perf_counter()
        for s in range(n):
            apply_mask(photo, ASTRONAUT_5, s)
        dt = (time.perf_counter() - t0) / n
        row = {"what": "apply_mask 512x512 photo", "threads": threads, "faces_per_s": round(1 / dt, 1),
               "ms_per_face": round(dt * 1000, 1)}
        results.append(row)
        print(json.dumps(row))
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                               "cpus": torch.get_num_threads(), "results": results}, indent=1))


def rules(args: argparse.Namespace) -> None:
    """Share of masks on real photos that keep the coverage rules, checked at MTCNN's 5 points: eye
    discs (radius 0.1 IOD) never covered; over_nose covers nose tip and mouth corners; below_nose covers
    the mouth corners and not the nose tip; chin_only does not cover the nose tip."""
    import os

    from meer.faces.detect import FaceDetector
    from meer.masking import sample_spec
    from meer.masking.landmarks68 import Landmarks68, find_predictor

    root = Path(os.environ.get("MEER_SHARED_DATA", REPO.parent / "shared" / "data"))
    if not (root / "faces" / "lfw").is_dir():
        sys.exit(f"LFW not found under {root} (set MEER_SHARED_DATA)")
    held_out = set((root / "splits" / "lfw_eval_identities.txt").read_text().split())
    files = [p for p in sorted((root / "faces" / "lfw").glob("*/*.jpg")) if p.parent.name not in held_out]
    files = files[3::37][: args.photos]
    detector = FaceDetector(fallback=None)
    p68 = Landmarks68() if find_predictor() is not None else None
    stats: dict[str, dict[str, int]] = {}
    for i, path in enumerate(files):
        im = read_image(path).rgb
        dets = [d for d in detector.detect([im])[0] if d.score >= 0.9]
        if not dets:
            continue
        d = max(dets, key=lambda x: x.area)
        five = d.landmarks.astype(np.float64)
        modes = [("5", five)] + ([("68", p68.predict(im, d.box).astype(np.float64))] if p68 else [])
        yy, xx = np.mgrid[: im.shape[0], : im.shape[1]]
        r2 = (0.1 * np.linalg.norm(five[1] - five[0])) ** 2
        for mode, lm in modes:
            for cov in COVERAGES:
                m = apply_mask(im, lm, sample_spec(i * 7 + COVERAGES.index(cov), coverages=[cov])).mask

                def covered(p: np.ndarray) -> bool:
                    x, y = int(round(p[0])), int(round(p[1]))
                    return 0 <= y < m.shape[0] and 0 <= x < m.shape[1] and bool(m[y, x])

                eyes = all(not m[(xx - e[0]) ** 2 + (yy - e[1]) ** 2 <= r2].any() for e in five[:2])
                nose, mouth = covered(five[2]), covered(five[3]) and covered(five[4])
                ok = {"over_nose": nose and mouth, "below_nose": mouth and not nose, "chin_only": not nose}[cov]
                s = stats.setdefault(f"{mode} points / {cov}", {"masks": 0, "eyes_clear": 0, "rule_kept": 0})
                s["masks"] += 1
                s["eyes_clear"] += int(eyes)
                s["rule_kept"] += int(ok)
    for key, s in stats.items():
        print(f"{key:28s} {s['masks']:4d} masks  eyes clear {s['eyes_clear']:4d}  rule kept {s['rule_kept']:4d}")
    if args.json:
        Path(args.json).write_text(json.dumps(stats, indent=1))


def _aligned_astronaut(size: int) -> np.ndarray:
    import cv2

    photo = read_image(REPO / "examples" / "astronaut.png").rgb
    m, _ = cv2.estimateAffinePartial2D(ASTRONAUT_5.astype(np.float32), ARCFACE_112 * (size / 112.0))
    return cv2.warpAffine(photo, m, (size, size), flags=cv2.INTER_AREA)


def sheet(args: argparse.Namespace) -> None:
    """Rows: kinds (plus templates when given); columns: coverages x (plain, textured)."""
    import cv2

    crop = _aligned_astronaut(args.size)
    lm = ARCFACE_112 * (args.size / 112.0)
    textures = ["none", "stripes", "checks", "dots", "floral"]
    images = []
    if args.texture_dir:
        from meer.utils.files import iter_images

        images = [f"image:{p}" for p in list(iter_images(args.texture_dir))[:12]]
    library = None
    kinds = list(KINDS)
    if args.template_dir:
        from meer.masking import TemplateLibrary

        library = TemplateLibrary(args.template_dir)
        kinds += [f"template:{n}" for n in ("surgical", "KN95", "N95", "cloth")]
    rng = np.random.default_rng(args.seed)
    rows = []
    for r, kind in enumerate(kinds):
        tiles = []
        for c, coverage in enumerate(COVERAGES):
            for textured in (False, True):
                tex = "none"
                if textured and not kind.startswith("template:"):
                    pool = textures[1:] + images
                    tex = pool[int(rng.integers(len(pool)))]
                seed = int(rng.integers(2**31 - 1))
                base = MaskSpec(kind=kind, coverage=coverage, seed=seed)
                from meer.masking import sample_spec

                drawn = sample_spec(seed, kinds=[kind] if kind in KINDS else None)
                spec = MaskSpec(kind=kind, coverage=coverage, color=drawn.color, texture=tex,
                                texture_color=drawn.texture_color, scale=drawn.scale, shift=drawn.shift,
                                tilt=drawn.tilt, seed=base.seed)
                face = apply_mask(crop, lm, spec, templates=library)
                tile = np.ascontiguousarray(face.image)
                label = f"{kind.replace('template:', 'T:')[:10]} {coverage[:6]} {tex.split('/')[-1][:10]}"
                cv2.putText(tile, label, (2, 10), cv2.FONT_HERSHEY_SIMPLEX, 0.3, (255, 255, 0), 1, cv2.LINE_AA)
                # the exact GT mask as an inset in the bottom-right corner
                inset = args.size // 3
                small = cv2.resize((face.mask * 255).astype(np.uint8), (inset, inset), interpolation=cv2.INTER_AREA)
                tile[-inset:, -inset:] = np.repeat(small[..., None], 3, axis=-1)
                tile[-inset - 1, -inset - 1:] = 255
                tile[-inset - 1:, -inset - 1] = 255
                tiles.append(tile)
        rows.append(np.concatenate(tiles, axis=1))
    out = np.concatenate(rows, axis=0)
    path = write_image(args.out, out, overwrite=True)
    print(f"wrote {path} ({out.shape[1]}x{out.shape[0]})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sp = sub.add_parser("speed")
    sp.add_argument("--sizes", type=int, nargs="+", default=[112, 224])
    sp.add_argument("--batch", type=int, default=64)
    sp.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    sp.add_argument("--repeats", type=int, default=3)
    sp.add_argument("--json", default=None)
    ru = sub.add_parser("rules")
    ru.add_argument("--photos", type=int, default=120)
    ru.add_argument("--json", default=None)
    sh = sub.add_parser("sheet")
    sh.add_argument("--out", default="/tmp/meer_mask_sheet.png")
    sh.add_argument("--seed", type=int, default=0)
    sh.add_argument("--size", type=int, default=160)
    sh.add_argument("--texture-dir", default=None)
    sh.add_argument("--template-dir", default=None)
    args = ap.parse_args()
    {"speed": speed, "rules": rules, "sheet": sheet}[args.cmd](args)


if __name__ == "__main__":
    main()
