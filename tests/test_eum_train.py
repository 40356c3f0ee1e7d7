"""EUM training: a tiny overfit run pulls masked embeddings towards their unmasked ones."""
from __future__ import annotations

import pytest
import torch

from meer.losses.srt import SRTConfig, SRTLoss
from meer.models.eum import EUM, EUMConfig, FrozenEmbedder, load_eum, save_eum
from meer.training.tasks.eum_srt import EmbedderConfig, build_embedder, eum_step
from meer.utils.errors import MeerError

pytestmark = pytest.mark.usefixtures("one_thread")


class TinyRecognizer(torch.nn.Module):
    def __init__(self, dim=32):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 5, stride=4, padding=2)
        self.fc = torch.nn.Linear(16 * 4 * 4, dim)

    def forward(self, x):
        x = torch.tanh(self.conv(x * 2 - 1))
        return self.fc(torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1))


def synthetic_set(n_ids=8, per_id=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(n_ids, 3, size, size, generator=g)
    clean = protos.repeat_interleave(per_id, 0) + 0.05 * torch.randn(n_ids * per_id, 3, size, size, generator=g)
    clean = clean.clamp(0, 1)
    masked = clean.clone()
    masked[:, :, size // 2:, :] = torch.tensor([0.2, 0.5, 0.8])[:, None, None]  # a "mask" on the lower half
    labels = torch.arange(n_ids).repeat_interleave(per_id)
    return clean, masked, labels


@pytest.mark.parametrize("kind", ["srt", "triplet"])
def test_tiny_overfit_raises_masked_to_clean_cosine(kind):
    torch.manual_seed(0)
    clean, masked, labels = synthetic_set()
    embedder = FrozenEmbedder(TinyRecognizer())
    e_masked, e_clean = embedder(masked), embedder(clean)
    eum = EUM(EUMConfig(embedding_dim=32, hidden_dim=64, depth=3, residual=True))
    loss_fn = SRTLoss(SRTConfig(kind=kind, mining="semihard"))
    opt = torch.optim.Adam(eum.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    first = eum_step(e_masked, e_clean, labels, eum, None, loss_fn, g, precomputed=True)
    losses = []
    for _ in range(150):
        perm = torch.randperm(len(labels), generator=g)[:16]
        out = eum_step(e_masked[perm], e_clean[perm], labels[perm], eum, None, loss_fn, g, precomputed=True)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    eum.eval()
    with torch.no_grad():
        after = torch.nn.functional.cosine_similarity(eum(e_masked), e_clean).mean().item()
    before = first["cos_before"].item()
    assert before < 0.9
    assert after > before + 0.05, (before, after)
    assert sum(losses[-20:]) / 20 < sum(losses[:20]) / 20
    # rank-1: the EUM output of each masked face finds its own identity among the clean ones
    with torch.no_grad():
        sims = torch.nn.functional.normalize(eum(e_masked), dim=1) @ torch.nn.functional.normalize(e_clean, dim=1).t()
    sims.fill_diagonal_(-2)  # not its own clean image
    assert (labels[sims.argmax(1)] == labels).float().mean() >= 0.9


def test_eum_step_on_images_matches_precomputed():
    clean, masked, labels = synthetic_set(n_ids=3, per_id=2)
    embedder = FrozenEmbedder(TinyRecognizer())
    eum = EUM(EUMConfig(embedding_dim=32, depth=2)).eval()
    loss_fn = SRTLoss(SRTConfig(mining="hard"))
    a = eum_step(masked, clean, labels, eum, embedder, loss_fn)
    b = eum_step(embedder(masked), embedder(clean), labels, eum, None, loss_fn, precomputed=True)
    assert torch.allclose(a["loss"], b["loss"]) and set(a) >= {"loss", "cos_before", "cos_after", "d_ap", "restrained"}
    with pytest.raises(MeerError, match="needs an embedder"):
        eum_step(masked, clean, labels, eum, None, loss_fn)


def test_embedder_config_errors(tmp_path):
    with pytest.raises(MeerError, match="path is required"):
        build_embedder(EmbedderConfig(kind="torchscript"))
    with pytest.raises(MeerError, match="TorchScript embedder not found"):
        build_embedder(EmbedderConfig(kind="torchscript", path=str(tmp_path / "x.pt")))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(MeerError, match="not a TorchScript file"):
        build_embedder(EmbedderConfig(kind="torchscript", path=str(bad)))
    with pytest.raises(MeerError, match="facenet weights not found"):
        build_embedder(EmbedderConfig(kind="facenet", path=str(tmp_path / "w.pt")))


def test_torchscript_embedder_roundtrip(tmp_path):
    rec = TinyRecognizer().eval()
    path = tmp_path / "rec.pt"
    torch.jit.script(rec).save(str(path))
    emb = build_embedder(EmbedderConfig(kind="torchscript", path=str(path), input_size=32))
    x = torch.rand(2, 3, 64, 64)
    ref = rec(torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True))
    assert torch.allclose(emb(x), ref, atol=1e-5)


def test_meer_train_runs_eum_srt_with_validation_and_resume(tmp_path):
    import numpy as np

    from meer.config import load_config
    from meer.training.config import TrainConfig
    from meer.training.loop import train
    from meer.utils.images import write_image

    rng = np.random.default_rng(0)
    for k in range(6):
        base = rng.random((4, 4, 3))
        for i in range(3):
            img = ((base + 0.05 * rng.random((4, 4, 3))).clip(0, 1) * 255).astype(np.uint8).repeat(16, 0).repeat(16, 1)
            write_image(tmp_path / "data" / f"id{k}" / f"{i}.png", img)
    rec = TinyRecognizer().eval()
    torch.jit.script(rec).save(str(tmp_path / "rec.pt"))
    repo = __import__("pathlib").Path(__file__).resolve().parents[1]
    overrides = [f"data.roots=[{tmp_path / 'data'}]", "data.eval_identities=[]", "data.val_identities=2",
                 "data.val_images_per_identity=2", "data.batch_size=6", "data.num_workers=0", "total_steps=4",
                 "device=cpu", "threads=1", f"runs_dir={tmp_path / 'runs'}", "eum.embedder.kind=torchscript",
                 f"eum.embedder.path={tmp_path / 'rec.pt'}", "eum.embedder.input_size=32", "eum.model.embedding_dim=32",
                 "val.every=2", "val.pairs=8", "log.every=1", "log.progress=false", "checkpoint.every=2"]
    cfg = load_config(TrainConfig, repo / "configs" / "eum_srt.yaml", overrides)
    res = train(cfg, run_dir=tmp_path / "run")
    assert res.step == 4 and res.export is None
    assert {"verify_acc", "verify_acc_no_eum", "cos_masked_clean"} <= set(res.val)
    assert "eum/cos_after" in res.stats and "loss/srt" in res.stats
    cfg2 = load_config(TrainConfig, repo / "configs" / "eum_srt.yaml", overrides + ["total_steps=6"])
    res2 = train(cfg2, resume=tmp_path / "run")
    assert res2.step == 6
    # meer-eval --methods eum reads the EUM straight from the training checkpoint
    eum, embedder = load_eum(res2.last_checkpoint)
    assert not eum.training and embedder["kind"] == "torchscript" and eum.cfg.embedding_dim == 32
    state = torch.load(res2.last_checkpoint, weights_only=False)["task"]["eum"]
    assert all(torch.equal(v, eum.state_dict()[k]) for k, v in state.items())


def test_save_and_load_eum(tmp_path):
    eum = EUM(EUMConfig(embedding_dim=8, depth=2, residual=True)).eval()
    with torch.no_grad():
        eum.net[0].weight.add_(1.0)
    path = save_eum(eum, tmp_path / "eum.pt", {"kind": "dlib"})
    back, emb = load_eum(path)
    x = torch.randn(3, 8)
    assert emb == {"kind": "dlib"} and torch.allclose(back(x), eum(x))
    (tmp_path / "bad.pt").write_bytes(b"nope")
    with pytest.raises(MeerError, match="not a readable checkpoint"):
        load_eum(tmp_path / "bad.pt")
    torch.save({"x": 1}, tmp_path / "other.pt")
    with pytest.raises(MeerError, match="not an EUM checkpoint"):
        load_eum(tmp_path / "other.pt")


def test_meer_recognition_branch_as_embedder(tmp_path):
    from meer.config import load_config
    from meer.models.checkpoint import load_meer, save_inference_checkpoint
    from meer.models.meer import MEER
    from meer.training.config import TrainConfig

    repo = __import__("pathlib").Path(__file__).resolve().parents[1]
    model = MEER(load_config(TrainConfig, repo / "configs" / "tiny.yaml").model).eval()
    path = save_inference_checkpoint(model, tmp_path / "meer.pt")
    emb = build_embedder(EmbedderConfig(kind="meer", path=str(path)))
    x = torch.rand(2, 3, 64, 64)
    loaded, _ = load_meer(path)
    with torch.no_grad():
        ref, original = loaded.embed(x), model.embed(x)
    out = emb(x)
    assert out.shape == (2, 512) and torch.allclose(out, ref, atol=1e-6)
    assert torch.allclose(out, original, atol=1e-3)  # the inference checkpoint may store reduced precision
    assert all(not p.requires_grad for p in emb.parameters())
    with pytest.raises(MeerError, match="MEER checkpoint not found"):
        build_embedder(EmbedderConfig(kind="meer", path=str(tmp_path / "none.pt")))
