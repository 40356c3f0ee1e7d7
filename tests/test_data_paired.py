"""PairedMaskedDataset on a generated RMFRD-style tree."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from meer.data.paired import PairedMaskedDataset
from meer.utils.errors import MeerError
from meer.utils.images import write_image


def _img(path: Path, value: int, size: int = 20) -> None:
    write_image(path, np.full((size, size, 3), value, np.uint8))


@pytest.fixture
def tree(tmp_path):
    _img(tmp_path / "amy/masked/0_0_0.jpg", 10)
    _img(tmp_path / "amy/masked/0_0_1.png", 20)
    _img(tmp_path / "amy/masked/0_0_2.png", 30)
    _img(tmp_path / "amy/unmasked/0_0_amy_0001.png", 100)
    _img(tmp_path / "amy/unmasked/0_0_amy_0002.png", 110)
    _img(tmp_path / "ben/masked/a.png", 40)
    _img(tmp_path / "ben/unmasked/b.png", 120)
    _img(tmp_path / "cal/unmasked/c.png", 130)  # no masked photo
    _img(tmp_path / "dan/masked/d.png", 50)
    _img(tmp_path / "dan/unmasked/e.png", 140)
    return tmp_path


def test_items_and_pairing(tree):
    ds = PairedMaskedDataset(tree, split="all", image_size=16)
    assert ds.identities == ["amy", "ben", "dan"] and ds.one_sided == ["cal"]
    assert len(ds) == 5
    first = ds[0]
    assert first["masked"].shape == (3, 16, 16) and first["clean"].shape == (3, 16, 16)
    assert first["identity"] == 0
    assert Path(first["path"]).parent.name == "masked" and Path(first["clean_path"]).parent.name == "unmasked"
    partners = [Path(ds[i]["clean_path"]).name for i in range(3)]
    assert partners == ["0_0_amy_0001.png", "0_0_amy_0002.png", "0_0_amy_0001.png"]
    ds.set_epoch(1)
    assert Path(ds[0]["clean_path"]).name == "0_0_amy_0002.png"
    assert abs(float(ds[4]["clean"].mean()) - 140 / 255) < 1e-6


def test_split_filtering(tree):
    train = PairedMaskedDataset(tree, split="train", eval_identities={"amy", "cal"})
    assert train.identities == ["ben", "dan"] and train.one_sided == []
    ev = PairedMaskedDataset(tree, split="eval", eval_identities={"amy", "cal"})
    assert ev.identities == ["amy"] and ev.one_sided == ["cal"]


def test_errors(tmp_path, tree):
    with pytest.raises(MeerError, match="dataset root not found"):
        PairedMaskedDataset(tmp_path / "missing")
    (tree / "eve").mkdir()
    with pytest.raises(MeerError, match="no images in masked/ or unmasked/: .*eve"):
        PairedMaskedDataset(tree, split="all")
    only = tmp_path / "only"
    _img(only / "x/unmasked/a.png", 1)
    with pytest.raises(MeerError, match="both masked and unmasked"):
        PairedMaskedDataset(only, split="all")
