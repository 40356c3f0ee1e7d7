"""A ``meer-eval`` run in a notebook: its figures and the pairs behind them.

The drawings come from :mod:`meer.evaluation.figures` (re-exported here: ``roc_figure``, ``histogram_figure``,
``draw_roc``, ``draw_histogram``); from a ``meer-eval`` output folder ``load_scores``, ``roc_grid``,
``histogram_grid`` and ``headline_table`` give figures and tables, and ``run_keeping_views`` / ``scored_pairs`` /
``worst_pairs`` / ``failure_gallery`` show *which* pairs failed: ``scores.npz`` keeps every score but not the pair
it belongs to, the run's :class:`~meer.evaluation.views.EvalResult` keeps both. This module uses the harness; the
harness and the report writer never import it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import matplotlib.pyplot as plt  # headless runs fall back to Agg by themselves; notebooks keep their inline backend
import numpy as np

from meer.evaluation.cells import accuracy_cell, curve_label, gap_cell, mask_cell, pct, tar_cell
from meer.evaluation.figures import draw_histogram, draw_roc, histogram_figure, roc_figure  # noqa: F401
from meer.evaluation.keys import NO_METHOD, SIDES, ScoreKey, ViewKey
from meer.evaluation.scoring import score_pairs
from meer.evaluation.views import EvalResult, Views

if TYPE_CHECKING:
    from meer.data.pairs import Pair
    from meer.evaluation.harness import Components, EvalOptions
    from meer.evaluation.judge import Judge


# ----------------------------------------------------------------------------- a report folder, as figures

def load_scores(report_dir: str | Path) -> dict[ScoreKey, tuple[np.ndarray, np.ndarray]]:
    """Every scored pair of a ``meer-eval`` run: ``{ScoreKey(source, judge, condition, method): (scores, genuine)}``,
    read from ``REPORT_DIR/scores.npz`` (scores are similarities: larger = same person)."""
    out: dict[ScoreKey, tuple[np.ndarray, np.ndarray]] = {}
    with np.load(Path(report_dir) / "scores.npz") as z:
        for name in z.files:
            if name.endswith("|scores"):
                stem = name[: -len("|scores")]
                out[ScoreKey.from_npz_name(stem)] = (z[name], z[stem + "|genuine"].astype(bool))
    return out


def roc_panels(score_sets: dict[ScoreKey, tuple[np.ndarray, np.ndarray]], prefix: str = "",
               conditions: Sequence[str] | None = None) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Curves grouped one panel per (mask source, judge): ``{panel title: {curve label: (scores, genuine)}}``.

    Embedding methods scored in a judge's own space (``"meer (own space)"``, e.g. ``meer-embed``) join that
    judge's panel; the ``restored-*`` rows of method ``none`` are left out (they repeat the masked rows).
    ``conditions`` keeps only those conditions, in that order of preference for the legend."""
    panels: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    order = list(conditions) if conditions is not None else None
    keys = [k for k in score_sets if not (k.condition.startswith("restored") and k.method == NO_METHOD)]
    if order is not None:
        keys = [k for k in keys if k.condition in order]
        keys.sort(key=lambda k: order.index(k.condition))
    for k in keys:
        title = f"{prefix}{k.source} masks, judge {k.base_judge}"
        panels.setdefault(title, {})[curve_label(k.condition, k.method)] = score_sets[k]
    return panels


def roc_grid(panels: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]], ncols: int = 2,
             title: str | None = None, panel_size: tuple[float, float] = (5.2, 3.9)):
    """One ROC panel per entry of ``panels`` (e.g. from ``roc_panels``); the legend gives each curve's AUC, and a
    label has the same colour in every panel. The FAR axis starts at the power of ten just below 1 / (the panel's
    impostor pairs), clipped to 1e-3 ... 1e-1. Returns the matplotlib figure."""
    n = max(1, len(panels))
    ncols = max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size[0] * ncols, panel_size[1] * nrows), squeeze=False)
    cycle = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    labels = list(dict.fromkeys(label for curves in panels.values() for label in curves))
    colors = {label: cycle[i % len(cycle)] for i, label in enumerate(labels)}
    for ax, (name, curves) in zip(axes.ravel(), panels.items()):
        impostors = max((int((~np.asarray(y, bool)).sum()) for _, y in curves.values()), default=1)
        min_far = float(np.clip(10 ** np.floor(np.log10(1.0 / max(impostors, 1))), 1e-3, 1e-1))
        draw_roc(ax, curves, min_far=min_far, auc=True, colors=colors)
        ax.set_title(name, fontsize=9)
        ax.legend(fontsize=6.5, loc="lower right")
    return _finish_grid(fig, axes, len(panels), title)


