"""`meer-mask IN_DIR OUT_DIR`: put synthetic masks on the faces of a folder of photos or aligned crops.

For every input ``<rel>`` (folder structure kept, one output set per variant with ``--per-image``):

* ``OUT_DIR/masked/<rel>.png``: the masked image (PNG, lossless, 8-bit RGB);
* ``OUT_DIR/masks/<rel>.png``: the exact occlusion mask, 255 where the masked image differs from the
  input, 0 elsewhere;
* ``OUT_DIR/meta/<rel>.json``: per face the mask kind, coverage, colour, texture, jitter and seed (a
  complete ``MaskSpec``: ``apply_mask(image, face["landmarks"], MaskSpec.from_dict(face, strict=False))``
  redraws it), the landmarks used and the face box, plus the source file.

Each file's masks depend only on ``--seed`` and its path relative to IN_DIR, not on the order of
processing. Unreadable files, non-images and photos without a face are reported at the end and
skipped. Nothing is ever written inside IN_DIR.

Exit status: 0 when something was masked, 1 when nothing could be, 2 on a usage error.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

from meer.cli.common import FolderReport, run_cli

PROG = "meer-mask"
# where dlib's frontal detector puts the face box in a 112 x 112 ArcFace-aligned crop (x1 y1 x2 y2)
ALIGNED_FACE_BOX = (14.0, 32.0, 92.0, 110.0)


def build_parser() -> argparse.ArgumentParser:
    from meer.masking.spec import COVERAGES, KINDS, TEXTURES

    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                 epilog="Example: meer-mask photos/ masked/ --per-image 3 --kinds surgical kn95 cloth")
    ap.add_argument("in_dir", metavar="IN_DIR", help="folder of photos or aligned crops (searched recursively)")
    ap.add_argument("out_dir", metavar="OUT_DIR", help="output folder (must not lie inside IN_DIR)")
    ap.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    ap.add_argument("--per-image", type=int, default=1, metavar="N",
                    help="masked variants per input, named <name>_m0, <name>_m1, ... when N > 1 (default 1)")
    ap.add_argument("--kinds", nargs="+", metavar="KIND", default=None,
                    help=f"mask kinds to draw from: {', '.join(KINDS)}, 'template' (any template of "
                         "--template-dir) or template:<name> (default: all procedural kinds)")
    ap.add_argument("--coverage", nargs="+", metavar="COVERAGE", default=None,
                    help=f"coverages to draw from: {', '.join(COVERAGES)} (default: all)")
    ap.add_argument("--textures", nargs="+", metavar="TEXTURE", default=None,
                    help=f"textures to draw from: {', '.join(TEXTURES)} ('image' needs --texture-dir; default: all)")
    ap.add_argument("--texture-dir", default=None, metavar="DIR", help="folder of texture images (fabrics, prints)")
    ap.add_argument("--template-dir", default=None, metavar="DIR",
                    help="MaskTheFace template folder (with masks.cfg); templates then replace a quarter of "
                         "the procedural masks unless --kinds says otherwise")
    ap.add_argument("--aligned", action="store_true",
                    help="inputs are crops aligned to the ArcFace template: no detection, template landmarks")
    ap.add_argument("--landmarks", choices=["5", "68", "auto"], default="auto",
                    help="68 = dlib jaw-line landmarks (judge extra) for the mask outline; auto = 68 when "
                         "installed for photos, the template for aligned crops (default auto); 68 points are "
                         "dropped for a face where their eyes disagree with the detector's (or template's)")
    ap.add_argument("--largest-face", action="store_true", help="mask only the largest face of each photo")
    ap.add_argument("--min-score", type=float, default=0.9, help="detection score threshold (default 0.9)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="detector device (default cpu)")
    ap.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def file_seed(base: int, rel: str, variant: int, face: int) -> int:
    """Seed of one face's mask: a hash of (base seed, relative path, variant, face index)."""
    digest = hashlib.sha256(f"{base}|{rel}|{variant}|{face}".encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def _kind_choice(kinds: list[str] | None, library) -> tuple[list[str] | None, list[str], float]:
    """(procedural kinds or None for all, template names, probability of a template)."""
    from meer.masking.spec import KINDS, TEMPLATE_PREFIX
    from meer.utils.errors import MeerError

    if kinds is None:
        return None, (library.frontal_names if library else []), (0.25 if library else 0.0)
    procedural, templates = [], []
    n_template_entries = 0
    for k in kinds:
        if k == "template" or k.startswith(TEMPLATE_PREFIX):
            if library is None:
                raise MeerError(f"--kinds {k} needs --template-dir")
            n_template_entries += 1
            templates.extend(library.frontal_names if k == "template" else [library.get(k[len(TEMPLATE_PREFIX):]).name])
        elif k in KINDS:
            procedural.append(k)
        else:
            raise MeerError(f"unknown mask kind {k!r} (choose from {', '.join(KINDS)}, template, template:<name>)")
    p = n_template_entries / (n_template_entries + len(procedural))
    return procedural, sorted(set(templates)), p


@run_cli(PROG)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import numpy as np
    from tqdm import tqdm

    from meer.masking.apply import apply_mask
    from meer.masking.landmarks68 import load_landmarks68
    from meer.masking.sampling import sample_spec
    from meer.masking.spec import COVERAGES, TEXTURES
    from meer.masking.templates import TemplateLibrary
    from meer.utils.errors import ImageError, MeerError
    from meer.utils.files import check_output_dir, iter_images
    from meer.utils.images import read_image, write_image

    if args.per_image < 1:
        raise MeerError(f"--per-image must be >= 1, got {args.per_image}")
    if not 0.0 < args.min_score < 1.0:
        raise MeerError(f"--min-score must be in (0, 1), got {args.min_score}")
    for name, values, universe in (("--coverage", args.coverage, COVERAGES), ("--textures", args.textures, TEXTURES)):
        for v in values or []:
            if v not in universe:
                raise MeerError(f"{name}: unknown value {v!r} (choose from {', '.join(universe)})")
    in_dir = Path(args.in_dir)
    if not in_dir.exists():
        raise MeerError(f"input not found: {in_dir}")
    out_dir = check_output_dir(in_dir, args.out_dir)
    library = TemplateLibrary(args.template_dir) if args.template_dir else None
    procedural, templates, template_p = _kind_choice(args.kinds, library)
    texture_images: list[str] = []
    if args.texture_dir:
        tdir = Path(args.texture_dir)
        if not tdir.is_dir():
            raise MeerError(f"texture folder not found: {tdir}")
        for p in iter_images(tdir):
            try:
                read_image(p)
            except ImageError as exc:
                print(f"{PROG}: texture skipped: {exc}", file=sys.stderr)
                continue
            texture_images.append(str(p.resolve()))
        if not texture_images:
            raise MeerError(f"no usable texture image in {tdir}")
    if args.textures == ["image"] and not texture_images:
        raise MeerError("--textures image needs --texture-dir")
    # check the choices once (an impossible combination is a usage error, not a per-file failure)
    sample_spec(0, kinds=procedural, coverages=args.coverage, textures=args.textures,
                texture_images=texture_images, templates=templates, template_p=template_p)

    predictor = load_landmarks68("5" if args.aligned and args.landmarks == "auto" else args.landmarks)
    if predictor is None and args.landmarks == "auto" and not args.aligned:
        print(f"{PROG}: note: 68-point landmarks unavailable (install the judge extra); using 5 points",
              file=sys.stderr)
    detector = None
    if not args.aligned:
        from meer.faces.detect import FaceDetector

        detector = FaceDetector(device=args.device, fallback=None)

    files = list(iter_images(in_dir, all_files=True))
    root = in_dir if in_dir.is_dir() else in_dir.parent
    report = FolderReport()
    written = 0
    start = time.perf_counter()
    for path in tqdm(files, desc=PROG, unit="img", disable=args.quiet, file=sys.stderr):
        rel = path.relative_to(root)
        rel_key = rel.as_posix()
        names = [rel.with_suffix("").as_posix() + (f"_m{k}" if args.per_image > 1 else "") for k in range(args.per_image)]
        targets = [(out_dir / "masked" / f"{n}.png", out_dir / "masks" / f"{n}.png", out_dir / "meta" / f"{n}.json")
                   for n in names]
        if not args.overwrite and any(t.exists() for trio in targets for t in trio):
            report.skip(rel_key, "outputs already exist (use --overwrite)")
            continue
        try:
            loaded = read_image(path)
        except ImageError as exc:
            report.skip(rel_key, str(exc).split(": ", 1)[-1])
            continue
        rgb = loaded.rgb
        faces = _find_faces(rgb, args, detector, predictor)
        if not faces:
            report.skip(rel_key, "no face found")
            continue
        try:
            for k, (masked_p, mask_p, meta_p) in enumerate(targets):
                image = rgb
                occluded = np.zeros(rgb.shape[:2], dtype=bool)
                metas = []
                for j, face in enumerate(faces):
                    seed = file_seed(args.seed, rel_key, k, j)
                    spec = sample_spec(seed, kinds=procedural, coverages=args.coverage, textures=args.textures,
                                       texture_images=texture_images, templates=templates, template_p=template_p)
                    result = apply_mask(image, face["landmarks"], spec, templates=library)
                    image = result.image
                    occluded |= result.mask
                    metas.append({**result.spec.to_dict(), "face_index": j, "box": face["box"],
                                  "score": face["score"], "landmark_source": face["source"],
                                  "landmarks": np.asarray(face["landmarks"], dtype=np.float64).tolist(),
                                  "mask_pixels": int(result.mask.sum())})
                changed = (image != rgb).any(axis=-1)
                if not np.array_equal(changed, occluded):  # guaranteed by apply_mask; never write a wrong GT
                    raise MeerError("internal error: ground-truth mask differs from the changed pixels")
                write_image(masked_p, image, overwrite=args.overwrite)
                write_image(mask_p, (occluded.astype(np.uint8) * 255), overwrite=args.overwrite)
                meta = {"source": rel_key, "variant": k, "size": [int(rgb.shape[1]), int(rgb.shape[0])],
                        "base_seed": args.seed, "aligned": bool(args.aligned), "faces": metas,
                        "masked": str(masked_p.relative_to(out_dir)), "mask": str(mask_p.relative_to(out_dir))}
                meta_p.parent.mkdir(parents=True, exist_ok=True)
                meta_p.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
                written += 1
        except MeerError as exc:
            report.skip(rel_key, str(exc))
            continue
        report.done += 1
    seconds = time.perf_counter() - start
    report.print_skipped(PROG)
    print(f"{PROG}: {written} masked image(s) from {report.done} of {len(files)} file(s), "
          f"{len(report.skipped)} skipped, in {seconds:.1f} s -> {out_dir}")
    return report.exit_code()


def _find_faces(rgb, args, detector, predictor) -> list[dict]:
    """Faces to mask: ``{"landmarks": (5|68, 2), "box", "score", "source"}`` per face."""
    import numpy as np

    from meer.faces.template import ARCFACE_112
    from meer.masking.apply import split_landmarks

    h, w = rgb.shape[:2]
    if args.aligned:
        scale = np.array([w / 112.0, h / 112.0], dtype=np.float32)
        lm5 = ARCFACE_112 * scale
        box = ALIGNED_FACE_BOX * np.tile(scale, 2)
        faces = [{"landmarks": lm5.astype(np.float64), "box": box.tolist(), "score": None, "source": "template"}]
    else:
        dets = [d for d in detector.detect([rgb])[0] if d.score >= args.min_score]
        dets.sort(key=lambda d: -d.area)
        if args.largest_face:
            dets = dets[:1]
        faces = [{"landmarks": d.landmarks.astype(np.float64), "box": [round(float(v), 2) for v in d.box],
                  "score": round(float(d.score), 5), "source": d.detector} for d in dets]
    if predictor is not None:
        for f in faces:
            lm68 = predictor.predict(rgb, np.array(f["box"]))
            five, _ = split_landmarks(lm68.astype(np.float64))
            # keep 68 points only when they agree with the detector's (or template's) eyes: dlib can
            # drift on odd crops, and the mask would follow it
            if np.linalg.norm(five[:2] - f["landmarks"][:2], axis=1).max() < \
                    0.35 * np.linalg.norm(f["landmarks"][1] - f["landmarks"][0]):
                f["landmarks"] = lm68.astype(np.float64)
                f["source"] = f["source"] + "+dlib68"
    return faces


if __name__ == "__main__":
    sys.exit(main())
