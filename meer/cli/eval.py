"""`meer-eval`: standard verification protocols for masked faces, judged by recognizers nobody here trained.

    meer-eval DATA --out REPORT_DIR [--pairs FILE] [--identities FILE] [--aligned]
              [--methods none meer telea-blind meer-oracle telea meer-embed eum]
              [--judges dlib dlib-torch meer facenet] [--checkpoint PATH]
    meer-eval make-pairs DATA --out pairs.txt [--identities FILE] [--folds 10] [--per-fold 300] [--seed 0]
    meer-eval DATA --pairs pairs.txt --as-is --out REPORT_DIR   (published protocol, images as given: MFR2, LFW)
    meer-eval lfw.bin --out REPORT_DIR                          (insightface verification .bin, image + flip)
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from meer.cli.common import EXIT_OK, run_cli
from meer.utils.errors import MeerError

PROG = "meer-eval"


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "meer" / "eval"


def eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Evaluate masked-face recognition and restoration: "
                                "verification (10-fold accuracy, AUC, EER, TAR@FAR), rank-1, restoration quality, "
                                "detectability. Subcommand: 'meer-eval make-pairs' writes a pairs file.")
    p.add_argument("data", type=Path, help="identity folders: DATA/<id>/*.jpg or DATA/<id>/{masked,unmasked}/*; "
                   "or an insightface verification .bin (lfw.bin, cfp_fp.bin, agedb_30.bin)")
    p.add_argument("--out", type=Path, required=True, help="report folder (report.md, results.json, PNGs)")
    p.add_argument("--pairs", type=Path, help="LFW pairs.txt-format file (default: generate and save pairs.txt)")
    p.add_argument("--identities", type=Path, help="only these identities (one per line), e.g. an eval-only split")
    p.add_argument("--aligned", action="store_true", help="DATA holds 112x112 ArcFace-aligned crops")
    p.add_argument("--as-is", action="store_true", help="score the --pairs pairs on the images exactly as given "
                   "(no synthetic masks; e.g. MFR2 or LFW with their own pairs.txt)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                   help="embed each image with its horizontal flip (default: on for .bin, off for --as-is)")
    p.add_argument("--methods", nargs="+", default=None,
                   help="blind (no ground-truth mask): none, meer (its own predicted region), telea-blind (Telea "
                   "inpainting of the region meer replaced); oracle (the ground-truth mask, synthetic masks only): "
                   "meer-oracle, telea; embeddings: meer-embed, eum (default: all; unavailable ones are skipped "
                   "with a note)")
    p.add_argument("--judges", nargs="+", default=["dlib", "meer", "facenet"],
                   help="dlib meer facenet (default), dlib-torch (dlib's network in PyTorch, batched), meer-flip "
                   "(meer's embedding of the crop plus its mirror's, insightface's test-time protocol)")
    p.add_argument("--checkpoint", type=Path, help="MEER checkpoint (default: $MEER_CHECKPOINT, shipped, cache)")
    p.add_argument("--eum", type=Path, help="EUM/SRT checkpoint for method eum (scored on the judge it was trained on)")
    p.add_argument("--seed", type=int, default=0, help="synthetic masks and generated pairs (default 0)")
    p.add_argument("--folds", type=int, default=10)
    p.add_argument("--per-fold", type=int, default=300, help="genuine (= impostor) pairs per fold, at most")
    p.add_argument("--cache", type=Path, default=None, help=f"embedding / landmark cache (default {default_cache()})")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--grid", type=int, default=4, help="best and worst restorations shown per method (0: none)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def pairs_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{PROG} make-pairs", description="Balanced genuine/impostor pairs in "
                                "identity-disjoint folds (LFW pairs.txt format), deterministic per seed.")
    p.add_argument("data", type=Path)
    p.add_argument("--out", type=Path, required=True, help="pairs file to write")
    p.add_argument("--identities", type=Path)
    p.add_argument("--folds", type=int, default=10)
    p.add_argument("--per-fold", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    return p


def make_pairs_main(argv: list[str]) -> int:
    from meer.data.pairs import make_pairs, write_pairs
    from meer.data.splits import read_identity_list
    from meer.evaluation.dataset import scan_eval_data

    args = pairs_parser().parse_args(argv)
    ids = read_identity_list(args.identities) if args.identities else None
    data = scan_eval_data(args.data, ids)
    pairs = make_pairs(data.files, n_folds=args.folds, per_fold=args.per_fold, seed=args.seed)
    write_pairs(args.out, pairs, overwrite=args.overwrite)
    n = sum(p.same for p in pairs)
    print(f"{PROG}: wrote {len(pairs)} pairs ({n} genuine, {len(pairs) - n} impostor, {args.folds} folds) "
          f"from {len(data.files)} identities to {args.out}")
    return EXIT_OK


def load_model(args) -> tuple[object, str, str | None]:
    """(model or None, cache key, why not)."""
    wants = ({"meer", "meer-oracle", "telea-blind", "meer-embed"} & set(args.methods)
             or {"meer", "meer-flip"} & set(args.judges))
    if not wants:
        return None, "", "not requested"
    from meer.inference.weights import find_checkpoint

    try:
        path = find_checkpoint(args.checkpoint)
    except MeerError as exc:
        if args.checkpoint is not None:
            raise
        return None, "", f"no MEER checkpoint ({str(exc).split('. Pass')[0]})"
    from meer.evaluation.components import file_key
    from meer.models.checkpoint import load_meer

    model, meta = load_meer(path, map_location=args.device if args.device != "auto" else "cpu")
    model.training_teacher = ((meta.get("train_config") or {}).get("loss") or {}).get("teacher") or None
    return model.to(args.device if args.device != "auto" else "cpu"), file_key(path), None


@run_cli(PROG)
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "make-pairs":
        return make_pairs_main(argv[1:])
    args = eval_parser().parse_args(argv)
    from meer.evaluation.components import METHODS, build_components, mark_teacher_judges

    args.methods = list(METHODS) if args.methods is None else args.methods
    from meer.evaluation.harness import EvalOptions, run_evaluation
    from meer.utils.files import check_output_dir

    if not args.data.exists():
        raise MeerError(f"data folder not found: {args.data}")
    is_bin = args.data.is_file() and args.data.suffix.lower() == ".bin"
    if args.flip is not None and not (args.as_is or is_bin):
        raise MeerError("--flip applies to --as-is runs and .bin files only")
    if args.data.is_file() and not is_bin:
        raise MeerError(f"{args.data} is a file: DATA is a folder of identity folders or a verification .bin")
    out = args.out.resolve() if is_bin else check_output_dir(args.data, args.out)
    if (out / "report.md").exists() and not args.overwrite:
        raise MeerError(f"{out / 'report.md'} already exists (use --overwrite to replace it)")
    if args.folds < 2:
        raise MeerError(f"--folds must be at least 2, got {args.folds}")
    from meer.utils.device import resolve_device

    args.device = str(resolve_device(args.device))
    model, key, why = load_model(args)
    cache = None if args.no_cache else (args.cache or default_cache())
    if args.as_is or is_bin:
        return published_main(args, out, model, key, why, cache)
    comp = build_components(args.methods, args.judges, model, key, why, args.device, eum_path=args.eum)
    mark_teacher_judges(comp.judges, getattr(model, "training_teacher", None), comp.notes)
    opts = EvalOptions(data=args.data, out=out, pairs=args.pairs, identities=args.identities, aligned=args.aligned,
                       seed=args.seed, folds=args.folds, per_fold=args.per_fold, cache_dir=cache, grid=args.grid,
                       progress=not args.quiet)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    results = run_evaluation(opts, comp).results
    for n in results["notes"]:
        print(f"{PROG}: note: {n}", file=sys.stderr)
    print(f"{PROG}: report written to {out / 'report.md'} ({results['seconds']} s)")
    return EXIT_OK


def published_main(args, out: Path, model, key: str, why: str | None, cache: Path | None) -> int:
    """``--as-is`` and ``.bin`` runs: the images as given, the protocol's own pairs."""
    from meer.evaluation.components import build_components
    from meer.evaluation.published import PublishedOptions, run_published

    comp = build_components(args.methods, args.judges, model, key, why, args.device, synthetic=False,
                            eum_path=args.eum)
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    opts = PublishedOptions(data=args.data, out=out, pairs=args.pairs, identities=args.identities,
                            aligned=args.aligned, folds=args.folds, seed=args.seed, cache_dir=cache,
                            progress=not args.quiet, flip=args.flip)
    results = run_published(opts, comp)
    for n in results["notes"]:
        print(f"{PROG}: note: {n}", file=sys.stderr)
    print(f"{PROG}: report written to {out / 'report.md'} ({results['seconds']} s)")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
