"""Building blocks of meer-train: run dirs, checkpoints, RNG state, EMA, schedules, data order."""
from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from meer.training import rundir
from meer.training.checkpoint import CheckpointKeeper, load_state, rng_state, save_state, set_rng_state
from meer.training.distributed import all_true, average_gradients, init_distributed
from meer.training.ema import EMA
from meer.training.logging import RunLogger
from meer.training.sampler import DataStream, ResumableBatchSampler
from meer.training.schedule import build_scheduler, lr_factor
from meer.utils.errors import MeerError


def test_run_dirs_are_numbered_and_resumable(tmp_path):
    runs = tmp_path / "runs"
    assert rundir.plan_run_dir(runs, "my run!").name == "00000-my-run"
    a = rundir.create_run_dir(runs, "a")
    (runs / "00007-old").mkdir()
    (runs / "notes").mkdir()
    b = rundir.create_run_dir(runs, "b")
    assert a.name == "00000-a" and b.name == "00008-b"
    assert (a / "checkpoints").is_dir()
    with pytest.raises(MeerError, match="no checkpoint"):
        rundir.resolve_resume(a)
    for step in (5, 20, 100):
        (a / "checkpoints" / f"ckpt-{step:08d}.pt").write_bytes(b"x")
    assert rundir.resolve_resume(a) == (a, a / "checkpoints" / "ckpt-00000100.pt")
    ck = a / "checkpoints" / "ckpt-00000020.pt"
    assert rundir.resolve_resume(ck) == (a, ck)
    with pytest.raises(MeerError, match="no such run directory"):
        rundir.resolve_resume(tmp_path / "nope")


def test_checkpoint_roundtrip_weights_only_keep_last_and_errors(tmp_path):
    keeper = CheckpointKeeper(tmp_path, keep_last=2)
    for step in (1, 2, 3):
        keeper.save({"step": step, "w": torch.full((3,), float(step)), "nested": {"a": [1, 2.5, "x"]}}, step)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["ckpt-00000002.pt", "ckpt-00000003.pt"]  # no temp files left behind
    state = load_state(tmp_path / "ckpt-00000003.pt")
    assert state["step"] == 3 and torch.equal(state["w"], torch.full((3,), 3.0)) and state["nested"]["a"][2] == "x"
    keeper.save_best({"step": 2})
    assert load_state(tmp_path / "best.pt")["step"] == 2
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(MeerError, match="not a readable training checkpoint"):
        load_state(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(MeerError, match="not a meer training checkpoint"):
        load_state(tmp_path / "other.pt")
    with pytest.raises(MeerError, match="checkpoint not found"):
        load_state(tmp_path / "missing.pt")


def test_rng_state_restores_every_generator(tmp_path):
    g = torch.Generator().manual_seed(3)
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    torch.randn(5), np.random.randn(3), random.random(), torch.rand(2, generator=g)
    save_state({"rng": rng_state({"augment": g})}, tmp_path / "s.pt")
    expected = (random.random(), np.random.randn(4).tolist(), torch.randn(4), torch.rand(3, generator=g))
    random.seed(99), np.random.seed(99), torch.manual_seed(99), g.manual_seed(99)
    set_rng_state(load_state(tmp_path / "s.pt")["rng"], {"augment": g})
    got = (random.random(), np.random.randn(4).tolist(), torch.randn(4), torch.rand(3, generator=g))
    assert got[0] == expected[0] and got[1] == expected[1]
    assert torch.equal(got[2], expected[2]) and torch.equal(got[3], expected[3])
    with pytest.raises(MeerError, match="'other' random generator"):
        set_rng_state(load_state(tmp_path / "s.pt")["rng"], {"other": g})


def test_ema_follows_half_life_and_averages_float_buffers():
    model = nn.BatchNorm1d(2)
    ema = EMA(model, half_life_kimg=0.004, rampup=None)  # 4 images
    assert ema.beta(batch_size=4, images_seen=100) == pytest.approx(0.5)
    with torch.no_grad():
        model.weight.fill_(3.0)  # ema weight is 1
        model.running_mean.fill_(7.0)
    ema.update(model, batch_size=4, images_seen=100)
    assert torch.allclose(ema.model.weight, torch.full((2,), 2.0))  # halfway
    assert torch.allclose(ema.model.running_mean, torch.full((2,), 3.5))  # statistics averaged like weights
    assert torch.equal(ema.model.num_batches_tracked, model.num_batches_tracked)  # integer buffers copied
    assert not any(p.requires_grad for p in ema.model.parameters())
    ramp = EMA(model, half_life_kimg=10.0, rampup=0.05)
    assert ramp.beta(4, images_seen=80) == pytest.approx(0.5)  # half-life = 0.05 * 80 = 4 images


def test_schedules_hand_computed():
    f = lr_factor("cosine", total_steps=10, warmup_steps=2, min_ratio=0.1)
    assert f(0) == pytest.approx(0.5) and f(1) == pytest.approx(1.0)
    assert f(2) == pytest.approx(1.0)
    assert f(6) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(10) == pytest.approx(0.1)
    s = lr_factor("step", total_steps=100, milestones=(0.5, 0.8), gamma=0.1)
    assert [s(49), s(50), s(80)] == pytest.approx([1.0, 0.1, 0.01])
    assert lr_factor("constant", 5)(4) == 1.0
    with pytest.raises(MeerError, match="unknown learning-rate schedule"):
        lr_factor("linear", 5)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, "step", total_steps=4, milestones=(0.5,), gamma=0.5)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step(), sched.step()
    assert lrs == [1.0, 1.0, 0.5, 0.5]
    state = sched.state_dict()
    torch.save(state, "/dev/null")  # plain data only: the lambda is not in it
    assert all(not callable(v) for v in state.values() if not isinstance(v, list))


