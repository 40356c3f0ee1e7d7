"""LFW pairs.txt reading/writing and make_pairs."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from meer.data.pairs import Pair, format_pairs, make_pairs, parse_pairs, read_pairs, write_pairs
from meer.utils.errors import MeerError
from meer.utils.images import write_image

LFW_SAMPLE = """2\t2
Abel_Pacheco\t1\t4
Akhmed_Zakayev\t1\t3
Abdel_Madi_Shabneh\t1\tDean_Barker\t1
Abdel_Madi_Shabneh\t1\tGiancarlo_Fisichella\t1
Zico\t1\t2
Zico\t2\t3
Abdel_Nasser_Assidi\t2\tJohn_Paul_DeJoria\t1
Abdullah\t2\tIsmail_Abu_Shanab\t1
"""


def _tree(root: Path, counts: dict[str, int]) -> Path:
    for name, n in counts.items():
        for i in range(n):
            write_image(root / name / f"{name}_{i + 1:04d}.jpg", np.zeros((8, 8, 3), np.uint8))
    return root


def test_parse_lfw_format():
    parsed, n_folds, per_fold = parse_pairs(LFW_SAMPLE)
    assert (n_folds, per_fold) == (2, 2)
    pairs = [p for _, p in parsed]
    assert [p.same for p in pairs] == [True, True, False, False] * 2
    assert [p.fold for p in pairs] == [0] * 4 + [1] * 4
    assert pairs[0] == Pair("Abel_Pacheco", 1, "Abel_Pacheco", 4, 0)
    assert pairs[2] == Pair("Abdel_Madi_Shabneh", 1, "Dean_Barker", 1, 0)
    assert parsed[0][0] == 2  # line numbers kept for reports


def test_parse_single_count_header_spaces_and_no_header():
    parsed, n_folds, per_fold = parse_pairs("1\nA B\t1\t2\nA B\t1\tC D\t3\n")
    assert (n_folds, per_fold) == (1, 1)
    assert parsed[0][1] == Pair("A B", 1, "A B", 2, 0) and parsed[1][1].name_b == "C D"
    parsed, n_folds, per_fold = parse_pairs("x 1 2\nx 1 y 2\n")
    assert (n_folds, per_fold, len(parsed)) == (1, 1, 2)


@pytest.mark.parametrize("text,match", [
    ("", "empty pairs file"),
    ("1\t2\nA\t1\t2\n", "header announces 1 fold.* found 1"),
    ("1\t1\nA\t1\t2\nA\tx\tB\t1\n", r"<pairs>:3: expected"),
    ("1\t1\nA\t0\t2\nA\t1\tB\t1\n", "1-based"),
])
def test_parse_errors(text, match):
    with pytest.raises(MeerError, match=match):
        parse_pairs(text)


def test_read_reports_missing_never_silent(tmp_path):
    root = _tree(tmp_path / "lfw", {"Abel_Pacheco": 4, "Akhmed_Zakayev": 2, "Abdel_Madi_Shabneh": 1,
                                    "Dean_Barker": 1, "Zico": 3, "Abdullah": 2, "Ismail_Abu_Shanab": 1})
    pf = tmp_path / "pairs.txt"
    pf.write_text(LFW_SAMPLE)
    res = read_pairs(pf, root)
    r = res.report
    assert r.total == 8 and r.dropped == 3 and len(res.pairs) == 5 and not r.ok
    assert r.missing_identities == [(5, "Giancarlo_Fisichella"), (8, "Abdel_Nasser_Assidi")]
    assert r.missing_images == [(3, "Akhmed_Zakayev", 3)]
    assert "dropped 3 of 8 pairs" in r.summary() and "Akhmed_Zakayev #3" in r.summary()
    first = res.pairs[0]
    assert first.path_a.name == "Abel_Pacheco_0001.jpg" and first.path_b.name == "Abel_Pacheco_0004.jpg"
    # mapping form gives the same result
    files = {d.name: list(d.iterdir()) for d in root.iterdir()}
    assert [p.path_b for p in read_pairs(pf, files).pairs] == [p.path_b for p in res.pairs]
    assert read_pairs(pf).report.ok  # no files given: nothing to resolve


def test_write_read_roundtrip(tmp_path):
    parsed, _, _ = parse_pairs(LFW_SAMPLE)
    pairs = [p for _, p in parsed]
    out = write_pairs(tmp_path / "p.txt", pairs)
    assert out.read_text() == LFW_SAMPLE
    back = read_pairs(out)
    assert back.pairs == pairs and (back.n_folds, back.per_fold) == (2, 2)
    with pytest.raises(MeerError, match="already exists"):
        write_pairs(out, pairs)
    with pytest.raises(MeerError, match="same number of genuine and impostor"):
        format_pairs(pairs[:3])


def _files(counts):
    return {name: [Path(f"/d/{name}/{name}_{i + 1:04d}.jpg") for i in range(n)] for name, n in counts.items()}


def test_make_pairs_balanced_disjoint_deterministic():
    rng = np.random.default_rng(1)
    files = _files({f"p{k:02d}": int(rng.integers(1, 9)) for k in range(40)})
    pairs = make_pairs(files, n_folds=4, per_fold=25, seed=7)
    assert pairs == make_pairs(files, n_folds=4, per_fold=25, seed=7)
    assert pairs != make_pairs(files, n_folds=4, per_fold=25, seed=8)
    per_fold = Counter((p.fold, p.same) for p in pairs)
    assert set(per_fold.values()) == {25} and len(per_fold) == 8
    folds_of = {}
    for p in pairs:
        for name in (p.name_a, p.name_b):
            folds_of.setdefault(name, set()).add(p.fold)
    assert all(len(f) == 1 for f in folds_of.values())  # identity-disjoint folds
    keys = [(p.name_a, p.index_a, p.name_b, p.index_b) for p in pairs]
    assert len(set(keys)) == len(keys)
    for p in pairs:
        assert p.index_a != p.index_b or not p.same
        assert p.path_a == files[p.name_a][p.index_a - 1]
    # genuine pairs are dealt round-robin: an identity with combinations left never trails another by 2+
    gen = Counter(p.name_a for p in pairs if p.same)
    for x, gx in gen.items():
        cap_x = len(files[x]) * (len(files[x]) - 1) // 2
        fold_x = folds_of[x]
        for y in folds_of:
            if folds_of[y] == fold_x and gx < cap_x:
                assert gen.get(y, 0) <= gx + 1


def test_make_pairs_caps_and_errors(tmp_path):
    files = _files({"a": 3, "b": 2, "c": 1, "d": 1})  # 2 folds: genuine capacity 3 and 1
    pairs = make_pairs(files, n_folds=2, per_fold=300, seed=0)
    assert Counter((p.fold, p.same) for p in pairs) == {(0, True): 1, (0, False): 1, (1, True): 1, (1, False): 1}
    with pytest.raises(MeerError, match="at least 6 identities"):
        make_pairs(files, n_folds=3)
    with pytest.raises(MeerError, match="no identity with 2\\+ images"):
        make_pairs(_files({"a": 1, "b": 1, "c": 1, "d": 1}), n_folds=2)
    # written file reads back identically against the real tree
    root = _tree(tmp_path / "r", {"a": 3, "b": 2, "c": 1, "d": 1})
    files = {d.name: sorted(d.iterdir()) for d in root.iterdir()}
    made = make_pairs(files, n_folds=2, per_fold=5, seed=0)
    back = read_pairs(write_pairs(tmp_path / "p.txt", made), root)
    assert back.report.ok and back.pairs == made
