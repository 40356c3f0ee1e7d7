"""Evaluate the current state of meer on the evaluation-only identities of ../shared/data.

    python benchmarks/bench_eval.py [--out cache/eval/report] [--cache cache/eval/cache] [--shared ../shared/data] [-- extra meer-eval args]

Runs ``meer-eval`` twice -- LFW eval-only identities (synthetic masks, fixed seed) and RMFRD eval-only
identities (real masked photos, plus synthetic masks on their unmasked photos) -- and writes
``summary.md`` with the headline numbers of both (what ``docs/evaluation.md`` quotes). Each run's full
report (``report.md``, ROC / histogram PNGs, restoration grids) stays in its own folder. Embeddings and
landmarks are cached, so a second run only recomputes what changed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from meer.cli.eval import main as meer_eval  # noqa: E402
from meer.data.splits import shared_data_root  # noqa: E402
from meer.evaluation.cells import accuracy_cell, gap_cell, mask_cell, pct  # noqa: E402

RUNS = {
    "lfw": ("faces/lfw", "splits/lfw_eval_identities.txt"),
    "rmfrd": ("real_masked_pairs/rmfrd", "splits/rmfrd_eval_identities.txt"),
}


def summarize(name: str, res: dict) -> list[str]:
    L = [f"## {name}: {res['identities']} identities, {res['images']} images "
         f"({res['real_masked_images']} real masked), {res['pairs']['total']} pairs", ""]
    e = res["enrolment"]
    L.append(f"meer's detector enrolled {e['images_with_face']} of {res['images']} images "
             f"(detector FTE {pct(e['fte_rate_detector'])}%). Run time {res['seconds']} s.")
    L.append("")
    L += ["Mask given: *oracle* rows had the ground-truth mask (synthetic masks only), *blind* rows did not (meer "
          "predicts the region itself, telea-blind inpaints the region meer replaced).", "",
          "| masks | judge | condition | method | mask given | accuracy % (95% CI) | AUC | EER % | TAR@FAR1e-2 % | pairs gen/imp | FTE % | gap recovered |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in res["verification"]:
        if v["condition"].startswith("restored") and v["method"] == "none":
            continue  # identical to the masked rows
        if "accuracy" not in v:
            L.append(f"| {v['source']} | {v['judge']} | {v['condition']} | {v['method']} | {mask_cell(v)} | "
                     f"n/a ({v.get('error')}) | | | | {v['pairs_scored']} | {pct(v['fte_rate'])} | |")
            continue
        L.append(f"| {v['source']} | {v['judge']} | {v['condition']} | {v['method']} | {mask_cell(v)} | {accuracy_cell(v)} | "
                 f"{v['auc']:.3f} | {pct(v['eer'])} | {pct(v['tar_at_far_1e-2'])} | "
                 f"{v['genuine']}/{v['impostor']} | {pct(v['fte_rate'])} | {gap_cell(v)} |")
    common = res.get("common_pairs", [])
    if common:
        judges = list(common[0]["judges"])
        L += ["", "Every judge on the pairs all judges enrolled (a judge with failures to enrol is scored above on its "
              "easier subset):", "",
              "| masks | condition | method | pairs kept | " + " | ".join(judges) + " |", "|---|---|---|---|" + "---|" * len(judges)]
        for c in common:
            if c["condition"].startswith("restored") and c["method"] == "none":
                continue
            L.append(f"| {c['source']} | {c['condition']} | {c['method']} | {c['pairs_common']} of {c['pairs_total']} | "
                     + " | ".join(accuracy_cell(v) if "accuracy" in v else "n/a" for v in c["judges"].values()) + " |")
    L += ["", "| masks | judge | probes | rank-1 % (95% CI) | probes scored |", "|---|---|---|---|---|"]
    for x in res["rank1"]:
        for k, v in x.items():
            if isinstance(v, dict) and "rank1" in v:
                L.append(f"| {x['source']} | {x['judge']} | {k} (gallery {x['gallery']}) | {pct(v['rank1'])} "
                         f"({pct(v['rank1_ci95'][0])}-{pct(v['rank1_ci95'][1])}) | {v['probes_scored']} |")
    if res["quality"]:
        L += ["", "| synthetic masks: method | mask given | replaced % / IoU with mask | PSNR crop dB | SSIM crop | PSNR mask dB | SSIM mask | judge cosine restored vs clean | dlib distance restored vs clean |",
              "|---|---|---|---|---|---|---|---|---|"]
        for q in res["quality"]:
            cos = ", ".join(f"{k[7:]} {q[k]:.3f}" for k in q if k.startswith("cosine_"))
            dist = ", ".join(f"{k[9:]} {q[k]:.3f}" for k in q if k.startswith("distance_dlib"))
            region = (f"{pct(q['region_share'])} / {q['region_iou']:.3f}" if q.get("region_iou") is not None else "")
            L.append(f"| {q['method']} | {mask_cell(q)} | {region} | {q['psnr_face']:.2f} | {q['ssim_face']:.3f} | "
                     f"{q['psnr_mask']:.2f} | {q['ssim_mask']:.3f} | {cos} | {dist} |")
    if res["detectability"]:
        cols = list(dict.fromkeys(k for d in res["detectability"] for k in d if k not in ("source", "images")))
        L += ["", "| masks | dlib HOG finds the face in the crop: " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for d in res["detectability"]:
            L.append(f"| {d['source']} ({d['images']} faces) | " + " | ".join(
                f"{pct(d[k])}%" if k in d else "n/a" for k in cols) + " |")
    if res["notes"]:
        L.append("")
        L += [f"- note: {n}" for n in res["notes"]]
    return L + [""]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "cache" / "eval" / "report")
    ap.add_argument("--cache", type=Path, default=REPO / "cache" / "eval" / "cache")
    ap.add_argument("--shared", type=Path, default=None, help="shared data root (default $MEER_SHARED_DATA or ../shared/data)")
    ap.add_argument("--only", choices=sorted(RUNS), nargs="+", default=sorted(RUNS))
    ap.add_argument("--summarize-only", action="store_true", help="only rebuild summary.md from OUT/<name>/results.json")
    ap.add_argument("extra", nargs="*", help="more meer-eval arguments (after --)")
    args = ap.parse_args()
    shared = args.shared or shared_data_root()
    if not args.summarize_only and not (shared / "MANIFEST.md").is_file():
        print(f"bench_eval: shared data not found at {shared} (set MEER_SHARED_DATA)", file=sys.stderr)
        return 2
    lines = ["# meer evaluation summary", "",
             f"Generated by `python benchmarks/bench_eval.py` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", ""]
    for name in args.only:
        data, ids = RUNS[name]
        out = args.out / name
        if not args.summarize_only:
            rc = meer_eval([str(shared / data), "--identities", str(shared / ids), "--out", str(out),
                            "--cache", str(args.cache), "--overwrite", *args.extra])
            if rc != 0:
                return rc
        res = json.loads((out / "results.json").read_text(encoding="utf-8"))
        lines += summarize(name, res)
    (args.out / "summary.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"bench_eval: wrote {args.out / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
