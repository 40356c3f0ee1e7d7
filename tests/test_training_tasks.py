"""One training loop for every task (``meer.training.loop``) through one interface (``meer.training.task.Task``).

Covers: the task registry is the config's task list; every task (EUM/SRT and MaskMTL here, MEER in
``test_training_loop.py``) resumes bit-identically on CPU; MaskMTL gets the loop's behaviour (learning-rate
schedule, fp16 non-finite steps skipped with the GradScaler checkpointed); a minimal task plugs into the
loop with nothing but the interface.
"""
from __future__ import annotations

import json
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from meer.config import load_config
from meer.training import loop
from meer.training.checkpoint import load_state
from meer.training.logging import without_wall_clock
from meer.training.config import Task as TaskLiteral
from meer.training.config import TrainConfig
from meer.training.task import NonFiniteLoss, Task, TaskData, build_schedulers, scaled_step, step_schedulers
from meer.training.tasks import TASKS
from meer.utils.images import write_image
from test_eum_train import TinyRecognizer
from test_maskmtl_train import _cfg as maskmtl_cfg
from test_training_loop import all_tensors

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]


def assert_same_training_state(a_path: Path, b_path: Path) -> None:
    """Two full training checkpoints hold the same task state, data position and RNG states, bit for bit."""
    a, b = load_state(a_path), load_state(b_path)
    assert a["step"] == b["step"]
    for key in ("task", "data", "rng"):
        ta, tb = all_tensors(a[key]), all_tensors(b[key])
        assert ta.keys() == tb.keys(), key
        for k in ta:
            if isinstance(ta[k], torch.Tensor):
                assert torch.equal(ta[k], tb[k]), f"{key}{k}"
            else:
                assert ta[k] == tb[k], f"{key}{k}"


def logged(run_dir: Path) -> list[dict]:
    recs = [json.loads(x) for x in (run_dir / "stats.jsonl").read_text().splitlines()]
    return [without_wall_clock(r) for r in recs]


def resume_matches_straight_run(make_cfg, tmp_path: Path, steps: int, min_tensors: int) -> None:
    """``steps`` straight vs ``steps / 2`` + ``--resume`` + ``steps / 2``: identical final state and logs."""
    full = loop.train(make_cfg(tmp_path / "a", []), run_dir=tmp_path / "a" / "run")
    part = loop.train(make_cfg(tmp_path / "b", [f"stop_at_step={steps // 2}"]), run_dir=tmp_path / "b" / "run")
    assert full.step == steps and part.step == steps // 2
    resumed = loop.train(make_cfg(tmp_path / "b", []), resume=tmp_path / "b" / "run")
    assert resumed.step == steps and resumed.run_dir == tmp_path / "b" / "run"
    assert_same_training_state(full.last_checkpoint, resumed.last_checkpoint)
    assert len(all_tensors(load_state(full.last_checkpoint)["task"])) >= min_tensors
    assert logged(full.run_dir) == logged(resumed.run_dir)  # every logged scalar of every step


# ---------------------------------------------------------------------------------------------------


def test_registry_is_the_one_task_list():
    assert set(TASKS) == {"meer", "eum_srt", "maskmtl"}
    assert set(typing.get_args(TaskLiteral)) == set(TASKS)  # the config accepts exactly the registered tasks
    for name, cls in TASKS.items():
        assert issubclass(cls, Task) and cls.name == name


def _eum_data(root: Path) -> Path:
    if not root.is_dir():
        rng = np.random.default_rng(0)
        for k in range(6):
            base = rng.random((4, 4, 3))
            for i in range(3):
                img = ((base + 0.05 * rng.random((4, 4, 3))).clip(0, 1) * 255).astype(np.uint8).repeat(16, 0).repeat(16, 1)
                write_image(root / f"id{k}" / f"{i}.png", img)
    return root


def test_eum_srt_resumes_bit_identically(tmp_path):
    data = _eum_data(tmp_path / "data")
    torch.jit.script(TinyRecognizer().eval()).save(str(tmp_path / "rec.pt"))

    def make_cfg(where: Path, extra: list[str]) -> TrainConfig:
        return load_config(TrainConfig, REPO / "configs" / "eum_srt.yaml", [
            f"data.roots=[{data}]", "data.eval_identities=[]", "data.val_identities=2", "data.val_images_per_identity=2",
            "data.batch_size=6", "data.num_workers=0", "total_steps=4", "device=cpu", f"runs_dir={where / 'runs'}",
            "eum.embedder.kind=torchscript", f"eum.embedder.path={tmp_path / 'rec.pt'}", "eum.embedder.input_size=32",
            "eum.model.embedding_dim=32", "val.every=2", "val.pairs=8", "log.every=1", "log.progress=false",
            "checkpoint.every=2", "optim.schedule=cosine", *extra])

    resume_matches_straight_run(make_cfg, tmp_path, steps=4, min_tensors=8)


