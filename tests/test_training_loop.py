"""meer-train end to end on configs/tiny.yaml and a generated identity-folder dataset.

Covers: dry run, bad data / bad config messages, run-directory contents, exact resume, NaN handling,
the fp16 skip path, ablation switches, gradient routing per phase, a tiny overfit, bf16 on CPU.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from meer.cli.train import main as train_main
from meer.config import ConfigError, load_config
from meer.data.identity_folders import IdentityFolderDataset
from meer.masking.batch import MaskAugment
from meer.training import meer_task, phases
from meer.training.checkpoint import load_state
from meer.training.config import TrainConfig
from meer.training.data import augment
from meer.training.distributed import DistInfo
from meer.training.logging import without_wall_clock
from meer.training.loop import train
from meer.utils.errors import MeerError

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"


def make_identity_folders(root: Path, ids: int = 6, per: int = 5, size: int = 112, seed: int = 0) -> Path:
    """Synthetic 'faces': each identity a base colour and stripe frequency, each image a phase + noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(ids):
        base = rng.uniform(40, 215, size=3)
        folder = root / f"id{i:02d}"
        folder.mkdir(parents=True)
        for j in range(per):
            img = base + 30 * np.sin(xx / (4 + 2 * i) + j)[..., None] + 20 * np.cos(yy / 9.0)[..., None]
            img = img + rng.normal(0, 6, (size, size, 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"{j}.png")
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_identity_folders(tmp_path_factory.mktemp("faces") / "ids")


def tiny(dataset: Path, tmp_path: Path, *overrides: str) -> TrainConfig:
    return load_config(TrainConfig, TINY, [f"data.roots=[{dataset}]", f"runs_dir={tmp_path / 'runs'}", *overrides])


def all_tensors(obj, prefix=""):
    """Flatten nested dicts/lists of a state into {path: tensor or plain value}."""
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(all_tensors(v, f"{prefix}/{k}"))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(all_tensors(v, f"{prefix}/{i}"))
    else:
        out[prefix] = obj
    return out


def assert_same_task_state(ckpt_a, ckpt_b) -> dict:
    """The task states of two training checkpoints hold the same keys and bit-identical tensors; returns the first's."""
    ta = all_tensors(load_state(ckpt_a)["task"])
    tb = all_tensors(load_state(ckpt_b)["task"])
    assert ta.keys() == tb.keys()
    for k in ta:
        if isinstance(ta[k], torch.Tensor):
            assert torch.equal(ta[k], tb[k]), k
    return ta


# ---------------------------------------------------------------------------------------------------


def test_dry_run_reports_and_creates_nothing(dataset, tmp_path, capsys):
    code = train_main(["--config", str(TINY), f"data.roots=[{dataset}]", f"runs_dir={tmp_path / 'runs'}", "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert "parameters: recognizer" in out and "generator" in out and "d_patch" in out
    assert f"run directory: {tmp_path / 'runs' / '00000-tiny'}" in out
    assert "train: 20 images of 4 identities" in out and "2 held-out identities" in out
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("setup, message", [
    (lambda d, t: [f"data.roots=[{t / 'nowhere'}]"], "data root not found"),
    (lambda d, t: [f"data.roots=[{d}]", f"data.eval_identities=[{t / 'missing.txt'}]"], "identity list not found"),
    (lambda d, t: ["data.roots=[]"], "data.roots is empty"),
    (lambda d, t: [f"data.roots=[{d}]", "loss.w_l1=-1"], "loss.w_l1 must be >= 0"),
    (lambda d, t: [f"data.roots=[{d}]", "optim.lr_gg=1"], "did you mean 'optim.lr_g'"),
    (lambda d, t: [f"data.roots=[{d}]", "amp=fp16"], "fp16 needs a CUDA device"),
    (lambda d, t: [f"data.roots=[{d}]", "model.infer_threshold=2"], "infer_threshold"),
])
def test_bad_config_or_data_is_one_line_before_step_one(dataset, tmp_path, capsys, setup, message):
    code = train_main(["--config", str(TINY), f"runs_dir={tmp_path / 'runs'}", *setup(dataset, tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("meer-train: error:") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()  # stopped before a run directory was made


def test_empty_identity_folder_stops_before_step_one(dataset, tmp_path, capsys):
    root = make_identity_folders(tmp_path / "ids", ids=3, per=3)
    (root / "empty_person").mkdir()
    code = train_main(["--config", str(TINY), f"data.roots=[{root}]", f"runs_dir={tmp_path / 'runs'}"])
    err = capsys.readouterr().err
    assert code == 2 and "empty_person" in err and len(err.strip().splitlines()) == 1


def test_run_directory_holds_everything(dataset, tmp_path):
    result = train(tiny(dataset, tmp_path))
    run = result.run_dir
    assert run.name == "00000-tiny" and result.step == 6
    assert (run / "config.yaml").is_file() and load_config(TrainConfig, run / "config.yaml").model.enc_width == 4
    records = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    train_recs = [r for r in records if "train/loss/total" in r]
    assert [r["step"] for r in train_recs] == [1, 2, 3, 4, 5, 6]
    keys = set().union(*train_recs)
    for term in ("id_masked", "id_clean", "occ", "decouple", "l1_masked", "adv_patch", "adv_local", "id_preserve",
                 "id_restored", "d_patch", "d_local", "r1"):
        assert f"train/loss/{term}" in keys, term
    for k in ("train/grad_norm/r", "train/grad_norm/g", "train/grad_norm/d", "train/lr/r", "train/throughput_img_s"):
        assert k in keys
    val = [r for r in records if "val/verify_acc" in r]
    assert [r["step"] for r in val] == [3, 6]
    for k in ("val/mask_iou", "val/psnr_masked", "val/ssim_masked", "val/verify_auc"):
        assert math.isfinite(val[-1][k])
    assert sorted(p.name for p in (run / "grids").iterdir()) == ["grid-00000003.png", "grid-00000006.png"]
    w, h = Image.open(run / "grids" / "grid-00000006.png").size
    assert (w, h) == (2 * 64 + 3 * 2, 4 * 64 + 5 * 2)  # 2 images x 4 rows
    assert any(p.name.startswith("events.out.tfevents") for p in run.iterdir())
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "ckpt-00000003.pt", "ckpt-00000006.pt"]
    assert "step 6/6" in (run / "log.txt").read_text()
    from meer.models.checkpoint import load_meer

    model, meta = load_meer(result.export)
    assert meta["step"] == 6
    model.eval()
    x = torch.rand(1, 3, 64, 64)
    restored, occ = model.restore(x)
    assert restored.shape == x.shape and occ.shape == (1, 1, 64, 64)


def test_resume_is_bit_identical(dataset, tmp_path):
    full = train(tiny(dataset, tmp_path / "a"))
    part = train(tiny(dataset, tmp_path / "b", "stop_at_step=3"))
    assert part.step == 3 and part.export is not None  # an early stop exports its EMA weights too
    assert sorted(p.name for p in (part.run_dir / "checkpoints").iterdir()) == ["best.pt", "ckpt-00000003.pt"]
    cfg = load_config(TrainConfig, part.run_dir / "config.yaml", ["stop_at_step=null"])
    resumed = train(cfg, resume=part.run_dir)
    assert resumed.run_dir == part.run_dir and resumed.step == 6
    a = load_state(full.last_checkpoint)
    b = load_state(resumed.last_checkpoint)
    ta, tb = all_tensors(a["task"]), all_tensors(b["task"])
    assert ta.keys() == tb.keys() and len(ta) > 50
    for k in ta:
        if isinstance(ta[k], torch.Tensor):
            assert torch.equal(ta[k], tb[k]), k
        else:
            assert ta[k] == tb[k], k
    assert a["data"] == b["data"]
    for name in ("torch",):
        assert torch.equal(a["rng"][name], b["rng"][name])
    assert torch.equal(a["rng"]["generators"]["augment"], b["rng"]["generators"]["augment"])
    stats_a = [json.loads(x) for x in (full.run_dir / "stats.jsonl").read_text().splitlines()]
    stats_b = [json.loads(x) for x in (part.run_dir / "stats.jsonl").read_text().splitlines()]
    strip = lambda recs: [without_wall_clock(r) for r in recs]
    assert strip(stats_a) == strip(stats_b)  # every logged loss of steps 1..6, validation included


def test_nan_loss_stops_and_keeps_last_good_checkpoint(dataset, tmp_path, monkeypatch):
    real = phases.occlusion_loss
    calls = {"n": 0}

    def poisoned(logits, mask):
        calls["n"] += 1
        value = real(logits, mask)
        return value * float("nan") if calls["n"] == 5 else value

    monkeypatch.setattr(phases, "occlusion_loss", poisoned)
    with pytest.raises(MeerError, match=r"non-finite loss at step 5 \(occ\).*last good checkpoint: .*ckpt-00000003.pt"):
        train(tiny(dataset, tmp_path))
    run = tmp_path / "runs" / "00000-tiny"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "ckpt-00000003.pt"]
    assert load_state(run / "checkpoints" / "ckpt-00000003.pt")["step"] == 3
    assert "non-finite loss at step 5" in (run / "log.txt").read_text()


def _task_and_batch(dataset, tmp_path, *overrides, batch_size=4):
    """A task built from tiny.yaml and one masked batch of the generated faces (one per identity)."""
    cfg = tiny(dataset, tmp_path, *overrides)
    torch.manual_seed(0)
    task = meer_task.build(cfg, num_classes=4, num_mask_kinds=len(MaskAugment.KINDS), dist=DistInfo())
    ds = IdentityFolderDataset(dataset, image_size=cfg.model.image_size)
    clean = torch.stack([ds[i * 5]["clean"] for i in range(batch_size)])
    g = torch.Generator().manual_seed(0)
    clean, masked, mask, kind, _ = augment(clean, MaskAugment(), g, 0, 1, hflip=False)
    return cfg, task, phases.Batch(clean=clean, masked=masked, mask=mask,
                                   labels=torch.arange(batch_size) % 4, kind=kind)


def test_fp16_skips_non_finite_step_instead_of_stopping(dataset, tmp_path, monkeypatch):
    cfg, task, batch = _task_and_batch(dataset, tmp_path)
    task.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)  # the fp16 path, exercised on CPU
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    real = phases.occlusion_loss
    monkeypatch.setattr(phases, "occlusion_loss", lambda z, m: real(z, m) * float("inf"))
    stats = task.train_step(batch, step=1, nimg=4)
    assert stats["skipped"] == 1.0 and stats["amp_scale"] == 2.0**7
    after = task.model.state_dict()
    for name, p in task.model.named_parameters():
        assert torch.equal(before[name], after[name]), name  # neither R nor G moved
    monkeypatch.setattr(phases, "occlusion_loss", real)
    stats = task.train_step(batch, step=2, nimg=8)
    assert stats["skipped"] == 0.0
    assert not torch.equal(before["generator." + next(n for n, _ in task.model.generator.named_parameters())],
                           task.model.state_dict()["generator." + next(n for n, _ in task.model.generator.named_parameters())])


def _grads(params):
    return sum(float(p.grad.abs().sum()) for p in params if p.grad is not None)


def test_each_phase_reaches_only_its_parts(dataset, tmp_path):
    cfg, task, batch = _task_and_batch(dataset, tmp_path)
    model = task.model
    enc = list(model.encoder.parameters())
    gen = list(model.generator_parameters())
    d_params = task.params_d

    def run(select, terms_fn):
        for p in list(model.parameters()) + d_params + list(task.margin.parameters()):
            p.grad = None
        for d in (task.d_patch, task.d_local):
            d.requires_grad_(False)
        fwd = phases.forward(model, batch, cfg.loss)
        terms = terms_fn(fwd)
        sum(terms[k] for k in select).backward()

    rec = lambda fwd: phases.recognizer_phase(fwd, batch, task.margin, task.decoupling, cfg.loss)
    gph = lambda fwd: phases.g_phase(fwd, batch, task.margin, task.recon, task.d_patch, task.d_local, cfg.loss)
    run(["id_masked"], rec)
    assert _grads(enc) > 0 and _grads(gen) == 0 and _grads(task.margin.parameters()) > 0
    run(["occ"], rec)
    assert _grads(model.decoupling.parameters()) > 0 and _grads(gen) == 0 and _grads(model.head.parameters()) == 0
    run(["decouple"], rec)
    assert _grads(task.decoupling.parameters()) > 0 and _grads(gen) == 0
    run(["l1_masked"], gph)
    assert _grads(gen) > 0 and _grads(enc) > 0 and _grads(model.head.parameters()) == 0
    run(["adv_patch", "adv_local"], gph)
    assert _grads(gen) > 0 and _grads(d_params) == 0  # D frozen in the G phase
    run(["id_preserve"], gph)
    assert _grads(gen) > 0 and _grads(model.head.parameters()) > 0
    # D phase: only the discriminators
    for p in list(model.parameters()) + d_params:
        p.grad = None
    for d in (task.d_patch, task.d_local):
        d.requires_grad_(True)
    fwd = phases.forward(model, batch, cfg.loss)
    d_terms = phases.d_phase(batch.clean, fwd.out.restored, batch.mask, task.d_patch, task.d_local, cfg.loss,
                             do_r1=True, autocast=task.autocast)
    assert set(d_terms) == {"d_patch", "d_local", "r1"} and float(d_terms["r1"].detach()) > 0
    sum(d_terms.values()).backward()
    assert _grads(d_params) > 0 and _grads(model.parameters()) == 0


@pytest.mark.parametrize("switch, reaches_gen, reaches_head", [
    ("model.id_grad_to_recognizer=false", True, False),
    ("model.id_grad_to_generator=false", False, True),
])
def test_id_preserving_gradient_switches(dataset, tmp_path, switch, reaches_gen, reaches_head):
    cfg, task, batch = _task_and_batch(dataset, tmp_path, switch)
    fwd = phases.forward(task.model, batch, cfg.loss)
    terms = phases.g_phase(fwd, batch, task.margin, task.recon, None, None, cfg.loss)
    terms["id_preserve"].backward()
    assert (_grads(task.model.generator_parameters()) > 0) == reaches_gen
    assert (_grads(task.model.head.parameters()) > 0) == reaches_head


def test_ablation_switches_remove_parts(dataset, tmp_path):
    cfg, task, batch = _task_and_batch(dataset, tmp_path, "loss.w_adv_patch=0", "loss.w_adv_local=0",
                                       "loss.w_decouple=0", "loss.w_id_preserve=0", "loss.w_id_restored=0",
                                       "model.gen_grad_to_encoder=false")
    assert task.d_patch is None and task.d_local is None and task.opt_d is None and task.decoupling is None
    assert set(task.param_counts()) == {"recognizer", "generator", "margin_head"}
    stats = task.train_step(batch, step=1, nimg=4)
    losses = {k.split("/", 1)[1] for k in stats if k.startswith("loss/")}
    assert losses == {"id_masked", "id_clean", "occ", "l1_masked", "l1_visible", "total"}
    for p in task.model.encoder.parameters():
        p.grad = None
    fwd = phases.forward(task.model, batch, cfg.loss)
    phases.g_phase(fwd, batch, task.margin, task.recon, None, None, cfg.loss)["l1_masked"].backward()
    assert _grads(task.model.encoder.parameters()) == 0 and _grads(task.model.generator_parameters()) > 0


def test_tiny_overfit_total_and_masked_l1_fall(dataset, tmp_path):
    # composite=gt: a fixed region, so the masked L1 of step 1 and step 20 measure the same pixels
    cfg, task, batch = _task_and_batch(dataset, tmp_path, "optim.lr_g=1e-2", "optim.lr_r=3e-3",
                                       "optim.schedule=constant", "optim.warmup_steps=0", "total_steps=20",
                                       "loss.composite=gt")
    hist = [task.train_step(batch, step=s, nimg=4 * s) for s in range(1, 21)]
    first = lambda k: np.mean([h[k] for h in hist[:3]])
    last = lambda k: np.mean([h[k] for h in hist[-3:]])
    assert last("loss/total") < 0.2 * first("loss/total")  # ~22 -> ~1.2: margin losses on 4 faces
    assert last("loss/l1_masked") < 0.7 * first("loss/l1_masked")  # ~0.18 -> ~0.09
    assert last("loss/occ") < first("loss/occ")


def test_bf16_autocast_step_on_cpu(dataset, tmp_path):
    cfg, task, batch = _task_and_batch(dataset, tmp_path, "amp=bf16")
    stats = task.train_step(batch, step=1, nimg=4)
    assert all(math.isfinite(v) for v in stats.values())
    assert stats["skipped"] == 0.0 and all(p.dtype == torch.float32 for p in task.model.parameters())


def test_config_files_load():
    for name in ("tiny.yaml", "meer_112_cpu.yaml", "meer_112_gpu.yaml"):
        cfg = load_config(TrainConfig, REPO / "configs" / name)
        assert cfg.task == "meer"
    cpu = load_config(TrainConfig, REPO / "configs" / "meer_112_cpu.yaml")
    assert cpu.amp in ("none", "bf16") and any("cache/aligned" in r for r in cpu.data.roots)
    assert all(f.startswith("../shared/data/splits/") for f in cpu.data.eval_identities)
    with pytest.raises(ConfigError, match="stop_at_step"):
        load_config(TrainConfig, TINY, ["stop_at_step=100"])


def test_time_limit_stops_with_checkpoint_and_cli_resume_continues(dataset, tmp_path, capsys):
    first = train(tiny(dataset, tmp_path, "time_limit_min=0", "data.val_identities=0"))
    assert first.step == 1 and first.export is not None
    assert [p.name for p in (first.run_dir / "checkpoints").iterdir()] == ["ckpt-00000001.pt"]
    assert "continue with: meer-train --resume" in (first.run_dir / "log.txt").read_text()
    code = train_main(["--resume", str(first.run_dir), "time_limit_min=null", "total_steps=2"])
    assert code == 0
    assert load_state(first.run_dir / "checkpoints" / "ckpt-00000002.pt")["step"] == 2
    assert "resumed from" in (first.run_dir / "log.txt").read_text()
    # the overrides changed the config the run continues with: config.yaml says so, the old one is kept
    now = yaml.safe_load((first.run_dir / "config.yaml").read_text())
    before = yaml.safe_load((first.run_dir / "config-before-00000001.yaml").read_text())
    assert (now["total_steps"], now["time_limit_min"]) == (2, None) and before["time_limit_min"] == 0
    assert "config changed on resume at step 1 (time_limit_min, total_steps)" in (first.run_dir / "log.txt").read_text()
    code = train_main(["--resume", str(first.run_dir), "total_steps=2"])  # same config: nothing rewritten
    assert code == 0 and sorted(p.name for p in first.run_dir.glob("config*.yaml")) == [
        "config-before-00000001.yaml", "config.yaml"]
    code = train_main(["--resume", str(tmp_path / "nothing-here")])
    assert code == 2 and "no such run directory" in capsys.readouterr().err


def test_template_prior_is_initialised_from_the_training_faces_on_a_fresh_run(dataset, tmp_path):
    from meer.models.checkpoint import load_meer

    result = train(tiny(dataset, tmp_path, "model.gen_template=true", "stop_at_step=2"))
    assert "generator template initialised from the mean of" in (result.run_dir / "log.txt").read_text()
    model, _ = load_meer(result.export)
    template = (model.generator.template.float()[0] + 1) / 2  # [0, 1]
    faces = [np.asarray(Image.open(p).convert("RGB").resize((64, 64), Image.BILINEAR), dtype=np.float32) / 255
             for p in sorted(dataset.rglob("*.png"))]
    mean = torch.from_numpy(np.mean(faces, axis=0)).permute(2, 0, 1)
    assert template.std() > 0.01  # not the zero initialisation
    assert (template - mean).abs().mean() < 0.05  # the mean face (two small steps later; train split only)
