"""`meer-align RAW_DIR OUT_DIR`: detect, align (ArcFace 5-point template) and cache face crops.

Walks RAW_DIR recursively and mirrors its folders in OUT_DIR: one crop per photo (largest face, the
default) or one per face (``--all-faces``: ``<stem>_00``, ``<stem>_01``, ... by decreasing size),
plus ``alignment.jsonl`` (per crop: source, crop, face index, box, score, detector, landmarks in
source and crop pixels, the 2x3 source -> crop matrix, source size) and ``skipped.txt`` (inputs
that gave no crop, with the reason).

Exit status: 0 when something was aligned, 1 when nothing could be, 2 on a usage error.
"""
from __future__ import annotations

import argparse
import sys

from meer.cli.common import EXIT_NOTHING_PROCESSED, EXIT_OK, FolderReport, run_cli

PROG = "meer-align"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0],
                                 epilog="Example: meer-align photos/ aligned/ --all-faces --format png")
    ap.add_argument("raw_dir", metavar="RAW_DIR", help="folder of photos (searched recursively)")
    ap.add_argument("out_dir", metavar="OUT_DIR", help="output folder (must not lie inside RAW_DIR)")
    which = ap.add_mutually_exclusive_group()
    which.add_argument("--largest-face", dest="mode", action="store_const", const="largest",
                       help="one crop per photo, of its largest face (default)")
    which.add_argument("--all-faces", dest="mode", action="store_const", const="all",
                       help="one crop per detected face")
    ap.set_defaults(mode="largest")
    ap.add_argument("--size", type=int, default=112, help="crop side in pixels (template scaled; default 112)")
    ap.add_argument("--batch-size", type=int, default=16, help="photos per detection batch (default 16)")
    ap.add_argument("--device", default="auto", choices=["cpu", "cuda", "auto"], help="default: auto")
    ap.add_argument("--format", dest="fmt", default="jpg", choices=["jpg", "png"], help="crop format (default jpg)")
    ap.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    ap.add_argument("--thresholds", type=float, nargs=3, metavar=("P", "R", "O"), default=None,
                    help="MTCNN stage thresholds (default 0.5 0.6 0.6)")
    ap.add_argument("--no-fallback", action="store_true",
                    help="MTCNN only: skip dlib's CNN detector on photos where MTCNN finds no face")
    ap.add_argument("--overwrite", action="store_true", help="replace existing crops and alignment.jsonl")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


@run_cli(PROG)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from meer.faces.detect import DEFAULT_THRESHOLDS, FaceDetector
    from meer.faces.folder import SKIPPED_NAME, align_folder
    from meer.utils.errors import MeerError

    if args.batch_size < 1:
        raise MeerError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 1 <= args.quality <= 100:
        raise MeerError(f"--quality must be in 1..100, got {args.quality}")
    detector = FaceDetector(device=args.device, thresholds=args.thresholds or DEFAULT_THRESHOLDS,
                            fallback=None if args.no_fallback else "dlib", batch_size=args.batch_size)
    summary = align_folder(args.raw_dir, args.out_dir, detector, mode=args.mode, size=args.size, fmt=args.fmt,
                           quality=args.quality, overwrite=args.overwrite, batch_size=args.batch_size,
                           progress=not args.quiet)
    report = FolderReport(done=summary.aligned_images, skipped=list(summary.skipped))
    report.print_skipped(PROG)
    if summary.skipped:
        print(f"{PROG}: skipped inputs listed in {args.out_dir}/{SKIPPED_NAME}", file=sys.stderr)
    by_detector = ", ".join(f"{k}: {v}" for k, v in sorted(summary.detectors.items()))
    print(f"{PROG}: {summary.faces} face(s) aligned from {summary.aligned_images} of {summary.images} file(s), "
          f"{len(summary.skipped)} skipped, in {summary.seconds:.1f} s ({summary.faces_per_second:.2f} faces/s)"
          + (f" [{by_detector}]" if by_detector else ""))
    return EXIT_OK if summary.faces > 0 else EXIT_NOTHING_PROCESSED


if __name__ == "__main__":
    sys.exit(main())
