"""MaskMTL: per-task losses vs hand-computed values, task weighting, and heads that learn on a tiny set."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from meer.losses.multitask import MultiTaskLoss, task_loss
from meer.masking.batch import MaskAugment
from meer.models.maskmtl import MaskMTL, MaskMTLConfig, TaskSpec
from meer.data.multitask import COLOR_NAMES, color_class, mask_targets
from meer.training.loop import train
from meer.training.tasks.maskmtl import batch_metrics, default_tasks, maskmtl_step
from meer.config import load_config
from meer.training.config import TrainConfig
from meer.utils.errors import MeerError

REPO = Path(__file__).resolve().parents[1]
from meer.utils.images import write_image

pytestmark = pytest.mark.usefixtures("one_thread")


def test_classification_loss_skips_unlabelled_rows():
    spec = TaskSpec("gender", num_classes=2)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, -5.0]])
    loss, n = task_loss(spec, logits, torch.tensor([0, -1, 1]))
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(10))) / 2
    assert n == 2 and loss.item() == pytest.approx(expected, rel=1e-5)
    zero, n0 = task_loss(spec, logits, torch.tensor([-1, -1, -1]))
    assert n0 == 0 and zero.item() == 0.0
    with pytest.raises(MeerError, match="label 2 >= num_classes 2"):
        task_loss(spec, logits, torch.tensor([2, 0, 0]))


def test_regression_loss_scale_and_nan():
    spec = TaskSpec("age", kind="regression", scale=50.0)
    pred = torch.tensor([0.5, 0.0, 1.0])  # 25, 0, 50 years
    loss, n = task_loss(spec, pred, torch.tensor([30.0, math.nan, 150.0]))
    # |0.5 - 0.6| = 0.1 -> 0.5 * 0.01 ; |1 - 3| = 2 -> 2 - 0.5
    assert n == 2 and loss.item() == pytest.approx((0.005 + 1.5) / 2)


def test_fixed_and_uncertainty_weighting():
    tasks = [TaskSpec("a", num_classes=2, weight=2.0), TaskSpec("r", kind="regression"),
             TaskSpec("off", num_classes=2, weight=0.0)]
    preds = {"a": torch.tensor([[0.0, 0.0]]), "r": torch.tensor([3.0]), "off": torch.tensor([[9.0, 0.0]])}
    targets = {"a": torch.tensor([1]), "r": torch.tensor([1.0]), "off": torch.tensor([1])}
    la, lr = math.log(2), 2 - 0.5
    total, parts = MultiTaskLoss(tasks, "fixed")(preds, targets)
    assert total.item() == pytest.approx(2 * la + lr) and set(parts) == {"a", "r"}
    unc = MultiTaskLoss(tasks, "uncertainty")
    with torch.no_grad():
        unc.log_vars["a"].fill_(0.5)
        unc.log_vars["r"].fill_(-1.0)
    total, _ = unc(preds, targets)
    expected = math.exp(-0.5) * la + 0.25 + 0.5 * math.exp(1.0) * lr - 0.5
    assert total.item() == pytest.approx(expected, rel=1e-5)
    total.backward()
    # d/ds (exp(-s) L + s/2) = -exp(-s) L + 1/2
    assert unc.log_vars["a"].grad.item() == pytest.approx(-math.exp(-0.5) * la + 0.5, rel=1e-5)
    with pytest.raises(MeerError, match="no task in this batch has a label"):
        MultiTaskLoss(tasks)({"a": preds["a"]}, {"a": torch.tensor([-1])})


def test_color_classes_and_mask_targets():
    rgb = torch.tensor([[0.95, 0.95, 0.95], [0.5, 0.5, 0.52], [0.05, 0.05, 0.1], [0.9, 0.1, 0.1],
                        [0.2, 0.8, 0.2], [0.2, 0.4, 0.9], [0.8, 0.2, 0.7], [0.95, 0.05, 0.2]])
    names = [COLOR_NAMES[i] for i in color_class(rgb)]
    assert names == ["white", "gray", "black", "red_orange", "yellow_green", "cyan_blue", "purple_pink", "red_orange"]
    info = {"kind": torch.tensor([2, -1]), "coverage": torch.tensor([0, -1]), "color": rgb[:2] * torch.tensor([[1.0], [0.0]])}
    t = mask_targets(info)
    assert t["masked"].tolist() == [1, 0] and t["mask_color"].tolist() == [0, -1] and t["mask_kind"].tolist() == [2, -1]


def test_model_outputs_and_predict_units():
    tasks = [TaskSpec("g", num_classes=3), TaskSpec("age", kind="regression", scale=50.0)]
    model = MaskMTL(MaskMTLConfig(trunk="small", width=4, tasks=tasks)).eval()
    out = model(torch.rand(2, 3, 32, 32))
    assert out["g"].shape == (2, 3) and out["age"].shape == (2,)
    pred = model.predict(torch.rand(2, 3, 32, 32))
    assert pred["g"].dtype == torch.long
    with torch.no_grad():
        assert torch.allclose(pred["age"], model(torch.rand(2, 3, 32, 32))["age"] * 0 + pred["age"])
    with pytest.raises(MeerError, match="unique"):
        MaskMTL(MaskMTLConfig(trunk="small", tasks=[tasks[0], tasks[0]]))
    assert {t.name for t in default_tasks(True, ["Smiling"], "group")} == {
        "mask_kind", "mask_coverage", "mask_color", "masked", "gender", "race", "age_group", "attr_Smiling"}


def _faces(n, size, seed):
    """Smooth random 'faces' (low-frequency colour fields) so the mask is the thing to recognise."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 4, 4, generator=g) * 0.6 + 0.2
    return F.interpolate(base, size=(size, size), mode="bilinear", align_corners=False)


