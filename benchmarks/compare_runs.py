"""Training curves of two or more runs side by side (e.g. the trainer before and after a fix).

    python benchmarks/compare_runs.py RUN_A RUN_B [...] --out curves.png [--keys loss/d_patch loss/d_local ...]

Reads each run's ``stats.jsonl`` (``train/<key>`` records) and draws one panel per key, one line per run, labelled
with the run directory's name. Loss parts are plotted as logged; a run written before the trainer logged
unweighted parts shows weighted ones (say so in the caption).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

KEYS = ["loss/d_patch", "loss/d_local", "loss/adv_patch", "loss/adv_local", "loss/l1_masked", "loss/occ"]


def series(run: Path, key: str) -> tuple[list[int], list[float]]:
    steps, values = [], []
    for line in (run / "stats.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if f"train/{key}" in rec:
            steps.append(rec["step"])
            values.append(rec[f"train/{key}"])
    return steps, values


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--keys", nargs="+", default=KEYS)
    ap.add_argument("--title", default="")
    args = ap.parse_args(argv)
    cols = 3
    rows = -(-len(args.keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, key in zip(axes.flat, args.keys):
        for run in args.runs:
            s, v = series(run, key)
            if s:
                ax.plot(s, v, label=run.name, lw=1.3)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(args.keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    if args.title:
        fig.suptitle(args.title, fontsize=10)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"compare_runs: wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
