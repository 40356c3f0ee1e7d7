"""Figures of the report (matplotlib): ROC curves and genuine/impostor score histograms."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from meer.evaluation.metrics import roc_curve  # noqa: E402


def roc_figure(curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str, path: Path) -> Path:
    """``curves``: label -> (scores, labels). TAR against FAR on a log axis (FAR >= 1e-3)."""
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=110)
    for label, (scores, labels) in curves.items():
        fpr, tpr, _ = roc_curve(scores, labels)
        ax.step(np.clip(fpr, 1e-4, 1), tpr, where="post", label=label, lw=1.4)
    ax.set_xscale("log")
    ax.set_xlim(1e-3, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false accept rate (impostor pairs accepted)")
    ax.set_ylabel("true accept rate")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, which="both")
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
        labels = labels.astype(bool)
        ax.hist(scores[~labels], bins=bins, alpha=0.6, color="tab:red", label=f"impostor ({(~labels).sum()})",
                density=True)
        ax.hist(scores[labels], bins=bins, alpha=0.6, color="tab:green", label=f"genuine ({labels.sum()})",
                density=True)
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
