"""What a run writes while it trains: ``log.txt``, ``stats.jsonl``, TensorBoard, image grids.

Only rank 0 writes; other ranks get a ``RunLogger`` whose methods do nothing, so the loop does not
need ``if rank == 0`` everywhere.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image


#: ``stats.jsonl`` keys (last path part) holding wall-clock measurements: they differ between otherwise
#: identical runs (a resumed run and a straight one), so comparisons of runs leave them out
WALL_CLOCK_KEYS = frozenset({"time", "throughput_img_s", "data_wait_s", "data_wait_share"})


def without_wall_clock(record: dict) -> dict:
    """A ``stats.jsonl`` record without its wall-clock values (:data:`WALL_CLOCK_KEYS`)."""
    return {k: v for k, v in record.items() if k.rsplit("/", 1)[-1] not in WALL_CLOCK_KEYS}


class RunLogger:
    def __init__(self, run_dir: Path | None, enabled: bool = True, tensorboard: bool = True):
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.enabled = enabled and run_dir is not None
        self._tb = None
        self._log = None
        self._stats = None
        if not self.enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.run_dir / "log.txt", "a", encoding="utf-8")
        self._stats = open(self.run_dir / "stats.jsonl", "a", encoding="utf-8")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.run_dir))

    def info(self, message: str, console: bool = True) -> None:
        """A line for log.txt (time-stamped) and, unless told otherwise, the console."""
        if not self.enabled:
            return
        if console:
            print(message, file=sys.stderr, flush=True)
        self._log.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
        self._log.flush()

    def scalars(self, step: int, values: dict[str, float], prefix: str = "") -> None:
        """One ``stats.jsonl`` record and one TensorBoard scalar per key (``train/loss/l1`` ...)."""
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3)}
        record.update({f"{prefix}{k}": float(v) for k, v in values.items()})
        self._stats.write(json.dumps(record) + "\n")
        self._stats.flush()
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(f"{prefix}{k}", float(v), step)

    def grid(self, step: int, rows: list[torch.Tensor], name: str = "grid") -> Path | None:
        """Rows of ``N x C x H x W`` images in [0, 1] (1-channel rows are shown grey) as one PNG in
        ``grids/`` and one TensorBoard image."""
        if not self.enabled:
            return None
        n = min(r.shape[0] for r in rows)
        tiles = [r[:n].detach().float().cpu().clamp(0, 1).expand(-1, 3, -1, -1) for r in rows]
        grid = make_grid(torch.cat(tiles), nrow=n, padding=2, pad_value=1.0)
        path = self.run_dir / "grids" / f"{name}-{step:08d}.png"
        path.parent.mkdir(exist_ok=True)
        save_image(grid, path)
        if self._tb is not None:
            self._tb.add_image(name, grid, step)
        return path

    def close(self) -> None:
        for f in (self._log, self._stats):
            if f is not None:
                f.close()
        if self._tb is not None:
            self._tb.close()
        self._log = self._stats = self._tb = None
