"""Writing the report folder: ``report.md``, ``results.json``, ``scores.npz``, ROC / histogram PNGs, restoration
grids -- all from an :class:`meer.evaluation.views.EvalResult` (this module never imports the harness)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from meer.evaluation.cells import accuracy_cell, curve_label, gap_cell, mask_cell, pct, tar_cell  # noqa: F401
from meer.evaluation.judge import cosine
from meer.evaluation.keys import NO_METHOD, ScoreKey, ViewKey
from meer.evaluation.scoring import PairScores
from meer.evaluation.views import EvalResult

SOURCE_TITLE = {"synthetic": "synthetic masks (fixed seed, pixel ground truth)",
                "real": "real masked photos (no pixel ground truth)"}


def write_scores(scores: dict[ScoreKey, PairScores], path: Path) -> Path | None:
    """Every scored pair with both genuine and impostor pairs, for re-analysis without re-embedding:
    ``<key.npz_name>|scores`` and ``|genuine`` (read back by ``meer.evaluation.plots.load_scores``)."""
    arrays = {}
    for key, ps in scores.items():
        if ps.has_both_kinds:
            arrays[f"{key.npz_name}|scores"] = ps.scores
            arrays[f"{key.npz_name}|genuine"] = ps.genuine
    if not arrays:
        return None
    np.savez_compressed(path, **arrays)
    return path


def score_figures(scores: dict[ScoreKey, PairScores], source: str, title: str, out: Path) -> list[dict]:
    """One ROC and one histogram PNG per judge of ``source`` (restored rows of method ``none`` repeat the masked
    rows and are left out)."""
    from meer.evaluation.figures import histogram_figure, roc_figure

    figures = []
    for judge in dict.fromkeys(k.judge for k in scores if k.source == source):
        curves = {curve_label(k.condition, k.method): (ps.scores, ps.genuine) for k, ps in scores.items()
                  if k.source == source and k.judge == judge and ps.has_both_kinds
                  and not (k.condition.startswith("restored") and k.method == NO_METHOD)}
        if not curves:
            continue
        key = next(k for k in scores if k.judge == judge)
        # file names without the teacher mark (dlib* -> dlib) or spaces: safe in paths and in markdown links
        slug = re.sub(r"[^A-Za-z0-9._-]", "", f"{source}_{key.base_judge}") + ("-own" if key.base_judge != judge else "")
        metric = "negative Euclidean distance" if "dlib" in judge else "cosine similarity"
        roc = roc_figure(curves, f"ROC, {title}, judge {judge}", out / f"roc_{slug}.png")
        hist = histogram_figure(curves, f"scores, {title}, judge {judge}", metric, out / f"hist_{slug}.png")
        figures.append({"judge": judge, "roc": roc.name, "hist": hist.name})
    return figures


def write_outputs(result: EvalResult, opts, grid_judge: str | None) -> None:
    out: Path = opts.out
    results = result.results
    figures = {}
    if opts.plots:
        for source in results["sources"]:
            figures[source] = score_figures(result.scores, source, f"{source} masks", out)
    write_scores(result.scores, out / "scores.npz")
    results["figures"] = figures
    results["grids"] = write_grids(result, opts, grid_judge) if grid_judge is not None and opts.grid > 0 else {}
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float), encoding="utf-8")
    (out / "report.md").write_text(render_markdown(results), encoding="utf-8")


def write_grids(result: EvalResult, opts, judge: str) -> dict:
    """Best and worst restorations per (source, method) by ``judge``'s cosine to the reference (synthetic: the same
    photo unmasked; real: the identity's first unmasked photo): masked | replaced region | restored | reference."""
    from meer.evaluation.figures import region_tile, restoration_grid

    views, data = result.views, result.data
    emb = result.embeddings[judge]
    clean = emb.get(ViewKey.clean(), {})
    reference: dict[str, Path] = {}
    for name, files in data.files.items():
        for p in files:
            if not data.images[p].real_masked and p in views.faces:
                reference[name] = p
                break
    grids = {}
    for source in views.sources:
        masked = views.crops[ViewKey.masked(source)]
        for m in [m for m in result.results["methods"] if m in views.methods(source)]:
            view = ViewKey.restored(source, m)
            got = emb.get(view, {})
            rows = []
            for p in masked:
                ref = p if source == "synthetic" else reference.get(data.images[p].identity)
                if ref is None or p not in got or ref not in clean:
                    continue
                rows.append((float(cosine(got[p][None], clean[ref][None])[0]), p, ref))
            if not rows:
                continue
            rows.sort(key=lambda r: -r[0])
            k = min(opts.grid, len(rows) // 2) or 1
            chosen = rows[:k] + rows[-k:] if len(rows) >= 2 * k else rows
            tiles = [(masked[p], region_tile(masked[p], views.region(view, p)), views.crops[view][p],
                      views.faces[ref].crop) for _, p, ref in chosen]
            path = restoration_grid(tiles, opts.out / f"grid_{source}_{m}.png")
            grids[f"{source}/{m}"] = {"file": path.name, "judge": judge, "best": [
                {"image": data.images[p].key, "cosine": c} for c, p, _ in rows[:k]],
                "worst": [{"image": data.images[p].key, "cosine": c} for c, p, _ in rows[-k:]]}
    return grids


def render_markdown(r: dict) -> str:
    L = ["# meer-eval report", ""]
    L.append(f"- data: `{r['data']}`" + (" (aligned crops)" if r["aligned"] else "")
             + (f", identities from `{r['identities_file']}`" if r["identities_file"] else ""))
    L.append(f"- {r['identities']} identities, {r['images']} images ({r['real_masked_images']} real masked)")
    p = r["pairs"]
    L.append(f"- pairs: {p['source']}; {p['total']} pairs" + (f", {p['dropped']} dropped: {p.get('summary')}"
                                                             if p.get("dropped") else ""))
    e = r["enrolment"]
    L.append(f"- meer's detector found a face in {e['images_with_face']} images; {e['failures']} failures to enrol "
             f"({pct(e['fte_rate_detector'])}%)" + (": " + "; ".join(e["failed_examples"]) if e["failures"] else ""))
    L.append(f"- methods: {', '.join(r['methods'] + r['embedding_methods'])}; judges: {', '.join(r['judges']) or 'none'}; "
             f"seed {r['seed']}; {r['seconds']} s")
    given = {m: g for m, g in r.get("mask_given", {}).items() if m != NO_METHOD}
    if given:
        L.append("- mask given to each method: " + "; ".join(
            f"{m}: {mask_cell({'method': m, 'mask_given': g, 'oracle': g == 'ground truth'})}" for m, g in given.items()))
    for n in r["notes"]:
        L.append(f"- note: {n}")
    L += ["", "Every face is the 112 x 112 ArcFace crop of its photo: masks are drawn on it, every method restores it "
          "and reports the region it replaced, and every judge reads the restored crop exactly as the method returned "
          "it. *Oracle* rows were given the ground-truth mask (synthetic masks only); *blind* rows were not (MEER "
          "predicts the region itself; telea-blind inpaints the region MEER replaced).", "",
          "Accuracy: k-fold verification accuracy (the pairs' folds; threshold chosen on the other folds) with its 95% bootstrap "
          "interval over pairs; TAR@FAR: true-accept rate at a false-accept rate of 1e-2 / 1e-3 (FNMR at FMR100 / "
          "FMR1000 = 1 - TAR); FTE: share of the condition's images a judge could not enrol (their pairs are "
          "excluded); gap recovered = (restored - masked) / (clean - masked) on accuracy.", ""]
    for source in r["sources"]:
        L += [f"## {SOURCE_TITLE.get(source, source)}", ""]
        counts = r.get("pair_counts", {}).get(source, {})
        if counts:
            L.append("Pairs per condition: " + ", ".join(f"{c} {n}" for c, n in counts.items()) + ".")
            L.append("")
        judges = list(dict.fromkeys(v["judge"] for v in r["verification"] if v["source"] == source))
        for j in judges:
            footnote = False
            L += [f"### judge: {j}", "",
                  "| condition | method | mask given | accuracy % (95% CI) | AUC | EER % | TAR@FAR1e-2 % | TAR@FAR1e-3 % | pairs (gen/imp) | FTE % | gap recovered |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
            for v in r["verification"]:
                if v["source"] != source or v["judge"] != j:
                    continue
                if "accuracy" in v:
                    (tar2, coarse2), (tar3, coarse3) = tar_cell(v, 1e-2), tar_cell(v, 1e-3)
                    footnote |= coarse2 or coarse3
                    L.append(f"| {v['condition']} | {v['method']} | {mask_cell(v)} | {accuracy_cell(v)} | "
                             f"{v['auc']:.3f} | {pct(v['eer'])} | {tar2} | {tar3} | "
                             f"{v['genuine']}/{v['impostor']} | {pct(v['fte_rate'])} | {gap_cell(v)} |")
                else:
                    L.append(f"| {v['condition']} | {v['method']} | {mask_cell(v)} | n/a ({v.get('error')}) | | | | | "
                             f"{v['pairs_scored']} | {pct(v['fte_rate'])} | |")
            if footnote:
                L += ["", "\\* fewer impostor pairs than 1/FAR: no threshold can be resolved at that FAR, the rate is "
                      "measured at zero false accepts instead (a lower bound)."]
            L.append("")
        common = [c for c in r.get("common_pairs", []) if c["source"] == source]
        if common:
            judges_c = list(common[0]["judges"])
            L += ["### every judge on the same pairs (the pairs all judges enrolled)", "",
                  "A judge that cannot enrol some faces is scored above on the easier pairs it keeps; here each judge "
                  "is scored on the pairs every judge enrolled.", "",
                  "| condition | method | pairs kept | " + " | ".join(f"{j} accuracy % (95% CI)" for j in judges_c) + " |",
                  "|---|---|---|" + "---|" * len(judges_c)]
            for c in common:
                cells = [accuracy_cell(v) if "accuracy" in v else f"n/a ({v.get('error')})" for v in c["judges"].values()]
                L.append(f"| {c['condition']} | {c['method']} | {c['pairs_common']} of {c['pairs_total']} | "
                         + " | ".join(cells) + " |")
            L.append("")
        rk = [x for x in r["rank1"] if x["source"] == source]
        if rk:
            L += ["### rank-1 identification (gallery: first unmasked photo per identity)", "",
                  "| judge | probes | rank-1 % (95% CI) | probes scored / FTE |", "|---|---|---|---|"]
            for x in rk:
                if "error" in x:
                    L.append(f"| {x['judge']} | n/a ({x['error']}) | | |")
                    continue
                for k, v in x.items():
                    if isinstance(v, dict):
                        val = (f"{pct(v['rank1'])} ({pct(v['rank1_ci95'][0])}-{pct(v['rank1_ci95'][1])})"
                               if "rank1" in v else "n/a")
                        L.append(f"| {x['judge']} | {k} (gallery {x['gallery']}) | {val} | {v['probes_scored']} / {v['fte']} |")
            L.append("")
        quality = [q for q in r["quality"] if q.get("source", source) == source]
        if source == "synthetic" and quality:
            L += quality_table(quality)
        dets = [d for d in r["detectability"] if d["source"] == source]
        if dets:
            d = dets[0]
            L += ["### detectability: share of crops in which dlib's HOG detector finds the face", "",
                  "| " + " | ".join(k for k in d if k not in ("source", "images")) + " |",
                  "|" + "---|" * (len(d) - 2),
                  "| " + " | ".join(f"{pct(v)}%" for k, v in d.items() if k not in ("source", "images")) + " |", ""]
        for fig in r.get("figures", {}).get(source, []):
            L.append(f"![ROC {fig['judge']}]({fig['roc']}) ![scores {fig['judge']}]({fig['hist']})")
        for key, g in r.get("grids", {}).items():
            if key.startswith(source + "/"):
                L += ["", f"Best (top {len(g['best'])} rows) and worst restorations by {g['judge']} cosine to the "
                      f"reference, method {key.split('/')[1]}: masked | region the method replaced (tinted) | "
                      "restored | unmasked reference", "", f"![grid]({g['file']})"]
        L.append("")
    return "\n".join(L) + "\n"


def quality_table(quality: list[dict]) -> list[str]:
    f = lambda x, d=2: "n/a" if x is None else f"{x:.{d}f}"  # noqa: E731
    cos_keys = sorted({k for q in quality for k in q if k.startswith("cosine_")})
    dist_keys = sorted({k for q in quality for k in q if k.startswith("distance_dlib")})
    has_lpips = any("lpips_face" in q for q in quality)
    head = ["method", "mask given", "replaced % of crop", "region IoU with mask", "PSNR crop dB", "SSIM crop",
            "PSNR mask dB", "SSIM mask"] + (["LPIPS crop"] if has_lpips else [])
    head += [f"cos({k[7:]}) restored vs clean" for k in cos_keys]
    head += [f"{k[9:]} distance restored vs clean" for k in dist_keys]
    L = ["### restoration quality against the unmasked crop", "",
         "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for q in quality:
        row = [q["method"], mask_cell(q), pct(q.get("region_share")), f(q.get("region_iou"), 3), f(q["psnr_face"]),
               f(q["ssim_face"], 3), f(q["psnr_mask"]), f(q["ssim_mask"], 3)]
        if has_lpips:
            row.append(f(q.get("lpips_face"), 3))
        row += [f(q.get(k), 3) for k in cos_keys + dist_keys]
        L.append("| " + " | ".join(row) + " |")
    L += ["", "PSNR / SSIM crop: the whole 112 crop; mask: the ground-truth mask's pixels. Replaced / IoU: the region "
          "each method reports it replaced, against the ground-truth mask."]
    empty = quality[0].get("empty_masks", 0)
    if empty:
        L += ["", f"{empty} of {quality[0]['images']} synthetic masks left the face untouched (empty mask)."]
    if not has_lpips:
        L += ["", "LPIPS not computed: its AlexNet trunk weights are not in the local torch cache."]
    return L + [""]
