"""Face detection on real photos: how often a face is found, and how many found faces are not the face that is there.

    python benchmarks/bench_detect.py [--cascade default|previous] [--sets rwmfd rmfrd lfw] [--limit N]
                                      [--records OUT.jsonl] [--json OUT.json]
    python benchmarks/bench_detect.py --compare BEFORE.jsonl AFTER.jsonl [--sheet NEW.png]

Runs :class:`meer.faces.detect.FaceDetector` as ``meer-restore`` and ``meer-align`` build it (MTCNN cascade, dlib's CNN
detector on what it misses), one photo at a time, on (``../shared/data``):

* ``rwmfd``: the 953 in-the-wild masked photos of ``real_masked/rwmfd`` (crowds and close-ups, no face labels).
  **Detection rate** = photos with at least one face found: the measure of ``benchmarks/bench_align.py detection``
  (its last row, 93.0 % for the five-pass cascade + dlib).
* ``rmfrd``: the 568 masked crops of ``real_masked_pairs/rmfrd``, one person each. Detection rate, and **false
  faces** = detections beyond the one expected (sum over crops of ``max(0, n - 1)``; also crops with more than one).
* ``lfw``: the first photo of every identity of ``faces/lfw`` (423; 250 x 250, the labelled person in the middle).
  Detection rate, and **false faces** = detections whose box does not contain the photo's centre, i.e. not the
  labelled person (real bystanders count too, so the figure is an upper bound; what matters is before vs after).

``--cascade previous`` runs the cascade as it was before the mirrored passes (its first five passes + dlib with the
photo upsampled once); ``--keep-nested`` keeps detections nested in a better one (``max_overlap=None``, as before
2026-12-03). Measured 2026-12-03 (2-core CPU): dropping them took LFW's false faces from 104 to 98 and RMFRD's from
8 to 5, detection rates unchanged (RWMFD 95.3 %, RMFRD 96.0 %, LFW 100 %); on RWMFD 9 of 1,508 detections go, each
checked by eye: duplicates of a face, an ear, part of a mask (a first rule that also dropped a larger box for a
smaller one lost a face close to the camera).
``--records`` keeps every photo's detections (boxes, scores, which pass found them); ``--compare`` lists the photos
whose outcome differs between two record files and, with ``--sheet``, draws the detections that only the second
found (crops, for checking by eye whether they are faces: RWMFD has no labels).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def shared_data() -> Path:
    env = os.environ.get("MEER_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


def photo_sets(names: list[str], limit: int) -> dict[str, list[Path]]:
    root = shared_data()
    if not root.is_dir():
        sys.exit(f"shared data not found at {root} (set MEER_SHARED_DATA)")
    sets = {}
    if "rwmfd" in names:
        sets["rwmfd"] = sorted((root / "real_masked" / "rwmfd").glob("*/*"))
    if "rmfrd" in names:
        sets["rmfrd"] = sorted((root / "real_masked_pairs" / "rmfrd").glob("*/masked/*"))
    if "lfw" in names:
        sets["lfw"] = [first for d in sorted((root / "faces" / "lfw").iterdir()) if d.is_dir()
                       for first in sorted(d.glob("*.jpg"))[:1]]
    if limit:
        sets = {k: v[:: max(1, len(v) // limit)][:limit] for k, v in sets.items()}
    return sets


def build_detector(cascade: str, keep_nested: bool = False):
    from meer.faces.detect import DEFAULT_PASSES, FaceDetector

    extra = {"max_overlap": None} if keep_nested else {}
    if cascade == "default":
        return FaceDetector("cpu", **extra)
    # as it was: the five passes without the mirror check, dlib upsampling the photo once
    return FaceDetector("cpu", passes=[p for p in DEFAULT_PASSES if not p.mirrored], fallback_upsample=1, **extra)


def which_pass(detector) -> dict:
    """Instrument ``detector`` so that ``state["by"]`` names what found the faces of the last photo."""
    state = {"by": None}
    run_pass = detector._run_pass

    def counted(arrays, ps):
        found = run_pass(arrays, ps)
        if found[0]:
            state["by"] = (f"pass {detector.passes.index(ps) + 1}: pad {ps.pad:g}, min face {ps.min_face_size}"
                           + (f", thresholds {ps.thresholds}" if ps.thresholds else "")
                           + (f", upscale {ps.upscale:g}" if ps.upscale != 1 else "")
                           + (", mirrored" if ps.mirrored else ""))
        return found

    detector._run_pass = counted
    if detector.fallback is not None:
        real = detector.fallback

        class Named:
            def detect(self, rgb):
                dets = real.detect(rgb)
                if dets:
                    state["by"] = "dlib CNN fallback"
                return dets

        detector.fallback = Named()
    return state


def run(args: argparse.Namespace) -> None:
    import torch
    from tqdm import tqdm

    from meer.utils.images import read_image

    torch.set_num_threads(max(1, args.threads))
    detector = build_detector(args.cascade, args.keep_nested)
    state = which_pass(detector)
    sets = photo_sets(args.sets, args.limit)
    records = []
    t0 = time.process_time()
    for name, files in sets.items():
        for path in tqdm(files, desc=name, unit="photo", disable=args.quiet):
            try:
                rgb = read_image(path).rgb
            except Exception as exc:  # noqa: BLE001 - a broken file is listed, not fatal
                records.append({"set": name, "path": str(path), "error": str(exc)})
                continue
            state["by"] = None
            dets = detector.detect_one(rgb)
            records.append({"set": name, "path": str(path), "size": [rgb.shape[1], rgb.shape[0]], "by": state["by"],
                            "faces": [{"box": [round(float(v), 1) for v in d.box], "score": round(float(d.score), 4),
                                       "detector": d.detector} for d in dets]})
    cpu = time.process_time() - t0
    if args.records:
        Path(args.records).write_text("".join(json.dumps(r) + "\n" for r in records))
    summary = summarise(records)
    summary.update({"cascade": args.cascade, "cpu_seconds": round(cpu, 1), "threads": args.threads})
    print_summary(summary)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")


def contains_centre(box: list[float], size: list[int]) -> bool:
    cx, cy = size[0] / 2, size[1] / 2
    return box[0] <= cx <= box[2] and box[1] <= cy <= box[3]


def summarise(records: list[dict]) -> dict:
    out: dict = {"sets": {}}
    for name in dict.fromkeys(r["set"] for r in records):
        recs = [r for r in records if r["set"] == name and "faces" in r]
        n = len(recs)
        found = sum(bool(r["faces"]) for r in recs)
        s = {"photos": n, "unreadable": sum(r["set"] == name and "faces" not in r for r in records),
             "found": found, "rate": round(100 * found / max(n, 1), 2),
             "faces": sum(len(r["faces"]) for r in recs), "by": {}}
        for r in recs:
            if r["faces"]:
                s["by"][r["by"]] = s["by"].get(r["by"], 0) + 1
        if name == "rmfrd":
            s["false_faces_beyond_one"] = sum(max(0, len(r["faces"]) - 1) for r in recs)
            s["crops_with_more_than_one"] = sum(len(r["faces"]) > 1 for r in recs)
        if name == "lfw":
            s["false_faces_off_centre"] = sum(not contains_centre(f["box"], r["size"]) for r in recs
                                              for f in r["faces"])
            s["photos_with_centre_face"] = sum(any(contains_centre(f["box"], r["size"]) for f in r["faces"])
                                               for r in recs)
        out["sets"][name] = s
    return out


def print_summary(summary: dict) -> None:
    print(f"cascade: {summary.get('cascade')}; {summary.get('cpu_seconds')} CPU-s")
    print("| set | photos | with a face found | faces found | false faces |")
    print("|---|---|---|---|---|")
    for name, s in summary["sets"].items():
        false = ""
        if "false_faces_beyond_one" in s:
            false = f"{s['false_faces_beyond_one']} beyond one per crop ({s['crops_with_more_than_one']} crops)"
        if "false_faces_off_centre" in s:
            false = f"{s['false_faces_off_centre']} off the centre person"
        print(f"| {name} | {s['photos']} | {s['rate']:.1f}% ({s['found']}) | {s['faces']} | {false} |")
    for name, s in summary["sets"].items():
        print(f"{name}, found by: " + "; ".join(f"{k}: {v}" for k, v in sorted(s["by"].items(), key=str)))


def compare(before: Path, after: Path, sheet: str | None) -> None:
    a = {r["path"]: r for r in map(json.loads, before.read_text().splitlines())}
    b = {r["path"]: r for r in map(json.loads, after.read_text().splitlines())}
    gained = [p for p in b if b[p].get("faces") and not a.get(p, {}).get("faces")]
    lost = [p for p in b if a.get(p, {}).get("faces") and not b[p].get("faces")]
    changed = [p for p in b if p not in gained and p not in lost and a.get(p, {}).get("faces") != b[p].get("faces")]
    print(f"photos with a face only after: {len(gained)}; only before: {len(lost)}; other detections differ: "
          f"{len(changed)}")
    for p in lost + changed:
        print(("lost " if p in lost else "changed ") + p)
    if sheet:
        crops_sheet([(p, b[p]["faces"]) for p in gained], Path(sheet))


def crops_sheet(items: list[tuple[str, list[dict]]], path: Path, tile: int = 96) -> None:
    """Every detection of ``items`` cut out with some context, labelled ``photo.face score``."""
    import cv2
    from PIL import Image

    tiles = []
    for k, (p, faces) in enumerate(items):
        img = np.asarray(Image.open(p).convert("RGB"))
        for j, f in enumerate(faces):
            x1, y1, x2, y2 = f["box"]
            cx, cy, side = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1) * 1.6
            xa, ya = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
            xb, yb = int(min(img.shape[1], cx + side / 2)), int(min(img.shape[0], cy + side / 2))
            crop = img[ya:yb, xa:xb] if xb > xa and yb > ya else np.zeros((8, 8, 3), np.uint8)
            t = cv2.copyMakeBorder(cv2.resize(crop, (tile, tile), interpolation=cv2.INTER_CUBIC), 14, 2, 2, 2,
                                   cv2.BORDER_CONSTANT, value=(255, 255, 255))
            cv2.putText(t, f"{k}.{j} {f['score']:.2f}", (2, 11), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1)
            tiles.append(t)
    if not tiles:
        print("no new detections to draw")
        return
    cols = 10
    h, w = tiles[0].shape[:2]
    out = np.full((((len(tiles) + cols - 1) // cols) * h, cols * w, 3), 255, np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, cols)
        out[r * h:(r + 1) * h, c * w:(c + 1) * w] = t
    Image.fromarray(out).save(path)
    print(f"{len(tiles)} new detections drawn: {path} (photo index in the 'only after' list . face index)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cascade", choices=["default", "previous"], default="default")
    ap.add_argument("--keep-nested", action="store_true",
                    help="keep detections nested in a better one (FaceDetector max_overlap=None: as before 2026-12-03)")
    ap.add_argument("--sets", nargs="+", choices=["rwmfd", "rmfrd", "lfw"], default=["rwmfd", "rmfrd", "lfw"])
    ap.add_argument("--limit", type=int, default=0, help="photos per set, evenly spaced (0 = all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--records", help="write every photo's detections here (JSONL)")
    ap.add_argument("--json", help="write the summary here")
    ap.add_argument("--compare", nargs=2, metavar=("BEFORE", "AFTER"), help="compare two --records files")
    ap.add_argument("--sheet", help="with --compare: crops of the detections only AFTER has, as a PNG")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args()
    if args.compare:
        compare(Path(args.compare[0]), Path(args.compare[1]), args.sheet)
    else:
        run(args)


if __name__ == "__main__":
    main()
