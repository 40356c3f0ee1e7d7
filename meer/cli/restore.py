"""`meer-restore INPUT OUTPUT`: restore the masked faces in every photo under INPUT.

Exit status: 0 when the run completed (even with skipped files), 1 when no input could be processed,
2 on a usage error (bad option, missing checkpoint, OUTPUT inside INPUT or already holding results).
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import meer
from meer.cli.common import EXIT_USAGE, FolderReport, run_cli
from meer.utils.errors import MeerError

PROG = "meer-restore"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Restore the masked faces in photos with MEER. Walks INPUT recursively and writes "
                    "OUTPUT/restored_imgs (full photos, same relative paths), cropped_faces, restored_faces, "
                    "masks, cmp and summary.csv / summary.json.",
        epilog="Weights are looked for in: --checkpoint, $MEER_CHECKPOINT, <repo>/checkpoints/meer_112.pt, "
               "~/.cache/meer/meer_112.pt. Nothing is downloaded.")
    p.add_argument("input", metavar="INPUT", help="a photo or a folder of photos (walked recursively)")
    p.add_argument("output", metavar="OUTPUT", help="results folder (must not lie inside an INPUT folder)")
    p.add_argument("--checkpoint", metavar="PATH", help="MEER checkpoint (.pt) to use")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="model arithmetic: auto = fp32 on CPU, bf16 (or fp16) on GPU")
    p.add_argument("--batch-size", type=int, default=8, metavar="N",
                   help="photos per detection call and faces per model pass (default 8)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--all-faces", dest="faces", action="store_const", const="all",
                       help="restore every face of a photo (default)")
    which.add_argument("--largest-face", dest="faces", action="store_const", const="largest",
                       help="restore only the largest face of each photo")
    which.add_argument("--only-center-face", dest="faces", action="store_const", const="center",
                       help="restore only the face closest to the centre of each photo (GFPGAN/CodeFormer's "
                            "--only_center_face)")
    p.set_defaults(faces="all")
    p.add_argument("--aligned", action="store_true",
                   help="inputs are already aligned 112x112 ArcFace crops: no detection (other sizes are resized)")
    p.add_argument("--min-occlusion", type=float, default=0.05, metavar="T",
                   help="pass faces through unchanged when less than this fraction of the crop is predicted "
                        "occluded (default 0.05)")
    p.add_argument("--min-face", type=int, default=20, metavar="PX",
                   help="ignore faces whose box is smaller than this many pixels on its shorter side (default 20; "
                        "applied before --largest-face / --only-center-face pick one)")
    p.add_argument("--detect-size", type=int, default=1280, metavar="PX",
                   help="shrink larger photos to this longer side for face detection only; faces are restored "
                        "from the full-resolution photo (default 1280; 0 = detect at full resolution)")
    p.add_argument("--no-dlib-fallback", dest="dlib_fallback", action="store_false",
                   help="do not retry photos where MTCNN finds no face with dlib's CNN detector (faster on "
                        "folders with many face-less photos, misses more masked faces)")
    p.add_argument("--io-threads", type=int, default=None, metavar="N",
                   help="threads decoding photos ahead of the model, plus one writing the outputs behind it "
                        "(default 2; 0 on machines with 1-2 CPUs, where threads compete with the model's; 0: read, "
                        "restore and write one after the other)")
    p.add_argument("--overwrite", action="store_true", help="replace results already in OUTPUT")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


@run_cli(PROG)
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse already printed the usage message
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    if args.batch_size < 1:
        raise MeerError(f"--batch-size must be >= 1, got {args.batch_size}")
    if not 0.0 <= args.min_occlusion <= 1.0:
        raise MeerError(f"--min-occlusion must be a fraction in [0, 1], got {args.min_occlusion}")
    if args.detect_size < 0:
        raise MeerError(f"--detect-size must be >= 0 (0: full resolution), got {args.detect_size}")
    if args.min_face < 12:
        raise MeerError(f"--min-face must be >= 12 pixels, got {args.min_face}")
    if args.io_threads is not None and args.io_threads < 0:
        raise MeerError(f"--io-threads must be >= 0, got {args.io_threads}")

    from meer.inference.folder import check_output, restore_folder
    from meer.inference.loading import load_restorer

    if not Path(args.input).exists():
        raise MeerError(f"input not found: {args.input}")
    check_output(args.input, args.output, args.overwrite)  # fail before the slow model loading

    t0 = time.perf_counter()
    restorer, info = load_restorer(args.checkpoint, device=args.device, precision=args.precision,
                                   batch_size=args.batch_size, faces=args.faces, aligned=args.aligned,
                                   min_occlusion=args.min_occlusion, min_face=args.min_face,
                                   detect_size=args.detect_size,
                                   detector_fallback=args.dlib_fallback)
    load_s = time.perf_counter() - t0
    if not args.quiet:
        print(f"{PROG}: {info['checkpoint']} on {info['device']} ({info['precision']})", file=sys.stderr)
    run_info = {"command": [PROG, *(argv if argv is not None else sys.argv[1:])], **info,
                "load_seconds": round(load_s, 3), "versions": versions()}
    run = restore_folder(args.input, args.output, restorer, overwrite=args.overwrite, progress=not args.quiet,
                         run_info=run_info, io_threads=args.io_threads)

    report = FolderReport(done=run.totals["photos_ok"])
    for rec in run.records:
        if rec.status != "ok":
            report.skip(rec.path, f"{rec.status}: {rec.reason}")
    report.print_skipped(PROG)
    print(f"{PROG}: {run.final_line()}")
    if run.exit_code() != 0:
        what = "no files found" if not run.records else "no input could be processed"
        print(f"{PROG}: {what} in {args.input} (see {Path(args.output) / 'summary.csv'})", file=sys.stderr)
    return run.exit_code()


def versions() -> dict[str, str]:
    import kornia

    return {"meer": meer.__version__, "python": platform.python_version(), "torch": torch.__version__,
            "kornia": kornia.__version__, "numpy": np.__version__}


if __name__ == "__main__":
    sys.exit(main())
