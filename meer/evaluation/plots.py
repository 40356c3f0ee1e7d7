"""A ``meer-eval`` run in a notebook: its figures and the pairs behind them.

The drawings come from :mod:`meer.evaluation.figures` (re-exported here: ``roc_figure``, ``histogram_figure``,
``draw_roc``, ``draw_histogram``); from a ``meer-eval`` output folder ``load_scores``, ``roc_grid``,
``histogram_grid`` and ``headline_table`` give figures and tables, and ``run_keeping_views`` / ``scored_pairs`` /
``worst_pairs`` / ``failure_gallery`` show *which* pairs failed: ``scores.npz`` keeps every score but not the pair
it belongs to. This module uses the harness; the harness and the report writer never import it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import matplotlib.pyplot as plt  # headless runs fall back to Agg by themselves; notebooks keep their inline backend
import numpy as np

from meer.evaluation.cells import accuracy_cell, curve_label, gap_cell, pct, tar_cell
from meer.evaluation.figures import draw_histogram, draw_roc, histogram_figure, roc_figure  # noqa: F401

if TYPE_CHECKING:
    from meer.data.pairs import Pair
    from meer.evaluation.harness import Components, EvalOptions, Views
    from meer.evaluation.judge import Judge

#: what ``scores.npz`` is keyed by: ``(source, judge, condition, method)``
ScoreKey = tuple[str, str, str, str]
OWN_SPACE = " (own space)"


# ----------------------------------------------------------------------------- a report folder, as figures

def load_scores(report_dir: str | Path) -> dict[ScoreKey, tuple[np.ndarray, np.ndarray]]:
    """Every scored pair of a ``meer-eval`` run: ``{(source, judge, condition, method): (scores, genuine)}``,
    read from ``REPORT_DIR/scores.npz`` (scores are similarities: larger = same person)."""
    out: dict[ScoreKey, tuple[np.ndarray, np.ndarray]] = {}
    with np.load(Path(report_dir) / "scores.npz") as z:
        for name in z.files:
            if name.endswith("|scores"):
                key = tuple(name[: -len("|scores")].split("|"))
                out[key] = (z[name], z[name[: -len("scores")] + "genuine"].astype(bool))  # type: ignore[index]
    return out


def roc_panels(score_sets: dict[ScoreKey, tuple[np.ndarray, np.ndarray]], prefix: str = "",
               conditions: Sequence[str] | None = None) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Curves grouped one panel per (mask source, judge): ``{panel title: {curve label: (scores, genuine)}}``.

    Embedding methods scored in a judge's own space (``"meer (own space)"``, e.g. ``meer-embed``) join that
    judge's panel; the ``restored-*`` rows of method ``none`` are left out (they repeat the masked rows).
    ``conditions`` keeps only those conditions, in that order of preference for the legend."""
    panels: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    order = list(conditions) if conditions is not None else None
    keys = [k for k in score_sets if not (k[2].startswith("restored") and k[3] == "none")]
    if order is not None:
        keys = [k for k in keys if k[2] in order]
        keys.sort(key=lambda k: order.index(k[2]))
    for source, judge, cond, method in keys:
        base = judge.replace(OWN_SPACE, "")
        title = f"{prefix}{source} masks, judge {base}"
        panels.setdefault(title, {})[curve_label(cond, method)] = score_sets[(source, judge, cond, method)]
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
    1/FAR, measured at zero false accepts), genuine / impostor pairs, FTE and the gap recovered."""
    head = ["data", "masks", "judge", "condition", "method", "acc % (95% CI)", "AUC", "EER %", "TAR@1e-2",
            "TAR@1e-3", "gen/imp", "FTE %", "gap rec."]
    rows = [head]
    for name, res in reports.items():
        for v in res["verification"]:
            if skip_none_restored and v["condition"].startswith("restored") and v["method"] == "none":
                continue
            row = [name, v["source"], v["judge"], v["condition"], v["method"]]
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
    """A finished ``run_evaluation`` with the canvases it scored (``views``) and its pairs."""

    results: dict
    views: "Views"
    pairs: "list[Pair]"
    cache_dir: Path | None
    out: Path  # the report folder it wrote (``load_scores(run.out)``)

    @property
    def data(self):
        return self.views.data


@dataclass
class ScoredPair:
    """One pair as a judge scored it in one (mask source, condition, method)."""

    score: float
    genuine: bool
    probe: Path  # the photo on the probe side (the masked / restored one in the masked conditions)
    reference: Path
    source: str  # "synthetic" or "real"
    condition: str  # one of meer.evaluation.harness.CONDITIONS
    method: str  # the restorer shown on restored sides ("none" otherwise)
    fold: int

    @property
    def roles(self) -> tuple[str, str]:
        """What each side shows: "clean", "masked" or "restored" (``none`` restores nothing: "masked")."""
        from meer.evaluation.harness import SIDES

        return tuple("masked" if r == "restored" and self.method == "none" else r  # type: ignore[return-value]
                     for r in SIDES[self.condition])


def run_keeping_views(opts: "EvalOptions", comp: "Components") -> EvalRun:
    """``meer.evaluation.harness.run_evaluation(opts, comp)`` (what ``meer-eval`` runs; it writes the same
    report folder) that also keeps the canvases it scored, so single pairs can be looked at afterwards.
    Give ``opts.cache_dir``: ``scored_pairs`` and ``failure_gallery`` then read the run's embeddings from its
    cache instead of computing them again."""
    from meer.data.pairs import read_pairs
    from meer.evaluation import harness

    kept: list = []
    results = harness.run_evaluation(opts, comp, on_views=kept.append)
    if len(kept) != 1:
        raise RuntimeError(f"run_evaluation reported {len(kept)} Views objects, expected 1")
    views = kept[0]
    pairs_path = opts.pairs if opts.pairs is not None else opts.out / "pairs.txt"
    pairs = read_pairs(pairs_path, views.data.files).pairs
    return EvalRun(results, views, pairs, opts.cache_dir, Path(opts.out))


def _view(run: EvalRun, source: str, role: str, method: str, path: Path) -> np.ndarray | None:
    """The canvas a side shows, ``None`` when the photo has no face (a failure to enrol)."""
    views = run.views
    if role != "clean" and source not in views.masked:
        raise ValueError(f"mask source {source!r} is not in this run (it has {sorted(views.masked)})")
    if role == "restored" and (source, method) not in views.restored:
        raise ValueError(f"method {method!r} did not run on {source} masks "
                         f"(ran: {sorted(m for s, m in views.restored if s == source)})")
    return views.get(source, role, method, path)


def scored_pairs(run: EvalRun, judge: "Judge", source: str, condition: str, method: str = "none") -> list[ScoredPair]:
    """Every pair of ``condition`` that ``judge`` scored in ``run``, in the order of ``scores.npz``, with the
    photos it joins. Pairs touching a face the judge could not enrol are left out, as in the report."""
    from meer.evaluation.cache import EmbeddingCache
    from meer.evaluation.harness import source_pairs

    if source not in run.views.masked:
        raise ValueError(f"mask source {source!r} is not in this run (it has {sorted(run.views.masked)})")
    tuples = source_pairs(run.pairs, run.data, source)[condition]
    roles = ScoredPair(0.0, True, Path(), Path(), source, condition, method, 0).roles
    need: dict[tuple[int, Path], np.ndarray] = {}
    for a, b, _, _ in tuples:
        for side, p in ((0, a), (1, b)):
            if (side, p) not in need:
                c = _view(run, source, roles[side], method, p)
                if c is not None:
                    need[(side, p)] = c
    emb: dict[tuple[int, Path], np.ndarray] = {}
    if need:
        cache = EmbeddingCache(run.cache_dir, judge)
        keys = list(need)
        res = cache.embed(np.stack([need[k] for k in keys]))
        cache.save()
        emb = {k: v for k, v, ok in zip(keys, res.vectors, res.ok) if ok}
    out = []
    for a, b, same, fold in tuples:
        ea, eb = emb.get((0, a)), emb.get((1, b))
        if ea is None or eb is None:
            continue
        out.append(ScoredPair(float(judge.pair_scores(ea[None], eb[None])[0]), bool(same), a, b, source, condition,
                              method, int(fold)))
    return out


def worst_pairs(pairs: Sequence[ScoredPair], k: int = 4) -> tuple[list[ScoredPair], list[ScoredPair]]:
    """The ``k`` highest-scoring impostor pairs (worst first: highest score first) and the ``k`` lowest-scoring
    genuine pairs (worst first: lowest score first); ties keep the input order."""
    impostors = sorted((p for p in pairs if not p.genuine), key=lambda p: -p.score)
    genuine = sorted((p for p in pairs if p.genuine), key=lambda p: p.score)
    return impostors[:k], genuine[:k]


def face_tile(canvas: np.ndarray, cells: int | None = 12, margin: int = 8) -> np.ndarray:
    """The face region of an evaluation canvas (the ArcFace crop plus ``margin`` px), pixelated into
    ``cells x cells`` blocks with ``meer.inference.visuals.pixelate`` unless ``cells`` is None."""
    from meer.evaluation.geometry import ARCFACE_REGION
    from meer.inference.visuals import pixelate

    x1, y1, x2, y2 = (int(round(v)) for v in ARCFACE_REGION)
    h, w = canvas.shape[:2]
    crop = canvas[max(0, y1 - margin):min(h, y2 + margin), max(0, x1 - margin):min(w, x2 + margin)]
    return pixelate(crop, cells) if cells else crop.copy()


def describe_score(judge: "Judge", score: float) -> str:
    """``dist 0.52`` for judges scored by (negative) Euclidean distance, ``cos 0.83`` for cosine judges."""
    return f"dist {-score:.2f}" if judge.metric == "euclidean" else f"cos {score:.2f}"


def gallery_figure(rows: Sequence[tuple[str, Sequence[tuple[str, np.ndarray]]]], cells: int | None = 12,
                   title: str | None = None, tile: float = 1.9):
    """Rows of captioned face canvases: ``[(row label, [(caption, canvas), ...]), ...]``. Every canvas is cut to
    its face region and pixelated (``face_tile(canvas, cells)``; ``cells=None`` shows it as it is)."""
    ncols = max((len(t) for _, t in rows), default=1)
    nrows = max(1, len(rows))
    fig, axes = plt.subplots(nrows, ncols, figsize=(tile * ncols + 0.3, (tile + 0.55) * nrows + 0.3), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for i, (label, tiles) in enumerate(rows):
        for j, (caption, canvas) in enumerate(tiles):
            ax = axes[i, j]
            ax.imshow(face_tile(canvas, cells))
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
    Scores are ``judge``'s (``describe_score``); the images are pixelated unless ``cells`` is None."""
    from meer.evaluation.cache import EmbeddingCache

    cache = EmbeddingCache(run.cache_dir, judge)

    def score(a: np.ndarray, b: np.ndarray) -> str:
        res = cache.embed(np.stack([a, b]))
        if not res.ok.all():
            return "not enrolled"
        return describe_score(judge, float(judge.pair_scores(res.vectors[:1], res.vectors[1:])[0]))

    rows = []
    for p in pairs:
        role_a, role_b = p.roles
        probe = _view(run, p.source, role_a, p.method, p.probe)
        ref = _view(run, p.source, role_b, p.method, p.reference)
        shown = role_a if role_a != "restored" else f"restored, {p.method}"
        tiles = [(f"probe ({shown})\n{describe_score(judge, p.score)}", probe)]
        if role_a != "clean":
            for m in methods:
                if m == p.method and role_a == "restored":
                    continue
                restored = _view(run, p.source, "restored", m, p.probe)
                tiles.append((f"probe, {m}\n{score(restored, ref)}", restored))
            if p.source == "synthetic":
                truth = _view(run, p.source, "clean", "", p.probe)
                tiles.append((f"probe unmasked\n{score(truth, ref)}", truth))
        tiles.append((f"reference ({'restored, ' + p.method if role_b == 'restored' else role_b})", ref))
        ia, ib = run.data.images[p.probe], run.data.images[p.reference]
        who = ia.identity if p.genuine else f"{ia.identity} /\n{ib.identity}"
        rows.append((f"{'genuine' if p.genuine else 'impostor'}: {who}", tiles))
    cache.save()
    return gallery_figure(rows, cells=cells, title=title)
