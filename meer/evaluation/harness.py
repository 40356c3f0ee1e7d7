"""The evaluation run: data -> canvases -> masked / restored views -> judges -> metrics -> report.

Mask sources (each scored separately):

* ``synthetic``: every unmasked photo gets one fixed-seed synthetic mask (pixel ground truth);
  pairs are the pairs whose two photos are both unmasked;
* ``real``: real masked photos (``<id>/masked/``), probe side of pairs that join a masked and an
  unmasked photo; no pixel ground truth (inpainting uses the typical mask region).

Conditions (``CONDITIONS``): clean-vs-clean (upper bound), masked-vs-clean (masked probe,
unmasked reference), masked-vs-masked, restored-vs-clean and restored-vs-restored, per method.
Every condition is scored by every judge; images a judge cannot enrol are failures-to-enrol:
pairs touching them are excluded from the scores and counted (FTE rate per condition).
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from meer.utils.folder_report import FolderReport
from meer.data.pairs import Pair, make_pairs, read_pairs, write_pairs
from meer.evaluation.cache import EmbeddingCache
from meer.evaluation.dataset import EvalData, scan_eval_data
from meer.evaluation.judge import Judge, cosine
from meer.evaluation.methods import NoRestore, RestorationMethod
from meer.evaluation.metrics import MetricError, bootstrap_ci, rank1, verification_summary
from meer.evaluation.prepare import Face, Locator, Masker, prepare_faces, synthetic_masks, typical_mask_region
from meer.evaluation.quality import region_scores
from meer.utils.errors import MeerError

CONDITIONS = ("clean-vs-clean", "masked-vs-clean", "masked-vs-masked", "restored-vs-clean", "restored-vs-restored")
#: which view each side of a pair shows, per condition
SIDES = {
    "clean-vs-clean": ("clean", "clean"),
    "masked-vs-clean": ("masked", "clean"),
    "masked-vs-masked": ("masked", "masked"),
    "restored-vs-clean": ("restored", "clean"),
    "restored-vs-restored": ("restored", "restored"),
}


@dataclass
class EvalOptions:
    data: Path
    out: Path
    pairs: Path | None = None
    identities: Path | None = None
    aligned: bool = False
    seed: int = 0
    folds: int = 10
    per_fold: int = 300
    cache_dir: Path | None = None
    grid: int = 4
    bootstrap: int = 1000
    progress: bool = True
    plots: bool = True  # ROC / histogram PNGs (matplotlib)


@dataclass
class EmbeddingMethod:
    """A method that gives an embedding, not a face: scored only in its own judge's space.
    ``transform`` (e.g. EUM) maps probe embeddings of masked faces; ``None`` keeps them."""

    name: str
    judge: Judge
    transform: object = None


@dataclass
class Components:
    """What the run uses; built by the CLI from its options (tests pass small fakes)."""

    judges: list[Judge]
    restorers: list[RestorationMethod]
    embedding_methods: list[EmbeddingMethod] = field(default_factory=list)
    locator: Locator | None = None
    masker: Masker | None = None
    lpips: object = None
    detectability: object = None  # a DlibJudge (its HOG detector), or None
    notes: list[str] = field(default_factory=list)  # what was skipped and why


def log(msg: str) -> None:
    print(f"meer-eval: {msg}", file=sys.stderr)


def resolve_pairs(opts: EvalOptions, data: EvalData, notes: list[str]) -> tuple[list[Pair], dict]:
    """Pairs from ``--pairs`` (unresolvable ones reported and excluded) or generated and saved."""
    if opts.pairs is not None:
        pf = read_pairs(opts.pairs, data.files)
        info = {"source": str(opts.pairs), "total": pf.report.total, "dropped": pf.report.dropped,
                "summary": pf.report.summary()}
        if not pf.report.ok:
            msg = f"pairs file {opts.pairs}: {pf.report.summary()}"
            log(msg)
            notes.append(msg)
        if not pf.pairs:
            raise MeerError(f"no pair of {opts.pairs} could be resolved under {data.root} ({pf.report.summary()})")
        return pf.pairs, info
    pairs = make_pairs(data.files, n_folds=opts.folds, per_fold=opts.per_fold, seed=opts.seed)
    path = write_pairs(opts.out / "pairs.txt", pairs, overwrite=True)
    return pairs, {"source": f"generated (make_pairs, {opts.folds} identity-disjoint folds, seed {opts.seed})",
                   "saved": str(path), "total": len(pairs), "dropped": 0}


class Views:
    """Canvas of each (source, role, method) view of an image; ``None`` = no face (FTE)."""

    def __init__(self, faces: dict[Path, Face], data: EvalData):
        self.faces = faces
        self.data = data
        self.masked: dict[str, dict[Path, np.ndarray]] = {}
        self.masks: dict[str, dict[Path, np.ndarray]] = {}
        self.restored: dict[tuple[str, str], dict[Path, np.ndarray]] = {}

    def get(self, source: str, role: str, method: str, path: Path) -> np.ndarray | None:
        if role == "clean":
            f = self.faces.get(path)
            return None if f is None else f.canvas
        if role == "masked":
            return self.masked[source].get(path)
        return self.restored[(source, method)].get(path)

    def view_name(self, source: str, role: str, method: str) -> str:
        return "clean" if role == "clean" else f"{role}:{source}" + (f":{method}" if role == "restored" else "")


def source_pairs(pairs: list[Pair], data: EvalData, source: str) -> dict[str, list[tuple[Path, Path, bool, int]]]:
    """Per condition, the ``(probe, reference, same, fold)`` tuples of a mask source."""
    real = {p: im.real_masked for p, im in data.images.items()}
    out = {c: [] for c in CONDITIONS}
    for p in pairs:
        a, b = p.path_a, p.path_b
        ra, rb = real.get(a, False), real.get(b, False)
        t_same = (p.same, p.fold)
        if source == "synthetic":
            if ra or rb:
                continue
            for c in CONDITIONS:
                out[c].append((a, b, *t_same))
        else:
            if not ra and not rb:
                out["clean-vs-clean"].append((a, b, *t_same))
            elif ra and rb:
                out["masked-vs-masked"].append((a, b, *t_same))
                out["restored-vs-restored"].append((a, b, *t_same))
            else:
                probe, ref = (a, b) if ra else (b, a)
                out["masked-vs-clean"].append((probe, ref, *t_same))
                out["restored-vs-clean"].append((probe, ref, *t_same))
    return out


def score_condition(emb: dict, judge: Judge, views: Views, source: str, condition: str, method: str,
                    pairs: list[tuple[Path, Path, bool, int]], opts: EvalOptions) -> dict:
    """Verification numbers of one (source, condition, method, judge), with FTE accounting."""
    role_a, role_b = SIDES[condition]
    va = views.view_name(source, role_a, method)
    vb = views.view_name(source, role_b, method)
    scores, labels, folds = [], [], []
    images, failed = set(), set()
    for a, b, same, fold in pairs:
        ea, eb = emb.get((va, a)), emb.get((vb, b))
        images.update([(va, a), (vb, b)])
        if ea is None:
            failed.add((va, a))
        if eb is None:
            failed.add((vb, b))
        if ea is None or eb is None:
            continue
        scores.append(judge.pair_scores(ea[None], eb[None])[0])
        labels.append(same)
        folds.append(fold)
    res = {"pairs_total": len(pairs), "pairs_scored": len(scores), "pairs_excluded_fte": len(pairs) - len(scores),
           "images": len(images), "fte_images": len(failed),
           "fte_rate": len(failed) / len(images) if images else 0.0}
    if not pairs:
        res["error"] = "no pairs of this kind"
        return res
    s, y, f = np.asarray(scores), np.asarray(labels, bool), np.asarray(folds)
    if y.any() and not y.all():
        res["_scores"] = (s, y)
    try:
        if np.unique(f).size < 2:
            raise MetricError("fewer than 2 folds have scored pairs")
        res.update(verification_summary(s, y, f, seed=opts.seed, bootstrap=opts.bootstrap))
    except MetricError as exc:
        res["error"] = str(exc)
    return res


def rank1_block(emb: dict, judge: Judge, views: Views, data: EvalData, source: str,
                methods: list[str], opts: EvalOptions) -> dict:
    """Closed-set rank-1: gallery = first enrolled unmasked photo per identity; probes = the rest."""
    gallery, g_labels = [], []
    gallery_paths = set()
    for name, files in sorted(data.files.items()):
        for p in files:
            if not data.images[p].real_masked and ("clean", p) in emb:
                gallery.append(emb[("clean", p)])
                g_labels.append(name)
                gallery_paths.add(p)
                break
    if len(gallery) < 2:
        return {"error": "fewer than 2 identities with an enrolled unmasked photo"}
    G = np.stack(gallery)
    g_labels_a = np.asarray(g_labels)
    enrolled = set(g_labels)
    probe_paths = [p for p, im in data.images.items()
                   if im.identity in enrolled and p not in gallery_paths
                   and (im.real_masked if source == "real" else not im.real_masked)]
    out = {"gallery": len(gallery), "probes": len(probe_paths)}

    def one(view: str) -> dict:
        P = [(emb[(view, p)], data.images[p].identity) for p in probe_paths if (view, p) in emb]
        r = {"probes_scored": len(P), "fte": len(probe_paths) - len(P)}
        if P:
            sim = judge.similarity_matrix(np.stack([v for v, _ in P]), G)
            hits = (g_labels_a[np.argmax(sim, axis=1)] == np.asarray([n for _, n in P])).astype(float)
            r["rank1"] = rank1(sim, np.asarray([n for _, n in P]), g_labels_a)
            r["rank1_ci95"] = list(bootstrap_ci(hits, n=opts.bootstrap, seed=opts.seed))
        return r

    if source == "synthetic":
        out["clean"] = one("clean")
    out["masked"] = one(views.view_name(source, "masked", ""))
    for m in methods:
        if m != "none":
            out[f"restored:{m}"] = one(views.view_name(source, "restored", m))
    return out


def run_evaluation(opts: EvalOptions, comp: Components, on_views: Callable[[Views], None] | None = None) -> dict:
    """Run everything and write the report folder; returns the results dict (also ``results.json``).
    ``on_views`` receives the :class:`Views` (every canvas scored) once they are built, for callers that look at
    single pairs afterwards (``meer.evaluation.plots.run_keeping_views``)."""
    t0 = time.time()
    from meer.evaluation.report import write_outputs

    opts.out.mkdir(parents=True, exist_ok=True)
    notes = list(comp.notes)
    identities = None
    if opts.identities is not None:
        from meer.data.splits import read_identity_list

        identities = read_identity_list(opts.identities)
    data = scan_eval_data(opts.data, identities, opts.aligned)
    if data.missing_identities:
        msg = (f"{len(data.missing_identities)} listed identities have no images under {opts.data}: "
               f"{', '.join(data.missing_identities[:5])}" + (" ..." if len(data.missing_identities) > 5 else ""))
        log(msg)
        notes.append(msg)
    pairs, pairs_info = resolve_pairs(opts, data, notes)
    log(f"{len(data.files)} identities, {len(data.images)} images, {len(pairs)} pairs")

    enrol = FolderReport()
    faces = prepare_faces(data, enrol, comp.locator, opts.cache_dir, progress=opts.progress)
    if not faces:
        raise MeerError(f"no face found in any image under {opts.data}")
    views = Views(faces, data)
    if on_views is not None:
        on_views(views)
    keys = {p: im.key for p, im in data.images.items()}

    sources = []
    clean_faces = {p: f for p, f in faces.items() if not data.images[p].real_masked}
    if clean_faces:
        if comp.masker is None:
            notes.append("synthetic masks skipped: meer.masking is not available")
        else:
            sm = synthetic_masks(clean_faces, keys, comp.masker, opts.seed, progress=opts.progress)
            views.masked["synthetic"] = {p: m for p, (m, _) in sm.items()}
            views.masks["synthetic"] = {p: k for p, (_, k) in sm.items()}
            sources.append("synthetic")
    real_faces = {p: f for p, f in faces.items() if data.images[p].real_masked}
    if real_faces:
        region = typical_mask_region()
        views.masked["real"] = {p: f.canvas for p, f in real_faces.items()}
        views.masks["real"] = {p: region for p in real_faces}
        sources.append("real")
    if not sources:
        raise MeerError("nothing to evaluate: no synthetic masks and no real masked photos")

    restorers = comp.restorers or [NoRestore()]
    method_names = [r.name for r in restorers]
    for source in sources:
        paths = list(views.masked[source])
        canv = np.stack([views.masked[source][p] for p in paths])
        masks = np.stack([views.masks[source][p] for p in paths])
        for r in restorers:
            t = time.time()
            out = []
            for s in tqdm(range(0, len(paths), 64), desc=f"restoring ({source}, {r.name})", unit="batch",
                          disable=not opts.progress or r.name == "none"):
                out.append(r.restore(canv[s:s + 64], masks[s:s + 64]))
            restored = np.concatenate(out)
            views.restored[(source, r.name)] = dict(zip(paths, restored))
            if r.name != "none":
                log(f"{r.name} restored {len(paths)} {source} faces in {time.time() - t:.1f}s")

    # every view every judge needs
    all_views: list[tuple[str, Path, np.ndarray]] = [("clean", p, f.canvas) for p, f in clean_faces.items()]
    for source in sources:
        all_views += [(views.view_name(source, "masked", ""), p, c) for p, c in views.masked[source].items()]
        for m in method_names:
            if m != "none":
                all_views += [(views.view_name(source, "restored", m), p, c)
                              for p, c in views.restored[(source, m)].items()]
    judges = list(comp.judges) + [em.judge for em in comp.embedding_methods if em.judge not in comp.judges]
    embeddings: dict[str, dict] = {}
    for judge in judges:
        cache = EmbeddingCache(opts.cache_dir, judge)
        emb = {}
        bar = tqdm(total=len(all_views), desc=f"judge {judge.name}", unit="face", disable=not opts.progress)
        for s in range(0, len(all_views), 64):
            chunk = all_views[s:s + 64]
            res = cache.embed(np.stack([c for _, _, c in chunk]))
            for (v, p, _), vec, ok in zip(chunk, res.vectors, res.ok):
                if ok:
                    emb[(v, p)] = vec
            bar.update(len(chunk))
        bar.close()
        cache.save()
        for (v, p) in list(emb):  # "none" restores nothing: its restored view is the masked view
            if v.startswith("masked:"):
                emb[(v.replace("masked:", "restored:", 1) + ":none", p)] = emb[(v, p)]
        embeddings[judge.name] = emb
        log(f"judge {judge.name}: {cache.hits} cached, {cache.misses} computed")

    results: dict = {
        "data": str(opts.data), "aligned": opts.aligned, "identities_file": str(opts.identities) if opts.identities else None,
        "identities": len(data.files), "images": len(data.images),
        "real_masked_images": sum(im.real_masked for im in data.images.values()),
        "pairs": pairs_info, "seed": opts.seed, "sources": sources, "methods": method_names,
        "embedding_methods": [em.name for em in comp.embedding_methods], "judges": [j.name for j in comp.judges],
        "enrolment": {"images_with_face": len(faces), "failures": len(enrol.skipped),
                      "failed_examples": [f"{p}: {r}" for p, r in enrol.skipped[:5]],
                      "fte_rate_detector": len(enrol.skipped) / max(1, len(data.images))},
        "verification": [], "rank1": [], "quality": [], "detectability": [], "notes": notes,
    }
    score_sets: dict = {}
    for source in sources:
        sp = source_pairs(pairs, data, source)
        results.setdefault("pair_counts", {})[source] = {c: len(v) for c, v in sp.items()}
        for judge in comp.judges:
            emb = embeddings[judge.name]
            for cond in CONDITIONS:
                ms = method_names if cond.startswith("restored") else ["none"]
                for m in ms:
                    r = score_condition(emb, judge, views, source, cond, m, sp[cond], opts)
                    if "_scores" in r:
                        score_sets[(source, judge.name, cond, m)] = r.pop("_scores")
                    results["verification"].append({"source": source, "judge": judge.name, "condition": cond,
                                                    "method": m, **r})
            results["rank1"].append({"source": source, "judge": judge.name,
                                     **rank1_block(emb, judge, views, data, source, method_names, opts)})
        for em in comp.embedding_methods:
            base = embeddings[em.judge.name]
            emb = dict(base)
            prefix = views.view_name(source, "masked", "")
            target = views.view_name(source, "restored", em.name)
            for (v, p), vec in base.items():
                if v == prefix:
                    emb[(target, p)] = vec if em.transform is None else np.asarray(em.transform(vec[None]))[0]
            own = f"{em.judge.name} (own space)"
            for cond in ("restored-vs-clean", "restored-vs-restored"):
                r = score_condition(emb, em.judge, views, source, cond, em.name, sp[cond], opts)
                if "_scores" in r:
                    score_sets[(source, own, cond, em.name)] = r.pop("_scores")
                results["verification"].append({"source": source, "judge": own, "condition": cond,
                                                "method": em.name, **r})
        if source == "synthetic":
            results["quality"] += quality_block(views, embeddings, comp, method_names, opts)
        if comp.detectability is not None:
            results["detectability"].append(detectability_block(comp.detectability, views, source, method_names,
                                                                 clean_faces))
    add_gap_recovered(results)
    results["seconds"] = round(time.time() - t0, 1)
    write_outputs(results, score_sets, views, embeddings, comp, data, opts)
    if enrol.skipped:
        enrol.print_skipped("meer-eval", limit=5)
    return results


def quality_block(views: Views, embeddings: dict, comp: Components, methods: list[str], opts: EvalOptions) -> list:
    paths = list(views.masked["synthetic"])
    clean = np.stack([views.faces[p].canvas for p in paths])
    masks = np.stack([views.masks["synthetic"][p] for p in paths])
    out = []
    for m in methods:
        restored = np.stack([views.restored[("synthetic", m)][p] for p in paths])
        q = region_scores(restored, clean, masks)
        row = {"method": m, "images": len(paths),
               "empty_masks": int((masks.reshape(len(masks), -1).sum(axis=1) == 0).sum())}
        for k, v in q.items():
            row[k] = float(np.nanmean(v)) if np.isfinite(v).any() else None
        if comp.lpips is not None:
            row["lpips_face"] = float(np.mean(comp.lpips(restored, clean)))
        view = "masked:synthetic" if m == "none" else f"restored:synthetic:{m}"
        for jname, emb in embeddings.items():
            both = [p for p in paths if (view, p) in emb and ("clean", p) in emb]
            if both:
                a, b = np.stack([emb[(view, p)] for p in both]), np.stack([emb[("clean", p)] for p in both])
                row[f"cosine_{jname}"] = float(cosine(a, b).mean())
                # the judge's own distance for Euclidean judges (dlib: same person below 0.6)
                row[f"distance_{jname}"] = float(np.linalg.norm(a - b, axis=1).mean())
        out.append(row)
    return out


def detectability_block(dlib_judge, views: Views, source: str, methods: list[str], clean_faces: dict) -> dict:
    paths = list(views.masked[source])
    row = {"source": source, "images": len(paths)}
    if source == "synthetic":
        row["clean"] = float(dlib_judge.hog_detects(np.stack([clean_faces[p].canvas for p in paths])).mean())
    for m in methods:
        canv = np.stack([views.restored[(source, m)][p] for p in paths])
        row["masked" if m == "none" else f"restored:{m}"] = float(dlib_judge.hog_detects(canv).mean())
    return row


def add_gap_recovered(results: dict) -> None:
    """gap recovered = (restored - masked) / (clean - masked), on 10-fold accuracy, per row of restored-vs-clean."""
    acc = {(r["source"], r["judge"], r["condition"], r["method"]): r.get("accuracy") for r in results["verification"]}
    for r in results["verification"]:
        if r["condition"] != "restored-vs-clean" or r.get("accuracy") is None:
            continue
        judge = r["judge"].replace(" (own space)", "")
        clean = acc.get((r["source"], judge, "clean-vs-clean", "none"))
        masked = acc.get((r["source"], judge, "masked-vs-clean", "none"))
        if clean is None or masked is None or clean - masked < 0.005:
            r["gap_recovered"] = None
        else:
            r["gap_recovered"] = (r["accuracy"] - masked) / (clean - masked)


def save_json(results: dict, path: Path) -> None:
    path.write_text(json.dumps(results, indent=1, default=float), encoding="utf-8")