def test_sampler_splits_global_batches_over_ranks_and_resumes():
    one = ResumableBatchSampler(10, batch_size=4, seed=5)
    r0 = ResumableBatchSampler(10, batch_size=4, seed=5, rank=0, world_size=2)
    r1 = ResumableBatchSampler(10, batch_size=4, seed=5, rank=1, world_size=2)
    full = list(one)
    assert len(full) == 2 and all(len(b) == 4 for b in full)  # last partial batch dropped
    assert [a + b for a, b in zip(r0, r1)] == full
    other = ResumableBatchSampler(10, batch_size=4, seed=5)
    other.set_position(1, 0)
    assert list(other) != full  # new permutation each epoch
    with pytest.raises(MeerError, match="divisible"):
        ResumableBatchSampler(10, batch_size=3, seed=0, world_size=2)
    with pytest.raises(MeerError, match="fewer than one batch"):
        ResumableBatchSampler(3, batch_size=4, seed=0)

    data = [{"clean": torch.tensor([float(i)])} for i in range(10)]
    def stream():
        s = ResumableBatchSampler(10, 4, 5)
        return DataStream(torch.utils.data.DataLoader(data, batch_sampler=s), s)
    a = stream()
    seq = [a.next()["clean"].flatten().tolist() for _ in range(5)]
    b = stream()
    for _ in range(3):
        b.next()
    saved = b.state_dict()
    assert saved == {"epoch": 1, "position": 1}
    c = stream()
    c.load_state_dict(saved)
    assert [c.next()["clean"].flatten().tolist() for _ in range(2)] == seq[3:]


def test_single_process_never_starts_a_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = init_distributed("cpu")
    assert not info.enabled and not torch.distributed.is_initialized()
    p = nn.Parameter(torch.ones(2))
    p.grad = torch.full((2,), 3.0)
    average_gradients([p], info)  # no-op
    assert torch.equal(p.grad, torch.full((2,), 3.0)) and all_true(True, info) and not all_true(False, info)
    if not torch.cuda.is_available():
        with pytest.raises(MeerError, match="no CUDA GPU"):
            init_distributed("cuda")


def test_run_logger_writes_stats_log_and_grids(tmp_path):
    log = RunLogger(tmp_path, tensorboard=True)
    log.info("hello", console=False)
    log.scalars(3, {"loss/l1": 0.5}, prefix="train/")
    path = log.grid(3, [torch.rand(2, 3, 8, 8), torch.rand(2, 1, 8, 8)])
    log.close()
    assert "hello" in (tmp_path / "log.txt").read_text()
    rec = json.loads((tmp_path / "stats.jsonl").read_text().splitlines()[0])
    assert rec["step"] == 3 and rec["train/loss/l1"] == 0.5
    from PIL import Image

    assert Image.open(path).size == (2 * 8 + 3 * 2, 2 * 8 + 3 * 2)
    assert any(p.name.startswith("events.out.tfevents") for p in tmp_path.iterdir())
    off = RunLogger(None)
    off.info("x"), off.scalars(1, {"a": 1.0})
    assert off.grid(1, [torch.rand(1, 3, 4, 4)]) is None
