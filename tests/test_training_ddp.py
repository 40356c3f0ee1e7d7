"""Training on several processes (gloo, CPU): ``torchrun`` on one node and on two "nodes" (two separate
``torchrun`` launches that meet through torchrun's own static rendezvous), resuming on another number
of processes, the per-rank data order, and the data-wait statistics of the loop.

Every multi-process run is compared with one process training the same global batch of 4
(:func:`assert_same_training`). What makes the runs comparable, and what the test config switches off:
* data order and masks do not depend on the process count (global permutation sliced per rank;
  masks and flips drawn for the whole global batch on every rank);
* gradients are averaged over ranks, the region-normalised L1 terms are rebalanced (``balance``);
* BatchNorm statistics are batch statistics: SyncBatchNorm has no CPU kernel, so the test freezes
  BN (``freeze_bn=true``); on CUDA, multi-process runs convert BN to SyncBatchNorm instead;
* the decoupling loss's cross-correlation term is a batch statistic too: ``decouple_decorr=0`` here.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from meer.cli.train import main as train_main
from meer.config import load_config
from meer.training import loop
from meer.training.checkpoint import load_state
from meer.training.config import TrainConfig
from meer.training.sampler import DataStream, ResumableBatchSampler
from meer.utils.errors import MeerError

from test_training_loop import make_identity_folders  # noqa: E402  (tests/ is on sys.path under pytest)

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
LR = 1e-3  # optim.lr_* of tiny.yaml
#: two steps, a checkpoint after each: step 1 from scratch, step 2 after a resume
OVERRIDES = ["total_steps=2", "freeze_bn=true", "loss.decouple_decorr=0", "loss.r1_interval=1",
             "data.val_identities=0", "checkpoint.every=1", "checkpoint.keep_last=2", "log.grid_every=0",
             "data.hflip=true"]
_torchrun = Path(sys.executable).with_name("torchrun")
TORCHRUN = [str(_torchrun)] if _torchrun.is_file() else [sys.executable, "-m", "torch.distributed.run"]


def ckpt(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"ckpt-{step:08d}.pt"


def stats(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "stats.jsonl").read_text().splitlines()]


def assert_same_training(one: dict, two: dict, steps: int = 1) -> None:
    """``one`` and ``two``: the ``task`` states of two checkpoints of the test config at the same step,
    trained on different numbers of processes. The last ``steps`` steps may have started from states that
    differ by float noise (1: both runs started the step from the same state).

    1. the gradients: Adam's first moments (a fixed combination of the clipped, averaged gradients of each
       step) agree to 1e-3 relative;
    2. the parameters: Adam moves an element by about lr * sign(g) whatever the size of ``g``, so elements
       whose gradient is float noise (mathematically zero) may move either way -- at most ``2 * lr`` per step
       and at most one in a thousand of a tensor; every other element agrees to rtol 1e-5 / atol 1e-6;
    3. the steps had real gradients everywhere (equal untouched models would prove nothing)."""
    assert one["modules"].keys() == two["modules"].keys() == {"model", "margin", "decoupling", "d_patch", "d_local"}
    zero_grad_params = 0
    for opt in ("r", "g", "d"):
        sa, sb = one["optimizers"][opt]["state"], two["optimizers"][opt]["state"]
        assert sa.keys() == sb.keys() and len(sa) > 5
        gmax = max(float(v["exp_avg"].norm()) for v in sa.values())
        for i in sa:
            a, b = sa[i]["exp_avg"], sb[i]["exp_avg"]
            if float(a.norm()) < 1e-6 * gmax:
                # mathematically zero (a conv bias right before GroupNorm): float noise on both sides
                zero_grad_params += 1
                assert float(b.norm()) < 1e-6 * gmax
                continue
            rel = float((a - b).norm() / a.norm())
            assert rel < 1e-3, (opt, i, rel)
    assert zero_grad_params <= 6

    grads = {opt: {i: s["exp_avg"] for i, s in one["optimizers"][opt]["state"].items()} for opt in ("r", "g", "d")}
    checked = 0
    for part in one["modules"]:
        for name, a in one["modules"][part].items():
            b = two["modules"][part][name]
            if not a.is_floating_point():
                assert torch.equal(a, b), f"{part}.{name}"
                continue
            close = torch.isclose(a, b, rtol=1e-5, atol=1e-6)
            checked += a.numel()
            if not bool(close.all()):
                assert float((a - b)[~close].abs().max()) <= 2 * LR * steps + 1e-6, f"{part}.{name}"
                assert int((~close).sum()) <= max(8, a.numel() // 1000), f"{part}.{name}"
    assert checked > 10_000
    for opt in ("r", "g", "d"):
        assert max(float(g.abs().max()) for g in grads[opt].values()) > 1e-4, opt


# ------------------------------------------------------------------------------------------------
# launching


def launch_env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_launchers(commands: list[tuple[list[str], Path]], logs: Path, timeout: float = 480) -> None:
    """Start every ``(command, cwd)`` at once (each in its own session), wait for all; on a failure or
    a timeout stop the ones still running (by their process group) and show the logs."""
    logs.mkdir(parents=True, exist_ok=True)
    procs, files = [], []
    for k, (cmd, cwd) in enumerate(commands):
        f = open(logs / f"launcher{k}.log", "w")
        files.append(f)
        procs.append(subprocess.Popen(cmd, cwd=cwd, env=launch_env(), stdout=f, stderr=subprocess.STDOUT,
                                      start_new_session=True))
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            if any(p.poll() not in (None, 0) for p in procs):
                time.sleep(5)  # let the others report the failure, then stop them
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
        for f in files:
            f.close()
    text = "\n".join(f"--- launcher {k} (exit {p.returncode})\n" + (logs / f"launcher{k}.log").read_text()[-2500:]
                     for k, p in enumerate(procs))
    assert all(p.returncode == 0 for p in procs), text


# ------------------------------------------------------------------------------------------------
# the runs (module fixtures: each launch costs seconds)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_identity_folders(tmp_path_factory.mktemp("ddp") / "ids", ids=4, per=3)


def tiny_args(dataset: Path) -> list[str]:
    return ["--config", str(TINY), f"data.roots=[{dataset}]", *OVERRIDES]


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory) -> Path:
    """One process, two steps: ``ckpt-1`` and ``ckpt-2``."""
    runs = tmp_path_factory.mktemp("one")
    assert train_main(tiny_args(dataset) + [f"runs_dir={runs}"]) == 0
    return runs / "00000-tiny"


@pytest.fixture(scope="module")
def two_nodes(dataset, tmp_path_factory) -> tuple[Path, Path]:
    """``torchrun --nnodes 2 --nproc_per_node 1 --node_rank 0|1 --master_addr 127.0.0.1 --master_port P``,
    stopped after step 1. Each node runs in its own folder with the relative ``runs_dir=runs``: rank 0
    broadcasts the run directory as ``runs/00000-tiny``, so a write from rank 1 would land in node 1's folder
    (as on a node without a shared file system). Returns (node 0's run directory, node 1's folder)."""
    base = tmp_path_factory.mktemp("nodes")
    port = free_port()
    commands = []
    for node in (0, 1):
        (base / f"node{node}").mkdir()
        commands.append(([*TORCHRUN, "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(node),
                          "--master_addr", "127.0.0.1", "--master_port", str(port),
                          "-m", "meer.cli.train", *tiny_args(dataset), "runs_dir=runs", "stop_at_step=1"],
                         base / f"node{node}"))
    run_launchers(commands, base / "logs")
    return base / "node0" / "runs" / "00000-tiny", base / "node1"


# ------------------------------------------------------------------------------------------------
# the tests


def test_two_nodes_through_torchrun_rendezvous_match_one_process(two_nodes, reference):
    run, node1 = two_nodes
    assert_same_training(load_state(ckpt(reference, 1))["task"], load_state(ckpt(run, 1))["task"])
    # rank 0 is the only writer: node 1's folder stays empty, node 0 holds one run with each file once
    assert sorted(p.name for p in node1.rglob("*")) == []
    assert sorted(p.name for p in run.parent.iterdir()) == ["00000-tiny"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["ckpt-00000001.pt"]
    assert [r["step"] for r in stats(run)] == [1]
    assert (run / "log.txt").read_text().count("run directory runs/00000-tiny") == 1
    assert load_state(ckpt(run, 1))["world_size"] == 2


def test_two_process_checkpoint_resumes_on_one_process(two_nodes, reference, dataset, tmp_path):
    """2 -> 1: step 2 on one process from the two-node checkpoint lands where the one-process run does."""
    run = tmp_path / "run"
    shutil.copytree(two_nodes[0], run)
    cfg = load_config(TrainConfig, TINY, [f"data.roots=[{dataset}]", *OVERRIDES, f"runs_dir={tmp_path}"])
    result = loop.train(cfg, resume=run)
    assert result.step == 2 and result.run_dir == run
    assert_same_training(load_state(ckpt(reference, 2))["task"], load_state(ckpt(run, 2))["task"], steps=2)
    assert "checkpoint written by 2 process(es), resumed on 1" in (run / "log.txt").read_text()
    assert [r["step"] for r in stats(run)] == [1, 2]


def test_one_process_checkpoint_resumes_on_two_processes(reference, tmp_path):
    """1 -> 2 (``torchrun --standalone --nproc_per_node 2``): step 2 split 2 + 2 over two processes,
    from the one-process checkpoint of step 1, lands on the one-process run's step 2."""
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    ckpt(run, 2).unlink()
    (run / "meer_inference.pt").unlink()
    run_launchers([([*TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "meer.cli.train", "--resume", str(run)],
                    tmp_path)], tmp_path / "logs")
    assert_same_training(load_state(ckpt(reference, 2))["task"], load_state(ckpt(run, 2))["task"])
    assert "checkpoint written by 1 process(es), resumed on 2" in (run / "log.txt").read_text()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["ckpt-00000001.pt", "ckpt-00000002.pt"]


