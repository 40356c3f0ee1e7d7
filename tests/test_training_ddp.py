"""`torchrun --nproc_per_node 2` on gloo (CPU): one step of global batch 4 split 2 + 2 lands on the
same weights as one process with batch 4.

What makes the two runs comparable, and what the test config switches off:
* data order and masks do not depend on the process count (global permutation sliced per rank;
  masks and flips drawn for the whole global batch on every rank);
* gradients are averaged over ranks, the region-normalised L1 terms are rebalanced (``balance``);
* BatchNorm statistics are batch statistics: SyncBatchNorm has no CPU kernel, so the test freezes
  BN (``freeze_bn=true``); on CUDA, multi-process runs convert BN to SyncBatchNorm instead;
* the decoupling loss's cross-correlation term is a batch statistic too: ``decouple_decorr=0`` here.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from meer.cli.train import main as train_main
from meer.training.checkpoint import load_state

from test_training_loop import make_identity_folders  # noqa: E402  (tests/ is on sys.path under pytest)

REPO = Path(__file__).resolve().parents[1]
OVERRIDES = ["total_steps=1", "freeze_bn=true", "loss.decouple_decorr=0", "loss.r1_interval=1",
             "data.val_identities=0", "checkpoint.every=1", "log.grid_every=0", "data.hflip=true"]


def test_two_process_gloo_step_matches_one_process(tmp_path):
    data = make_identity_folders(tmp_path / "ids", ids=4, per=3)
    args = ["--config", str(REPO / "configs" / "tiny.yaml"), f"data.roots=[{data}]", *OVERRIDES]

    assert train_main(args + [f"runs_dir={tmp_path / 'one'}"]) == 0

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "meer.cli.train", *args, f"runs_dir={tmp_path / 'two'}"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]

    one = load_state(tmp_path / "one" / "00000-tiny" / "checkpoints" / "ckpt-00000001.pt")["task"]
    two = load_state(tmp_path / "two" / "00000-tiny" / "checkpoints" / "ckpt-00000001.pt")["task"]
    assert one["modules"].keys() == two["modules"].keys() == {"model", "margin", "decoupling", "d_patch", "d_local"}

    # 1) the gradients (Adam's first moment after one step is 0.1 * the clipped, averaged gradient)
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

    # 2) the parameters after the step. Adam's first step is lr * g / (|g| + eps) ~ lr * sign(g), so
    #    elements whose gradient is float noise may move either way; every other element must agree.
    grads = {}
    for opt in ("r", "g", "d"):
        st = one["optimizers"][opt]
        for group in st["param_groups"]:
            for idx in group["params"]:
                grads.setdefault(opt, {})[idx] = st["state"][idx]["exp_avg"]
    gmax = max(float(g.abs().max()) for d in grads.values() for g in d.values())
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
                # allowed only where the gradient is numerically zero: |diff| bounded by 2 * lr
                assert float((a - b)[~close].abs().max()) <= 2 * 1e-3 + 1e-6, f"{part}.{name}"
                assert int((~close).sum()) <= max(8, a.numel() // 1000), f"{part}.{name}"
    assert checked > 10_000
    # the step had real gradients everywhere (equal untouched models would prove nothing)
    for opt in ("r", "g", "d"):
        assert max(float(g.abs().max()) for g in grads[opt].values()) > 1e-4, opt
