"""The report's figures from arrays: ROC curves and genuine / impostor score histograms (matplotlib), and the
restoration grids (plain pixels).

They take ``{label: (scores, genuine)}`` arrays or rows of uint8 images and a path, and import nothing of the
harness; the report writer (``meer.evaluation.report``) and the notebook helpers (``meer.evaluation.plots``) both
draw with them.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib.ticker
import matplotlib.pyplot as plt  # headless runs fall back to Agg by themselves; notebooks keep their inline backend
import numpy as np

from meer.evaluation.metrics import roc_auc, roc_curve
from meer.utils.images import write_image


def draw_roc(ax, curves: dict[str, tuple[np.ndarray, np.ndarray]], min_far: float = 1e-3, auc: bool = False,
             colors: dict[str, str] | None = None) -> None:
    """TAR against FAR (log axis from ``min_far``) of every ``label -> (scores, genuine)`` on ``ax``;
    ``colors`` fixes a curve's colour by its label (else matplotlib's cycle)."""
    for label, (scores, labels) in curves.items():
        fpr, tpr, _ = roc_curve(scores, labels)
        text = f"{label} (AUC {roc_auc(scores, labels):.3f})" if auc else label
        ax.step(np.clip(fpr, min_far / 10, 1), tpr, where="post", label=text, lw=1.4,
                color=(colors or {}).get(label))
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # spans of one decade label only 10^k
    ax.set_xlim(min_far, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false accept rate (impostor pairs accepted)")
    ax.set_ylabel("true accept rate")
    ax.grid(alpha=0.3, which="both")


def draw_histogram(ax, scores: np.ndarray, labels: np.ndarray, bins) -> None:
    """Genuine (green) and impostor (red) score densities on shared ``bins``."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores)
    style = dict(bins=bins, alpha=0.6, histtype="stepfilled", density=True)
    ax.hist(scores[~labels], color="tab:red", label=f"impostor ({(~labels).sum()})", **style)
    ax.hist(scores[labels], color="tab:green", label=f"genuine ({labels.sum()})", **style)


def roc_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str, path: Path) -> Path:
    """``curves``: label -> (scores, labels). TAR against FAR on a log axis (FAR >= 1e-3)."""
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=110)
    draw_roc(ax, curves)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.subplots_adjust(left=0.12, right=0.97, bottom=0.12, top=0.92)
    fig.savefig(path)
    plt.close(fig)
    return path


def histogram_figure(panels: dict[str, tuple[np.ndarray, np.ndarray]], title: str, xlabel: str, path: Path) -> Path:
    """One panel per condition: genuine and impostor score histograms on shared bins."""
    n = len(panels)
    cols = min(3, n)
    rows = (n + cols - 1) // cols
    height = 2.8 * rows + 0.6
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, height), dpi=100, squeeze=False)
    allscores = np.concatenate([s for s, _ in panels.values()]) if panels else np.zeros(1)
    bins = np.linspace(allscores.min(), allscores.max(), 40) if allscores.size > 1 else 10
    for ax, (label, (scores, labels)) in zip(axes.ravel(), panels.items()):
        draw_histogram(ax, scores, labels, bins)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.legend(fontsize=7)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.5 / height, top=1 - 0.75 / height, hspace=0.55, wspace=0.2)
    fig.savefig(path)
    plt.close(fig)
    return path


def region_tile(crop: np.ndarray, region: np.ndarray, color: tuple[int, int, int] = (255, 0, 64),
                alpha: float = 0.45) -> np.ndarray:
    """``crop`` (H x W x 3 uint8) with ``region`` (H x W bool) tinted: where a method says it replaced pixels."""
    out = crop.astype(np.float32)
    out[region] = (1 - alpha) * out[region] + alpha * np.asarray(color, np.float32)
    return out.round().clip(0, 255).astype(np.uint8)


def restoration_grid(rows: list[tuple[np.ndarray, ...]], path: Path, gap: int = 4, zoom: int = 2) -> Path:
    """Tile ``rows`` of equally sized uint8 images (e.g. masked | replaced region | restored | reference) into one
    PNG, each pixel shown as a ``zoom`` x ``zoom`` block (display only: nothing is interpolated)."""
    if not rows:
        raise ValueError("no rows to draw")
    h, w = rows[0][0].shape[:2]
    h, w = h * zoom, w * zoom
    ncol = max(len(r) for r in rows)
    grid = np.full((len(rows) * (h + gap) + gap, ncol * (w + gap) + gap, 3), 255, np.uint8)
    for i, r in enumerate(rows):
        for j, im in enumerate(r):
            y, x = gap + i * (h + gap), gap + j * (w + gap)
            grid[y:y + h, x:x + w] = np.repeat(np.repeat(im, zoom, axis=0), zoom, axis=1)
    return write_image(path, grid, overwrite=True)
