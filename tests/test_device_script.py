"""benchmarks/device: the pack (make_pack.py) and the GPU script's --smoke run on the CPU, end to end.

Everything is built in tmp_path (synthetic identity folders, a real-masked root, an evaluation-only list, a mask
template, random dlib weights), so the test needs neither ../shared nor a GPU. The CUDA path itself is not
exercised here.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DEVICE = REPO / "benchmarks" / "device"
STAGES = ["install", "unpack", "cuda_tests", "train_bench_fp32", "train_bench_fp16", "train_bench_bf16", "ddp_step",
          "restore_bench_fp32", "restore_bench_fp16", "restore_bench_bf16", "train_run", "export"]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")


def _face(rng: np.random.Generator, size: int = 112) -> Image.Image:
    """A smooth random picture with a skin-coloured ellipse: enough for the training code paths."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    base = rng.uniform(40, 200, 3)
    img = np.stack([base[c] + 40 * np.sin(6 * xx + rng.uniform(0, 6)) * np.cos(5 * yy) for c in range(3)], -1)
    inside = ((xx - 0.5) / 0.32) ** 2 + ((yy - 0.52) / 0.42) ** 2 < 1
    img[inside] = np.array([200, 160, 130]) + rng.normal(0, 8, (inside.sum(), 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _dataset(root: Path) -> tuple[Path, Path, Path]:
    rng = np.random.default_rng(0)
    faces = root / "faces"
    for r, n_ids, per in (("ids", 6, 4), ("singles", 5, 1)):
        for i in range(n_ids):
            d = faces / r / f"person_{r}_{i}"
            d.mkdir(parents=True)
            for j in range(per):
                _face(rng).save(d / f"{j:03d}.jpg", quality=95)
    # real masked photos (data.real_masked_roots): named as labelled identities, 3 + 2 + 1 photos; an identity
    # without a labelled counterpart is left out (training could not use it)
    for name, per in (("person_ids_0", 3), ("person_ids_1", 2), ("person_ids_2", 1), ("Stranger", 2)):
        d = faces / "masked" / name
        d.mkdir(parents=True)
        for j in range(per):
            _face(rng).save(d / f"m{j:03d}.jpg", quality=95)
    # an evaluation-only identity in every kind of root: it must never reach the pack
    for r, per in (("ids", 4), ("singles", 1), ("masked", 2)):
        d = faces / r / "Eval_Person"
        d.mkdir()
        for j in range(per):
            _face(rng).save(d / f"{j:03d}.jpg")
    splits = root / "splits"
    splits.mkdir()
    (splits / "lfw_eval_identities.txt").write_text("# evaluation only\nEval_Person\n")
    # one MaskTheFace-style template (RGBA + six anchors), larger than the 256 px it is packed at
    tdir = root / "templates"
    (tdir / "templates").mkdir(parents=True)
    rgba = np.zeros((200, 300, 4), np.uint8)
    rgba[20:180, 10:290] = (90, 140, 200, 255)
    Image.fromarray(rgba, "RGBA").save(tdir / "templates" / "plain.png")
    (tdir / "masks.cfg").write_text("[plain]\ntemplate: masks/templates/plain.png\nmask_a: 10, 40\nmask_b: 150, 20\n"
                                    "mask_c: 290, 40\nmask_d: 12, 150\nmask_e: 150, 180\nmask_f: 288, 150\n")
    return faces, splits / "lfw_eval_identities.txt", tdir


def _make_pack(tmp_path: Path, real_masked: bool = False) -> Path:
    """The pack of ``_dataset``; with ``real_masked`` its ``masked`` root too (else the default root, absent
    here, is left out with a note)."""
    faces, eval_list, templates = _dataset(tmp_path)
    pack = tmp_path / "pack"
    proc = subprocess.run([sys.executable, str(DEVICE / "make_pack.py"), "--out", str(pack), "--faces-from", str(faces),
                           "--roots", "ids", "--unlabeled", "singles", "--eval-lists", str(eval_list), "--templates",
                           str(templates), "--dlib", "random", "--wheels", "none", "--min-images", "2",
                           "--max-mib", "0"] + (["--real-masked", "masked"] if real_masked else []),
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "evaluation-only identities left out" in proc.stdout and "total" in proc.stdout
    assert ("note: no real masked crops" in proc.stdout) != real_masked
    return pack


def test_pack_leaves_out_evaluation_identities_and_fits(tmp_path):
    pack = _make_pack(tmp_path, real_masked=True)
    man = json.loads((pack / "manifest.json").read_text())
    assert man["faces"]["excluded_eval_identities"] == 3  # Eval_Person in ids/, singles/ and masked/
    assert man["faces"]["roots"]["ids"] == {"labelled": True, "identities": 6, "faces": 24}
    assert man["faces"]["roots"]["singles"] == {"labelled": False, "identities": 5, "faces": 5}
    assert man["faces"]["roots"]["masked"] == {"labelled": False, "identities": 3, "faces": 6, "real_masked": True,
                                               "unmatched_identities": 1}
    assert man["faces"]["real_masked_faces"] == 6 and man["faces"]["faces"] == 35 and man["real_masked"] == ["masked"]
    with np.load(pack / "data.npz", allow_pickle=False) as z:
        paths = z["paths"].tolist()
        idents = set(z["face_identity"].tolist())
        labelled = z["face_labelled"].tolist()
    assert not any("Eval_Person" in p or "Stranger" in p for p in paths) and "Eval_Person" not in idents
    assert sum(1 for p in paths if p.startswith("aligned/")) == 35 and labelled.count(1) == 24
    assert labelled.count(2) == 6 and all(p.startswith("aligned/masked/") for p, lb in zip(paths, labelled) if lb == 2)
    assert "splits/lfw_eval_identities.txt" in paths and "mask_templates/masks.cfg" in paths
    # the dlib weights are named as load_dlib_resnet caches them, the large tensors in float16
    (weights,) = (pack / "weights").glob("dlib_resnet_v1-*-f1.pt")
    import torch

    state = torch.load(weights, weights_only=True)
    assert state["fc.weight"].dtype == torch.float16 and state["input_mean"].dtype == torch.float32

    # unpacking writes the folders and the recipe's data overrides; a template scaled to <= 256 px
    dest = tmp_path / "unpacked"
    proc = subprocess.run([sys.executable, str(DEVICE / "stages.py"), "unpack", str(pack), str(dest), "--json",
                           str(tmp_path / "unpack.json")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert len(list((dest / "aligned" / "ids").glob("*/*.jpg"))) == 24
    assert sorted(p.parent.name for p in (dest / "aligned" / "masked").glob("*/*.jpg")) == (
        ["person_ids_0"] * 3 + ["person_ids_1"] * 2 + ["person_ids_2"])  # no Eval_Person, no Stranger
    over = (dest / "overrides.txt").read_text()
    assert "data.roots=" in over and "aligned/singles" in over and "masking.template_dir=" in over
    assert f"data.real_masked_roots={json.dumps([str(dest / 'aligned' / 'masked')])}" in over.splitlines()
    unpacked = json.loads((tmp_path / "unpack.json").read_text())
    assert unpacked["real_masked_faces"] == 6 and unpacked["real_masked_roots"] == ["masked"]
    assert max(Image.open(dest / "mask_templates" / "templates" / "plain.png").size) == 256
    # the overrides load as the smoke recipe's data, the real masked photos matched to their labelled identities
    from meer.config import load_config
    from meer.training.config import TrainConfig
    from meer.training.data import build_splits

    cfg = load_config(TrainConfig, DEVICE / "smoke.yaml", over.splitlines())
    splits = build_splits(cfg.data, cfg.seed, cfg.model.image_size)
    n_real = {"person_ids_0": 3, "person_ids_1": 2, "person_ids_2": 1}
    val = {n.split("/", 1)[-1] for n in splits.val_names}
    assert len(splits.real) == sum(n for name, n in n_real.items() if name not in val) and not splits.real.unmatched

    # bad input: one line, no traceback
    proc = subprocess.run([sys.executable, str(DEVICE / "make_pack.py"), "--out", str(tmp_path / "p2"), "--faces-from",
                           str(tmp_path / "nowhere"), "--eval-lists", str(tmp_path / "splits" / "lfw_eval_identities.txt"),
                           "--templates", "none", "--dlib", "none", "--wheels", "none"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "aligned crops not found" in proc.stderr
    # a real masked root named explicitly must be there (the default one is left out with a note)
    proc = subprocess.run([sys.executable, str(DEVICE / "make_pack.py"), "--out", str(tmp_path / "p3"), "--faces-from",
                           str(tmp_path / "faces"), "--roots", "ids", "--unlabeled", "--real-masked", "nomasks",
                           "--eval-lists", str(tmp_path / "splits" / "lfw_eval_identities.txt"), "--templates", "none",
                           "--dlib", "none", "--wheels", "none"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "nomasks" in proc.stderr


def test_dlib_weights_found_without_the_model_package(tmp_path, monkeypatch):
    """The GPU machine has no face-recognition-models: the one converted file in MEER_CACHE_DIR is used."""
    import torch

    from meer.models import dlib_resnet
    from meer.utils.errors import MeerError

    net = dlib_resnet.DlibResNet()
    torch.save({k: v.half() if v.numel() >= 4096 else v for k, v in net.state_dict().items()},
               tmp_path / "dlib_resnet_v1-abc-f1.pt")
    monkeypatch.setattr(dlib_resnet, "dlib_model_dir", lambda: None)
    monkeypatch.setenv("MEER_CACHE_DIR", str(tmp_path))
    loaded = dlib_resnet.load_dlib_resnet()
    assert torch.equal(loaded.fc.weight, net.fc.weight.half().float())
    (tmp_path / "dlib_resnet_v1-def-f1.pt").write_bytes((tmp_path / "dlib_resnet_v1-abc-f1.pt").read_bytes())
    with pytest.raises(MeerError, match="keep one"):
        dlib_resnet.cached_state_dict()


def test_run_script_rejects_bad_arguments(tmp_path):
    def run(*args):
        return subprocess.run(["bash", str(DEVICE / "run.sh"), *args], capture_output=True, text=True, cwd=REPO,
                              env={**os.environ, "OUT": ""})

    p = run()
    assert p.returncode == 2 and "give an output folder" in p.stderr
    p = run("--smoke", "--pack", str(tmp_path / "nopack"), str(tmp_path / "o"))
    assert p.returncode == 2 and "no pack at" in p.stderr and p.stderr.count("\n") == 1
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    p = run("--smoke", str(tmp_path / "full"))
    assert p.returncode == 2 and "not empty" in p.stderr
    assert run("--budget", "soon", str(tmp_path / "o")).returncode == 2
    assert run("--frobnicate").returncode == 2


def test_smoke_run_end_to_end(tmp_path):
    pack = _make_pack(tmp_path)
    out = tmp_path / "out"
    proc = subprocess.run(["bash", str(DEVICE / "run.sh"), "--smoke", "--pack", str(pack), "--work",
                           str(tmp_path / "work"), str(out)], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["meta"]["mode"] == "smoke" and res["meta"]["env"]["torch"] and not res["meta"]["env"]["missing"]
    assert res["headline"]["train_img_per_s_fp32"] > 0 and res["headline"]["stages_failed"] == []
    assert set(res["stages"]) == set(STAGES)
    for name, rec in res["stages"].items():
        assert rec["status"] in ("ok", "skipped"), (name, rec)
        assert isinstance(rec["figures"], dict) and isinstance(rec["seconds"], (int, float))
    st = res["stages"]
    # what the CPU cannot (or need not) run is recorded as skipped, with the reason
    for name in ("install", "train_bench_fp16", "train_bench_bf16", "restore_bench_fp16", "restore_bench_bf16"):
        assert st[name]["status"] == "skipped" and st[name]["reason"]
    assert st["unpack"]["figures"]["faces"] == 29 and st["unpack"]["figures"]["real_masked_faces"] == 0
    assert st["train_bench_fp32"]["figures"]["img_per_s"] > 0 and st["train_bench_fp32"]["figures"]["batch"] == 4
    assert st["ddp_step"]["figures"]["backend"] == "gloo" and st["ddp_step"]["figures"]["loss_finite"]
    assert st["restore_bench_fp32"]["figures"]["faces_per_s"] > 0
    assert st["cuda_tests"]["status"] == "skipped" and st["cuda_tests"]["figures"]["selected"] >= 1  # listed only
    run = st["train_run"]["figures"]
    assert run["steps"] == 4 and run["export"] and run["grids"] >= 1 and "verify_acc" in run["val"]
    assert st["export"]["figures"]["files_mib"]
    # the device tool's limits: at most 8 files, each under 16 MiB
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(p.stat().st_size < 16 * 2**20 for p in files)
    assert {"results.json", "figures.png", "meer_smoke_fp16.pt", "logs.tar.gz"} <= {p.name for p in files}
    assert "stage summary" in proc.stdout


def test_cuda_test_selection_and_counts(tmp_path):
    """The cuda_tests stage: which tests it picks, and passed / failed / skipped read from pytest's junit file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("device_stages", DEVICE / "stages.py")
    stages = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stages)
    ids = stages.cuda_test_ids(REPO / "tests")
    assert "tests/test_masking_batch.py::test_cuda_matches_cpu" in ids
    assert not any(i.startswith("tests/test_device_script.py") for i in ids)  # never itself
    t = tmp_path / "test_fake.py"
    t.write_text("import pytest\n\ndef test_ok():\n    pass\n\n@pytest.mark.skip(reason='no gpu')\ndef test_skip():\n"
                 "    pass\n\ndef test_bad():\n    assert False\n")
    fig_path = tmp_path / "fig.json"
    rc = stages.cuda_tests(str(fig_path), tmp_path / "logs", ids=[str(t)])
    fig = json.loads(fig_path.read_text())
    assert rc == 1 and (fig["passed"], fig["failed"], fig["skipped"]) == (1, 1, 1)
    stages.cuda_tests(str(fig_path), tmp_path / "logs", list_only=True)
    fig = json.loads(fig_path.read_text())
    assert fig["status"] == "skipped" and fig["selected"] == len(ids)
