"""Evaluation-only identities never reach a training split (generated tree, and the real LFW/RMFRD lists)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from meer.data.identity_folders import IdentityFolderDataset
from meer.data.paired import PairedMaskedDataset
from meer.data.splits import (default_eval_identities, read_identity_list, resolve_eval_identities,
                              shared_data_root)
from meer.utils.errors import MeerError
from meer.utils.images import write_image


def _img(root: Path, rel: str) -> None:
    write_image(root / rel, np.zeros((8, 8, 3), np.uint8))


def test_read_identity_list(tmp_path):
    p = tmp_path / "ids.txt"
    p.write_text("Alice_A\n\n  Bob B  \n# comment\nCarl # trailing\n")
    assert read_identity_list(p) == {"Alice_A", "Bob B", "Carl"}
    with pytest.raises(MeerError, match="identity list not found"):
        read_identity_list(tmp_path / "nope.txt")


def test_resolve_eval_identities(tmp_path):
    p = tmp_path / "ids.txt"
    p.write_text("x\ny\n")
    assert resolve_eval_identities(None) == set()
    assert resolve_eval_identities(str(p)) == {"x", "y"}
    assert resolve_eval_identities([p, "z"]) == {"x", "y", "z"}
    assert resolve_eval_identities({"q"}) == {"q"}


def test_default_eval_identities_and_env(tmp_path, monkeypatch):
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "lfw_eval_identities.txt").write_text("A\nB\n")
    (tmp_path / "splits" / "rmfrd_eval_identities.txt").write_text("c\n")
    assert default_eval_identities(tmp_path) == {"A", "B", "c"}
    monkeypatch.setenv("MEER_SHARED_DATA", str(tmp_path))
    assert shared_data_root() == tmp_path
    assert default_eval_identities() == {"A", "B", "c"}


def test_train_split_never_yields_eval_identities(tmp_path):
    rng = np.random.default_rng(0)
    names = [f"id{k:02d}" for k in range(30)]
    evals = set(rng.choice(names, 9, replace=False).tolist())
    for root in ("lfw", "rmfrd_like"):
        for name in names:
            for i in range(int(rng.integers(1, 4))):
                _img(tmp_path / root, f"{name}/{name}_{i + 1:04d}.png")
    list_file = tmp_path / "eval.txt"
    list_file.write_text("\n".join(sorted(evals)))
    for roots in (tmp_path / "lfw", [tmp_path / "lfw", tmp_path / "rmfrd_like"]):
        train = IdentityFolderDataset(roots, split="train", eval_identities=list_file, image_size=8)
        seen = {Path(train[i]["path"]).parent.name for i in range(len(train))}
        assert seen and not seen & evals
        assert {n.split("/")[-1] for n in train.identities} == set(names) - evals
        ev = IdentityFolderDataset(roots, split="eval", eval_identities=list_file, image_size=8)
        assert {Path(ev[i]["path"]).parent.name for i in range(len(ev))} == evals
        every = IdentityFolderDataset(roots, split="all", eval_identities=list_file, image_size=8)
        assert len(every) == len(train) + len(ev)


@pytest.mark.shared_data
def test_real_lfw_train_split_excludes_eval_list(shared_data):
    evals = default_eval_identities(shared_data)
    lfw_eval = read_identity_list(shared_data / "splits" / "lfw_eval_identities.txt")
    assert len(lfw_eval) == 63
    train = IdentityFolderDataset(shared_data / "faces" / "lfw", split="train", eval_identities=evals)
    folders = {Path(s.path).parent.name for s in train.samples}
    assert not folders & evals
    assert len(train.identities) == 423 - 63
    ev = IdentityFolderDataset(shared_data / "faces" / "lfw", split="eval", eval_identities=evals)
    assert set(ev.identities) == lfw_eval


@pytest.mark.shared_data
def test_real_rmfrd_train_split_excludes_eval_list(shared_data):
    evals = default_eval_identities(shared_data)
    rm_eval = read_identity_list(shared_data / "splits" / "rmfrd_eval_identities.txt")
    train = PairedMaskedDataset(shared_data / "real_masked_pairs" / "rmfrd", split="train", eval_identities=evals)
    files = [p for n in train.identities for p in train.masked_files[n] + train.unmasked_files[n]]
    assert not {p.parents[1].name for p in files} & rm_eval
    assert len(train.identities) + len(train.one_sided) == 166 - len(rm_eval)
