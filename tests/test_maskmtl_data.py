"""UTKFace file-name parsing (malformed names reported, not crashed on) and CelebA-style attribute tables."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from meer.data.celeba_attrs import CelebAAttributesDataset, read_attribute_table, read_partition
from meer.data.utkface import (UTKFaceDataset, UTKFaceLabel, age_group, chip_to_arcface_matrix,
                               parse_utkface_name, UTKFACE_CHIP_LANDMARKS)
from meer.faces.template import ARCFACE_112
from meer.utils.errors import MeerError
from meer.utils.images import write_image


@pytest.mark.parametrize("name,expected", [
    ("26_1_2_20170116174525125.jpg.chip.jpg", UTKFaceLabel(26, 1, 2, "20170116174525125")),
    ("1_0_0_20161219140623097.jpg", UTKFaceLabel(1, 0, 0, "20161219140623097")),
    ("116_0_4_20170110.jpg.chip.jpg", UTKFaceLabel(116, 0, 4, "20170110")),
])
def test_parse_good_names(name, expected):
    assert parse_utkface_name(name) == expected


@pytest.mark.parametrize("name,reason", [
    ("39_1_20170116174525125.jpg.chip.jpg", "found 3"),  # race missing (a real UTKFace defect)
    ("55_0_0_20170116232725357jpg.chip.jpg", "integer fields"),  # missing dot (in the shared copy)
    ("61_3_0_2017.jpg.chip.jpg", "gender 3"),
    ("30_0_7_2017.jpg.chip.jpg", "race 7"),
    ("130_0_0_2017.jpg.chip.jpg", "age 130"),
    ("x_0_0_2017.jpg.chip.jpg", "integer fields"),
])
def test_parse_malformed_names_gives_reason(name, reason):
    out = parse_utkface_name(name)
    assert isinstance(out, str) and reason in out


def test_age_groups():
    assert [age_group(a) for a in (0, 2, 3, 12, 13, 19, 20, 29, 35, 69, 70, 116)] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 7, 8, 8]


def test_chip_alignment_maps_mean_landmarks_onto_template():
    m = chip_to_arcface_matrix(200, 112)
    pts = UTKFACE_CHIP_LANDMARKS @ m[:, :2].T + m[:, 2]
    assert np.abs(pts - ARCFACE_112).max() < 4.0  # a similarity fit of 5 points: a few px of residual


def _utk_tree(root: Path):
    names = ["20_0_1_1.jpg.chip.jpg", "45_1_0_2.jpg.chip.jpg", "70_1_3_3.jpg.chip.jpg",
             "39_1_20170116174525125.jpg.chip.jpg", "55_0_0_1jpg.chip.jpg"]
    for k, n in enumerate(names):
        write_image(root / n, np.full((40, 40, 3), 30 * k, np.uint8))
    (root / "notes.txt").write_text("not an image")
    test = root.parent / "test.txt"
    test.write_text("70_1_3_3.jpg.chip.jpg\n")
    return test


def test_utkface_dataset_splits_items_and_report(tmp_path):
    test = _utk_tree(tmp_path / "utk")
    train = UTKFaceDataset(tmp_path / "utk", "train", test, image_size=16)
    assert len(train) == 2 and len(train.malformed) == 2
    assert "2 UTKFace file(s) with malformed names skipped" in train.malformed_summary()
    item = train[1]
    assert item["clean"].shape == (3, 16, 16)
    assert (item["age"], item["gender"], item["race"], item["age_group"]) == (45.0, 1, 0, 5)
    test_ds = UTKFaceDataset(tmp_path / "utk", "test", test, image_size=16)
    assert [Path(p).name for p, _ in test_ds.samples] == ["70_1_3_3.jpg.chip.jpg"]
    with pytest.raises(MeerError, match="needs a test list"):
        UTKFaceDataset(tmp_path / "utk", "train")
    with pytest.raises(MeerError, match="not found"):
        UTKFaceDataset(tmp_path / "nope", "all")


def test_utkface_with_masking_op(tmp_path):
    from meer.masking.batch import MaskAugment

    _utk_tree(tmp_path / "utk")
    ds = UTKFaceDataset(tmp_path / "utk", "all", masking=MaskAugment(), seed=0)
    item = ds[0]
    assert item["masked"].shape == (3, 112, 112) and item["mask"].sum() > 0
    assert 0 <= item["mask_kind"] < len(MaskAugment.KINDS) and item["mask_color"].shape == (3,)


ATTR_TXT = """3
Smiling Male Eyeglasses
000001.jpg  1 -1 -1
000002.jpg -1  1  1
000003.jpg  1  1
000004.jpg  1  1  x
"""


def test_attribute_table_text_and_csv(tmp_path):
    p = tmp_path / "list_attr_celeba.txt"
    p.write_text(ATTR_TXT)
    t = read_attribute_table(p)
    assert t.names == ["Smiling", "Male", "Eyeglasses"] and t.files == ["000001.jpg", "000002.jpg"]
    assert t.values.tolist() == [[1, 0, 0], [0, 1, 1]]
    assert [n for n, _ in t.malformed] == [5, 6]
    c = tmp_path / "attrs.csv"
    c.write_text("image_id,Smiling,Male\n000001.jpg,1,-1\n000002.jpg,-1,1\n")
    assert read_attribute_table(c).values.tolist() == [[1, 0], [0, 1]]
    with pytest.raises(MeerError, match="unknown attribute 'Bald'"):
        t.column("Bald")


def test_celeba_dataset_with_landmarks_and_partition(tmp_path):
    img_dir = tmp_path / "img"
    for k in (1, 2):
        write_image(img_dir / f"00000{k}.jpg", np.full((218, 178, 3), 80 * k, np.uint8))
    (tmp_path / "attr.txt").write_text(ATTR_TXT)
    (tmp_path / "lm.txt").write_text("2\nlefteye_x ...\n"
                                     "000001.jpg 69 109 106 113 77 142 73 152 108 154\n"
                                     "000002.jpg 69 110 107 112 81 135 70 151 108 153\n")
    (tmp_path / "part.txt").write_text("000001.jpg 0\n000002.jpg 2\n")
    assert read_partition(tmp_path / "part.txt") == {"000001.jpg": 0, "000002.jpg": 2}
    ds = CelebAAttributesDataset(img_dir, tmp_path / "attr.txt", ["Smiling", "Male"], tmp_path / "lm.txt",
                                 tmp_path / "part.txt", split="train")
    assert len(ds) == 1 and ds.task_names == ["attr_Smiling", "attr_Male"]
    item = ds[0]
    assert item["clean"].shape == (3, 112, 112) and (item["attr_Smiling"], item["attr_Male"]) == (1, 0)
    assert torch.allclose(item["clean"], torch.full_like(item["clean"], 80 / 255), atol=0.01)
    with pytest.raises(MeerError, match="needs a partition file"):
        CelebAAttributesDataset(img_dir, tmp_path / "attr.txt", split="test")


@pytest.mark.shared_data
def test_real_utkface_names(shared_data):
    root = shared_data / "attributes" / "utkface"
    ds = UTKFaceDataset(root, "all", image_size=112)
    assert len(ds) + len(ds.malformed) == 4000
    assert 1 <= len(ds.malformed) <= 20
    test = UTKFaceDataset(root, "test", shared_data / "splits" / "utkface_test.txt")
    train = UTKFaceDataset(root, "train", shared_data / "splits" / "utkface_test.txt")
    assert not {p for p, _ in test.samples} & {p for p, _ in train.samples}
    assert len(test) + len(train) + len(test.malformed) + len(train.malformed) == 4000