def test_resume_with_another_global_batch_is_one_line(reference, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    assert train_main(["--resume", str(run), "data.batch_size=8"]) != 0
    err = capsys.readouterr().err.strip()
    assert "written with global batch 4, this config has 8" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1


@pytest.mark.parametrize("world", [1, 2, 3, 4, 8])
def test_sampler_sees_every_sample_at_most_once_and_drops_the_remainder(world):
    """The remainder rule: per epoch ``N // B`` steps of global batch ``B``; those ``N // B * B`` samples are
    seen exactly once across all ranks, the last ``N % B`` of the epoch's permutation are dropped (not
    padded), every rank takes ``B / w`` per step and runs the same number of steps; the batches do not
    depend on ``w``, also from a resumed position."""
    for per_rank in (1, 2, 3):
        batch = world * per_rank
        for n in sorted({batch, batch + 1, 2 * batch + 1, 5 * batch - 1, 37, 101}):
            if n < batch:
                continue
            dropped_sets = set()
            for epoch in range(4):
                perm = ResumableBatchSampler(n, 1, seed=7)  # batch 1: the epoch's whole permutation in order
                perm.set_position(epoch, 0)
                order = [b[0] for b in perm]
                one = ResumableBatchSampler(n, batch, seed=7)
                one.set_position(epoch, 0)
                ranks = [ResumableBatchSampler(n, batch, seed=7, rank=r, world_size=world) for r in range(world)]
                for s in ranks:
                    s.set_position(epoch, 0)
                per = [list(s) for s in ranks]
                steps = n // batch
                assert [len(p) for p in per] == [len(s) for s in ranks] == [steps] * world
                assert all(len(b) == per_rank for p in per for b in p)
                seen = [i for p in per for b in p for i in b]
                assert len(seen) == len(set(seen)) == steps * batch  # nothing twice
                assert set(seen) | set(order[steps * batch:]) == set(range(n))  # the rest: the permutation's tail
                dropped_sets.add(frozenset(order[steps * batch:]))
                merged = [sum((per[r][b] for r in range(world)), []) for b in range(steps)]
                assert merged == list(one) == [order[b * batch:(b + 1) * batch] for b in range(steps)]
                for s in ranks:  # resumed one step in: the same global batches continue
                    s.set_position(epoch, 1)
                tails = [list(s) for s in ranks]
                assert [sum((t[b] for t in tails), []) for b in range(steps - 1)] == merged[1:]
            if n % batch:
                assert len(dropped_sets) > 1  # a fresh permutation drops other samples each epoch
    if world > 1:
        with pytest.raises(MeerError, match="divisible"):
            ResumableBatchSampler(100, world + 1, seed=0, world_size=world)


def test_data_wait_is_logged_per_step_and_as_a_share(dataset, reference, tmp_path, monkeypatch):
    """``train/data_wait_s`` (seconds per step in ``stream.next()``) and ``train/data_wait_share`` (its share
    of the step's time): on every logged step, the share in [0, 1], the wait between 0 and the step's wall
    time (global batch / throughput); a loader made 0.3 s slower shows up in both."""
    def check(rec):
        assert 0.0 <= rec["train/data_wait_share"] <= 1.0
        assert 0.0 <= rec["train/data_wait_s"] <= 4 / rec["train/throughput_img_s"]  # global batch 4, logged every step

    for rec in stats(reference):
        check(rec)
    real_next = DataStream.next

    def slow_next(self):
        time.sleep(0.3)
        return real_next(self)

    monkeypatch.setattr(DataStream, "next", slow_next)
    cfg = load_config(TrainConfig, TINY, [f"data.roots=[{dataset}]", *OVERRIDES, f"runs_dir={tmp_path}"])
    result = loop.train(cfg, run_dir=tmp_path / "slow")
    slow = stats(result.run_dir)
    assert [r["step"] for r in slow] == [1, 2]
    for rec, ref in zip(slow, stats(reference)):
        check(rec)
        assert rec["train/data_wait_s"] >= 0.3 and rec["train/data_wait_share"] > ref["train/data_wait_share"]
    assert "data_wait=" in (result.run_dir / "log.txt").read_text()