def test_eum_dlib_embedder_is_the_dlib_teacher_network_without_the_evaluation_judge():
    pytest.importorskip("dlib")
    from meer.utils.dlib_models import dlib_model_dir

    if dlib_model_dir() is None:
        pytest.skip("face-recognition-models not installed")
    from meer.models.teacher import DlibTeacher
    from meer.training.tasks.eum_srt import EmbedderConfig, build_embedder

    emb = build_embedder(EmbedderConfig(kind="dlib"))
    crops = torch.rand(2, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    out = emb(crops)
    with torch.no_grad():
        ref = DlibTeacher().features(crops)
    assert out.shape == (2, 128) and torch.allclose(out, ref, atol=1e-5)
    assert not torch.allclose(out.norm(dim=1), torch.ones(2))  # raw descriptors, as dlib's judges compare them


def test_maskmtl_resumes_bit_identically(tmp_path):
    def make_cfg(where: Path, extra: list[str]) -> TrainConfig:
        return load_config(TrainConfig, REPO / "configs" / "maskmtl.yaml",
                           _overrides(maskmtl_cfg(where, steps=4)) + ["log.every=1", "optim.schedule=cosine", *extra])

    resume_matches_straight_run(make_cfg, tmp_path, steps=4, min_tensors=40)


def _overrides(cfg: TrainConfig) -> list[str]:
    """The maskmtl test config as overrides (so extra ones can be appended)."""
    d = cfg.maskmtl.data
    return [f"maskmtl.data.utkface_root={d.utkface_root}", f"maskmtl.data.utkface_test_list={d.utkface_test_list}",
            "maskmtl.data.image_size=32", "maskmtl.data.batch_size=6", "maskmtl.data.num_workers=0",
            "maskmtl.model.trunk=small", "maskmtl.model.width=4", f"total_steps={cfg.total_steps}", "device=cpu",
            f"runs_dir={cfg.runs_dir}", "log.progress=false", "checkpoint.every=2"]


def _maskmtl_task(tmp_path, *extra):
    from meer.training.distributed import DistInfo
    from meer.training.tasks.maskmtl import MaskMTLTask

    cfg = load_config(TrainConfig, REPO / "configs" / "maskmtl.yaml", _overrides(maskmtl_cfg(tmp_path)) + list(extra))
    data = MaskMTLTask.build_data(cfg, DistInfo())
    task = MaskMTLTask.from_data(cfg, data, DistInfo())
    raw = data.collate([data.train[i] for i in range(6)])
    return cfg, task, task.make_batch(raw, torch.Generator().manual_seed(0))


def test_maskmtl_follows_the_learning_rate_schedule(tmp_path):
    cfg, task, batch = _maskmtl_task(tmp_path, "total_steps=4", "optim.schedule=cosine", "optim.min_lr_ratio=0.1")
    from meer.training.schedule import lr_factor

    assert task.opt.param_groups[0]["lr"] == pytest.approx(cfg.maskmtl.lr)
    lrs = [task.train_step(batch, s, 6 * s)["lr/maskmtl"] for s in range(1, 5)]  # the lr after each step
    factor = lr_factor("cosine", 4, 0, 0.1)
    assert lrs == pytest.approx([cfg.maskmtl.lr * factor(s) for s in range(1, 5)]) and lrs[-1] < lrs[0]
    assert task.state_dict()["schedulers"]["maskmtl"]["last_epoch"] == 4


def test_maskmtl_fp16_skips_a_non_finite_step_and_checkpoints_its_scaler(tmp_path, monkeypatch):
    cfg, task, batch = _maskmtl_task(tmp_path)
    task.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)  # the fp16 path, exercised on CPU
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    real = task.loss_fn.forward

    def poisoned(preds, targets):
        total, parts = real(preds, targets)
        return total * float("inf"), parts

    monkeypatch.setattr(task.loss_fn, "forward", poisoned)
    stats = task.train_step(batch, step=1, nimg=6)  # no exception: skipped
    assert stats["skipped"] == 1.0 and stats["amp_scale"] == 2.0**7
    for name, _ in task.model.named_parameters():
        assert torch.equal(before[name], task.model.state_dict()[name]), name
    monkeypatch.setattr(task.loss_fn, "forward", real)
    assert task.train_step(batch, step=2, nimg=12)["skipped"] == 0.0
    saved = task.state_dict()["scalers"]["maskmtl"]
    assert saved["scale"] == 2.0**7
    fresh = _maskmtl_task(tmp_path)[1]
    fresh.scaler = torch.amp.GradScaler("cpu", init_scale=1.0)
    fresh.load_state_dict(task.state_dict())
    assert fresh.scaler.get_scale() == 2.0**7


