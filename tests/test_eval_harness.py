"""End-to-end runs of the evaluation harness on tiny generated identity sets with small fakes for
the detector, the masker and the judge (the real dlib judge is tested in test_eval_judges.py)."""
import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from meer.data.pairs import Pair, read_pairs, write_pairs
from meer.evaluation.cache import pixel_digest
from meer.evaluation.dataset import scan_eval_data
from meer.evaluation.harness import Components, EvalOptions, EmbeddingMethod, run_evaluation, source_pairs
from meer.evaluation.judge import Judge, JudgeOutput
from meer.evaluation.keys import NO_METHOD, ScoreKey, ViewKey
from meer.evaluation.methods import NOTHING, NoRestore, RestorationMethod, Restored, TeleaInpainting
from meer.evaluation.prepare import image_seed
from meer.evaluation.quality import region_agreement, region_scores
from meer.evaluation.views import EvalResult
from meer.faces.template import ARCFACE_112
from meer.utils.errors import MeerError
from meer.utils.images import write_image

SIZE = 96


def identity_image(ident: int, shot: int) -> np.ndarray:
    """A smooth identity-specific colour field plus a little per-photo noise."""
    base = np.random.default_rng(ident).integers(0, 256, (4, 4, 3)).astype(np.uint8)
    img = cv2.resize(base, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    img += np.random.default_rng(1000 * ident + shot).integers(-6, 7, img.shape).astype(np.int16)
    return img.clip(0, 255).astype(np.uint8)


def make_set(root: Path, n_ids: int = 8, shots: int = 3, paired: bool = False, noface: bool = True) -> Path:
    for i in range(n_ids):
        for k in range(shots):
            if paired:
                side = "masked" if k == 0 else "unmasked"
                d = root / f"id{i:02d}" / side
            else:
                d = root / f"id{i:02d}"
            d.mkdir(parents=True, exist_ok=True)
            img = identity_image(i, k)
            if paired and k == 0:
                img = img.copy()
                img[55:, 10:86] = (200, 200, 210)  # a "real" mask
            write_image(d / f"id{i:02d}_{k:04d}.png", img)
    if noface:
        write_image(root / "id00" / "id00_9999_noface.png", identity_image(0, 9))
    return root


def fake_locator(images):
    """ArcFace template landmarks for every image, no face for files whose pixels are all bright."""
    return [None if im.mean() > 250 else (ARCFACE_112 * SIZE / 112.0).astype(np.float64) for im in images]


class NoFaceLocator:
    """Finds no face in the one image marked 'noface' (located by its exact pixels)."""

    def __init__(self, root: Path):
        p = root / "id00" / "id00_9999_noface.png"
        self.marker = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) if p.exists() else None
        self.calls = 0

    def __call__(self, images):
        self.calls += len(images)
        out = fake_locator(images)
        if self.marker is not None:
            out = [None if np.array_equal(im, self.marker) else lm for im, lm in zip(images, out)]
        return out


def fake_masker(crop, landmarks, seed):
    """Grey block from just under the nose to the chin; its colour depends on the seed."""
    y0 = int(landmarks[2, 1]) + 4
    mask = np.zeros(crop.shape[:2], bool)
    mask[y0:106, 8:104] = True
    out = crop.copy()
    out[mask] = 100 + seed % 50
    return out, mask


class BlockJudge(Judge):
    """Mean colours of an 8x8 grid over the 112 crop; counts how many faces it embedded and keeps them."""

    name = "block"
    cache_key = "block-v1"

    def __init__(self, fail_on_flat: bool = False):
        self.calls = 0
        self.fail_on_flat = fail_on_flat
        self.seen: list[np.ndarray] = []

    def embed(self, crops):
        assert crops.shape[1:] == (112, 112, 3) and crops.dtype == np.uint8
        self.calls += len(crops)
        self.seen += [c.copy() for c in crops]
        face = crops.astype(np.float32)
        v = face.reshape(len(face), 8, 14, 8, 14, 3).mean(axis=(2, 4)).reshape(len(face), -1)
        v -= v.mean(axis=1, keepdims=True)
        ok = np.ones(len(face), bool)
        if self.fail_on_flat:  # a face that is mostly one flat colour cannot be enrolled
            ok = face.std(axis=(1, 2, 3)) > 1.0
        return JudgeOutput(v.astype(np.float32), ok)