def histogram_grid(curves: dict[str, tuple[np.ndarray, np.ndarray]], xlabel: str, ncols: int = 4,
                   title: str | None = None, bins: int = 30):
    """Genuine / impostor score histograms, one small panel per curve, all on the same bins (so the panels can
    be compared by eye). Returns the matplotlib figure."""
    n = max(1, len(curves))
    ncols = max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.6 * nrows + 0.4), squeeze=False, sharex=True)
    allscores = np.concatenate([np.asarray(s, float) for s, _ in curves.values()]) if curves else np.zeros(2)
    lo, hi = float(allscores.min()), float(allscores.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
    for ax, (label, (scores, labels)) in zip(axes.ravel(), curves.items()):
        draw_histogram(ax, scores, labels, edges)
        ax.set_title(label, fontsize=8)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6.5)
    return _finish_grid(fig, axes, len(curves), title)


def _finish_grid(fig, axes, used: int, title: str | None):
    """Blank the unused panels of a grid, add the title, lay it out."""
    for ax in axes.ravel()[used:]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def headline_table(reports: dict[str, dict], skip_none_restored: bool = True) -> str:
    """A plain-text table of the headline numbers of one or more ``results.json`` dicts (``{data name: results}``):
    10-fold accuracy with its 95% interval, AUC, EER, TAR at FAR 1e-2 / 1e-3 (``*``: fewer impostor pairs than
    1/FAR, measured at zero false accepts), genuine / impostor pairs, FTE and the gap recovered; ``mask`` says
    which rows had the ground-truth mask (oracle) and which did not (blind)."""
    head = ["data", "masks", "judge", "condition", "method", "mask", "acc % (95% CI)", "AUC", "EER %", "TAR@1e-2",
            "TAR@1e-3", "gen/imp", "FTE %", "gap rec."]
    rows = [head]
    for name, res in reports.items():
        for v in res["verification"]:
            if skip_none_restored and v["condition"].startswith("restored") and v["method"] == "none":
                continue
            row = [name, v["source"], v["judge"], v["condition"], v["method"], mask_cell(v)]
            if "accuracy" not in v:
                err = str(v.get("error", "not scored"))
                rows.append(row + [f"n/a: {err[:40]}", "", "", "", "", f"{v.get('pairs_scored', 0)} pairs",
                                   pct(v.get("fte_rate")), ""])
                continue
            rows.append(row + [accuracy_cell(v), f"{v['auc']:.3f}", pct(v["eer"]), tar_cell(v, 1e-2)[0],
                               tar_cell(v, 1e-3)[0], f"{v['genuine']}/{v['impostor']}", pct(v["fte_rate"]),
                               gap_cell(v)])
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- which pairs: per-pair scores

@dataclass
class EvalRun:
    """A finished ``run_evaluation``: its :class:`EvalResult` (results, the crops of every view, every scored list
    of pairs, every embedding), its pairs and the report folder it wrote."""

    result: EvalResult
    pairs: "list[Pair]"
    out: Path  # the report folder (``load_scores(run.out)``)

    @property
    def results(self) -> dict:
        return self.result.results

    @property
    def views(self) -> Views:
        return self.result.views

    @property
    def data(self):
        return self.result.data


@dataclass
class ScoredPair:
    """One pair as a judge scored it in one (mask source, condition, method)."""

    score: float
    genuine: bool
    probe: Path  # the photo on the probe side (the masked / restored one in the masked conditions)
    reference: Path
    source: str  # "synthetic" or "real"
    condition: str  # one of meer.evaluation.keys.CONDITIONS
    method: str  # the method shown on restored sides ("none" otherwise)
    fold: int

    @property
    def views(self) -> tuple[ViewKey, ViewKey]:
        """The views the probe and the reference side show."""
        return tuple(ViewKey.side(r, self.source, self.method) for r in SIDES[self.condition])  # type: ignore

    @property
    def roles(self) -> tuple[str, str]:
        """What each side shows: "clean", "masked" or "restored" (``none`` restores nothing: "masked")."""
        return tuple(v.role for v in self.views)  # type: ignore[return-value]


def run_keeping_views(opts: "EvalOptions", comp: "Components") -> EvalRun:
    """``meer.evaluation.harness.run_evaluation(opts, comp)`` (what ``meer-eval`` runs; it writes the same report
    folder) with the pairs it scored, so single pairs can be looked at afterwards."""
    from meer.data.pairs import read_pairs
    from meer.evaluation import harness

    result = harness.run_evaluation(opts, comp)
    pairs_path = opts.pairs if opts.pairs is not None else opts.out / "pairs.txt"
    pairs = read_pairs(pairs_path, result.data.files).pairs
    return EvalRun(result, pairs, Path(opts.out))


def _check_view(run: EvalRun, source: str, method: str) -> None:
    views = run.views
    if source not in views.sources:
        raise ValueError(f"mask source {source!r} is not in this run (it has {views.sources})")
    if method != NO_METHOD and ViewKey.restored(source, method) not in views.crops:
        raise ValueError(f"method {method!r} did not run on {source} masks (ran: {views.methods(source)})")


