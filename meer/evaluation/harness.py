"""The evaluation run: data -> 112 crops -> masked / restored views -> judges -> metrics -> report.

Everything happens in crop space (``meer.evaluation.geometry``): each photo is aligned once into its 112 ArcFace
crop, synthetic masks are drawn on the crop, every method restores the crop and reports the region it replaced
(``meer.evaluation.methods``), quality metrics compare crops with the clean crop, and each judge reads each crop
once, exactly as the method returned it (no resampling between a method and a judge).

Mask sources (each scored separately):

* ``synthetic``: every unmasked photo gets one fixed-seed synthetic mask (pixel ground truth);
  pairs are the pairs whose two photos are both unmasked;
* ``real``: real masked photos (``<id>/masked/``), probe side of pairs that join a masked and an
  unmasked photo; no pixel ground truth, so the oracle methods (given the ground-truth mask) are skipped there.

Conditions (``meer.evaluation.keys.CONDITIONS``): clean-vs-clean (upper bound), masked-vs-clean (masked probe,
unmasked reference), masked-vs-masked, restored-vs-clean and restored-vs-restored, per method. Every condition is
scored by every judge with the one pair scorer (``meer.evaluation.scoring.score_pairs``); images a judge cannot
enrol are failures-to-enrol: pairs touching them are excluded from the scores and counted (FTE rate per condition).
Every row says what mask information its method had (``oracle``, ``mask_given``).
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from meer.data.pairs import Pair, make_pairs, read_pairs, write_pairs
from meer.evaluation.cache import EmbeddingCache
from meer.evaluation.dataset import EvalData, scan_eval_data
from meer.evaluation.judge import Judge, cosine
from meer.evaluation.keys import CONDITIONS, NO_METHOD, OWN_SPACE, ScoreKey, ViewKey, own_space
from meer.evaluation.methods import NOTHING, TRUTH, NoRestore, RestorationMethod, Restored, given_label
from meer.evaluation.metrics import bootstrap_ci, rank1
from meer.evaluation.prepare import Locator, Masker, prepare_faces, synthetic_masks
from meer.evaluation.quality import region_agreement, region_scores
from meer.evaluation.scoring import PairScores, score_pairs
from meer.evaluation.views import Embeddings, EvalResult, Views
from meer.utils.errors import MeerError
from meer.utils.folder_report import FolderReport

BATCH = 64


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
    methods: list[RestorationMethod]
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


def score_key_pairs(judge: Judge, key: ScoreKey, pairs: list[tuple[Path, Path, bool, int]],
                    emb: dict[ViewKey, dict[Path, np.ndarray]]) -> PairScores:
    """``score_pairs`` on the two views a score key joins (one set of images when both sides show the same view)."""
    va, vb = key.view(0), key.view(1)
    a = emb.get(va, {})
    return score_pairs(judge, pairs, a, None if vb == va else emb.get(vb, {}))


def rank1_block(judge: Judge, emb: dict[ViewKey, dict[Path, np.ndarray]], data: EvalData, source: str,
                methods: list[str], opts: EvalOptions) -> dict:
    """Closed-set rank-1: gallery = first enrolled unmasked photo per identity; probes = the rest."""
    clean = emb.get(ViewKey.clean(), {})
    gallery, g_labels = [], []
    gallery_paths = set()
    for name, files in sorted(data.files.items()):
        for p in files:
            if not data.images[p].real_masked and p in clean:
                gallery.append(clean[p])
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

    def one(view: ViewKey) -> dict:
        vecs = emb.get(view, {})
        P = [(vecs[p], data.images[p].identity) for p in probe_paths if p in vecs]
        r = {"probes_scored": len(P), "fte": len(probe_paths) - len(P)}
        if P:
            sim = judge.similarity_matrix(np.stack([v for v, _ in P]), G)
            hits = (g_labels_a[np.argmax(sim, axis=1)] == np.asarray([n for _, n in P])).astype(float)
            r["rank1"] = rank1(sim, np.asarray([n for _, n in P]), g_labels_a)
            r["rank1_ci95"] = list(bootstrap_ci(hits, n=opts.bootstrap, seed=opts.seed))
        return r

    views = ([ViewKey.clean()] if source == "synthetic" else []) + [ViewKey.restored(source, m) for m in methods]
    for v in views:
        out[v.label] = one(v)
    return out


def run_methods(views: Views, source: str, methods: list[RestorationMethod], notes: list[str],
                progress: bool = True) -> None:
    """Restore ``source``'s masked crops with every method, giving each the mask information it is defined with
    (nothing, the ground truth, or another method's reported region); store the crops and regions in ``views``."""
    masked = views.crops[ViewKey.masked(source)]
    paths = list(masked)
    crops = np.stack([masked[p] for p in paths])
    # methods given another method's region run after the methods that report regions themselves
    order = [m for m in methods if m.given in (NOTHING, TRUTH)] + [m for m in methods if m.given not in (NOTHING, TRUTH)]
    for m in order:
        if m.name == NO_METHOD:
            continue
        if m.given == TRUTH:
            truth = views.truth.get(source)
            if truth is None:
                notes.append(f"method {m.name} skipped on {source} masks: it is given the ground-truth mask "
                             "(an oracle) and these masks have none")
                continue
            given = np.stack([truth[p] for p in paths])
        elif m.given != NOTHING:
            provider = ViewKey.restored(source, m.given)
            if provider not in views.regions:
                notes.append(f"method {m.name} skipped on {source} masks: it is given the region method {m.given} "
                             f"replaced, and {m.given} did not run")
                continue
            given = np.stack([views.regions[provider][p] for p in paths])
        else:
            given = None
        t = time.time()
        parts = []
        for s in tqdm(range(0, len(paths), BATCH), desc=f"restoring ({source}, {m.name})", unit="batch",
                      disable=not progress):
            parts.append(m.restore(crops[s:s + BATCH], None if given is None else given[s:s + BATCH]))
        out = Restored(np.concatenate([r.crops for r in parts]), np.concatenate([r.regions for r in parts]))
        check_restored(m.name, crops, out)
        key = ViewKey.restored(source, m.name)
        views.crops[key] = dict(zip(paths, out.crops))
        views.regions[key] = dict(zip(paths, out.regions))
        log(f"{m.name} restored {len(paths)} {source} faces in {time.time() - t:.1f}s")


def check_restored(name: str, crops: np.ndarray, out: Restored) -> None:
    """A method's output is crops of its input's shape and dtype, and nothing changed outside the region it
    reports (one line naming the method otherwise)."""
    if out.crops.shape != crops.shape or out.crops.dtype != np.uint8:
        raise MeerError(f"method {name} returned {out.crops.dtype} {out.crops.shape} for {crops.shape} uint8 crops")
    if out.regions.shape != crops.shape[:3] or out.regions.dtype != bool:
        raise MeerError(f"method {name} reported regions {out.regions.dtype} {out.regions.shape}, expected "
                        f"{crops.shape[:3]} bool")
    outside = (out.crops != crops).any(axis=-1) & ~out.regions
    if outside.any():
        raise MeerError(f"method {name} changed {int(outside.sum())} pixels outside the region it reports "
                        f"(in {int(outside.any(axis=(1, 2)).sum())} of {len(crops)} crops)")


def embed_views(views: Views, judges: list[Judge], opts: EvalOptions) -> Embeddings:
    """Every judge's embedding of every crop of every view, each distinct crop computed once (and cached)."""
    items = [(key, p, c) for key, crops in views.crops.items() for p, c in crops.items()]
    embeddings: Embeddings = {}
    for judge in judges:
        cache = EmbeddingCache(opts.cache_dir, judge)
        emb: dict[ViewKey, dict[Path, np.ndarray]] = {key: {} for key in views.crops}
        bar = tqdm(total=len(items), desc=f"judge {judge.name}", unit="face", disable=not opts.progress)
        for s in range(0, len(items), BATCH):
            chunk = items[s:s + BATCH]
            res = cache.embed(np.stack([c for _, _, c in chunk]))
            for (key, p, _), vec, ok in zip(chunk, res.vectors, res.ok):
                if ok:
                    emb[key][p] = vec
            bar.update(len(chunk))
        bar.close()
        cache.save()
        embeddings[judge.name] = emb
        log(f"judge {judge.name}: {cache.hits} cached, {cache.misses} computed")
    return embeddings


def run_evaluation(opts: EvalOptions, comp: Components) -> EvalResult:
    """Run everything and write the report folder (``report.md``, ``results.json``, ``scores.npz``, figures);
    returns the :class:`EvalResult` (the results dict, the crops of every view, every scored list of pairs)."""
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
    keys = {p: im.key for p, im in data.images.items()}

    clean_faces = {p: f for p, f in faces.items() if not data.images[p].real_masked}
    if clean_faces:
        if comp.masker is None:
            notes.append("synthetic masks skipped: meer.masking is not available")
        else:
            sm = synthetic_masks(clean_faces, keys, comp.masker, opts.seed, progress=opts.progress)
            views.crops[ViewKey.masked("synthetic")] = {p: m for p, (m, _) in sm.items()}
            views.truth["synthetic"] = {p: k for p, (_, k) in sm.items()}
    real_faces = {p: f for p, f in faces.items() if data.images[p].real_masked}
    if real_faces:
        views.crops[ViewKey.masked("real")] = {p: f.crop for p, f in real_faces.items()}
    sources = views.sources
    if not sources:
        raise MeerError("nothing to evaluate: no synthetic masks and no real masked photos")

    methods = [m for m in comp.methods if m.name != NO_METHOD]
    by_name = {NO_METHOD: NoRestore(), **{m.name: m for m in methods}}
    for source in sources:
        run_methods(views, source, methods, notes, opts.progress)

    judges = list(comp.judges) + [em.judge for em in comp.embedding_methods if em.judge not in comp.judges]
    embeddings = embed_views(views, judges, opts)

    results: dict = {
        "data": str(opts.data), "aligned": opts.aligned, "identities_file": str(opts.identities) if opts.identities else None,
        "identities": len(data.files), "images": len(data.images),
        "real_masked_images": sum(im.real_masked for im in data.images.values()),
        "pairs": pairs_info, "seed": opts.seed, "space": "112 x 112 ArcFace crops", "sources": sources,
        "methods": list(by_name), "mask_given": {n: m.mask_given for n, m in by_name.items()},
        "embedding_methods": [em.name for em in comp.embedding_methods], "judges": [j.name for j in comp.judges],
        "enrolment": {"images_with_face": len(faces), "failures": len(enrol.skipped),
                      "failed_examples": [f"{p}: {r}" for p, r in enrol.skipped[:5]],
                      "fte_rate_detector": len(enrol.skipped) / max(1, len(data.images))},
        "verification": [], "common_pairs": [], "rank1": [], "quality": [], "detectability": [], "notes": notes,
    }
    for em in comp.embedding_methods:
        results["mask_given"][em.name] = given_label(NOTHING)
    scores: dict[ScoreKey, PairScores] = {}

    def add_row(key: ScoreKey, ps: PairScores, given: str) -> None:
        scores[key] = ps
        results["verification"].append({"source": key.source, "judge": key.judge, "condition": key.condition,
                                        "method": key.method, "oracle": given == TRUTH,
                                        "mask_given": given_label(given), **ps.row(opts.seed, opts.bootstrap)})

    for source in sources:
        sp = source_pairs(pairs, data, source)
        results.setdefault("pair_counts", {})[source] = {c: len(v) for c, v in sp.items()}
        ran = [n for n in by_name if n == NO_METHOD or ViewKey.restored(source, n) in views.crops]
        for judge in comp.judges:
            emb = embeddings[judge.name]
            for cond in CONDITIONS:
                for m in (ran if cond.startswith("restored") else [NO_METHOD]):
                    key = ScoreKey(source, judge.name, cond, m)
                    add_row(key, score_key_pairs(judge, key, sp[cond], emb), by_name[m].given)
            results["rank1"].append({"source": source, "judge": judge.name,
                                     **rank1_block(judge, emb, data, source, ran, opts)})
        for em in comp.embedding_methods:
            own = own_space(em.judge.name)
            emb = embeddings.setdefault(own, dict(embeddings[em.judge.name]))
            masked = embeddings[em.judge.name].get(ViewKey.masked(source), {})
            emb[ViewKey.restored(source, em.name)] = {
                p: (v if em.transform is None else np.asarray(em.transform(v[None]))[0]) for p, v in masked.items()}
            for cond in ("restored-vs-clean", "restored-vs-restored"):
                key = ScoreKey(source, own, cond, em.name)
                add_row(key, score_key_pairs(em.judge, key, sp[cond], emb), NOTHING)
        results["common_pairs"] += common_pairs_block(scores, source, [j.name for j in comp.judges], opts)
        if source in views.truth:
            results["quality"] += quality_block(views, embeddings, comp, source, ran, by_name)
        if comp.detectability is not None:
            results["detectability"].append(detectability_block(comp.detectability, views, source, ran))
    add_gap_recovered(results)
    results["seconds"] = round(time.time() - t0, 1)
    result = EvalResult(results, views, scores, embeddings)
    write_outputs(result, opts, comp.judges[0].name if comp.judges else None)
    if enrol.skipped:
        enrol.print_skipped("meer-eval", limit=5)
    return result


def common_pairs_block(scores: dict[ScoreKey, PairScores], source: str, judges: list[str], opts: EvalOptions) -> list[dict]:
    """Every judge on the pairs *all* judges enrolled, per condition and method: a judge that cannot enrol the
    hard faces scores its easier subset higher, so figures with different failure-to-enrol rates do not compare;
    these do. Only where some judge left pairs out (else the verification rows are already on the same pairs)."""
    out: list[dict] = []
    if len(judges) < 2:
        return out
    keys = dict.fromkeys((k.condition, k.method) for k in scores if k.source == source and k.judge in judges)
    for cond, method in keys:
        per = {j: scores.get(ScoreKey(source, j, cond, method)) for j in judges}
        if any(ps is None for ps in per.values()):
            continue
        if all(ps.scored == ps.total for ps in per.values()):
            continue
        common = set.intersection(*(set(ps.pairs) for ps in per.values()))
        total = next(iter(per.values())).total
        rows = {j: ps.restrict(common).row(opts.seed, opts.bootstrap) for j, ps in per.items()}
        out.append({"source": source, "condition": cond, "method": method, "pairs_total": total,
                    "pairs_common": len(common), "judges": rows})
    return out


def _mean(v: np.ndarray) -> float | None:
    return float(np.nanmean(v)) if np.isfinite(v).any() else None


def quality_block(views: Views, embeddings: Embeddings, comp: Components, source: str, methods: list[str],
                  by_name: dict[str, RestorationMethod]) -> list:
    """Per method: PSNR / SSIM of the restored crops against the clean crops (whole crop and masked region), how
    the region it reported matches the ground truth, LPIPS, and each judge's cosine and distance to the clean crop."""
    truth = views.truth[source]
    paths = list(truth)
    clean = np.stack([views.faces[p].crop for p in paths])
    masks = np.stack([truth[p] for p in paths])
    out = []
    for m in methods:
        view = ViewKey.restored(source, m)
        restored = np.stack([views.crops[view][p] for p in paths])
        regions = np.stack([views.region(view, p) for p in paths])
        row = {"method": m, "oracle": by_name[m].oracle, "mask_given": by_name[m].mask_given, "images": len(paths),
               "empty_masks": int((masks.reshape(len(masks), -1).sum(axis=1) == 0).sum())}
        for k, v in region_scores(restored, clean, masks).items():
            row[k] = _mean(v)
        agree = region_agreement(regions, masks)
        row["region_iou"] = _mean(agree["iou"])
        row["region_share"] = _mean(agree["share"])
        row["truth_covered"] = _mean(agree["truth_covered"])
        if comp.lpips is not None:
            row["lpips_face"] = float(np.mean(comp.lpips(restored, clean)))
        for jname, emb in embeddings.items():
            if jname.endswith(OWN_SPACE):  # an embedding method's space: the same vectors as its judge's
                continue
            got, ref = emb.get(view, {}), emb.get(ViewKey.clean(), {})
            both = [p for p in paths if p in got and p in ref]
            if both:
                a, b = np.stack([got[p] for p in both]), np.stack([ref[p] for p in both])
                row[f"cosine_{jname}"] = float(cosine(a, b).mean())
                # the judge's own distance for Euclidean judges (dlib: same person below 0.6)
                row[f"distance_{jname}"] = float(np.linalg.norm(a - b, axis=1).mean())
        out.append(row)
    return out


def detectability_block(dlib_judge, views: Views, source: str, methods: list[str]) -> dict:
    """Share of the crops of each view in which dlib's HOG detector finds the face."""
    paths = list(views.crops[ViewKey.masked(source)])
    row = {"source": source, "images": len(paths)}
    keys = ([ViewKey.clean()] if source in views.truth else []) + [ViewKey.restored(source, m) for m in methods]
    for key in keys:
        row[key.label] = float(dlib_judge.hog_detects(np.stack([views.crops[key][p] for p in paths])).mean())
    return row


def add_gap_recovered(results: dict) -> None:
    """gap recovered = (restored - masked) / (clean - masked), on 10-fold accuracy, per row of restored-vs-clean."""
    acc = {(r["source"], r["judge"], r["condition"], r["method"]): r.get("accuracy") for r in results["verification"]}
    for r in results["verification"]:
        if r["condition"] != "restored-vs-clean" or r.get("accuracy") is None:
            continue
        judge = ScoreKey(r["source"], r["judge"], r["condition"], r["method"]).base_judge
        clean = acc.get((r["source"], judge, "clean-vs-clean", NO_METHOD))
        masked = acc.get((r["source"], judge, "masked-vs-clean", NO_METHOD))
        if clean is None or masked is None or clean - masked < 0.005:
            r["gap_recovered"] = None
        else:
            r["gap_recovered"] = (r["accuracy"] - masked) / (clean - masked)

