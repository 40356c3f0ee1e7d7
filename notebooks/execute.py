"""Execute the inspection notebooks headless (nbclient), in place or into another folder.

    python notebooks/execute.py                      # every notebook, full data, outputs written in place
    python notebooks/execute.py 02_decoupling.ipynb  # one notebook
    python notebooks/execute.py --small --out /tmp/nb  # the quick variant the test suite runs

``--small`` sets ``MEER_NOTEBOOK_SMALL=1``: every notebook then uses a few images and skips slow sections, so the
whole set runs in about a minute on 2 cores. Cells run with the notebooks folder as working directory. A cell
error stops that notebook with a one-line message naming the notebook and the cell (exit status 1).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SMALL_ENV = "MEER_NOTEBOOK_SMALL"


def notebooks(names: list[str] | None = None) -> list[Path]:
    if names:
        return [(HERE / n) if not Path(n).is_file() else Path(n) for n in names]
    return sorted(HERE.glob("[0-9][0-9]_*.ipynb"))


def execute(path: Path, out: Path, small: bool, timeout: int = 600) -> float:
    """Run every cell of ``path`` and write the executed notebook to ``out``; returns seconds taken."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    old = os.environ.get(SMALL_ENV)
    os.environ[SMALL_ENV] = "1" if small else "0"
    t0 = time.perf_counter()
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    except CellExecutionError as e:
        raise RuntimeError(f"{path.name}: a cell failed: {e.ename}: {e.evalue}") from None
    finally:
        if old is None:
            os.environ.pop(SMALL_ENV, None)
        else:
            os.environ[SMALL_ENV] = old
    out.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="notebook files (default: every NN_*.ipynb here)")
    ap.add_argument("--small", action="store_true", help=f"quick variant ({SMALL_ENV}=1)")
    ap.add_argument("--out", type=Path, help="write executed notebooks here instead of in place")
    args = ap.parse_args(argv)
    failed = 0
    for path in notebooks(args.names):
        target = (args.out / path.name) if args.out else path
        try:
            secs = execute(path, target, args.small)
        except (RuntimeError, FileNotFoundError) as e:
            print(f"FAILED {e}", file=sys.stderr)
            failed += 1
            continue
        size = target.stat().st_size / 1e6
        print(f"{path.name}: {secs:.0f} s, {size:.2f} MB -> {target}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