def scored_pairs(run: EvalRun, judge: "Judge | str", source: str, condition: str,
                 method: str = NO_METHOD) -> list[ScoredPair]:
    """Every pair of ``condition`` that ``judge`` scored in ``run``, in the order of ``scores.npz``, with the
    photos it joins (the run's own scores: pairs touching a face the judge could not enrol are left out, as in the
    report)."""
    _check_view(run, source, method)
    name = judge if isinstance(judge, str) else judge.name
    key = ScoreKey(source, name, condition, method)
    if key not in run.result.scores:
        raise ValueError(f"no scores for {key} in this run")
    ps = run.result.scores[key]
    return [ScoredPair(float(s), bool(g), a, b, source, condition, method, int(f))
            for (a, b), s, g, f in zip(ps.pairs, ps.scores, ps.genuine, ps.folds)]


def worst_pairs(pairs: Sequence[ScoredPair], k: int = 4) -> tuple[list[ScoredPair], list[ScoredPair]]:
    """The ``k`` highest-scoring impostor pairs (worst first: highest score first) and the ``k`` lowest-scoring
    genuine pairs (worst first: lowest score first); ties keep the input order."""
    impostors = sorted((p for p in pairs if not p.genuine), key=lambda p: -p.score)
    genuine = sorted((p for p in pairs if p.genuine), key=lambda p: p.score)
    return impostors[:k], genuine[:k]


def face_tile(crop: np.ndarray, cells: int | None = 12) -> np.ndarray:
    """A face crop pixelated into ``cells x cells`` blocks with ``meer.inference.visuals.pixelate`` (a copy as it is
    when ``cells`` is None)."""
    from meer.inference.visuals import pixelate

    return pixelate(crop, cells) if cells else crop.copy()


def describe_score(judge: "Judge", score: float) -> str:
    """``dist 0.52`` for judges scored by (negative) Euclidean distance, ``cos 0.83`` for cosine judges."""
    return f"dist {-score:.2f}" if judge.metric == "euclidean" else f"cos {score:.2f}"


def gallery_figure(rows: Sequence[tuple[str, Sequence[tuple[str, np.ndarray]]]], cells: int | None = 12,
                   title: str | None = None, tile: float = 1.9):
    """Rows of captioned face crops: ``[(row label, [(caption, crop), ...]), ...]``. Every crop is pixelated
    (``face_tile(crop, cells)``; ``cells=None`` shows it as it is)."""
    ncols = max((len(t) for _, t in rows), default=1)
    nrows = max(1, len(rows))
    fig, axes = plt.subplots(nrows, ncols, figsize=(tile * ncols + 0.3, (tile + 0.55) * nrows + 0.3), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for i, (label, tiles) in enumerate(rows):
        for j, (caption, crop) in enumerate(tiles):
            ax = axes[i, j]
            ax.imshow(face_tile(crop, cells))
            ax.set_title(caption, fontsize=7)
        axes[i, 0].text(-0.06, 0.5, label, transform=axes[i, 0].transAxes, rotation=90, ha="right", va="center",
                        fontsize=7.5)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def failure_gallery(run: EvalRun, judge: "Judge", pairs: Sequence[ScoredPair], methods: Sequence[str] = (),
                    cells: int | None = 12, title: str | None = None):
    """One row per pair: the probe as scored, the probe restored by each of ``methods`` (each scored against
    the same reference), the probe's unmasked photo when the masks are synthetic, then the reference.
    Scores are ``judge``'s (``describe_score``, from the run's embeddings); the images are pixelated unless
    ``cells`` is None."""
    emb = run.result.embeddings[judge.name]

    def score(probe_view: ViewKey, probe: Path, ref_view: ViewKey, ref: Path) -> str:
        ps = score_pairs(judge, [(probe, ref, True, 0)], emb.get(probe_view, {}), emb.get(ref_view, {}))
        return describe_score(judge, float(ps.scores[0])) if ps.scored else "not enrolled"

    rows = []
    for p in pairs:
        va, vb = p.views
        probe, ref = run.views.get(va, p.probe), run.views.get(vb, p.reference)
        shown = va.role if va.role != "restored" else f"restored, {p.method}"
        tiles = [(f"probe ({shown})\n{describe_score(judge, p.score)}", probe)]
        if va.role != "clean":
            for m in methods:
                if m == p.method and va.role == "restored":
                    continue
                _check_view(run, p.source, m)
                view = ViewKey.restored(p.source, m)
                tiles.append((f"probe, {m}\n{score(view, p.probe, vb, p.reference)}", run.views.get(view, p.probe)))
            if p.source == "synthetic":
                clean = ViewKey.clean()
                tiles.append((f"probe unmasked\n{score(clean, p.probe, vb, p.reference)}",
                              run.views.get(clean, p.probe)))
        tiles.append((f"reference ({'restored, ' + p.method if vb.role == 'restored' else vb.role})", ref))
        ia, ib = run.data.images[p.probe], run.data.images[p.reference]
        who = ia.identity if p.genuine else f"{ia.identity} /\n{ib.identity}"
        rows.append((f"{'genuine' if p.genuine else 'impostor'}: {who}", tiles))
    return gallery_figure(rows, cells=cells, title=title)
