"""IdentityFolderDataset: items, labels, several roots, masking calls, one-line errors at construction."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from meer.data.identity_folders import IdentityFolderDataset
from meer.utils.errors import MeerError
from meer.utils.images import write_image


def make_tree(root: Path, counts: dict[str, int], size: int = 16, ext: str = ".png") -> Path:
    for k, (name, n) in enumerate(sorted(counts.items())):
        for i in range(n):
            img = np.full((size, size, 3), (10 * k + i) % 256, np.uint8)
            write_image(root / name / f"{name}_{i + 1:04d}{ext}", img)
    return root


class FakeMask:
    """MaskAugment's call convention: lower rows occluded, kind drawn from the generator."""

    def __init__(self):
        self.calls = []

    def __call__(self, images, landmarks=None, generator=None):
        self.calls.append((images.shape, None if landmarks is None else landmarks.clone()))
        b, _, h, w = images.shape
        mask = torch.zeros(b, 1, h, w)
        mask[..., h // 2:, :] = 1
        kind = torch.randint(0, 5, (b,), generator=generator)
        masked = images * (1 - mask) + 0.25 * mask
        return masked, mask, {"kind": kind, "coverage": torch.zeros(b, dtype=torch.long)}


def test_items_labels_and_ranges(tmp_path):
    make_tree(tmp_path, {"bob": 3, "alice": 2, "carl": 1})
    ds = IdentityFolderDataset(tmp_path, split="all", image_size=16)
    assert ds.identities == ["alice", "bob", "carl"]
    assert len(ds) == 6 and ds.num_classes == 3
    assert sorted(set(ds.labels)) == [0, 1, 2]
    item = ds[2]
    assert item["clean"].shape == (3, 16, 16) and item["clean"].dtype == torch.float32
    assert 0 <= item["clean"].min() and item["clean"].max() <= 1
    assert Path(item["path"]).parent.name == ds.identities[item["identity"]]
    # pixel value survives exactly (png): bob's first image has value 10*1+0
    bob0 = ds[ds.labels.index(1)]
    assert torch.allclose(bob0["clean"], torch.full((3, 16, 16), 10 / 255))
    assert "masked" not in item


def test_resize_and_min_images(tmp_path):
    make_tree(tmp_path, {"a": 3, "b": 1, "c": 2}, size=20)
    ds = IdentityFolderDataset(tmp_path, split="all", image_size=12, min_images=2)
    assert ds.identities == ["a", "c"]
    assert ds[0]["clean"].shape == (3, 12, 12)
    with pytest.raises(MeerError, match="at least 5 images"):
        IdentityFolderDataset(tmp_path, split="all", min_images=5)


def test_several_roots_get_prefixes(tmp_path):
    make_tree(tmp_path / "lfw", {"Same_Name": 2, "x": 1})
    make_tree(tmp_path / "glint24", {"Same_Name": 1, "Barack Obama": 2})
    ds = IdentityFolderDataset([tmp_path / "lfw", tmp_path / "glint24"], split="all", image_size=16)
    assert ds.identities == ["lfw/Same_Name", "lfw/x", "glint24/Barack Obama", "glint24/Same_Name"]
    assert len(ds) == 6
    ds2 = IdentityFolderDataset({"A": tmp_path / "lfw", "B": tmp_path / "glint24"}, split="all")
    assert ds2.identities[0] == "A/Same_Name"
    with pytest.raises(MeerError, match="share the name"):
        IdentityFolderDataset([tmp_path / "lfw", tmp_path / "lfw"], split="all")


def test_eval_identities_by_bare_or_prefixed_name(tmp_path):
    make_tree(tmp_path / "lfw", {"ev": 1, "tr": 1})
    make_tree(tmp_path / "other", {"ev": 1, "tr2": 1})
    roots = [tmp_path / "lfw", tmp_path / "other"]
    train = IdentityFolderDataset(roots, split="train", eval_identities={"ev"})
    assert train.identities == ["lfw/tr", "other/tr2"]
    train2 = IdentityFolderDataset(roots, split="train", eval_identities={"other/ev"})
    assert train2.identities == ["lfw/ev", "lfw/tr", "other/tr2"]
    ev = IdentityFolderDataset(roots, split="eval", eval_identities={"ev"})
    assert ev.identities == ["lfw/ev", "other/ev"]


@pytest.mark.parametrize("case,match", [
    ("missing", "dataset root not found"),
    ("file", "not a folder"),
    ("empty_root", "no identity folders"),
    ("empty_identity", "identity folder has no images: .*empty_guy"),
    ("only_text", "identity folder has no images"),
])
def test_errors_at_construction(tmp_path, case, match):
    root = tmp_path / "root"
    if case == "file":
        root.write_text("x")
    elif case != "missing":
        root.mkdir()
    if case == "empty_identity":
        make_tree(root, {"ok": 1})
        (root / "empty_guy").mkdir()
    if case == "only_text":
        (root / "a").mkdir()
        (root / "a" / "notes.txt").write_text("hi")
    with pytest.raises(MeerError, match=match) as info:
        IdentityFolderDataset(root, split="all")
    assert "\n" not in str(info.value)


def test_no_identity_left_in_split(tmp_path):
    make_tree(tmp_path, {"a": 1})
    with pytest.raises(MeerError, match="no identities in split 'train'"):
        IdentityFolderDataset(tmp_path, split="train", eval_identities={"a"})
    with pytest.raises(MeerError, match="split must be one of"):
        IdentityFolderDataset(tmp_path, split="test")


def test_masking_items_and_reproducible_seed(tmp_path):
    make_tree(tmp_path, {"a": 4, "b": 4})
    op = FakeMask()
    ds = IdentityFolderDataset(tmp_path, split="all", masking=op, image_size=16, seed=3)
    item = ds[1]
    assert item["masked"].shape == (3, 16, 16) and item["mask"].shape == (1, 16, 16)
    assert isinstance(item["mask_kind"], int) and item["mask_coverage"] == 0
    assert op.calls[-1][0] == (1, 3, 16, 16) and op.calls[-1][1] is not None  # 16 != 112: template scaled
    assert torch.equal(item["masked"][:, :8], item["clean"][:, :8])
    assert torch.allclose(item["masked"][:, 8:], torch.full((3, 8, 16), 0.25))
    kinds = [ds[i]["mask_kind"] for i in range(len(ds))]
    assert kinds == [ds[i]["mask_kind"] for i in range(len(ds))]
    ds.set_epoch(1)
    assert [ds[i]["mask_kind"] for i in range(len(ds))] != kinds


def test_template_none_at_112_and_alignment_jsonl(tmp_path):
    make_tree(tmp_path, {"a": 2}, size=112)
    op = FakeMask()
    IdentityFolderDataset(tmp_path, split="all", masking=op)[0]
    assert op.calls[-1][1] is None  # aligned 112 crops: the op uses its template
    lms = [[30.0, 50.0], [80.0, 50.0], [56.0, 70.0], [40.0, 90.0], [72.0, 90.0]]
    rec = {"crop": "a/a_0002.png", "landmarks_crop": lms, "source": "x.jpg"}
    (tmp_path / "alignment.jsonl").write_text(json.dumps(rec) + "\n")
    ds = IdentityFolderDataset(tmp_path, split="all", masking=op, image_size=56)
    ds[0]
    assert op.calls[-1][1] is not None and not torch.allclose(op.calls[-1][1][0], torch.tensor(lms) / 2)
    ds[1]
    assert torch.allclose(op.calls[-1][1][0], torch.tensor(lms) / 2)  # crop landmarks scaled to 56


def test_bad_alignment_jsonl(tmp_path):
    make_tree(tmp_path, {"a": 1})
    (tmp_path / "alignment.jsonl").write_text('{"crop": "a/x.png"}\n')
    with pytest.raises(MeerError, match="alignment.jsonl:1"):
        IdentityFolderDataset(tmp_path, split="all")


def test_works_with_dataloader(tmp_path):
    make_tree(tmp_path, {"a": 3, "b": 3})
    ds = IdentityFolderDataset(tmp_path, split="all", masking=FakeMask(), image_size=16, seed=0)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, shuffle=False)))
    assert batch["masked"].shape == (4, 3, 16, 16) and batch["identity"].tolist() == [0, 0, 0, 1]
    assert batch["mask_kind"].dtype == torch.long


def test_paired_layout_contributes_its_unmasked_photos(tmp_path):
    make_tree(tmp_path / "rm" / "amy", {"unmasked": 2, "masked": 1})
    make_tree(tmp_path / "rm", {"bob": 1})
    ds = IdentityFolderDataset(tmp_path / "rm", split="all")
    assert ds.identities == ["amy", "bob"] and len(ds) == 3
    assert all(Path(s.path).parent.name in ("unmasked", "bob") for s in ds.samples)
    make_tree(tmp_path / "rm2" / "cal", {"masked": 1})
    with pytest.raises(MeerError, match="no images: .*cal"):
        IdentityFolderDataset(tmp_path / "rm2", split="all")
