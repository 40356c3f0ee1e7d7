"""Figures and per-pair views of a meer-eval run (``meer.evaluation.plots``), on a tiny generated identity set
with a fake detector, masker and judge (no dlib, no model)."""
from pathlib import Path

import cv2
import matplotlib.pyplot as plt
import numpy as np
import pytest

from meer.evaluation.harness import Components, EvalOptions
from meer.evaluation.judge import Judge, JudgeOutput
from meer.evaluation.keys import ScoreKey, ViewKey
from meer.evaluation.methods import TRUTH, NoRestore, RestorationMethod, Restored
from meer.evaluation.plots import (ScoredPair, face_tile, failure_gallery, headline_table, histogram_grid,
                                   load_scores, roc_grid, roc_panels, run_keeping_views, scored_pairs, worst_pairs)
from meer.faces.template import ARCFACE_112
from meer.utils.images import write_image

SIZE = 96
PROBE = (90, 56)  # a crop pixel inside the fake mask


def photo(ident: int, shot: int) -> np.ndarray:
    base = np.random.default_rng(ident).integers(0, 256, (4, 4, 3)).astype(np.uint8)
    img = cv2.resize(base, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    img += np.random.default_rng(1000 * ident + shot).integers(-12, 13, img.shape).astype(np.int16)
    return img.clip(0, 255).astype(np.uint8)


def locator(images):
    return [(ARCFACE_112 * SIZE / 112.0).astype(np.float64) for _ in images]


def masker(crop, landmarks, seed):
    """A flat grey block under the nose; its grey level depends on the seed."""
    mask = np.zeros(crop.shape[:2], bool)
    mask[int(landmarks[2, 1]) + 4:106, 8:104] = True
    out = crop.copy()
    out[mask] = 100 + seed % 50
    return out, mask


class Judge8(Judge):
    """Mean colours of an 8 x 8 grid; cannot enrol faces whose mask has an even grey level (about half the
    masked faces), so some pairs are failures to enrol."""

    name = "block"
    cache_key = "block-plots-v1"

    def __init__(self):
        self.calls = 0

    def embed(self, crops):
        self.calls += len(crops)
        face = crops.astype(np.float32)
        v = face.reshape(len(face), 8, 14, 8, 14, 3).mean(axis=(2, 4)).reshape(len(face), -1)
        px = crops[:, PROBE[0], PROBE[1]].astype(int)
        grey = (px[:, 0] == px[:, 1]) & (px[:, 1] == px[:, 2])
        ok = ~(grey & (px[:, 0] % 2 == 0))
        return JudgeOutput((v - v.mean(axis=1, keepdims=True)).astype(np.float32), ok)


class Fill(RestorationMethod):
    """Paints the ground-truth mask with the mean colour of the rest of the face (a cheap oracle method)."""

    name = "fill"
    given = TRUTH

    def _restore(self, crops, masks):
        out = crops.copy()
        for c, m in zip(out, masks):
            c[m] = c[~m].mean(axis=0).round().astype(np.uint8)
        return Restored(out, masks.copy())


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("plots")
    for i in range(6):
        for k in range(3):
            write_image(root / "data" / f"id{i}" / f"id{i}_{k}.png", photo(i, k))
    judge = Judge8()
    comp = Components(judges=[judge], methods=[NoRestore(), Fill()], locator=locator, masker=masker)
    opts = EvalOptions(data=root / "data", out=root / "out", folds=2, per_fold=6, cache_dir=root / "cache",
                       grid=0, progress=False, bootstrap=50, plots=False)
    return run_keeping_views(opts, comp), judge, opts


def test_worst_pairs_are_the_highest_impostors_and_lowest_genuines_worst_first():
    def sp(score, genuine, i):
        return ScoredPair(score, genuine, Path(f"p{i}"), Path(f"r{i}"), "synthetic", "masked-vs-clean", "none", 0)

    pairs = [sp(0.1, False, 0), sp(0.9, True, 1), sp(0.7, False, 2), sp(0.2, True, 3), sp(0.7, False, 4),
             sp(-0.5, True, 5), sp(0.3, False, 6)]
    imp, gen = worst_pairs(pairs, k=3)
    assert [p.probe.name for p in imp] == ["p2", "p4", "p6"]  # 0.7, 0.7 (input order kept), 0.3
    assert [p.probe.name for p in gen] == ["p5", "p3", "p1"]  # -0.5, 0.2, 0.9
    imp, gen = worst_pairs(pairs, k=10)
    assert len(imp) == 4 and len(gen) == 3


def test_scored_pairs_are_the_pairs_behind_scores_npz(run):
    kept, judge, opts = run
    res = kept.results
    npz = load_scores(opts.out)
    calls = judge.calls
    checked = 0
    for row in res["verification"]:
        key = ScoreKey(row["source"], row["judge"], row["condition"], row["method"])
        if key not in npz:
            continue
        pairs = scored_pairs(kept, judge, key.source, key.condition, key.method)
        scores, genuine = npz[key]
        # same pairs in the same order, failures to enrol left out exactly as in the report
        np.testing.assert_allclose([p.score for p in pairs], scores, rtol=0, atol=1e-9)
        assert [p.genuine for p in pairs] == genuine.tolist()
        assert len(pairs) == row["pairs_scored"] == row["genuine"] + row["impostor"]
        checked += 1
    assert checked >= 5
    masked = next(r for r in res["verification"] if r["condition"] == "masked-vs-clean")
    assert masked["pairs_excluded_fte"] > 0  # the fake judge refused some masked faces
    assert judge.calls == calls  # every embedding came from the run's own cache
    p = scored_pairs(kept, judge, "synthetic", "restored-vs-clean", "fill")[0]
    assert p.roles == ("restored", "clean") and kept.data.images[p.probe].identity.startswith("id")
    with pytest.raises(ValueError, match="did not run"):
        scored_pairs(kept, judge, "synthetic", "restored-vs-clean", "meer")
    with pytest.raises(ValueError, match="not in this run"):
        scored_pairs(kept, judge, "real", "masked-vs-clean")


def test_failure_gallery_rows_tiles_and_pixelation(run):
    kept, judge, _ = run
    pairs = scored_pairs(kept, judge, "synthetic", "masked-vs-clean")
    imp, gen = worst_pairs(pairs, k=2)
    fig = failure_gallery(kept, judge, gen, methods=["fill"], cells=4)
    shown = [ax for ax in fig.axes if ax.images]
    # masked probe | fill | probe unmasked | reference, one row per pair
    assert len(shown) == 4 * len(gen)
    first = shown[0]
    assert first.get_title().startswith("probe (masked)") and "cos" in first.get_title()
    tile = np.asarray(first.images[0].get_array())
    assert len(np.unique(tile.reshape(-1, 3), axis=0)) <= 16  # 4 x 4 flat blocks
    crop = kept.views.crops[ViewKey.masked("synthetic")][gen[0].probe]
    np.testing.assert_array_equal(tile, face_tile(crop, 4))
    plain = failure_gallery(kept, judge, imp[:1], cells=None)
    tiles = [np.asarray(ax.images[0].get_array()) for ax in plain.axes if ax.images]
    assert len(tiles) == 3  # impostor: masked probe | probe unmasked | reference
    np.testing.assert_array_equal(tiles[-1], face_tile(kept.views.faces[imp[0].reference].crop, None))
    assert len(np.unique(tiles[-1].reshape(-1, 3), axis=0)) > 16


def test_roc_panels_grid_histograms_and_table_from_a_report_folder(run):
    kept, _, opts = run
    npz = load_scores(opts.out)
    # an embedding method scored in the judge's own space joins the judge's panel
    npz[ScoreKey("synthetic", "block (own space)", "restored-vs-clean", "emb")] = npz[
        ScoreKey("synthetic", "block", "clean-vs-clean")]
    panels = roc_panels(npz)
    assert list(panels) == ["synthetic masks, judge block"]
    labels = list(panels["synthetic masks, judge block"])
    assert "restored-vs-clean [fill]" in labels and "restored-vs-clean [emb]" in labels
    assert not any(lab.endswith("[none]") for lab in labels)  # repeats of the masked rows
    only = roc_panels(npz, conditions=["masked-vs-clean", "clean-vs-clean"])
    assert list(only["synthetic masks, judge block"]) == ["masked-vs-clean", "clean-vs-clean"]
    fig = roc_grid(panels)
    ax = fig.axes[0]
    assert len(ax.lines) == len(labels) and "AUC" in ax.get_legend().get_texts()[0].get_text()
    # one label, one colour, in every panel
    fig = roc_grid({"a": only["synthetic masks, judge block"], "b": panels["synthetic masks, judge block"]})
    colour = {ax.get_title(): {t.get_text().split(" (AUC")[0]: line.get_color()
                               for t, line in zip(ax.get_legend().get_texts(), ax.lines)} for ax in fig.axes}
    assert colour["a"]["masked-vs-clean"] == colour["b"]["masked-vs-clean"]
    assert colour["a"]["clean-vs-clean"] == colour["b"]["clean-vs-clean"] != colour["b"]["masked-vs-clean"]
    hist = histogram_grid(panels["synthetic masks, judge block"], "cosine", ncols=3)
    assert sum(bool(a.patches) for a in hist.axes) == len(labels)
    table = headline_table({"tiny": kept.results})
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["data", "masks", "judge"]
    assert any("masked-vs-clean" in line for line in lines) and "[none]" not in table
    fill = next(line for line in lines if "restored-vs-clean" in line and " fill " in line)
    assert "ground truth (oracle)" in fill  # the table says which rows had the ground-truth mask
    # a handful of impostor pairs cannot resolve FAR 1e-2: marked
    assert "*" in table
