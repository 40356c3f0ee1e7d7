"""Unmasked photos with something else near the face (a hand, a microphone, a glass): does meer-restore leave them?

    python benchmarks/occluders.py [--checkpoint checkpoints/meer_112.pt] [--out checkpoints/figures] [--top 6]

Every photo of the LFW evaluation-only identities (never trained on, none wears a mask) goes through the
restorer as ``meer-restore`` runs it. Per photo: whether any face was restored, and the share of the face box's
pixels changed by more than 8 levels. A restorer that only removes masks changes nothing here; the photos it
does change are where its occlusion head mistook something for a mask, which is where hands, microphones and
other objects near the lower face show up. Writes ``occluders.json`` (the distribution and the worst photos by
name) and ``occluders.jpg``: the ``--top`` most changed photos as input | changed pixels in red | output, cropped
around the face, with the upper face (eyes and brows) pixelated: dataset photos are never shown unmasked.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from meer.data.splits import read_identity_list  # noqa: E402
from meer.inference.loading import load_restorer  # noqa: E402
from meer.inference.visuals import pixelate  # noqa: E402
from meer.utils.images import read_image  # noqa: E402

CHANGED = 8  # levels, as benchmarks/user_view.py


def scan(restorer, lfw: Path, ids: list[str]) -> list[dict]:
    rows = []
    for name in ids:
        for path in sorted((lfw / name).glob("*.jpg")):
            img = read_image(path)
            res = restorer.restore_image(img)
            if not res.faces:
                rows.append({"photo": f"{name}/{path.name}", "faces": 0, "restored": 0, "share_changed": 0.0})
                continue
            diff = np.abs(res.rgb.astype(np.int16) - img.rgb.astype(np.int16)).max(axis=-1) > CHANGED
            x1, y1, x2, y2 = (int(round(v)) for v in res.faces[0].box)
            h, w = diff.shape
            box = diff[max(y1, 0):min(y2, h), max(x1, 0):min(x2, w)]
            rows.append({"photo": f"{name}/{path.name}", "faces": len(res.faces),
                         "restored": sum(f.status == "restored" for f in res.faces),
                         "share_changed": float(box.mean()) if box.size else 0.0,
                         "box": [x1, y1, x2, y2], "_in": img.rgb, "_out": res.rgb, "_diff": diff})
    return rows


def panel(row: dict, size: int = 180) -> np.ndarray:
    x1, y1, x2, y2 = row["box"]
    pad = int(0.3 * (x2 - x1))
    h, w = row["_in"].shape[:2]
    sl = (slice(max(y1 - pad, 0), min(y2 + pad, h)), slice(max(x1 - pad, 0), min(x2 + pad, w)))
    eyes = int(y1 + 0.5 * (y2 - y1)) - max(y1 - pad, 0)  # rows above this are pixelated (identity)
    red = row["_in"].copy()
    red[row["_diff"]] = (0.5 * red[row["_diff"]] + [127, 0, 0]).astype(np.uint8)
    tiles = []
    for im in (row["_in"], red, row["_out"]):
        t = im[sl].copy()
        t[:eyes] = pixelate(t[:eyes], cells=8)
        tiles.append(cv2.resize(t, (size, int(size * t.shape[0] / t.shape[1])), interpolation=cv2.INTER_AREA))
    hmin = min(t.shape[0] for t in tiles)
    return np.concatenate([t[:hmin] for t in tiles], axis=1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--out", default=str(REPO / "checkpoints" / "figures"))
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--top", type=int, default=6)
    args = ap.parse_args(argv)
    shared, out = Path(args.shared), Path(args.out)
    if not (shared / "faces" / "lfw").is_dir():
        print(f"occluders: no LFW photos under {shared}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    restorer, info = load_restorer(args.checkpoint, device="cpu", precision="fp32")
    ids = sorted(read_identity_list(shared / "splits" / "lfw_eval_identities.txt"))
    t = time.time()
    rows = scan(restorer, shared / "faces" / "lfw", ids)
    s = np.array([r["share_changed"] for r in rows if r["faces"]])
    # the photos the restorer changed at all (a face restored), most changed first
    worst = sorted((r for r in rows if r["restored"]), key=lambda r: -r["share_changed"])[:args.top]
    report = {"checkpoint": info["checkpoint"], "photos": len(rows), "photos_with_face": int(len(s)),
              "photos_restored": int(sum(r["restored"] > 0 for r in rows)),
              "median_share_changed": float(np.median(s)), "mean_share_changed": float(s.mean()),
              "photos_over_1pct": int((s > 0.01).sum()), "photos_over_5pct": int((s > 0.05).sum()),
              "worst": [{"photo": r["photo"], "share_changed": round(r["share_changed"], 4)} for r in worst],
              "seconds": round(time.time() - t, 1)}
    if worst:
        fig = np.concatenate([panel(r) for r in worst], axis=0)
        cv2.imwrite(str(out / "occluders.jpg"), cv2.cvtColor(fig, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    (out / "occluders.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
