"""``python -m meer.cli.maskmtl_eval --checkpoint CKPT``: per-task accuracy / MAE of a MaskMTL checkpoint
on unmasked vs synthetically masked test faces (the scoring lives in ``meer.evaluation.maskmtl_eval``)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from meer.cli.common import EXIT_OK, run_cli
from meer.config import from_dict
from meer.evaluation.maskmtl_eval import evaluate_maskmtl, format_table, load_maskmtl_checkpoint

PROG = "maskmtl-eval"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="Per-task accuracy / MAE of a MaskMTL checkpoint on "
                                                       "unmasked vs synthetically masked test faces.")
    p.add_argument("--checkpoint", required=True, help="a checkpoint of a task: maskmtl run")
    p.add_argument("--utkface-root", help="UTKFace folder (default: the run's maskmtl.data.utkface_root)")
    p.add_argument("--test-list", help="UTKFace test list (default: the run's maskmtl.data.utkface_test_list)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--limit", type=int, default=0, help="score only the first N test faces (0: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic masks")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", help="also write the results here")
    return p


@run_cli(PROG)
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from meer.data.multitask import MaskMTLDataConfig, build_dataset, collate_targets

    model, cfg = load_maskmtl_checkpoint(args.checkpoint, args.device)
    data = dict(cfg.get("maskmtl", {}).get("data", {}))
    if args.utkface_root:
        data.update(utkface_root=args.utkface_root, celeba_images=None, celeba_attrs=None)
    if args.test_list:
        data["utkface_test_list"] = args.test_list
    dc = from_dict(MaskMTLDataConfig, data, source=args.checkpoint, prefix="maskmtl.data.")
    dataset, _, notes = build_dataset(dc, "test")
    if args.limit:
        dataset = torch.utils.data.Subset(dataset, range(min(args.limit, len(dataset))))
    tasks = model.cfg.tasks
    loader = DataLoader(dataset, batch_size=args.batch_size, shuffle=False,
                        collate_fn=lambda items: collate_targets(items, tasks))
    results = evaluate_maskmtl(model, loader, seed=args.seed, device=args.device)
    for note in notes:
        print(f"{PROG}: note: {note}", file=sys.stderr)
    print(f"{len(dataset)} test faces, each unmasked and with a synthetic mask (seed {args.seed})")
    print(format_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
