"""`meer-train`: train MEER (or a baseline task) from a YAML config.

    meer-train --config configs/meer_112_cpu.yaml [key.sub=value ...] [--dry-run]
    meer-train --resume runs/00003-meer_112_cpu [key=value ...]      # latest checkpoint of that run
    meer-train --resume runs/00003-x/checkpoints/ckpt-00002000.pt
    torchrun --nproc_per_node 4 -m meer.cli.train --config configs/meer_112_gpu.yaml

Each run gets ``runs/<NNNNN>-<name>/`` with the resolved config, log.txt, stats.jsonl, TensorBoard
events, image grids, checkpoints and, at the end, ``meer_inference.pt`` for ``meer-restore``.
"""
from __future__ import annotations

import argparse
import sys

from meer.cli.common import EXIT_OK, run_cli
from meer.config import ConfigError, load_config

PROG = "meer-train"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Train MEER: mask decoupling, restoration and recognition, jointly.")
    p.add_argument("--config", help="YAML config (configs/tiny.yaml, configs/meer_112_cpu.yaml, configs/meer_112_gpu.yaml)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr_g=1e-3 data.batch_size=16")
    p.add_argument("--resume", metavar="RUN_DIR_OR_CKPT",
                   help="continue a run: its directory (latest checkpoint) or a checkpoint file; "
                        "the run's saved config is used, overrides apply on top (e.g. total_steps=20000)")
    p.add_argument("--dry-run", action="store_true",
                   help="resolve the config, check the data, build the model, print parameter counts and the run "
                        "directory, then exit without training")
    return p


@run_cli(PROG)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from meer.training import rundir  # heavy imports after argument parsing (fast --help)
    from meer.training.config import TrainConfig
    from meer.training.loop import train

    if args.resume:
        run_dir, _ckpt = rundir.resolve_resume(args.resume)
        path = args.config or (run_dir / rundir.CONFIG_FILE)
        if not args.config and not path.is_file():
            raise ConfigError(f"--resume: {run_dir} has no {rundir.CONFIG_FILE}; pass --config")
    elif args.config:
        path = args.config
    else:
        raise ConfigError("give --config configs/<name>.yaml (or --resume <run dir>)")
    cfg = load_config(TrainConfig, path, args.overrides)
    result = train(cfg, resume=args.resume, dry_run=args.dry_run)
    if not args.dry_run and result.run_dir is not None and result.export is not None:
        print(f"{PROG}: done, {result.step} steps; inference checkpoint: {result.export}", file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