def test_maskmtl_non_finite_loss_stops_in_fp32(tmp_path, monkeypatch):
    cfg, task, batch = _maskmtl_task(tmp_path)
    real = task.loss_fn.forward
    monkeypatch.setattr(task.loss_fn, "forward", lambda p, t: (real(p, t)[0] * float("nan"), real(p, t)[1]))
    with pytest.raises(NonFiniteLoss, match="non-finite MaskMTL loss at step 3"):
        task.train_step(batch, step=3, nimg=18)


# ---------------------------------------------------------------------------------------------------
# a task that is nothing but the interface: the loop needs no other knowledge of it


class _Points(torch.utils.data.Dataset):
    def __init__(self, n: int = 24):
        g = torch.Generator().manual_seed(3)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": self.y[i]}


def _stack(items: list[dict]) -> dict:
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


class LinearTask(Task):
    name = "linear"

    def __init__(self, cfg, data: TaskData, dist):
        self.cfg, self.dist = cfg, dist
        self.model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.Linear(8, 1))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-2)
        self.schedulers = build_schedulers({"opt": self.opt}, cfg)
        self.scaler = torch.amp.GradScaler("cpu", enabled=False)

    @classmethod
    def build_data(cls, cfg, dist) -> TaskData:
        return TaskData(train=_Points(), collate=_stack, batch_size=4, summary=["24 points"])

    def make_batch(self, raw: dict, generator: torch.Generator) -> dict:
        return {"x": raw["x"] + 0.01 * torch.randn(raw["x"].shape, generator=generator), "y": raw["y"]}

    def train_step(self, batch: dict, step: int, nimg: int) -> dict[str, float]:
        self.model.train()  # dropout draws from the global torch RNG, which the loop checkpoints
        loss = (self.model(batch["x"]).squeeze(1) - batch["y"]).pow(2).mean()
        skipped, norm = scaled_step(loss, self.opt, list(self.model.parameters()), self.scaler, self.dist, step)
        step_schedulers(self.schedulers)
        return {"loss/total": float(loss.detach()), "grad_norm/model": norm, "skipped": float(skipped)}

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict(),
                "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["opt"])
        for k, s in self.schedulers.items():
            s.load_state_dict(state["schedulers"][k])

    def param_counts(self) -> dict[str, int]:
        return {"model": sum(p.numel() for p in self.model.parameters())}

    def live_model(self) -> nn.Module:
        return self.model

    def eval_model(self) -> nn.Module:
        return self.model


def test_a_minimal_task_plugs_into_the_loop(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(TASKS, "linear", LinearTask)

    def make_cfg(where: Path, extra: list[str]) -> TrainConfig:
        cfg = load_config(TrainConfig, REPO / "configs" / "tiny.yaml", [
            f"runs_dir={where / 'runs'}", "total_steps=8", "log.every=1", "log.progress=false", "checkpoint.every=4",
            *extra])
        cfg.task = "linear"  # not in the config's Literal: registered by this test only
        return cfg

    dry = loop.train(make_cfg(tmp_path / "dry", []), dry_run=True)
    out = capsys.readouterr().out
    assert dry.run_dir is None and "task linear, 8 steps of global batch 4 (6 steps/epoch)" in out and "24 points" in out
    resume_matches_straight_run(make_cfg, tmp_path, steps=8, min_tensors=8)
    run = tmp_path / "a" / "run"
    assert not (run / "grids").exists() and not (run / "checkpoints" / "best.pt").exists()  # no-op hooks
    assert sorted(p.name for p in run.iterdir() if p.suffix == ".pt") == []  # no export
    losses = [r["train/loss/total"] for r in logged(run) if "train/loss/total" in r]
    assert len(losses) == 8 and all(np.isfinite(losses))
