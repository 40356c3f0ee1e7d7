"""Writing the report folder: ``report.md``, ``results.json``, ROC / histogram PNGs, restoration grids."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from meer.evaluation.cells import accuracy_cell, curve_label, gap_cell, pct, tar_cell  # noqa: F401 (re-exported)
from meer.evaluation.judge import cosine
from meer.utils.images import write_image

SOURCE_TITLE = {"synthetic": "synthetic masks (fixed seed, pixel ground truth)",
                "real": "real masked photos (no pixel ground truth)"}


def write_outputs(results: dict, score_sets: dict, views, embeddings: dict, comp, data, opts) -> None:
    out: Path = opts.out
    if opts.plots:
        from meer.evaluation.figures import histogram_figure, roc_figure
    figures = {}
    for source in (results["sources"] if opts.plots else []):
        judge_names = sorted({k[1] for k in score_sets if k[0] == source})
        for jn in judge_names:
            curves = {curve_label(c, m): v for (s, j, c, m), v in score_sets.items()
                      if s == source and j == jn and (c != "restored-vs-clean" or m != "none")
                      and (c != "restored-vs-restored" or m != "none")}
            if not curves:
                continue
            slug = f"{source}_{jn.replace(' (own space)', '-own')}"
            metric = "negative Euclidean distance" if "dlib" in jn else "cosine similarity"
            roc = roc_figure(curves, f"ROC, {source} masks, judge {jn}", out / f"roc_{slug}.png")
            hist = histogram_figure(curves, f"scores, {source} masks, judge {jn}", metric, out / f"hist_{slug}.png")
            figures.setdefault(source, []).append((jn, roc.name, hist.name))
    if score_sets:  # every scored pair, for re-analysis without re-embedding
        arrays = {}
        for (src, judge, cond, method), (sc, lab) in score_sets.items():
            key = f"{src}|{judge}|{cond}|{method}"
            arrays[key + "|scores"] = sc
            arrays[key + "|genuine"] = lab
        np.savez_compressed(out / "scores.npz", **arrays)
    grids = write_grids(views, embeddings, comp, data, opts, results)
    results["figures"] = {s: [{"judge": j, "roc": r, "hist": h} for j, r, h in v] for s, v in figures.items()}
    results["grids"] = grids
    (out / "results.json").write_text(json.dumps(results, indent=1, default=float), encoding="utf-8")
    (out / "report.md").write_text(render_markdown(results), encoding="utf-8")


def write_grids(views, embeddings: dict, comp, data, opts, results: dict) -> dict:
    """Best and worst restorations per (source, method) by the first judge's cosine to the reference
    (synthetic: the same photo unmasked; real: the identity's first unmasked photo)."""
    if opts.grid <= 0 or not comp.judges:
        return {}
    judge = comp.judges[0]
    emb = embeddings[judge.name]
    grids = {}
    reference: dict[str, Path] = {}
    for name, files in data.files.items():
        for p in files:
            if not data.images[p].real_masked and p in views.faces:
                reference[name] = p
                break
    for source in results["sources"]:
        for m in results["methods"]:
            if m == "none":
                continue
            view = f"restored:{source}:{m}"
            rows = []
            for p in views.masked[source]:
                ref = p if source == "synthetic" else reference.get(data.images[p].identity)
                if ref is None or (view, p) not in emb or ("clean", ref) not in emb:
                    continue
                rows.append((float(cosine(emb[(view, p)][None], emb[("clean", ref)][None])[0]), p, ref))
            if not rows:
                continue
            rows.sort(key=lambda r: -r[0])
            k = min(opts.grid, len(rows) // 2) or 1
            chosen = rows[:k] + rows[-k:] if len(rows) >= 2 * k else rows
            tiles = [(views.masked[source][p], views.restored[(source, m)][p], views.faces[ref].canvas)
                     for _, p, ref in chosen]
            path = restoration_grid(tiles, opts.out / f"grid_{source}_{m}.png")
            grids[f"{source}/{m}"] = {"file": path.name, "judge": judge.name, "best": [
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
    for n in r["notes"]:
        L.append(f"- note: {n}")
    L += ["", "Accuracy: 10-fold verification accuracy (threshold chosen on the other 9 folds) with its 95% bootstrap "
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
                  "| condition | method | accuracy % (95% CI) | AUC | EER % | TAR@FAR1e-2 % | TAR@FAR1e-3 % | pairs (gen/imp) | FTE % | gap recovered |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
            for v in r["verification"]:
                if v["source"] != source or v["judge"] != j:
                    continue
                if "accuracy" in v:
                    (tar2, coarse2), (tar3, coarse3) = tar_cell(v, 1e-2), tar_cell(v, 1e-3)
                    footnote |= coarse2 or coarse3
                    L.append(f"| {v['condition']} | {v['method']} | {accuracy_cell(v)} | {v['auc']:.3f} | "
                             f"{pct(v['eer'])} | {tar2} | {tar3} | "
                             f"{v['genuine']}/{v['impostor']} | {pct(v['fte_rate'])} | {gap_cell(v)} |")
                else:
                    L.append(f"| {v['condition']} | {v['method']} | n/a ({v.get('error')}) | | | | | "
                             f"{v['pairs_scored']} | {pct(v['fte_rate'])} | |")
            if footnote:
                L += ["", "\\* fewer impostor pairs than 1/FAR: no threshold can be resolved at that FAR, the rate is "
                      "measured at zero false accepts instead (a lower bound)."]
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
        if source == "synthetic" and r["quality"]:
            cos_keys = sorted({k for q in r["quality"] for k in q if k.startswith("cosine_")})
            has_lpips = any("lpips_face" in q for q in r["quality"])
            head = ["method", "PSNR face dB", "SSIM face", "PSNR mask dB", "SSIM mask"] + (["LPIPS face"] if has_lpips else [])
            dist_keys = sorted({k for q in r["quality"] for k in q if k.startswith("distance_dlib")})
            head += [f"cos({k[7:]}) restored vs clean" for k in cos_keys]
            head += [f"{k[9:]} distance restored vs clean" for k in dist_keys]
            L += ["### restoration quality against the unmasked photo", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            for q in r["quality"]:
                f = lambda x, d=2: "n/a" if x is None else f"{x:.{d}f}"  # noqa: E731
                row = [q["method"], f(q["psnr_face"]), f(q["ssim_face"], 3), f(q["psnr_mask"]), f(q["ssim_mask"], 3)]
                if has_lpips:
                    row.append(f(q.get("lpips_face"), 3))
                row += [f(q.get(k), 3) for k in cos_keys + dist_keys]
                L.append("| " + " | ".join(row) + " |")
            empty = r["quality"][0].get("empty_masks", 0)
            if empty:
                L += ["", f"{empty} of {r['quality'][0]['images']} synthetic masks left the face untouched (empty mask)."]
            if not has_lpips:
                L.append("")
                L.append("LPIPS not computed: its AlexNet trunk weights are not in the local torch cache.")
            L.append("")
        dets = [d for d in r["detectability"] if d["source"] == source]
        if dets:
            d = dets[0]
            L += ["### detectability: share of faces dlib's HOG detector finds again", "",
                  "| " + " | ".join(k for k in d if k not in ("source", "images")) + " |",
                  "|" + "---|" * (len(d) - 2),
                  "| " + " | ".join(f"{pct(v)}%" for k, v in d.items() if k not in ("source", "images")) + " |", ""]
        for fig in r.get("figures", {}).get(source, []):
            L.append(f"![ROC {fig['judge']}]({fig['roc']}) ![scores {fig['judge']}]({fig['hist']})")
        for key, g in r.get("grids", {}).items():
            if key.startswith(source + "/"):
                L += ["", f"Best (top {len(g['best'])} rows) and worst restorations by {g['judge']} cosine to the "
                      f"reference, method {key.split('/')[1]}: masked | restored | unmasked reference", "",
                      f"![grid]({g['file']})"]
        L.append("")
    return "\n".join(L) + "\n"


def restoration_grid(rows: list[tuple[np.ndarray, ...]], path: Path, gap: int = 4) -> Path:
    """Tile ``rows`` of equally sized uint8 images (e.g. masked | restored | clean) into one PNG."""
    if not rows:
        raise ValueError("no rows to draw")
    h, w = rows[0][0].shape[:2]
    ncol = max(len(r) for r in rows)
    grid = np.full((len(rows) * (h + gap) + gap, ncol * (w + gap) + gap, 3), 255, np.uint8)
    for i, r in enumerate(rows):
        for j, im in enumerate(r):
            y, x = gap + i * (h + gap), gap + j * (w + gap)
            grid[y:y + h, x:x + w] = im
    return write_image(path, grid, overwrite=True)