def test_heads_learn_mask_kind_on_tiny_generated_set():
    torch.manual_seed(0)
    tasks = [TaskSpec("mask_kind", num_classes=len(MaskAugment.KINDS)), TaskSpec("masked", num_classes=2)]
    model = MaskMTL(MaskMTLConfig(trunk="small", width=8, dropout=0.0, tasks=tasks))
    loss_fn = MultiTaskLoss(tasks, "fixed")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    masking = MaskAugment(p=0.8)
    # one masking call per pool (the renderer is the slow part); the step then runs on the pool
    pool, _, info = masking(_faces(240, 40, seed=1), None, generator=torch.Generator().manual_seed(0))
    pool_t = mask_targets(info)
    test, _, test_info = masking(_faces(80, 40, seed=2), None, generator=torch.Generator().manual_seed(1))
    test_batch = {"clean": test, **mask_targets(test_info)}

    def accuracy():
        model.eval()
        with torch.no_grad():
            _, _, preds, targets = maskmtl_step(test_batch, model, loss_fn, None)
        m = batch_metrics(model, preds, targets)
        return m["mask_kind"][0] / m["mask_kind"][1]

    before = accuracy()
    gen = torch.Generator().manual_seed(0)
    losses = []
    for step in range(80):
        model.train()
        idx = torch.randperm(240, generator=gen)[:24]
        batch = {"clean": pool[idx], **{k: v[idx] for k, v in pool_t.items()}}
        total, parts, _, _ = maskmtl_step(batch, model, loss_fn, None)
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(total.item())
    after = accuracy()
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) * 0.8
    assert after >= 0.5 and after > before + 0.2, (before, after)


def _utk_tree(root, n=24):
    if root.is_dir():
        return root.parent / "test.txt"
    rng = np.random.default_rng(0)
    for k in range(n):
        age, gender, race = int(rng.integers(1, 90)), k % 2, int(rng.integers(0, 5))
        write_image(root / f"{age}_{gender}_{race}_{k:05d}.jpg.chip.jpg",
                    (rng.random((4, 4, 3)) * 255).astype(np.uint8).repeat(10, 0).repeat(10, 1))
    write_image(root / "7_1_2017.jpg.chip.jpg", np.zeros((40, 40, 3), np.uint8))  # malformed
    (root.parent / "test.txt").write_text(f"{sorted(p.name for p in root.iterdir())[0]}\n")
    return root.parent / "test.txt"


