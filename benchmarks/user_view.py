"""What a user of ``meer-restore`` sees, measured: pass-through of unmasked faces, what changes around the
mask at photo resolution, periodic stripes in the restored region. Numbers for the model card.

    python benchmarks/user_view.py [--checkpoint checkpoints/meer_112.pt] [--out checkpoints/figures]
                                   [--shared ../shared/data] [--photos 40]

On the evaluation-only identities of ../shared/data (never trained on):

* ``passthrough``: one clean (unmasked) LFW photo of each of ``--photos`` evaluation identities through the
  restorer; per photo, the share of face pixels (the detected face box) changed by more than 8 levels; the
  median is the headline (the promise: an unmasked face passes through, <= 1%).
* ``wild``: ``--photos`` in-the-wild masked photos (RWMFD, sorted, first ones): per face, the share of pixels
  changed by more than 8 levels in the band just under the eyes (crop rows 58-68, cols 30-82, warped into the
  photo; a mask worn over the nose covers part of it), the same over the band's pixels outside what the model
  replaced (its predicted occlusion grown by the 2 px blend ring: they must keep their exact value), and the share of changed face pixels that lie outside
  the model's own predicted occlusion (the blend ring at the mask's edge).
* ``stripes``: synthetic masks on the LFW evaluation faces (aligned crops, seeded), restored in crop space;
  the restored lower face's spectral share at horizontal periods 2/4/8 px against the clean faces
  (``meer.evaluation.quality.periodic_energy``; 1.0 = as clean faces), and the step across the crop's centre
  column relative to the box's typical column step (a vertical seam where the generator's coarse cells meet).

Writes ``user_view.json``, ``stripes_zoom.jpg`` (restored lower faces of the bundled public-domain faces, zoomed
4x, nearest neighbour) and ``below_chin.jpg`` (a mask running below the chin through the whole pipeline) to
``--out``; dataset photos are never written.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from meer.data.splits import read_identity_list  # noqa: E402
from meer.evaluation.quality import periodic_energy  # noqa: E402
from meer.faces.paste import warp_region_back  # noqa: E402
from meer.inference.loading import load_restorer  # noqa: E402
from meer.masking.batch import MaskAugment  # noqa: E402
from meer.utils.images import read_image  # noqa: E402

CHANGED = 8  # levels
BAND = (58, 68, 30, 82)  # crop rows y0:y1, cols x0:x1 just under the eyes (ArcFace 112)
LOWER = (74, 106, 24, 88)  # the lower face box of the crop (stripes)


def changed_mask(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=-1) > CHANGED


def passthrough(restorer, lfw: Path, ids: list[str], n: int) -> dict:
    shares, restored_faces, faces = [], 0, 0
    for name in ids[:n]:
        files = sorted((lfw / name).glob("*.jpg"))
        if not files:
            continue
        img = read_image(files[0])
        res = restorer.restore_image(img)
        rgb_in = img.rgb
        diff = changed_mask(res.rgb, rgb_in)
        for f in res.faces:
            faces += 1
            restored_faces += f.status == "restored"
        if not res.faces:
            continue
        x1, y1, x2, y2 = (int(round(v)) for v in res.faces[0].box)
        h, w = diff.shape
        box = diff[max(y1, 0):min(y2, h), max(x1, 0):min(x2, w)]
        shares.append(float(box.mean()) if box.size else 0.0)
    s = np.array(shares)
    return {"photos": len(s), "faces": faces, "faces_restored": restored_faces,
            "median_share_changed": float(np.median(s)) if len(s) else None,
            "mean_share_changed": float(s.mean()) if len(s) else None,
            "p90_share_changed": float(np.percentile(s, 90)) if len(s) else None}


def wild(restorer, root: Path, n: int) -> dict:
    files = sorted(root.glob("*/*.jpg"))[:n]
    band_shares, visible_band_shares, leak_shares, faces = [], [], [], 0
    for path in files:
        img = read_image(path)
        res = restorer.restore_image(img)
        diff = changed_mask(res.rgb, img.rgb)
        h, w = diff.shape
        for f in res.faces:
            faces += 1
            band = np.zeros((112, 112), np.float32)
            y0, y1, x0, x1 = BAND
            band[y0:y1, x0:x1] = 1.0
            band_px = warp_region_back(band, f.matrix, h, w) > 0.5
            occluded = warp_region_back((f.occ_map > 0.5).astype(np.float32), f.matrix, h, w) > 0.5
            face_px = warp_region_back(np.ones((112, 112), np.float32), f.matrix, h, w) > 0.5
            if band_px.any():
                band_shares.append(float(diff[band_px].mean()))
            # band pixels outside what the model replaced (its predicted occlusion + the 2 px blend ring)
            replaced = warp_region_back((f.region > 0).astype(np.float32), f.matrix, h, w) > 0.01
            visible_band = band_px & ~replaced
            if visible_band.any():
                visible_band_shares.append(float(diff[visible_band].mean()))
            changed_face = diff & face_px
            if changed_face.any():
                leak_shares.append(float((changed_face & ~occluded).sum() / changed_face.sum()))
    b, vb, lk = np.array(band_shares), np.array(visible_band_shares), np.array(leak_shares)
    return {"photos": len(files), "faces": faces,
            "band_under_eyes_median_share_changed": float(np.median(b)) if len(b) else None,
            "band_under_eyes_mean_share_changed": float(b.mean()) if len(b) else None,
            "band_under_eyes_visible_median_share_changed": float(np.median(vb)) if len(vb) else None,
            "band_under_eyes_visible_mean_share_changed": float(vb.mean()) if len(vb) else None,
            "changed_outside_predicted_occlusion_median": float(np.median(lk)) if len(lk) else None}


def stripes(restorer, lfw: Path, ids: list[str], per_id: int = 4, seed: int = 0) -> dict:
    crops = []
    cache = REPO / "cache" / "aligned" / "lfw"
    for name in ids:
        for f in sorted((cache / name).glob("*.jpg"))[:per_id]:
            crops.append(cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB))
    if not crops:
        return {"faces": 0, "note": f"no aligned crops under {cache} (run meer-align first)"}
    clean = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255.0
    op = MaskAugment()
    with torch.no_grad():
        masked, mask, _ = op(clean, None, generator=torch.Generator().manual_seed(seed))
        restored = []
        model = restorer.model
        for s in range(0, len(masked), 32):
            r, _ = model.restore(masked[s:s + 32].clamp(0, 1).to(restorer.device))
            restored.append(r.float().cpu())
        restored = torch.cat(restored)
    to8 = lambda t: (t.permute(0, 2, 3, 1).numpy() * 255).round().clip(0, 255).astype(np.uint8)
    y0, y1, x0, x1 = LOWER
    covered = mask[:, 0, y0:y1, x0:x1].mean(dim=(1, 2)).numpy() > 0.9  # lower face fully under the mask
    r8, c8 = to8(restored)[covered, y0:y1, x0:x1], to8(clean)[covered, y0:y1, x0:x1]
    er, ec = periodic_energy(r8), periodic_energy(c8)

    def seam(a: np.ndarray) -> float:
        """Mean |horizontal step| across the crop's centre column (x 55|56) over the box's median column step."""
        g = np.abs(np.diff(a.astype(np.float64).mean(axis=-1), axis=2)).mean(axis=1)  # N x (W-1)
        centre = 56 - x0 - 1
        return float(np.median(g[:, centre] / np.median(g, axis=1).clip(min=1e-6)))

    return {"faces": int(covered.sum()),
            "centre_seam_restored": seam(r8), "centre_seam_clean": seam(c8),
            **{f"period_{p}px_ratio_to_clean": float(np.median(er[p]) / max(np.median(ec[p]), 1e-12)) for p in er},
            **{f"period_{p}px_share_restored": float(np.median(er[p])) for p in er},
            **{f"period_{p}px_share_clean": float(np.median(ec[p])) for p in ec}}


def zoom_figure(restorer, out: Path) -> None:
    from meer.faces.detect import largest
    from meer.faces.align import align_face
    from meer.masking import apply_mask
    from meer.masking.spec import MaskSpec
    from meer.faces.template import template_for_size

    tiles = []
    for name in ("astronaut.png", "grace_hopper.jpg"):
        img = read_image(REPO / "examples" / name)
        faces = restorer.detector.detect([img.rgb])[0]
        face = largest(faces)
        crop = align_face(img.rgb, face.landmarks).crop
        for spec in (MaskSpec(kind="surgical", seed=1), MaskSpec(kind="cloth", texture="checks", seed=4)):
            masked = apply_mask(crop, template_for_size(112), spec).image
            x = torch.from_numpy(np.ascontiguousarray(masked)).permute(2, 0, 1)[None].float() / 255.0
            with torch.no_grad():
                r, _ = restorer.model.restore(x.to(restorer.device))
            r8 = (r[0].float().cpu().permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
            y0, y1, x0, x1 = LOWER
            row = [cv2.resize(a[y0:y1, x0:x1], None, fx=4, fy=4, interpolation=cv2.INTER_NEAREST)
                   for a in (masked, r8, crop)]
            tiles.append(np.concatenate(row, axis=1))
    fig = np.concatenate(tiles, axis=0)
    cv2.imwrite(str(out / "stripes_zoom.jpg"), cv2.cvtColor(fig, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])


def below_chin_figure(restorer, out: Path) -> dict:
    """A large mask running below the chin on the bundled astronaut photo, through the whole ``meer-restore``
    pipeline: masked photo | pixels changed (red) | result, cropped around the face. Returns the share of the
    mask's pixels left unchanged in the result (the part outside the 112 crop cannot be restored)."""
    from meer.faces.detect import largest
    from meer.masking import apply_mask
    from meer.masking.spec import MaskSpec
    from meer.utils.images import LoadedImage

    img = read_image(REPO / "examples" / "astronaut.png")
    face = largest(restorer.detector.detect([img.rgb])[0])
    masked = apply_mask(img.rgb, face.landmarks, MaskSpec(kind="surgical", scale=1.3, seed=8))
    loaded = LoadedImage(path=None, rgb=masked.image, rgb16=None, alpha=None, bit_depth=8, channels=3, mode="RGB")
    res = restorer.restore_image(loaded)
    changed = changed_mask(res.rgb, masked.image)
    left = float((~changed[masked.mask]).mean())
    red = masked.image.copy()
    red[changed] = (0.5 * red[changed] + [127, 0, 0]).astype(np.uint8)
    x1, y1, x2, y2 = (int(v) for v in face.box)
    pad = int(0.35 * (x2 - x1))
    sl = (slice(max(y1 - pad, 0), y2 + 2 * pad), slice(max(x1 - pad, 0), x2 + pad))
    fig = np.concatenate([masked.image[sl], red[sl], res.rgb[sl]], axis=1)
    cv2.imwrite(str(out / "below_chin.jpg"), cv2.cvtColor(fig, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return {"mask_pixels_left_unchanged": left}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--out", default=str(REPO / "checkpoints" / "figures"))
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--photos", type=int, default=40)
    args = ap.parse_args(argv)
    shared, out = Path(args.shared), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    restorer, info = load_restorer(args.checkpoint, device="cpu", precision="fp32")
    ids = sorted(read_identity_list(shared / "splits" / "lfw_eval_identities.txt"))
    t = time.time()
    report = {"checkpoint": info["checkpoint"], "machine": "see the model card",
              "passthrough": passthrough(restorer, shared / "faces" / "lfw", ids, args.photos),
              "wild": wild(restorer, shared / "real_masked" / "rwmfd", args.photos),
              "stripes": stripes(restorer, shared / "faces" / "lfw", ids)}
    zoom_figure(restorer, out)
    report["below_chin"] = below_chin_figure(restorer, out)
    report["seconds"] = round(time.time() - t, 1)
    (out / "user_view.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
