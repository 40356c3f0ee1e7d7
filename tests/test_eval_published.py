"""Published protocols on files as they come: insightface verification .bin files and identity folders with the
protocol's own pairs.txt (``--as-is``), built here in their published formats; bad entries give one line each."""
import json
import pickle
import re

import cv2
import numpy as np
import pytest

from meer.evaluation.harness import Components
from meer.evaluation.judge import Judge, JudgeOutput
from meer.evaluation.methods import NOTHING, NoRestore, RestorationMethod, Restored, TeleaInpainting
from meer.evaluation.published import (PublishedOptions, contiguous_folds, read_verification_bin,
                                       render_published, run_published)
from meer.faces.template import ARCFACE_112
from meer.utils.errors import MeerError
from meer.utils.images import write_image


pytestmark = pytest.mark.usefixtures("one_thread")


def face(ident: int, shot: int, size: int = 112) -> np.ndarray:
    """A smooth identity-specific colour field plus a little per-photo noise."""
    base = np.random.default_rng(ident).integers(0, 256, (4, 4, 3)).astype(np.uint8)
    img = cv2.resize(base, (size, size), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    img += np.random.default_rng(1000 * ident + shot).integers(-6, 7, img.shape).astype(np.int16)
    return img.clip(0, 255).astype(np.uint8)


def encoded(img: np.ndarray, ext: str = ".png") -> bytes:
    ok, buf = cv2.imencode(ext, cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    assert ok
    return buf.tobytes()


class BlockJudge(Judge):
    """Mean colours of an 8x8 grid over the 112 crop; remembers every crop it saw."""

    name = "block"
    cache_key = "block-published-v1"

    def __init__(self):
        self.seen = []

    def embed(self, crops):
        self.seen += list(crops)
        f = crops.astype(np.float32)
        v = f.reshape(len(f), 8, 14, 8, 14, 3).mean(axis=(2, 4)).reshape(len(f), -1)
        v -= v.mean(axis=1, keepdims=True)
        return JudgeOutput(v.astype(np.float32), np.ones(len(f), bool))


class Brighten(RestorationMethod):
    """Blind: brightens the lower half, the region it reports."""

    name = "brighten"
    given = NOTHING

    def _restore(self, crops, mask):
        assert mask is None  # images as given come without a mask
        out = crops.copy()
        out[:, 56:] = np.clip(crops[:, 56:].astype(np.int16) + 10, 0, 255).astype(np.uint8)
        region = np.zeros(crops.shape[:3], bool)
        region[:, 56:] = True
        return Restored(out, region)


def bin_file(path, n_ids=6, per_id=4, protocol=2, corrupt=(), n_pairs=40):
    """insightface layout: pairs (2k, 2k+1), genuine and impostor blocks alternating like lfw.bin's folds."""
    bins, issame = [], []
    rng = np.random.default_rng(0)
    for k in range(n_pairs):
        a = int(rng.integers(n_ids))
        if k % 2 == 0:
            i, j = rng.choice(per_id, 2, replace=False)
            bins += [encoded(face(a, int(i))), encoded(face(a, int(j)), ".jpg")]
            issame.append(True)
        else:
            b = (a + 1 + int(rng.integers(n_ids - 1))) % n_ids
            bins += [encoded(face(a, 0)), encoded(face(b, 1), ".jpg")]
            issame.append(False)
    for c in corrupt:
        bins[c] = b"not an image"
    path.write_bytes(pickle.dumps((bins, issame), protocol=protocol))  # protocol 2: bytes via _codecs.encode
    return path


def comp(methods=None, judge=None):
    return Components(judges=[judge or BlockJudge()], methods=methods or [NoRestore()])


def opts(data, out, **kw):
    return PublishedOptions(data=data, out=out, progress=False, bootstrap=100, plots=False, **kw)


@pytest.mark.parametrize("protocol", [2, 4])
def test_bin_is_read_without_mxnet(tmp_path, protocol):
    vb = read_verification_bin(bin_file(tmp_path / "lfw.bin", protocol=protocol))
    assert vb.pairs == 40 and len(vb.images) == 80 and not vb.problems
    assert vb.issame.dtype == bool and vb.issame[::2].all() and not vb.issame[1::2].any()
    assert np.array_equal(vb.images[0], face(*_first_pair_ids()[0]))  # PNG entries decode losslessly, RGB order
    assert all(im.shape == (112, 112, 3) for im in vb.images)


def _first_pair_ids():
    rng = np.random.default_rng(0)
    a = int(rng.integers(6))
    i, j = rng.choice(4, 2, replace=False)
    return [(a, int(i)), (a, int(j))]


def test_contiguous_folds_match_sklearn_kfold():
    f = contiguous_folds(23, 10)  # KFold(10): the first 3 folds get 3 pairs, the others 2
    assert np.bincount(f).tolist() == [3, 3, 3, 2, 2, 2, 2, 2, 2, 2]
    assert (np.diff(f) >= 0).all()


def test_bin_evaluation_with_flip_ten_folds_and_a_restorer(tmp_path, capsys):
    judge = BlockJudge()
    r = run_published(opts(bin_file(tmp_path / "lfw.bin"), tmp_path / "rep"),
                      comp([NoRestore(), TeleaInpainting(), TeleaInpainting("telea-blind", given="brighten"),
                            Brighten()], judge))
    rows = {(v["condition"], v["method"]): v for v in r["verification"]}
    assert set(rows) == {("as-given", "none"), ("restored", "brighten"), ("restored", "telea-blind")}
    assert rows[("restored", "telea-blind")]["mask_given"] == "region of brighten"
    assert not any(v["oracle"] for v in rows.values())
    v = rows[("as-given", "none")]
    assert v["pairs_scored"] == 40 and v["genuine"] == 20 and v["impostor"] == 20 and v["fte_rate"] == 0
    assert v["accuracy"] > 0.9 and v["auc"] > 0.95
    for k in ("eer", "tar_at_far_1e-2", "tar_at_far_1e-3", "fmr100", "fmr1000"):
        assert k in v
    assert r["flip"] is True and "10 contiguous folds" in r["pairs"]["folds"]
    assert any("telea skipped" in n and "ground-truth" in n for n in r["notes"])  # an oracle: said, not dropped
    # every image was embedded as given and flipped (80 images x 2 per view; repeated images come from the cache)
    err = capsys.readouterr().err
    for view in ("as-given [none]", "restored [brighten]", "restored [telea-blind]"):
        hits, misses = map(int, re.search(view.replace("[", r"\[").replace("]", r"\]") + r": (\d+) cached, (\d+)",
                                          err).groups())
        assert hits + misses == 160
    first = face(*_first_pair_ids()[0])
    assert any(np.array_equal(c, first) for c in judge.seen)  # the 112 crop exactly as stored
    assert any(np.array_equal(c, first[:, ::-1]) for c in judge.seen)  # and its mirror image
    rep = (tmp_path / "rep" / "report.md").read_text()
    assert "FNMR@FMR100" in rep and "as-given" in rep
    assert json.loads((tmp_path / "rep" / "results.json").read_text())["protocol"].startswith("insightface")


def test_bin_bad_entries_give_one_line_each_and_the_rest_is_scored(tmp_path, capsys):
    r = run_published(opts(bin_file(tmp_path / "agedb_30.bin", corrupt=(5,)), tmp_path / "rep"), comp())
    err = capsys.readouterr().err
    assert f"{tmp_path / 'agedb_30.bin'}: entry 5 (pair 2) is not a decodable image" in err
    v = r["verification"][0]
    assert v["pairs_scored"] == 39 and v["pairs_excluded_fte"] == 1


def test_truncated_bin_names_the_file_and_entry(tmp_path):
    path = bin_file(tmp_path / "cfp_fp.bin")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(MeerError, match=r"cfp_fp.bin: truncated .* breaks off at entry \d+"):
        read_verification_bin(path)
    (tmp_path / "evil.bin").write_bytes(pickle.dumps(([b"x"], [print])))
    with pytest.raises(MeerError, match="refusing to load builtins.print"):
        read_verification_bin(tmp_path / "evil.bin")


def mfr2_like(root, n_ids=6, shots=4):
    """MFR2's layout: DATA/<name>/<name>_000i.png, masked and unmasked photos mixed in one folder."""
    for i in range(n_ids):
        name = f"Person{i}"
        (root / name).mkdir(parents=True)
        for k in range(shots):
            img = face(i, k, 96)
            if k % 2:
                img = img.copy()
                img[60:, 14:82] = (40, 90, 200)  # a real mask, as the photo comes
            write_image(root / name / f"{name}_{k + 1:04d}.png", img)
    return root


def fake_locator(images):
    return [(ARCFACE_112 * im.shape[0] / 112.0).astype(np.float64) for im in images]


def test_as_is_pairs_with_problems_on_mfr2_layout(tmp_path, capsys):
    data = mfr2_like(tmp_path / "mfr2")
    (data / "Person5" / "Person5_0003.png").unlink()  # numbered files: #4 is still Person5_0004
    lines = ["2\t4"]
    for f in range(2):
        a, b, c = (0, 1, 2) if f == 0 else (3, 4, 5)
        lines += [f"Person{a}\t1\t2", f"Person{b}\t1\t3", f"Person{c}\t2\t4", f"Person{a}\t3\t4"]
        lines += [f"Person{a}\t1\tPerson{b}\t2", f"Person{b}\t3\tPerson{c}\t4", f"Person{c}\t1\tPerson{a}\t2",
                  f"Person{a}\t4\tPerson{c}\t3"]
    lines[3] = "Person1 one 3"  # malformed
    lines[13] = "Person4\t1\tPerson5\t3"  # names the deleted image
    lines[7] = "Nobody\t1\tPerson0\t1"  # a missing identity
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("\n".join(lines) + "\n")
    judge = BlockJudge()
    r = run_published(opts(data, tmp_path / "rep", pairs=pairs, locator=fake_locator), comp(judge=judge))
    err = capsys.readouterr().err
    assert f"{pairs}:4: expected 'name i j' or 'name1 i name2 j', got 'Person1 one 3'" in err
    assert f"{pairs}:14: image Person5 #3 not found under {data / 'Person5'}" in err
    assert f"{pairs}:8: identity 'Nobody' not found" in err
    v = r["verification"][0]
    assert r["pairs"]["total"] == 16 and r["pairs"]["resolved"] == 12 and v["pairs_scored"] == 12
    assert r["flip"] is False and len(r["problems"]) == 4  # also line 17: Person3 4 Person5 3
    # the masked photos were scored as given: their painted mask is on the crop the judge saw
    assert any((c[75:110, 20:95] == (40, 90, 200)).all(axis=-1).mean() > 0.9 for c in judge.seen)
    assert "4 problem(s) in the input" in (tmp_path / "rep" / "report.md").read_text()


def test_as_is_pairs_without_header_are_dealt_into_folds(tmp_path):
    data = mfr2_like(tmp_path / "mfr2")
    lines = [f"Person{i}\t1\t{k}" for i in range(6) for k in (2, 3, 4)]
    lines += [f"Person{i}\t{k}\tPerson{(i + 1 + k) % 6}\t{k}" for i in range(6) for k in (1, 2, 3)]
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("\n".join(lines) + "\n")
    r = run_published(opts(data, tmp_path / "rep", pairs=pairs, locator=fake_locator, folds=3), comp())
    v = r["verification"][0]
    assert "round-robin" in r["pairs"]["folds"] and v["pairs_scored"] == 36 and "accuracy" in v


def test_as_is_needs_pairs(tmp_path):
    with pytest.raises(MeerError, match="--as-is needs --pairs"):
        run_published(opts(mfr2_like(tmp_path / "d"), tmp_path / "rep"), comp())


def test_render_marks_rows_without_numbers():
    r = {"protocol": "p", "data": "d", "pairs": {"source": "s", "resolved": 1, "total": 2, "folds": "f"},
         "images": 2, "images_failed": 0, "flip": False, "methods": ["none"], "judges": ["j"], "seconds": 0,
         "notes": [], "problems": [], "verification": [{"judge": "j", "condition": "as-given", "method": "none",
                                                        "error": "no pair could be scored", "pairs_scored": 0,
                                                        "fte_rate": 1.0}]}
    assert "n/a (no pair could be scored)" in render_published(r)


def test_cli_reads_a_bin_with_a_meer_checkpoint(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from meer.cli.eval import main
    from meer.models.checkpoint import save_inference_checkpoint
    from meer.models.meer import MEER, MEERConfig

    torch.manual_seed(0)
    cfg = MEERConfig(image_size=112, enc_width=8, enc_layers=(1, 1), split_channels=8, occ_head_width=8, id_dim=16,
                     occ_dim=8, embedding_dim=32, gen_width=8, gen_max_width=32, infer_dilate=1)
    ckpt = save_inference_checkpoint(MEER(cfg).eval(), tmp_path / "tiny.pt")
    data = bin_file(tmp_path / "lfw.bin", n_pairs=20)
    out = tmp_path / "rep"
    rc = main([str(data), "--out", str(out), "--judges", "meer", "--methods", "none", "meer", "--checkpoint",
               str(ckpt), "--no-cache", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    res = json.loads((out / "results.json").read_text())
    assert res["methods"] == ["none", "meer"] and res["judges"] == ["meer"]
    assert {v["condition"] for v in res["verification"]} == {"as-given", "restored"}
    assert all("accuracy" in v for v in res["verification"])
    assert main([str(tmp_path / "mfr2"), "--out", str(tmp_path / "r2"), "--as-is"]) == 2  # missing DATA
    (tmp_path / "mfr2").mkdir()
    assert main([str(tmp_path / "mfr2"), "--out", str(tmp_path / "r2"), "--as-is", "--judges", "meer",
                 "--checkpoint", str(ckpt), "--no-cache"]) == 2
    assert "--as-is needs --pairs" in capsys.readouterr().err
