"""meer.inference.inspect: occlusion maps, gate attention, code swaps, projections and separability (tiny models)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from meer.inference import inspect as ins
from meer.losses.occlusion import mask_iou
from meer.models.meer import MEER, MEERConfig

S = 32


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def tiny_model(seed: int = 0) -> MEER:
    torch.manual_seed(seed)
    cfg = MEERConfig(image_size=S, enc_width=8, enc_layers=(1, 1), split_channels=8, occ_head_width=8, id_dim=16,
                     occ_dim=8, embedding_dim=32, gen_width=8, gen_max_width=32, num_mask_kinds=3)
    m = MEER(cfg)
    # make the identity code matter everywhere in the generator (FiLM starts at zero)
    for mod in m.generator.modules():
        if isinstance(mod, torch.nn.Linear):
            torch.nn.init.normal_(mod.weight, std=0.3)
    return m.eval()


def faces(b: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    clean = torch.rand(b, 3, S, S, generator=g)
    mask = torch.zeros(b, 1, S, S)
    for i in range(b):
        mask[i, :, 16 + i:S - 3, 6:S - 6] = 1.0
    masked = clean * (1 - mask) + mask * torch.tensor([0.2, 0.5, 0.9]).view(1, 3, 1, 1)
    return clean, masked, mask


def test_conversions_round_trip():
    arr = np.random.default_rng(0).integers(0, 256, (3, S, S, 3), dtype=np.uint8)
    t = ins.to_tensor(arr)
    assert t.shape == (3, 3, S, S) and t.dtype == torch.float32 and float(t.max()) <= 1.0
    assert np.array_equal(ins.to_uint8(t), arr)
    assert ins.to_tensor(list(arr)).shape == (3, 3, S, S)
    assert ins.mask_tensor(np.zeros((2, S, S), bool)).shape == (2, 1, S, S)
    with pytest.raises(ValueError):
        ins.to_tensor(np.zeros((2, S, S), np.uint8)[..., None])


def test_decouple_batches_matches_model_and_batching():
    m = tiny_model()
    _, masked, mask = faces(5)
    a = ins.decouple_batches(m, masked, masks=mask[:, 0].numpy(), batch_size=2)
    b = ins.decouple_batches(m, masked, masks=mask, batch_size=64)
    d = m.decouple(masked)
    assert a["occ_map"].shape == (5, S, S) and a["gate"].shape == (5, *d["gate"].shape[-2:])
    assert a["id_code"].shape == (5, 16) and a["occ_code"].shape == (5, 8) and a["embedding"].shape == (5, 32)
    assert a["composite_mask"].dtype == bool
    for k in ("occ_map", "id_code", "occ_code", "embedding", "iou"):
        np.testing.assert_allclose(a[k], b[k], atol=1e-5)
    np.testing.assert_allclose(a["id_code"], d["id_code"].numpy(), atol=1e-5)
    np.testing.assert_allclose(a["iou"], mask_iou(d["occ_map"], mask).numpy(), atol=1e-6)
    assert "iou" not in ins.decouple_batches(m, masked)
    with pytest.raises(ValueError, match="eval"):
        ins.decouple_batches(m.train(), masked)


def test_restore_with_own_codes_is_the_model_restoration():
    m = tiny_model()
    _, masked, mask = faces(3)
    own = m.decouple(masked)["id_code"]
    with torch.no_grad():
        ref_pred = m(masked).restored
        ref_gt = m(masked, mask=mask).restored
    assert torch.equal(ins.restore_with_codes(m, masked, own)["restored"], ref_pred)
    assert torch.equal(ins.restore_with_codes(m, masked, own, mask=mask)["restored"], ref_gt)
    with pytest.raises(ValueError, match="id_codes"):
        ins.restore_with_codes(m, masked, own[:2])
    # several code sets share one encoder pass and give the same results as separate calls
    other = own.roll(1, dims=0)
    both = ins.restore_with_codes(m, masked, [own, other])
    assert isinstance(both, list) and len(both) == 2
    assert torch.equal(both[0]["restored"], ref_pred)
    assert torch.equal(both[1]["restored"], ins.restore_with_codes(m, masked, other)["restored"])


def test_swap_grid_diagonal_is_own_and_only_the_mask_changes():
    m = tiny_model()
    _, masked, mask = faces(3)
    grid = ins.swap_restorations(m, masked, mask=mask)
    assert grid.shape == (3, 3, 3, S, S)
    with torch.no_grad():
        own = m(masked, mask=mask).restored
    for i in range(3):
        assert torch.equal(grid[i, i], own[i])
        for j in range(3):
            outside = mask[i, 0] == 0
            assert torch.equal(grid[i, j][:, outside], masked[i][:, outside])  # visible pixels untouched
    change = ins.region_change(grid[0, 1:2], grid[0, 0:1], mask[0:1])
    assert change.shape == (1,) and change[0] > 0  # another code, another fill


def test_region_change_and_share_inside():
    a = torch.zeros(2, 3, 4, 4)
    b = torch.zeros(2, 3, 4, 4)
    b[0, :, :2] = 0.5
    mask = torch.zeros(2, 1, 4, 4)
    mask[0, :, :2, :2] = 1
    np.testing.assert_allclose(ins.region_change(a, b, mask), [0.5, 0.0])
    maps = np.ones((1, 4, 4))
    np.testing.assert_allclose(ins.share_inside(maps, mask[:1, 0].numpy()), [0.25])
    np.testing.assert_allclose(ins.share_inside(np.ones((1, 2, 2)), np.ones((1, 4, 4))), [1.0])


def test_feature_attention_is_the_exact_decomposition_of_the_id_code():
    m = tiny_model()
    _, masked, _ = faces(2)
    att = ins.feature_attention(m, masked)
    h, w = att["gate"].shape[-2:]
    assert att["id_contribution"].shape == (2, h, w)
    with torch.no_grad():
        feats = m.encoder(masked * 2 - 1)
        f = m.decoupling.id_proj(feats[-1]) * (1 - att["gate"][:, None])
        lin = ins._id_linear(m)
        for y, x in ((0, 0), (h - 1, w // 2)):
            only = torch.zeros_like(f)
            only[..., y, x] = f[..., y, x]
            np.testing.assert_allclose(lin(only.flatten(1)).norm(dim=1).numpy(), att["id_contribution"][:, y, x].numpy(),
                                       rtol=1e-4, atol=1e-5)
        # all positions together give the pre-BN id code
        full = lin(f.flatten(1))
        bn = m.decoupling.id_fc[-1]
        np.testing.assert_allclose(bn(full).numpy(), m.decouple(masked)["id_code"].numpy(), atol=1e-4)
    # a face predicted fully occluded gives the identity code nothing to read
    with torch.no_grad():
        m.decoupling.occ_head.out[-1].bias.fill_(50.0)
    att = ins.feature_attention(m, masked)
    assert float(att["gate"].min()) > 0.999
    assert float(att["id_contribution"].max()) < 1e-2 * float(att["id_contribution_ungated"].max())
    up = ins.upsample(att["gate"], S)
    assert up.shape == (2, S, S) and ins.upsample(att["gate"].numpy(), (S, S), mode="nearest").shape == (2, S, S)


def test_embedding_sensitivity():
    m = tiny_model()
    _, masked, _ = faces(2)
    s1 = ins.embedding_sensitivity(m, masked, directions=4, seed=1)
    s2 = ins.embedding_sensitivity(m, masked, directions=4, seed=1)
    assert s1.shape == (2, S, S) and np.all(s1 >= 0) and np.isfinite(s1).all() and s1.max() > 0
    np.testing.assert_array_equal(s1, s2)
    assert all(p.grad is None for p in m.parameters())


def test_pca_matches_eigendecomposition():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5)) * np.array([5.0, 2.0, 1.0, 0.5, 0.1])
    xy, ratio = ins.pca(x, 2)
    cov = np.cov(x - x.mean(0), rowvar=False)
    ev = np.sort(np.linalg.eigvalsh(cov))[::-1]
    np.testing.assert_allclose(ratio, ev[:2] / ev.sum(), rtol=1e-6)
    np.testing.assert_allclose(xy.var(0, ddof=1), ev[:2], rtol=1e-6)
    assert abs(np.corrcoef(xy[:, 0], x[:, 0])[0, 1]) > 0.99
    xy2, _ = ins.pca(-x, 2)
    np.testing.assert_allclose(np.abs(xy2), np.abs(xy), atol=1e-9)
    with pytest.raises(ValueError):
        ins.pca(x[:1])


def test_knn_accuracy_groups_and_ties():
    x = np.array([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [5.1, 5.0]])
    y = np.array(["a", "a", "b", "b"])
    assert ins.knn_accuracy(x, y, metric="euclidean") == 1.0
    # each sample's only same-label neighbour is in its own group: nearest admissible is the other label
    assert ins.knn_accuracy(x, y, groups=[0, 0, 1, 1], metric="euclidean") == 0.0
    # k=2 tie (one vote each): the nearest wins
    x3 = np.array([[0.0], [1.0], [3.0]])
    assert ins.knn_accuracy(x3, ["p", "p", "q"], k=2, metric="euclidean") == pytest.approx(2 / 3)
    # cosine ignores scale
    xc = np.array([[1.0, 0.0], [10.0, 0.5], [0.0, 1.0], [0.2, 7.0]])
    assert ins.knn_accuracy(xc, [0, 0, 1, 1]) == 1.0
    assert np.isnan(ins.knn_accuracy(x[:2], ["a", "a"], groups=[0, 0]))


def test_silhouette_hand_computed():
    x = np.array([[0.0], [1.0], [4.0], [5.0]])
    expected = (3.5 / 4.5 + 2.5 / 3.5) / 2
    assert ins.silhouette(x, [0, 0, 1, 1], metric="euclidean") == pytest.approx(expected)
    assert ins.silhouette(x, [0, 1, 0, 1], metric="euclidean") < 0
    with pytest.raises(ValueError):
        ins.silhouette(x, [0, 0, 0, 0])


def test_separability_table_and_format():
    rng = np.random.default_rng(0)
    ident = np.repeat(np.arange(4), 6)
    kind = np.tile(np.arange(3), 8)
    id_code = np.eye(4)[ident] * 3 + rng.normal(scale=0.1, size=(24, 4))
    occ_code = np.eye(3)[kind] * 3 + rng.normal(scale=0.1, size=(24, 3))
    rows = ins.separability_table({"id": id_code, "occ": occ_code}, {"identity": ident, "kind": kind})
    got = {(r["code"], r["target"]): r for r in rows}
    assert got[("id", "identity")]["knn_acc"] == 1.0 and got[("occ", "kind")]["knn_acc"] == 1.0
    assert got[("id", "kind")]["knn_acc"] < 0.5 and got[("occ", "identity")]["knn_acc"] < 0.5
    assert got[("id", "identity")]["silhouette"] > 0.5 > got[("id", "kind")]["silhouette"]
    assert got[("id", "identity")]["chance"] == pytest.approx(0.25)
    text = ins.format_table(rows)
    assert text.splitlines()[0].split() == ["code", "target", "knn_acc", "chance", "silhouette"] and len(text.splitlines()) == 6


def test_scatter_by_label_draws_one_series_per_label():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ins.scatter_by_label(ax, np.random.default_rng(0).normal(size=(9, 2)), [0, 1, 2] * 3, "t", names={0: "zero"})
    assert len(ax.collections) == 3 and ax.get_legend().get_texts()[0].get_text() == "zero"
    plt.close(fig)


def test_separability_table_centres_codes():
    # a large shared offset hides the labels from cosine distance unless the codes are centred
    kind = np.tile(np.arange(2), 10)
    x = np.array([[100.0, 0.0]]) + np.eye(2)[kind] + np.random.default_rng(0).normal(scale=0.05, size=(20, 2))
    centred = ins.separability_table({"c": x}, {"kind": kind})[0]
    assert centred["knn_acc"] == 1.0 and centred["silhouette"] > 0.5
    raw = ins.separability_table({"c": x}, {"kind": kind}, center=False)[0]
    assert raw["silhouette"] < centred["silhouette"]