class LowerHalf(RestorationMethod):
    """A blind stand-in for MEER: predicts the lower half of the face as its region and fills it with the mean
    colour of the upper half; that predicted half is the region it reports."""

    name = "half"
    given = NOTHING

    def _restore(self, crops, mask):
        out = crops.copy()
        region = np.zeros(crops.shape[:3], bool)
        region[:, 70:] = True
        for c in out:
            c[70:] = c[:70].reshape(-1, 3).mean(axis=0).round().astype(np.uint8)
        return Restored(out, region)


def components(judge=None, telea=True, **kw):
    methods = [NoRestore(), TeleaInpainting()] if telea else [NoRestore()]
    return Components(judges=[judge or BlockJudge()], methods=methods,
                      locator=kw.pop("locator", fake_locator), masker=fake_masker, **kw)


def options(data, out, **kw):
    kw.setdefault("folds", 2)
    kw.setdefault("per_fold", 6)
    kw.setdefault("plots", False)
    return EvalOptions(data=data, out=out, progress=False, bootstrap=200, **kw)


def rows(results, **where):
    return [r for r in results["verification"] if all(r.get(k) == v for k, v in where.items())]


def test_end_to_end_writes_every_report_file(tmp_path):
    data = make_set(tmp_path / "data")
    out = tmp_path / "report"
    loc = NoFaceLocator(data)
    run = run_evaluation(options(data, out, cache_dir=tmp_path / "cache", plots=True), components(locator=loc))
    assert isinstance(run, EvalResult)
    res = run.results
    for f in ("report.md", "results.json", "pairs.txt", "roc_synthetic_block.png", "hist_synthetic_block.png",
              "grid_synthetic_telea.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f
    saved = json.loads((out / "results.json").read_text())
    assert saved["sources"] == ["synthetic"] and saved["methods"] == ["none", "telea"]
    conds = {(r["condition"], r["method"]) for r in saved["verification"]}
    assert conds == {("clean-vs-clean", "none"), ("masked-vs-clean", "none"), ("masked-vs-masked", "none"),
                     ("restored-vs-clean", "none"), ("restored-vs-clean", "telea"),
                     ("restored-vs-restored", "none"), ("restored-vs-restored", "telea")}
    clean = rows(res, condition="clean-vs-clean")[0]
    masked = rows(res, condition="masked-vs-clean")[0]
    assert clean["accuracy"] == 1.0  # distinct colour fields: trivially separable
    assert masked["accuracy"] <= clean["accuracy"]
    # "none" restores nothing: its restored-vs-clean row is the masked-vs-clean row
    none_rc = rows(res, condition="restored-vs-clean", method="none")[0]
    assert none_rc["accuracy"] == masked["accuracy"] and none_rc["auc"] == masked["auc"]
    report = (out / "report.md").read_text()
    assert "masked-vs-clean" in report and "gap recovered" in report and "grid_synthetic_telea.png" in report
    # the no-face image is a failure to enrol: counted, its pairs excluded, not dropped silently
    assert res["enrolment"]["failures"] == 1
    assert "no face" in res["enrolment"]["failed_examples"][0]
    touched = [r for r in res["verification"] if r["pairs_excluded_fte"] > 0]
    if touched:
        assert all(r["fte_rate"] > 0 for r in touched)
    # quality rows for every restorer, detectability absent without dlib judge
    assert [q["method"] for q in res["quality"]] == ["none", "telea"]
    assert res["quality"][1]["psnr_mask"] > res["quality"][0]["psnr_mask"]


def test_rerun_uses_caches_and_gives_identical_numbers(tmp_path):
    data = make_set(tmp_path / "data", noface=False)
    cache = tmp_path / "cache"
    j1, loc1 = BlockJudge(), NoFaceLocator(data)
    r1 = run_evaluation(options(data, tmp_path / "r1", cache_dir=cache, grid=0), components(j1, False, locator=loc1)).results
    assert j1.calls > 0 and loc1.calls > 0
    j2, loc2 = BlockJudge(), NoFaceLocator(data)
    r2 = run_evaluation(options(data, tmp_path / "r2", cache_dir=cache, grid=0), components(j2, False, locator=loc2)).results
    assert j2.calls == 0 and loc2.calls == 0  # embeddings and landmarks both came from the cache
    strip = lambda r: [{k: v for k, v in x.items()} for x in r["verification"]]  # noqa: E731
    assert strip(r1) == strip(r2)
    assert (tmp_path / "r1" / "pairs.txt").read_text() == (tmp_path / "r2" / "pairs.txt").read_text()


def test_judge_failures_are_counted_per_condition(tmp_path):
    data = make_set(tmp_path / "data", noface=False)

    def flat_masker(crop, landmarks, seed):  # masks that flatten the whole face: the judge cannot enrol them
        out = crop.copy()
        mask = np.ones(crop.shape[:2], bool)
        out[mask] = 128
        return out, mask

    comp = Components(judges=[BlockJudge(fail_on_flat=True)], methods=[NoRestore()], locator=fake_locator,
                      masker=flat_masker)
    res = run_evaluation(options(data, tmp_path / "out", grid=0), comp).results
    clean = rows(res, condition="clean-vs-clean")[0]
    masked = rows(res, condition="masked-vs-clean")[0]
    assert clean["fte_rate"] == 0 and clean["pairs_excluded_fte"] == 0
    pf = read_pairs(tmp_path / "out" / "pairs.txt", data)
    probes, refs = {p.path_a for p in pf.pairs}, {p.path_b for p in pf.pairs}
    # every masked probe failed, every clean reference enrolled
    assert masked["fte_images"] == len(probes) and masked["images"] == len(probes) + len(refs)
    assert masked["fte_rate"] == pytest.approx(len(probes) / (len(probes) + len(refs)))
    assert masked["pairs_scored"] == 0 and "error" in masked
    assert "n/a" in (tmp_path / "out" / "report.md").read_text()


def test_pairs_file_with_missing_identities_and_images_is_reported(tmp_path):
    data = make_set(tmp_path / "data", noface=False)
    pairs = [Pair(f"id{i:02d}", 1, f"id{i:02d}", 2, fold=i % 2) for i in range(4)]
    pairs += [Pair(f"id{i:02d}", 1, f"id{i + 4:02d}", 3, fold=i % 2) for i in range(4)]
    text_path = write_pairs(tmp_path / "pairs.txt", pairs)
    text = text_path.read_text().splitlines()
    text[1] = "Ghost_Person\t1\t2"  # unknown identity
    text[2] = "id01\t1\t9"  # image number beyond the identity's 3 photos
    text_path.write_text("\n".join(text) + "\n")
    res = run_evaluation(options(data, tmp_path / "out", pairs=text_path, grid=0), components(telea=False)).results
    assert res["pairs"]["dropped"] == 2 and res["pairs"]["total"] == 8
    assert any("Ghost_Person" in n and "id01 #9" in n for n in res["notes"])
    assert "Ghost_Person" in (tmp_path / "out" / "report.md").read_text()
    assert rows(res, condition="clean-vs-clean")[0]["pairs_total"] == 6


def test_real_masked_layout_gives_a_real_source(tmp_path):
    data = make_set(tmp_path / "data", n_ids=8, shots=4, paired=True, noface=False)
    comp = components()
    comp.methods.append(LowerHalf())
    comp.embedding_methods = [EmbeddingMethod("block-embed", comp.judges[0], transform=lambda v: v * 2.0)]
    res = run_evaluation(options(data, tmp_path / "out", per_fold=20), comp).results
    assert res["sources"] == ["synthetic", "real"] and res["real_masked_images"] == 8
    counts = res["pair_counts"]["real"]
    assert counts["masked-vs-clean"] > 0 and counts["restored-vs-clean"] == counts["masked-vs-clean"]
    assert counts["clean-vs-clean"] + counts["masked-vs-clean"] + counts["masked-vs-masked"] == res["pairs"]["total"]
    assert rows(res, source="real", condition="masked-vs-clean")
    own = rows(res, source="real", method="block-embed", condition="restored-vs-clean")
    assert own and own[0]["judge"] == "block (own space)"
    # cosine is scale-free: the doubled embedding scores exactly like the plain masked one
    assert own[0]["auc"] == rows(res, source="real", judge="block", condition="masked-vs-clean")[0]["auc"]
    rk = [x for x in res["rank1"] if x["source"] == "real"][0]
    assert rk["gallery"] == 8 and rk["probes"] == 8 and "restored:half" in rk
    # real masks have no ground truth: the oracle (telea) runs on synthetic masks only, and a note says so
    assert rows(res, source="synthetic", method="telea") and not rows(res, source="real", method="telea")
    assert any("telea skipped on real masks" in n and "ground-truth" in n for n in res["notes"])
    assert "restored:telea" not in rk
    assert (tmp_path / "out" / "grid_real_half.png").is_file() and (tmp_path / "out" / "grid_synthetic_telea.png").is_file()


def test_source_pairs_orients_real_probes(tmp_path):
    data_root = make_set(tmp_path / "data", n_ids=2, shots=3, paired=True, noface=False)
    data = scan_eval_data(data_root)
    files = data.files["id00"]  # masked/ sorts before unmasked/
    assert data.images[files[0]].real_masked and not data.images[files[1]].real_masked
    pairs = [Pair("id00", 2, "id00", 1, 0, files[1], files[0]), Pair("id00", 2, "id00", 3, 0, files[1], files[2])]
    sp = source_pairs(pairs, data, "real")
    assert sp["masked-vs-clean"] == [(files[0], files[1], True, 0)]  # the masked photo is the probe
    assert sp["clean-vs-clean"] == [(files[1], files[2], True, 0)]
    assert source_pairs(pairs, data, "synthetic")["masked-vs-clean"] == [(files[1], files[2], True, 0)]


def test_identity_restriction_and_missing_identities(tmp_path):
    data = make_set(tmp_path / "data", noface=False)
    ids = tmp_path / "ids.txt"
    ids.write_text("\n".join([f"id{i:02d}" for i in range(6)] + ["Nobody"]) + "\n")
    res = run_evaluation(options(data, tmp_path / "out", identities=ids, per_fold=3, grid=0), components(telea=False)).results
    assert res["identities"] == 6
    assert any("Nobody" in n for n in res["notes"])


def test_image_seed_is_order_independent_and_seeded():
    assert image_seed(0, "a/b.jpg") == image_seed(0, "a/b.jpg")
    assert image_seed(0, "a/b.jpg") != image_seed(1, "a/b.jpg")
    assert image_seed(0, "a/b.jpg") != image_seed(0, "a/c.jpg")


def test_region_scores_by_hand():
    clean = np.full((1, 112, 112, 3), 100, np.uint8)
    restored = clean.copy()
    mask = np.zeros((1, 112, 112), bool)
    mask[0, 70:90, 10:110] = True  # 2000 pixels
    restored[0][mask[0]] = 110
    q = region_scores(restored, clean, mask)
    mse_mask = (10 / 255) ** 2
    assert q["psnr_mask"][0] == pytest.approx(10 * np.log10(1 / mse_mask), abs=1e-3)
    # the whole crop: 2000 of 112 x 112 pixels off by 10 levels
    assert q["psnr_face"][0] == pytest.approx(10 * np.log10(1 / (mse_mask * 2000 / 112 ** 2)), abs=1e-3)
    assert q["ssim_face"][0] < 1.0 and q["ssim_mask"][0] < q["ssim_face"][0]
    same = region_scores(clean, clean, mask)
    assert same["ssim_face"][0] == pytest.approx(1.0, abs=1e-6) and same["psnr_mask"][0] > 90
    assert np.isnan(region_scores(clean, clean, np.zeros_like(mask))["psnr_mask"][0])


def test_photo_region_errors_by_hand():
    from meer.evaluation.quality import photo_region_errors

    clean = np.full((40, 60, 3), 100, np.uint8)
    image = clean.copy()
    mask = np.zeros((40, 60), bool)
    mask[10:20, 10:30] = True
    image[10:20, 10:20] = 110  # half the masked pixels off by 10, the other half exact
    e = photo_region_errors(image, clean, mask)
    assert e["l1"] == pytest.approx(5.0)
    assert e["psnr"] == pytest.approx(10 * np.log10(255 ** 2 / 50.0))
    assert photo_region_errors(clean, clean, mask)["psnr"] == pytest.approx(100.0)  # capped like region_scores
    image[30, 50] = 0  # outside the mask: ignored
    assert photo_region_errors(image, clean, mask)["l1"] == pytest.approx(5.0)
    with pytest.raises(ValueError, match="empty mask"):
        photo_region_errors(image, clean, np.zeros_like(mask))


def test_eum_method_wraps_the_judge_it_was_trained_on(tmp_path):
    import torch

    from meer.evaluation.components import eum_method
    from meer.models.eum import EUM, EUMConfig, save_eum

    torch.manual_seed(0)
    path = save_eum(EUM(EUMConfig(embedding_dim=192, depth=2)), tmp_path / "eum.pt", {"kind": "block"})
    judge = BlockJudge()
    method, why = eum_method(path, [judge])
    assert why == "" and method.judge is judge and method.name == "eum"
    v = np.random.default_rng(0).normal(size=(3, 192)).astype(np.float32)
    out = method.transform(v)
    assert out.shape == (3, 192) and not np.allclose(out, v)
    none, why = eum_method(path, [])
    assert none is None and "'block'" in why
    assert eum_method(None, [judge])[0] is None


# ------------------------------------------------------------------ fair comparisons: mask information, regions

def region_of(run, method):
    v = run.views
    paths = list(v.truth["synthetic"])
    return (np.stack([v.regions[ViewKey.restored("synthetic", method)][p] for p in paths]),
            np.stack([v.truth["synthetic"][p] for p in paths]))


def test_rows_say_which_method_had_the_ground_truth_and_blind_telea_gets_the_blind_region(tmp_path):
    data = make_set(tmp_path / "data", noface=False)
    comp = components()
    comp.methods += [TeleaInpainting("half-telea", given="half"), LowerHalf()]  # listed before its provider
    run = run_evaluation(options(data, tmp_path / "out", grid=2), comp)
    res = run.results
    by = {r["method"]: r for r in rows(res, condition="restored-vs-clean")}
    assert by["telea"]["oracle"] and by["telea"]["mask_given"] == "ground truth"
    assert not by["half"]["oracle"] and by["half"]["mask_given"] == "nothing"
    assert not by["half-telea"]["oracle"] and by["half-telea"]["mask_given"] == "region of half"
    assert res["mask_given"] == {"none": "nothing", "telea": "ground truth", "half-telea": "region of half",
                                 "half": "nothing"}
    report = (tmp_path / "out" / "report.md").read_text()

    def line(method):
        return next(x for x in report.splitlines() if x.startswith(f"| restored-vs-clean | {method} |"))

    assert "| ground truth (oracle) |" in line("telea")
    assert "| none (blind) |" in line("half")
    assert "| half's region (blind) |" in line("half-telea")
    assert "| masked-vs-clean | none | - |" in report
    # each method's region is the one it reports: telea's is exactly the ground truth, the blind telea's exactly
    # the region the blind method reported (the same mask information)
    half, truth = region_of(run, "half")
    np.testing.assert_array_equal(region_of(run, "telea")[0], truth)
    np.testing.assert_array_equal(region_of(run, "half-telea")[0], half)
    q = {x["method"]: x for x in res["quality"]}
    assert q["telea"]["oracle"] and q["telea"]["region_iou"] == pytest.approx(1.0)
    assert q["half"]["region_iou"] == pytest.approx(np.nanmean(region_agreement(half, truth)["iou"]))
    assert q["half"]["region_share"] == pytest.approx(42 / 112)  # rows 70..111
    assert q["none"]["region_share"] == 0.0
    assert "| half | none (blind) | 37.5 |" in report


def test_restored_crops_reach_the_judge_bit_identical_and_once(tmp_path):
    data = make_set(tmp_path / "data", noface=False)
    outputs: dict[str, np.ndarray] = {}

    class Recording(LowerHalf):
        name = "rec"

        def _restore(self, crops, mask):
            out = super()._restore(crops, mask)
            outputs.update({pixel_digest(c): c.copy() for c in out.crops})
            return out

    judge = BlockJudge()
    comp = components(judge)
    comp.methods.append(Recording())
    run = run_evaluation(options(data, tmp_path / "out", grid=0), comp)
    seen = {}
    for c in judge.seen:
        d = pixel_digest(c)
        assert d not in seen  # every distinct crop is judged once
        seen[d] = c
    restored = run.views.crops[ViewKey.restored("synthetic", "rec")]
    assert len(restored) == len(run.views.truth["synthetic"]) > 0
    for crop in restored.values():
        d = pixel_digest(crop)
        # what the judge read is byte for byte what the method returned: no resampling in between
        np.testing.assert_array_equal(seen[d], outputs[d])
    masked = run.views.crops[ViewKey.masked("synthetic")]
    assert all(pixel_digest(c) in seen for c in masked.values())


def test_a_method_changing_pixels_outside_its_reported_region_is_refused(tmp_path):
    data = make_set(tmp_path / "data", noface=False)

    class Liar(LowerHalf):
        name = "liar"

        def _restore(self, crops, mask):
            out = super()._restore(crops, mask)
            out.crops[:, 5, 5] = 255 - out.crops[:, 5, 5]  # above the half it says it replaced
            return out

    comp = components(telea=False)
    comp.methods.append(Liar())
    with pytest.raises(MeerError, match=r"method liar changed \d+ pixels outside the region it reports"):
        run_evaluation(options(data, tmp_path / "out", grid=0), comp)


def test_scores_and_views_are_keyed_by_frozen_dataclasses(tmp_path):
    from meer.evaluation.plots import load_scores

    data = make_set(tmp_path / "data", noface=False)
    out = tmp_path / "out"
    run = run_evaluation(options(data, out, grid=0), components())
    key = ScoreKey("synthetic", "block", "restored-vs-clean", "telea")
    assert key in run.scores and {key: 1}[ScoreKey(*dataclasses.astuple(key))] == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        key.method = "x"
    assert key.view(0) == ViewKey.restored("synthetic", "telea") and key.view(1) == ViewKey.clean()
    assert ViewKey.restored("synthetic", "none") == ViewKey.masked("synthetic")  # none restores nothing
    with pytest.raises(ValueError):
        ViewKey("restored", "synthetic")
    # every verification row is the numbers of one key's scored pairs
    for r in run.results["verification"]:
        ps = run.scores[ScoreKey(r["source"], r["judge"], r["condition"], r["method"])]
        assert ps.scored == r["pairs_scored"] and ps.failed == r["fte_images"]
    # scores.npz names are made from the keys and read back as the same keys and arrays
    npz = load_scores(out)
    assert set(npz) == {k for k, ps in run.scores.items() if ps.has_both_kinds}
    for k, (s, g) in npz.items():
        np.testing.assert_array_equal(s, run.scores[k].scores)
        np.testing.assert_array_equal(g, run.scores[k].genuine)
    assert ScoreKey.from_npz_name(key.npz_name) == key


def test_score_pairs_by_hand():
    from meer.evaluation.scoring import score_pairs

    judge = BlockJudge()  # cosine
    emb = {"a": np.array([1.0, 0.0]), "b": np.array([0.0, 1.0]), "c": np.array([1.0, 1.0])}
    ps = score_pairs(judge, [("a", "c", True, 0), ("a", "b", False, 1), ("a", "x", True, 1)], emb)
    np.testing.assert_allclose(ps.scores, [1 / np.sqrt(2), 0.0])
    assert ps.pairs == [("a", "c"), ("a", "b")] and ps.genuine.tolist() == [True, False]
    assert (ps.total, ps.images, ps.failed) == (3, 4, 1)  # a, b, c, x; x not enrolled
    row = ps.row(bootstrap=10)
    assert row["pairs_excluded_fte"] == 1 and row["fte_rate"] == 0.25
    # two views: an image counts once per side
    two = score_pairs(judge, [("a", "a", True, 0)], emb, {"a": emb["b"]})
    assert two.images == 2 and two.scores[0] == pytest.approx(0.0)
    assert score_pairs(judge, [], emb).row()["error"] == "no pairs of this kind"


class PickyJudge(BlockJudge):
    """Fails to enrol masked crops whose mask fill (``fake_masker``: 100 + seed % 50, one grey) is odd."""

    name = "picky"
    cache_key = "picky-v1"

    def embed(self, crops):
        out = super().embed(crops)
        band = crops[:, 100:106, 8:104].reshape(len(crops), -1)
        flat = (band == band[:, :1]).all(axis=1)
        return JudgeOutput(out.vectors, out.ok & ~(flat & (band[:, 0] % 2 == 1)))


def test_every_judge_is_also_scored_on_the_pairs_all_judges_enrolled(tmp_path):
    from meer.evaluation.metrics import verification_summary

    data = make_set(tmp_path / "data", noface=False)
    comp = Components(judges=[BlockJudge(), PickyJudge()], methods=[NoRestore()], locator=fake_locator,
                      masker=fake_masker)
    result = run_evaluation(options(data, tmp_path / "out", grid=0), comp)
    res = result.results
    picky = rows(res, judge="picky", condition="masked-vs-clean")[0]
    assert 0 < picky["pairs_scored"] < picky["pairs_total"]  # the test set has both kinds of fill
    common = [c for c in res["common_pairs"] if c["condition"] == "masked-vs-clean"]
    assert len(common) == 1 and common[0]["pairs_common"] == picky["pairs_scored"]
    assert not [c for c in res["common_pairs"] if c["condition"] == "clean-vs-clean"]  # nobody failed there
    on_common = common[0]["judges"]
    assert on_common["picky"]["accuracy"] == picky["accuracy"]  # picky's pairs are the common ones
    # block on picky's pairs, by hand from the pair scores
    block = result.scores[ScoreKey("synthetic", "block", "masked-vs-clean", NO_METHOD)]
    kept = set(result.scores[ScoreKey("synthetic", "picky", "masked-vs-clean", NO_METHOD)].pairs)
    idx = [i for i, p in enumerate(block.pairs) if p in kept]
    by_hand = verification_summary(block.scores[idx], block.genuine[idx], block.folds[idx], seed=0, bootstrap=200)
    assert on_common["block"]["accuracy"] == by_hand["accuracy"]
    assert on_common["block"]["pairs_scored"] == len(kept) and on_common["block"]["fte_rate"] == 0
    assert "every judge on the same pairs" in (tmp_path / "out" / "report.md").read_text()


def test_restricting_pair_scores_by_hand():
    from meer.evaluation.scoring import score_pairs

    emb = {"a": np.array([1.0, 0.0]), "b": np.array([0.0, 1.0]), "c": np.array([1.0, 1.0])}
    ps = score_pairs(BlockJudge(), [("a", "c", True, 0), ("a", "b", False, 1), ("b", "c", True, 1)], emb)
    sub = ps.restrict({("a", "b"), ("b", "c"), ("x", "y")})
    assert sub.pairs == [("a", "b"), ("b", "c")] and sub.genuine.tolist() == [False, True]
    np.testing.assert_allclose(sub.scores, [0.0, 1 / np.sqrt(2)])
    assert (sub.total, sub.failed, sub.images) == (2, 0, 4) and sub.folds.tolist() == [1, 1]
