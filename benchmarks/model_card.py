"""Figures and figures-of-merit for the model card (``checkpoints/README.md``) of a MEER checkpoint.

    python benchmarks/model_card.py [--checkpoint checkpoints/meer_112.pt] [--run runs/NNNNN-meer_112_cpu]
                                    [--out checkpoints/figures]

Writes, next to each other:

* ``mask_sweep.jpg`` + ``mask_sweep.json``: the two bundled public-domain faces (``examples/``) under every
  synthetic mask kind, coverage and a few textures / placements: input, predicted occlusion, restored crop, clean
  crop, with occlusion IoU and masked-region L1 / PSNR per case (exact ground truth: the masks are synthetic).
  The worst cases are the model's known failure cases; no dataset photo is shown (their terms forbid it).
* ``training_curves.png`` (with ``--run``): losses and validation metrics against steps from ``stats.jsonl``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from meer.evaluation.quality import photo_region_errors  # noqa: E402
from meer.faces.detect import FaceDetector, largest  # noqa: E402
from meer.inference.loading import load_restorer  # noqa: E402
from meer.masking import apply_mask  # noqa: E402
from meer.masking.spec import MaskSpec  # noqa: E402
from meer.utils.images import decode_image, encode_image, read_image  # noqa: E402

FACES = ("astronaut.png", "grace_hopper.jpg")
SPECS = [
    ("surgical, over nose", MaskSpec(kind="surgical", coverage="over_nose", seed=1)),
    ("surgical, below nose", MaskSpec(kind="surgical", coverage="below_nose", seed=1)),
    ("n95, white", MaskSpec(kind="n95", color="white", seed=2)),
    ("kn95, dark grey", MaskSpec(kind="kn95", color="dark_grey", seed=3)),
    ("cloth, checks", MaskSpec(kind="cloth", color="dark_grey", texture="checks", seed=4)),
    ("cloth, floral", MaskSpec(kind="cloth", color="off_white", texture="floral", seed=5)),
    ("procedural, chin only", MaskSpec(kind="procedural", coverage="chin_only", seed=6)),
    ("surgical, tilted 15 deg, shifted", MaskSpec(kind="surgical", tilt=15.0, shift=(0.1, 0.05), seed=7)),
    ("surgical, scale 1.3", MaskSpec(kind="surgical", scale=1.3, seed=8)),
]


def sweep(restorer, detector) -> list[dict]:
    rows = []
    for name in FACES:
        clean = read_image(REPO / "examples" / name).rgb
        face = largest(detector.detect([clean])[0])
        for label, spec in SPECS:
            masked = apply_mask(clean, face.landmarks, spec)
            res = restorer.restore_image(decode_image(encode_image(masked.image, ".png")))
            row = {"face": name, "mask": label, "spec": masked.spec.to_dict()}
            if not res.faces:
                rows.append({**row, "status": "no_face", "note": res.note})
                continue
            f = res.faces[0]
            truth = cv2.warpAffine(masked.mask.astype(np.float32), f.matrix, (112, 112)) > 0.5
            pred = f.occ_map > 0.5
            before = photo_region_errors(masked.image, clean, masked.mask)
            after = photo_region_errors(res.rgb, clean, masked.mask)
            rows.append({
                **row, "status": f.status,
                "iou": float((truth & pred).sum() / max(1, (truth | pred).sum())),
                "l1_masked": before["l1"], "l1_restored": after["l1"],
                "psnr_masked": before["psnr"], "psnr_restored": after["psnr"],
                "id_cosine": f.id_cosine,
                "_crop": f.crop, "_occ": f.occ_map, "_restored": f.restored,
                "_clean": cv2.warpAffine(clean, f.matrix, (112, 112), flags=cv2.INTER_LINEAR),
            })
    return rows


def sweep_figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in rows if "_crop" in r]
    n = len(shown)
    cols = 2  # two cases per figure row, 4 panels each
    nrows = (n + cols - 1) // cols
    fig, axes = plt.subplots(nrows, 4 * cols, figsize=(4 * cols * 1.45, nrows * 1.75))
    axes = np.atleast_2d(axes)
    for ax in axes.ravel():
        ax.set_axis_off()
    for i, r in enumerate(shown):
        row, c0 = divmod(i, cols)
        panels = (r["_crop"], r["_occ"], r["_restored"], r["_clean"])
        titles = (r["mask"], f"occlusion IoU {r['iou']:.2f}",
                  f"L1 {r['l1_masked']:.0f}->{r['l1_restored']:.0f}", "clean")
        for k, (img, title) in enumerate(zip(panels, titles)):
            ax = axes[row, 4 * c0 + k]
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=1 if img.ndim == 2 else None)
            ax.set_title(title, fontsize=7)
    fig.suptitle("input | predicted occlusion | restored | clean (never seen); L1 = masked-region mean abs. error, "
                 "masked input -> restored (8-bit levels)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90, pil_kwargs={"quality": 88})  # JPEG: a photo grid, 5x smaller than PNG
    plt.close(fig)


def curves_figure(stats: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    recs = [json.loads(line) for line in stats.read_text().splitlines() if line.strip()]
    train = [r for r in recs if any(k.startswith("train/") for k in r)]
    val = [r for r in recs if any(k.startswith("val/") for k in r)]
    panels = [
        ("identity (margin) losses", ["train/loss/id_masked", "train/loss/id_clean", "train/loss/id_restored"], train),
        ("occlusion + reconstruction", ["train/loss/occ", "train/loss/l1_masked"], train),
        ("adversarial (D)", ["train/loss/d_patch", "train/loss/d_local"], train),
        ("validation: verification", ["val/verify_acc", "val/verify_auc"], val),
        ("validation: occlusion / restoration", ["val/mask_iou", "val/ssim_masked"], val),
        ("validation: masked-region PSNR (dB)", ["val/psnr_masked"], val),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(12, 6))
    for ax, (title, keys, rs) in zip(axes.ravel(), panels):
        for k in keys:
            pts = [(r["step"], r[k]) for r in rs if k in r]
            if pts:
                s, v = zip(*pts)
                ax.plot(s, v, marker="o" if rs is val else None, ms=3, label=k.split("/")[-1])
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(REPO / "checkpoints" / "meer_112.pt"))
    ap.add_argument("--run", type=Path, help="training run folder (for training_curves.png)")
    ap.add_argument("--out", type=Path, default=REPO / "checkpoints" / "figures")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    detector = FaceDetector("cpu", fallback=None)
    restorer, info = load_restorer(args.checkpoint, device="cpu", precision="fp32", detector=detector, faces="largest")
    rows = sweep(restorer, detector)
    sweep_figure(rows, args.out / "mask_sweep.jpg")
    clean_rows = [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]
    ok = [r for r in clean_rows if "iou" in r]
    summary = {
        "checkpoint": info["checkpoint"], "cases": len(rows), "restored": len(ok),
        "mean_iou": float(np.mean([r["iou"] for r in ok])),
        "mean_l1_masked": float(np.mean([r["l1_masked"] for r in ok])),
        "mean_l1_restored": float(np.mean([r["l1_restored"] for r in ok])),
        "mean_psnr_masked": float(np.mean([r["psnr_masked"] for r in ok])),
        "mean_psnr_restored": float(np.mean([r["psnr_restored"] for r in ok])),
    }
    (args.out / "mask_sweep.json").write_text(json.dumps({"summary": summary, "cases": clean_rows}, indent=1))
    print(json.dumps(summary, indent=1))
    for r in sorted(ok, key=lambda r: r["iou"]):
        print(f"{r['face']:18s} {r['mask']:34s} IoU {r['iou']:.2f}  L1 {r['l1_masked']:5.1f} -> {r['l1_restored']:5.1f}"
              f"  PSNR {r['psnr_masked']:5.1f} -> {r['psnr_restored']:5.1f}")
    if args.run is not None:
        curves_figure(args.run / "stats.jsonl", args.out / "training_curves.png")
    print(f"figures in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
