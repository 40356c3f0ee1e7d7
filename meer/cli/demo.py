"""``make demo``: run meer on the bundled example photo and say where the results are.

With a trained checkpoint (``checkpoints/meer_112.pt`` or ``$MEER_CHECKPOINT``) the demo masks the
bundled photo synthetically and restores it with ``meer-restore``. Without one it shows the
foundation: face detection, 5-point alignment and a synthetic mask with its exact occlusion mask.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from meer.cli.common import run_cli
from meer.utils.files import check_output_dir
from meer.utils.images import read_image, write_image

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "astronaut.png"


def _overlay(image: np.ndarray, box: np.ndarray, landmarks: np.ndarray, crop_box: np.ndarray) -> np.ndarray:
    """Detection box (green), landmarks (red) and the aligned crop's footprint (yellow) on the photo."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, w = image.shape[:2]
    fig, ax = plt.subplots(figsize=(w / 100, h / 100), dpi=100)
    ax.imshow(image)
    x1, y1, x2, y2 = box
    ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color="lime", lw=2))
    ax.plot(*np.vstack([crop_box, crop_box[:1]]).T, color="yellow", lw=1.5, ls="--")
    ax.scatter(landmarks[:, 0], landmarks[:, 1], s=30, c="red")
    ax.set_axis_off()
    fig.subplots_adjust(0, 0, 1, 1)
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return rgb


def mask_demo(out: Path, seed: int) -> list[Path]:
    from meer.faces.align import align_face, invert, transform_points
    from meer.faces.detect import FaceDetector, largest
    from meer.masking import apply_mask

    image = read_image(EXAMPLE)
    face = largest(FaceDetector().detect([image.rgb])[0])
    if face is None:
        raise SystemExit("demo: no face found in the bundled example (unexpected)")
    masked = apply_mask(image.rgb, face.landmarks, seed)
    aligned = align_face(masked.image, face.landmarks)
    corners = np.array([[0, 0], [111, 0], [111, 111], [0, 111]], dtype=np.float64)
    footprint = transform_points(corners, invert(aligned.matrix))
    written = [
        write_image(out / "masked.png", masked.image, overwrite=True),
        write_image(out / "occlusion_mask.png", masked.mask.astype(np.uint8) * 255, overwrite=True),
        write_image(out / "aligned_112.png", aligned.crop, overwrite=True),
        write_image(out / "alignment_overlay.png", _overlay(image.rgb, face.box, face.landmarks, footprint),
                    overwrite=True),
    ]
    (out / "mask_spec.json").write_text(json.dumps(masked.spec.to_dict(), indent=2))
    return written


def restore_demo(out: Path, checkpoint: Path, seed: int) -> Path:
    from meer.cli.restore import main as restore_main

    inputs = out / "masked_input"
    inputs.mkdir(parents=True, exist_ok=True)
    mask_demo(inputs, seed)
    for extra in ("occlusion_mask.png", "aligned_112.png", "alignment_overlay.png", "mask_spec.json"):
        (inputs / extra).replace(out / extra)
    code = restore_main([str(inputs), str(out / "restored"), "--checkpoint", str(checkpoint), "--overwrite"])
    if code != 0:
        raise SystemExit(code)
    return out / "restored" / "cmp"


@run_cli("meer-demo")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meer-demo", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic mask")
    args = parser.parse_args(argv)
    out = check_output_dir(EXAMPLE.parent, args.out)
    out.mkdir(parents=True, exist_ok=True)

    from meer.inference.weights import CheckpointNotFoundError, find_checkpoint

    try:
        checkpoint = find_checkpoint()
    except CheckpointNotFoundError:
        checkpoint = None
    if checkpoint is None:
        written = mask_demo(out, args.seed)
        print("meer demo: no trained checkpoint yet, so this shows detection, alignment and synthetic masking.")
        for path in written:
            print(f"  {path}")
        print(f"meer demo: outputs are in {out}")
    else:
        cmp_dir = restore_demo(out, checkpoint, args.seed)
        print(f"meer demo: restored with {checkpoint}")
        for path in sorted(cmp_dir.glob("*.png")):
            print(f"meer demo: compare image (masked crop | predicted occlusion | restored crop): {path}")
        print(f"meer demo: the full restored photo is in {out / 'restored' / 'restored_imgs'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