def _cfg(tmp_path, steps=4, stop=None):
    test = _utk_tree(tmp_path / "utk")
    overrides = [f"maskmtl.data.utkface_root={tmp_path / 'utk'}", f"maskmtl.data.utkface_test_list={test}",
                  "maskmtl.data.image_size=32", "maskmtl.data.batch_size=6", "maskmtl.data.num_workers=0",
                  "maskmtl.model.trunk=small", "maskmtl.model.width=4", f"total_steps={steps}", "device=cpu",
                  f"runs_dir={tmp_path / 'runs'}", "log.every=2", "log.progress=false", "checkpoint.every=2"]
    if stop is not None:
        overrides.append(f"stop_at_step={stop}")
    return load_config(TrainConfig, REPO / "configs" / "maskmtl.yaml", overrides)


def test_train_writes_run_and_resumes_identically(tmp_path):
    full = train(_cfg(tmp_path / "a", steps=4), run_dir=tmp_path / "a" / "run")
    assert full.step == 4 and full.last_checkpoint.is_file()
    assert (tmp_path / "a" / "run" / "stats.jsonl").is_file() and (tmp_path / "a" / "run" / "config.yaml").is_file()
    assert "acc/mask_kind" in full.stats and "mae/age" in full.stats
    part = train(_cfg(tmp_path / "b", steps=4, stop=2), run_dir=tmp_path / "b" / "run")
    assert part.step == 2
    cfg = _cfg(tmp_path / "b", steps=4)
    resumed = train(cfg, resume=tmp_path / "b" / "run")
    assert resumed.step == 4
    a = torch.load(full.last_checkpoint, weights_only=False)["task"]["model"]
    b = torch.load(resumed.last_checkpoint, weights_only=False)["task"]["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the one loop resumes exactly


def test_meer_train_cli_runs_maskmtl(tmp_path, capsys):
    from meer.cli.train import main

    cfg = _cfg(tmp_path, steps=2)
    from meer.config import dump_config

    dump_config(cfg, tmp_path / "c.yaml")
    assert main(["--config", str(tmp_path / "c.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "maskmtl: 23 training faces" in out and "malformed" in out


def test_maskmtl_eval_reports_masked_vs_unmasked(tmp_path, capsys):
    from meer.cli.maskmtl_eval import main

    res = train(_cfg(tmp_path, steps=2), run_dir=tmp_path / "run")
    assert main(["--checkpoint", str(res.last_checkpoint), "--json", str(tmp_path / "r.json"), "--batch-size", "4"]) == 0
    out = capsys.readouterr().out
    assert "| gender | acc |" in out and "| age | mae (years) |" in out and "1 test faces" in out
    import json

    r = json.loads((tmp_path / "r.json").read_text())
    assert r["mask_kind"]["n_unmasked"] == 0 and r["mask_kind"]["n_masked"] == 1
    assert r["masked"]["n_unmasked"] == 1 and r["age"]["unmasked"] >= 0
    assert main(["--checkpoint", str(tmp_path / "nope.pt")]) == 2


def test_evaluate_maskmtl_counts_exactly():
    """A stub model whose answers are known: accuracy and MAE must match a hand count."""
    from meer.evaluation.maskmtl_eval import evaluate_maskmtl

    tasks = [TaskSpec("gender", num_classes=2), TaskSpec("age", kind="regression", scale=10.0),
             TaskSpec("masked", num_classes=2)]
    model = MaskMTL(MaskMTLConfig(trunk="small", width=4, tasks=tasks))

    def forward(images):  # always "gender 1", age 2.0 * 10 = 20 years, "masked" when the lower half is not gray
        b = images.shape[0]
        lower = images[:, :, images.shape[2] // 2:]
        masked_guess = ((lower - 0.5).abs().mean(dim=(1, 2, 3)) > 0.01).long()
        return {"gender": torch.tensor([[0.0, 1.0]]).repeat(b, 1), "age": torch.full((b,), 2.0),
                "masked": F.one_hot(masked_guess, 2).float()}

    model.forward = forward
    batch = {"clean": torch.full((4, 3, 32, 32), 0.5), "gender": torch.tensor([1, 0, 1, -1]),
             "age": torch.tensor([25.0, 20.0, float("nan"), 10.0])}
    r = evaluate_maskmtl(model, [batch], progress=False)
    assert r["gender"]["unmasked"] == pytest.approx(2 / 3) and r["gender"]["n_unmasked"] == 3
    assert r["age"]["unmasked"] == pytest.approx((5 + 0 + 10) / 3)
    assert r["masked"]["unmasked"] == 1.0 and r["masked"]["masked"] == 1.0
