"""`meer-export`: ONNX and TorchScript files of a MEER checkpoint's restorer and embedder, for deployment.

    meer-export CHECKPOINT OUT_DIR [--format onnx torchscript] [--overwrite]

Writes ``OUT_DIR/{restorer,embedder}.{onnx,ts}`` and ``export.json`` (inputs, outputs, config); see
``meer.inference.export`` for the graphs' inputs and outputs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from meer.cli.common import EXIT_OK, run_cli

PROG = "meer-export"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Export a MEER checkpoint's restorer (masked crop -> restored "
                                "crop + occlusion map) and embedder (crop -> unit embedding) as ONNX (opset 17) and "
                                "TorchScript files.")
    p.add_argument("checkpoint", type=Path, help="meer inference checkpoint (e.g. checkpoints/meer_112.pt)")
    p.add_argument("out_dir", type=Path, help="folder for restorer.onnx, embedder.onnx, *.ts and export.json")
    p.add_argument("--format", nargs="+", default=["onnx", "torchscript"], choices=["onnx", "torchscript"])
    p.add_argument("--overwrite", action="store_true", help="replace existing files in OUT_DIR")
    return p


@run_cli(PROG)
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from meer.inference.export import export_model
    from meer.inference.weights import find_checkpoint
    from meer.models.checkpoint import load_meer

    path = find_checkpoint(args.checkpoint)
    model, meta = load_meer(path)
    res = export_model(model, args.out_dir, tuple(dict.fromkeys(args.format)),
                       meta={"checkpoint": str(path), **meta}, overwrite=args.overwrite)
    for n in res.notes:
        print(f"{PROG}: note: {n}", file=sys.stderr)
    names = ", ".join(sorted(res.files))
    print(f"{PROG}: wrote {names} to {args.out_dir}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
