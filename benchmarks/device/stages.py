"""The Python side of `benchmarks/device/run.sh`: one subcommand per stage, plus recording and the final report.

    python benchmarks/device/stages.py unpack PACK DEST --json F        # the pack's data.npz -> DEST/, overrides.txt
    python benchmarks/device/stages.py env --json F                     # versions, GPU, imports of meer's needs
    python benchmarks/device/stages.py cuda-tests --device cuda --json F --log-dir D
    python benchmarks/device/stages.py train-bench --config C --amp none|fp16|bf16 --device D --json F
    torchrun --standalone --nproc_per_node 1 benchmarks/device/stages.py ddp --backend nccl --device cuda --json F
    python benchmarks/device/stages.py restore-figures RAW.json PRECISION --json F
    python benchmarks/device/stages.py train-plan --bench F --batch B --seconds S
    python benchmarks/device/stages.py train-summary RUNS_DIR --json F
    python benchmarks/device/stages.py export RUN_DIR DEST --json F
    python benchmarks/device/stages.py record WORK NAME --rc RC --seconds S [--skip REASON]
    python benchmarks/device/stages.py finish WORK OUT                  # results.json, figures.png, copies, summary

A stage writes its figures as JSON (``--json``); ``record`` turns the exit status, the time taken and those figures
into ``WORK/stages/<NAME>.json`` (status ok / failed / timeout / skipped); ``finish`` assembles the report. Stages
other than the benchmarks import no torch, so that recording never costs much.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

MIB = 1024 * 1024
#: every stage of run.sh, in order; finish reports each of them (``not_run`` when it never recorded)
STAGES = ["install", "unpack", "cuda_tests", "train_bench_fp32", "train_bench_fp16", "train_bench_bf16", "ddp_step",
          "restore_bench_fp32", "restore_bench_fp16", "restore_bench_bf16", "train_run", "export"]
#: what finish may put in OUT: at most 8 files, each under 16 MiB (the device tool's limits)
MAX_FILES = 8
MAX_FILE_BYTES = 16 * MIB


def write_json(path: str | Path | None, data: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n")


def read_json(path: str | Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def last_line(path: Path, n: int = 1) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return " | ".join(lines[-n:])[-400:]


# ---------------------------------------------------------------------------------------------- unpack


def unpack(pack: Path, dest: Path, json_path: str | None) -> int:
    """Write the pack's files under ``dest`` and ``dest/overrides.txt`` (the data paths of the GPU recipe; roots
    by ``face_labelled``: 1 ``data.roots``, 0 ``data.unlabeled_roots``, 2 ``data.real_masked_roots``)."""
    import numpy as np

    manifest = read_json(pack / "manifest.json")
    data = pack / "data.npz"
    if not data.is_file():
        print(f"unpack: no data.npz in {pack}", file=sys.stderr)
        return 1
    dest.mkdir(parents=True, exist_ok=True)
    with np.load(data, allow_pickle=False) as z:
        blob, offsets, paths = z["blob"], z["offsets"], z["paths"].tolist()
        roots, idents, labelled = z["face_root"].tolist(), z["face_identity"].tolist(), z["face_labelled"].tolist()
    faces = 0
    root_kind: dict[str, int] = {}
    face_ids: set[tuple[str, str]] = set()  # (root, identity) by label and by path
    for i, name in enumerate(paths):
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts:
            print(f"unpack: unsafe path in the pack: {name}", file=sys.stderr)
            return 1
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(blob[offsets[i]:offsets[i + 1]].tobytes())
        if rel.parts[0] == "aligned":
            faces += 1
            if root_kind.setdefault(roots[i], labelled[i]) != labelled[i]:
                print(f"unpack: root {roots[i]} holds faces of two kinds (face_labelled)", file=sys.stderr)
                return 1
            face_ids |= {(roots[i], idents[i])} | ({(rel.parts[1], rel.parts[2])} if len(rel.parts) == 4 else set())
    # the evaluation-only lists travel with the pack: check once more that none of their identities came along
    eval_files = sorted((dest / "splits").glob("*eval_identities*.txt")) if (dest / "splits").is_dir() else []
    names: set[str] = set()
    for f in eval_files:
        names |= {ln.split("#", 1)[0].strip() for ln in f.read_text().splitlines()} - {""}
    leaked = sorted({f"{r}/{i}" for r, i in face_ids if i in names or f"{r}/{i}" in names})
    if leaked:
        print(f"unpack: evaluation-only identity in the pack: {leaked[0]}", file=sys.stderr)
        return 1
    real_faces = sum(1 for name, lb in zip(paths, labelled) if lb == 2 and name.startswith("aligned/"))
    for what, got in (("faces", faces), ("real_masked_faces", real_faces)):
        expected = manifest.get("faces", {}).get(what)
        if expected is not None and expected != got:
            print(f"unpack: {got} {what.replace('_', ' ')} unpacked, the manifest says {expected}", file=sys.stderr)
            return 1

    def ylist(items: list[Path]) -> str:
        return "[" + ", ".join(json.dumps(str(p)) for p in items) + "]"

    lab, unl, real = ([dest / "aligned" / r for r, k in root_kind.items() if k == kind] for kind in (1, 0, 2))
    # data.real_masked_roots is always written ([] when the pack has none), so the recipe's own value never counts
    lines = [f"data.roots={ylist(lab)}", f"data.unlabeled_roots={ylist(unl)}", f"data.real_masked_roots={ylist(real)}",
             f"data.eval_identities={ylist(eval_files)}"]
    if not real:  # a pack without real masked crops: the recipe's real-mask terms would have no data
        lines += ["loss.w_real_distill=0", "loss.w_real_id=0"]
    if (dest / "mask_templates" / "masks.cfg").is_file():
        lines.append(f"masking.template_dir={json.dumps(str(dest / 'mask_templates'))}")
    else:
        lines.append("masking.template_p=0.0")
    (dest / "overrides.txt").write_text("\n".join(lines) + "\n")
    identities = len({(r, i) for r, i, lb in zip(roots, idents, labelled) if lb == 1})
    write_json(json_path, {"faces": faces, "labelled_identities": identities,
                           "unlabelled_faces": sum(1 for lb in labelled if lb == 0), "real_masked_faces": real_faces,
                           "real_masked_roots": sorted(r for r, k in root_kind.items() if k == 2),
                           "roots": sorted(root_kind), "eval_lists": [f.name for f in eval_files],
                           "eval_identities_checked": len(names), "templates": (dest / "mask_templates").is_dir(),
                           "pack_mib": round(sum(p.stat().st_size for p in pack.rglob("*") if p.is_file()) / MIB, 2),
                           "quality": manifest.get("quality")})
    print(f"unpacked {faces} faces of {identities} labelled identities ({real_faces} real masked) into {dest}")
    return 0


# ---------------------------------------------------------------------------------------------- env


def env(json_path: str | None) -> int:
    import importlib
    import importlib.metadata as md

    out: dict = {"python": sys.version.split()[0]}
    missing = []
    # module -> distribution (for the version)
    for mod, dist_name in (("torch", "torch"), ("torchvision", "torchvision"), ("kornia", "kornia"),
                           ("kornia_rs", "kornia_rs"), ("lpips", "lpips"), ("facenet_pytorch", "facenet-pytorch"),
                           ("cv2", "opencv-python-headless"), ("scipy", "scipy"), ("matplotlib", "matplotlib"),
                           ("tensorboard", "tensorboard"), ("yaml", "PyYAML"), ("PIL", "pillow"), ("numpy", "numpy"),
                           ("meer", "meer")):
        try:
            m = importlib.import_module(mod)
            try:
                out[mod] = md.version(dist_name)
            except md.PackageNotFoundError:
                out[mod] = getattr(m, "__version__", "?")
        except Exception as exc:  # noqa: BLE001 - report any import failure
            missing.append(f"{mod} ({type(exc).__name__}: {str(exc).splitlines()[0][:80] if str(exc) else ''})")
    import torch

    out["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
        out["cuda"] = torch.version.cuda
        out["bf16_supported"] = torch.cuda.is_bf16_supported()
        out["gpu_mib"] = round(torch.cuda.get_device_properties(0).total_memory / MIB)
        out["nccl"] = ".".join(map(str, torch.cuda.nccl.version())) if hasattr(torch.cuda, "nccl") else None
        out["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
        out["tf32_cudnn"] = torch.backends.cudnn.allow_tf32
    out["cpu_count"] = os.cpu_count()
    out["meer_file"] = str(Path(sys.modules["meer"].__file__).parent) if "meer" in sys.modules else None
    from meer.utils.dlib_models import dlib_model_dir

    out["dlib_model_package"] = dlib_model_dir() is not None
    out["missing"] = missing
    write_json(json_path, out)
    print(json.dumps(out))
    if missing:
        print(f"missing imports: {'; '.join(missing)}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------------------- cuda tests


#: what marks a test as one that uses CUDA when there is one (torch.cuda..., .cuda(), a "cuda" device string)
CUDA_USE = re.compile(r"torch\.cuda\b|\.cuda\(|[\"']cuda(:\d+)?[\"']|mark\.cuda\b")


def cuda_test_ids(tests_dir: Path) -> list[str]:
    """Test functions whose source (decorators included) uses CUDA: the tests that skip, or take another
    branch, without a GPU (this script's own test is not one of them)."""
    import ast

    ids = []
    for path in sorted(tests_dir.glob("test_*.py")):
        text = path.read_text(errors="replace")
        if path.name == "test_device_script.py" or not CUDA_USE.search(text):
            continue
        tree = ast.parse(text)
        lines = text.splitlines()

        def visit(nodes, prefix=""):
            for node in nodes:
                if isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
                    visit(node.body, f"{prefix}{node.name}::")
                elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
                    start = min([d.lineno for d in node.decorator_list] + [node.lineno])
                    src = "\n".join(lines[start - 1:node.end_lineno])
                    if CUDA_USE.search(src):
                        ids.append(f"{path.relative_to(REPO)}::{prefix}{node.name}")

        visit(tree.body)
    return ids


def junit_counts(xml: Path) -> dict[str, int]:
    """passed / failed / skipped of a pytest --junitxml file (errors count as failed)."""
    import xml.etree.ElementTree as ET

    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    if xml.is_file():
        root = ET.parse(xml).getroot()
        for suite in ([root] if root.tag == "testsuite" else list(root)):
            for k in counts:
                counts[k] += int(suite.get(k, 0))
    failed = counts["failures"] + counts["errors"]
    return {"passed": counts["tests"] - failed - counts["skipped"], "failed": failed, "skipped": counts["skipped"]}


def cuda_tests(json_path: str | None, log_dir: Path, list_only: bool = False, ids: list[str] | None = None) -> int:
    """pytest on the tests marked ``cuda`` when the marker is registered, else on the test functions that use CUDA
    (``cuda_test_ids``); ``list_only``: record the selection without running it (--smoke)."""
    marker = subprocess.run([sys.executable, "-m", "pytest", "--markers"], capture_output=True, text=True,
                            cwd=REPO) if ids is None and not list_only else None
    if marker is not None and "@pytest.mark.cuda" in marker.stdout:
        selection, how = ["-m", "cuda", "tests"], "pytest -m cuda"
    else:
        ids = ids if ids is not None else cuda_test_ids(REPO / "tests")
        if not ids:
            write_json(json_path, {"status": "skipped", "reason": "no test uses cuda", "selected": 0})
            return 0
        selection, how = ids, "test functions that use torch.cuda / a cuda device"
    if list_only:
        write_json(json_path, {"status": "skipped", "selection": how, "selected": len(selection), "tests": selection,
                               "reason": f"--smoke: no CUDA here; the {len(selection)} selected tests are listed, not run"})
        print("\n".join(selection))
        return 0
    log_dir.mkdir(parents=True, exist_ok=True)
    xml = log_dir / "cuda_tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={xml}", *selection]
    print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=REPO)
    counts = junit_counts(xml)
    fig = {"selection": how, "selected": len(selection) if how != "pytest -m cuda" else None, **counts,
           "pytest_rc": proc.returncode}
    if proc.returncode == 0 and counts["passed"] == 0 and counts["skipped"]:
        fig.update(status="skipped", reason="every selected test skipped (no CUDA device)")
    write_json(json_path, fig)
    return proc.returncode


# ---------------------------------------------------------------------------------------------- train bench


def train_bench(args: argparse.Namespace) -> int:
    spec = importlib.util.spec_from_file_location("meer_bench_train", REPO / "benchmarks" / "bench_train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.run_one(args.config, args.amp, args.device, args.batch, args.steps, args.warmup, args.threads)
    res["precision"] = {"none": "fp32", "fp16": "fp16 + GradScaler", "bf16": "bf16 autocast"}[args.amp]
    write_json(args.json, res)
    mem = f", peak CUDA {res['peak_cuda_mib']:.0f} MiB" if "peak_cuda_mib" in res else ""
    print(f"{res['precision']}: {res['img_per_s']:.1f} img/s at batch {res['batch']}{mem}")
    return 0


# ---------------------------------------------------------------------------------------------- ddp


def ddp(args: argparse.Namespace) -> int:
    """One process of a torchrun job: a process group on ``--backend`` (nccl / gloo), the MEER step with the
    group's gradient all-reduce, SyncBatchNorm (CUDA) and the NaN vote switched on even for one process
    (``meer-train`` starts no group for WORLD_SIZE 1), on a synthetic batch."""
    import dataclasses

    import torch
    import torch.distributed as dist

    from meer.config import load_config
    from meer.masking.batch import MaskAugment
    from meer.training import meer_task
    from meer.training.config import TrainConfig
    from meer.training.data import augment
    from meer.training.distributed import DistInfo
    from meer.training.phases import Batch

    @dataclasses.dataclass(frozen=True)
    class GroupInfo(DistInfo):
        @property
        def enabled(self) -> bool:  # the group's code paths even with one rank
            return True

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if "MASTER_ADDR" not in os.environ:
        print("ddp: run me under torchrun (torchrun --standalone --nproc_per_node 1 ...)", file=sys.stderr)
        return 2
    device = torch.device("cuda", local) if args.device == "cuda" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if args.threads:
        torch.set_num_threads(args.threads)
    dist.init_process_group(backend=args.backend, rank=rank, world_size=world)
    try:
        info = GroupInfo(rank=rank, world_size=world, local_rank=local, device=device)
        overrides = [f"amp={args.amp}", f"device={args.device}"] + ([f"data.batch_size={args.batch}"] if args.batch else [])
        cfg = load_config(TrainConfig, REPO / args.config, overrides)
        torch.manual_seed(0)
        classes = 500
        task = meer_task.build(cfg, num_classes=classes, num_mask_kinds=len(MaskAugment.KINDS), dist=info)
        sync_bn = sum(isinstance(m, torch.nn.SyncBatchNorm) for m in task.model.modules())
        b = cfg.data.batch_size // world
        s = cfg.model.image_size
        g = torch.Generator(device=device).manual_seed(0)
        clean = torch.nn.functional.interpolate(torch.rand(b, 3, s // 8, s // 8, device=device), size=(s, s),
                                                mode="bilinear", align_corners=False)
        clean, masked, mask, kind = augment(clean, MaskAugment().to(device), g, rank, world, hflip=False)[:4]
        batch = Batch(clean=clean, masked=masked, mask=mask, labels=torch.arange(b, device=device) % classes, kind=kind)
        # the collective itself: a sum over the group, checked
        probe = torch.full((1 << 20,), float(rank + 1), device=device)
        dist.all_reduce(probe)
        want = world * (world + 1) / 2
        if not bool((probe == want).all()):
            raise RuntimeError(f"all_reduce gave {probe[0].item()}, expected {want}")
        n_grad = sum(p.numel() for p in task.params_r + task.params_g)
        buf = torch.ones(n_grad, device=device)
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        dist.all_reduce(buf)
        sync()
        t0 = time.perf_counter()
        for _ in range(5):
            dist.all_reduce(buf)
        sync()
        allreduce_ms = (time.perf_counter() - t0) / 5 * 1000
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        stats = {}
        for i in range(args.warmup):
            stats = task.train_step(batch, step=i + 1, nimg=(i + 1) * b * world)
        sync()
        t0 = time.perf_counter()
        for i in range(args.steps):
            stats = task.train_step(batch, step=args.warmup + i + 1, nimg=(args.warmup + i + 1) * b * world)
        sync()
        dt = time.perf_counter() - t0
        total = float(stats.get("loss/total", float("nan")))
        res = {"backend": dist.get_backend(), "world_size": world, "device": str(device), "amp": args.amp,
               "global_batch": b * world, "steps": args.steps, "s_per_step": dt / max(1, args.steps),
               "img_per_s": args.steps * b * world / dt if dt > 0 else None, "loss_total": total,
               "loss_finite": math.isfinite(total), "sync_batchnorm_layers": sync_bn,
               "grad_allreduce_mib": round(n_grad * 4 / MIB, 2), "grad_allreduce_ms": round(allreduce_ms, 3)}
        if device.type == "cuda":
            res["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / MIB
        if rank == 0:
            write_json(args.json, res)
            print(json.dumps(res))
        if not res["loss_finite"]:
            print("ddp: non-finite loss", file=sys.stderr)
            return 1
    finally:
        dist.destroy_process_group()
    return 0


# ---------------------------------------------------------------------------------------------- restore


def restore_figures(raw: Path, precision: str, json_path: str | None) -> int:
    data = read_json(raw)
    run = data.get("runs", {}).get(precision)
    if not run:
        print(f"restore-figures: {raw} has no run for {precision}", file=sys.stderr)
        return 1
    fig = {"precision": precision, "device": data.get("device"), "batch_size": data.get("batch_size"),
           "photos": run.get("photos"), "faces": run.get("faces"), "faces_per_s": run.get("faces_per_s"),
           "photos_per_s": run.get("photos_per_s"), "share": run.get("share"),
           "model_only_faces_per_s": (run.get("model_only") or {}).get("faces_per_s"),
           "parameters": data.get("parameters"), "model_config": data.get("model_config")}
    write_json(json_path, fig)
    return 0


# ---------------------------------------------------------------------------------------------- train run


def train_plan(bench: Path, batch: int | None, seconds: float, floor: int, cap: int) -> int:
    """``total_steps`` for a run of ``seconds`` from a benchmark's img/s (the real loop also loads, validates,
    logs: 60 % of the synthetic rate), so the cosine schedule about ends when the time limit stops the run.
    Prints nothing when there is no benchmark figure (the config's total_steps then stand)."""
    fig = read_json(bench) if bench.is_file() else {}
    rate, batch = fig.get("img_per_s"), batch or fig.get("batch")
    if not rate or not batch or seconds <= 0:
        return 0
    steps = int(0.6 * rate * seconds / batch)
    print(f"total_steps={max(floor, min(cap, steps))}")
    return 0


def find_run(runs: Path) -> Path | None:
    """``runs`` itself when it is a run directory, else its last run directory."""
    if (runs / "config.yaml").is_file():
        return runs
    dirs = sorted(p for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []
    return dirs[-1] if dirs else None


def train_summary(runs: Path, json_path: str | None) -> int:
    run = find_run(runs)
    if run is None:
        print(f"train-summary: no run directory in {runs}", file=sys.stderr)
        return 1
    steps, thr, losses, val, wait = 0, [], [], {}, []
    stats = run / "stats.jsonl"
    if stats.is_file():
        for line in stats.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            steps = max(steps, int(rec.get("step", 0)))
            if "train/throughput_img_s" in rec:
                thr.append(rec["train/throughput_img_s"])
            if "train/loss/total" in rec:
                losses.append((rec["step"], rec["train/loss/total"]))
            if "train/data_wait_share" in rec:
                wait.append(rec["train/data_wait_share"])
            v = {k[4:]: x for k, x in rec.items() if k.startswith("val/")}
            if v:
                val = v
    log = (run / "log.txt").read_text(errors="replace") if (run / "log.txt").is_file() else ""
    export = run / "meer_inference.pt"
    cfg_text = (run / "config.yaml").read_text() if (run / "config.yaml").is_file() else ""
    total_steps = next((ln.split(":", 1)[1].strip() for ln in cfg_text.splitlines() if ln.startswith("total_steps:")), None)
    fig = {"run_dir": str(run), "steps": steps, "total_steps": int(total_steps) if total_steps else None,
           "stopped_by_time_limit": "time limit of" in log,
           "throughput_img_s_median": statistics.median(thr[1:] or thr) if thr else None,
           "data_wait_share_last": wait[-1] if wait else None,
           "loss_total_first": losses[0][1] if losses else None, "loss_total_last": losses[-1][1] if losses else None,
           "val": val, "grids": len(list((run / "grids").glob("*.png"))),
           "export": str(export) if export.is_file() else None,
           "export_mib": round(export.stat().st_size / MIB, 2) if export.is_file() else None,
           "skipped_fp16_steps": log.count("step skipped")}
    write_json(json_path, fig)
    print(json.dumps(fig))
    return 0 if export.is_file() else 1


def export(runs: Path, dest: Path, formats: list[str], json_path: str | None) -> int:
    run = find_run(runs)
    ckpt = run / "meer_inference.pt" if run is not None else None
    if ckpt is None or not ckpt.is_file():
        print(f"export: no meer_inference.pt in {run or runs} (the training run did not finish)", file=sys.stderr)
        return 1
    proc = subprocess.run([sys.executable, "-m", "meer.cli.export", str(ckpt), str(dest), "--overwrite", "--format",
                           *formats], cwd=REPO)
    files = {p.name: round(p.stat().st_size / MIB, 3) for p in sorted(dest.glob("*")) if p.is_file()} if dest.is_dir() else {}
    write_json(json_path, {"rc": proc.returncode, "files_mib": files})
    return proc.returncode


# ---------------------------------------------------------------------------------------------- record / finish


def record(work: Path, name: str, rc: int, seconds: float, skip: str | None, log: str | None, timeout_s: int | None,
           cpu_s: float | None = None) -> int:
    figs = read_json(work / "figures" / f"{name}.json")
    status = figs.pop("status", None)
    reason = figs.pop("reason", None)
    if skip:
        status, reason = "skipped", skip
    elif rc in (124, 137):
        status, reason = "timeout", f"stopped at its {timeout_s} s limit" if timeout_s else "timed out"
    elif rc != 0:
        status = "failed"
        reason = reason or (last_line(Path(log), 2) if log else None) or f"exit status {rc}"
    elif status is None:
        status = "ok"
    rec = {"status": status, "seconds": round(seconds, 1), "cpu_s": cpu_s, "rc": None if skip else rc, "timeout_s": timeout_s,
           "reason": reason, "figures": figs, "log": f"logs/{name}.log" if log and Path(log).is_file() else None}
    write_json(work / "stages" / f"{name}.json", rec)
    line = f"[{status}] {name} {seconds:.0f}s" + (f": {reason}" if reason else "")
    print(line[:300], flush=True)
    return 0


def plot(results: dict, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st = results["stages"]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    mode = results["meta"].get("mode")

    def bars(ax, names, key, title, ylabel):
        labels, vals, notes = [], [], []
        for n, label in names:
            s = st.get(n, {})
            v = (s.get("figures") or {}).get(key)
            labels.append(label)
            vals.append(v if isinstance(v, (int, float)) and s.get("status") == "ok" else 0.0)
            notes.append("" if s.get("status") == "ok" else s.get("status", "not_run"))
        ax.bar(labels, vals, color="#4c72b0")
        for i, (v, note) in enumerate(zip(vals, notes)):
            ax.text(i, v, note or f"{v:.3g}", ha="center", va="bottom", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)

    prec = [("train_bench_fp32", "fp32"), ("train_bench_fp16", "fp16+scaler"), ("train_bench_bf16", "bf16")]
    bars(axes[0], prec, "img_per_s", "training step, img/s", "images / s")
    mem_key = "peak_cuda_mib" if mode == "gpu" else "peak_rss_mib"
    bars(axes[1], prec, mem_key, f"training step, peak memory ({mem_key})", "MiB")
    rest = [("restore_bench_fp32", "fp32"), ("restore_bench_fp16", "fp16"), ("restore_bench_bf16", "bf16")]
    bars(axes[2], rest, "faces_per_s", "meer-restore end to end, faces/s", "faces / s")
    ax = axes[3]
    curve = results.get("train_curve") or []
    if curve:
        ax.plot([c[0] for c in curve], [c[1] for c in curve], label="loss/total")
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    ax.set_title("training run " + ("(" + st.get("train_run", {}).get("status", "not_run") + ")"), fontsize=10)
    fig.suptitle(f"meer device run ({mode}): {results['meta'].get('gpu') or results['meta'].get('device')}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def headline(stages: dict) -> dict:
    """The figures one reads first, from the stages' records (None where a stage did not run)."""
    def fig(name: str, key: str):
        rec = stages.get(name, {})
        return (rec.get("figures") or {}).get(key) if rec.get("status") == "ok" else None

    out = {}
    for p in ("fp32", "fp16", "bf16"):
        out[f"train_img_per_s_{p}"] = fig(f"train_bench_{p}", "img_per_s")
        out[f"train_peak_cuda_mib_{p}"] = fig(f"train_bench_{p}", "peak_cuda_mib")
        out[f"restore_faces_per_s_{p}"] = fig(f"restore_bench_{p}", "faces_per_s")
        out[f"restore_model_only_faces_per_s_{p}"] = fig(f"restore_bench_{p}", "model_only_faces_per_s")
    out["train_batch"] = fig("train_bench_fp32", "batch") or fig("train_bench_bf16", "batch")
    out["restore_batch"] = fig("restore_bench_fp32", "batch_size") or fig("restore_bench_bf16", "batch_size")
    out["ddp_backend"] = fig("ddp_step", "backend")
    out["ddp_img_per_s"] = fig("ddp_step", "img_per_s")
    out["run_steps"] = fig("train_run", "steps")
    out["run_img_per_s"] = fig("train_run", "throughput_img_s_median")
    out["run_val"] = fig("train_run", "val")
    out["cuda_tests"] = {k: fig("cuda_tests", k) for k in ("passed", "failed", "skipped")}
    out["stages_ok"] = sum(1 for r in stages.values() if r.get("status") == "ok")
    out["stages_failed"] = sorted(n for n, r in stages.items() if r.get("status") in ("failed", "timeout"))
    return out


def add_tar(dest: Path, files: list[tuple[Path, str]], limit: int = MAX_FILE_BYTES - MIB) -> list[str]:
    """A gzip tar of ``files`` (path, name inside); files that would take it over ``limit`` are left out."""
    left_out, total = [], 0
    with tarfile.open(dest, "w:gz") as tar:
        for path, arc in files:
            if not path.is_file():
                continue
            size = path.stat().st_size
            if total + size > limit:
                left_out.append(arc)
                continue
            tar.add(path, arcname=arc)
            total += size
    return left_out


def finish(work: Path, out: Path, meta_path: Path | None) -> int:
    out.mkdir(parents=True, exist_ok=True)
    meta = read_json(meta_path) if meta_path else {}
    meta["env"] = read_json(work / "figures" / "install.json")
    if meta["env"].get("gpu"):
        meta["gpu"] = meta["env"]["gpu"]
    t0 = meta.get("started_epoch")
    if t0:
        meta["elapsed_s"] = round(time.time() - float(t0), 1)
    stages = {}
    for name in STAGES:
        rec = read_json(work / "stages" / f"{name}.json")
        stages[name] = rec or {"status": "not_run", "seconds": 0.0, "reason": "the script ended before this stage",
                               "figures": {}}
    results = {"meta": meta, "headline": headline(stages), "stages": stages}
    # the training curve (loss/total per logged step) for the plot
    run_dir = (stages["train_run"].get("figures") or {}).get("run_dir")
    curve = []
    if run_dir and (Path(run_dir) / "stats.jsonl").is_file():
        for line in (Path(run_dir) / "stats.jsonl").read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if "train/loss/total" in rec:
                curve.append([rec["step"], rec["train/loss/total"]])
    results["train_curve"] = curve
    written: dict[str, str] = {}
    try:
        if plot(results, out / "figures.png"):
            written["figures.png"] = "img/s, peak memory, faces/s per precision; training loss"
    except Exception as exc:  # noqa: BLE001 - a broken plot must not lose the JSON
        results["plot_error"] = f"{type(exc).__name__}: {exc}"[:300]
    weights_name = "meer_gpu_fp16.pt" if meta.get("mode") == "gpu" else "meer_smoke_fp16.pt"
    if run_dir and (Path(run_dir) / "meer_inference.pt").is_file():
        src = Path(run_dir) / "meer_inference.pt"
        if src.stat().st_size < MAX_FILE_BYTES:
            shutil.copy2(src, out / weights_name)
            written[weights_name] = "the run's EMA weights, float16 (meer-restore --checkpoint)"
        else:
            results["weights_note"] = f"meer_inference.pt is {src.stat().st_size / MIB:.1f} MiB: not copied"
    grids = sorted((Path(run_dir) / "grids").glob("*.png")) if run_dir else []
    if grids:
        shutil.copy2(grids[-1], out / "grid_last.png")
        written["grid_last.png"] = f"the last training grid ({grids[-1].name}): masked / predicted map / restored / clean"
        left = add_tar(out / "grids.tar.gz", [(g, f"grids/{g.name}") for g in grids])
        written["grids.tar.gz"] = "every training grid" + (f" ({len(left)} left out for size)" if left else "")
    logs = [(p, f"logs/{p.name}") for p in sorted((work / "logs").glob("*")) if p.is_file()]
    logs += [(p, f"stages/{p.name}") for p in sorted((work / "stages").glob("*.json"))]
    if run_dir:
        for n in ("log.txt", "stats.jsonl", "config.yaml"):
            logs.append((Path(run_dir) / n, f"run/{n}"))
    export_json = work / "export" / "export.json"
    logs.append((export_json, "export/export.json"))
    left = add_tar(out / "logs.tar.gz", logs)
    written["logs.tar.gz"] = "stage logs, stage records, the run's log/stats/config, export.json" + (
        f" ({len(left)} left out for size)" if left else "")
    results["outputs"] = written
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    # the device tool brings back at most 8 files of under 16 MiB each: check what is there
    files = [p for p in out.rglob("*") if p.is_file()]
    big = [p.name for p in files if p.stat().st_size >= MAX_FILE_BYTES]
    # summary
    print("\n== stage summary (wall seconds, CPU seconds of the stage's processes, a figure) " + "=" * 20)
    for name, rec in stages.items():
        figs = rec.get("figures") or {}
        key = next((k for k in ("img_per_s", "faces_per_s", "passed", "faces", "steps", "files_mib", "torch")
                    if k in figs), None)
        shown = f"{key}={figs[key]:.1f}" if key and isinstance(figs[key], float) else (f"{key}={figs[key]}" if key else "")
        cpu = f"{rec['cpu_s']:6.1f}" if isinstance(rec.get("cpu_s"), (int, float)) else "     -"
        print(f"{name:20s} {rec.get('status', '?'):8s} {rec.get('seconds', 0):7.1f}s {cpu} CPU-s  {shown[:60]}"
              + (f"  ({rec.get('reason')})"[:120] if rec.get("reason") and rec.get("status") != "ok" else ""))
    print(f"outputs in {out}: {', '.join(sorted(p.name for p in files))}")
    if len(files) > MAX_FILES or big:
        print(f"finish: {len(files)} files (at most {MAX_FILES}), too large: {big}", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("unpack")
    s.add_argument("pack", type=Path)
    s.add_argument("dest", type=Path)
    s.add_argument("--json")
    s = sub.add_parser("env")
    s.add_argument("--json")
    s = sub.add_parser("cuda-tests")
    s.add_argument("--json")
    s.add_argument("--log-dir", type=Path, default=Path("."))
    s.add_argument("--list-only", action="store_true", help="record the selection, run nothing")
    s = sub.add_parser("list-cuda-tests")
    for name in ("train-bench", "ddp"):
        s = sub.add_parser(name)
        s.add_argument("--config", required=True)
        s.add_argument("--amp", default="none", choices=["none", "fp16", "bf16"])
        s.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
        s.add_argument("--batch", type=int, default=0)
        s.add_argument("--steps", type=int, default=5)
        s.add_argument("--warmup", type=int, default=2)
        s.add_argument("--threads", type=int, default=0)
        s.add_argument("--json")
        if name == "ddp":
            s.add_argument("--backend", default="nccl", choices=["nccl", "gloo"])
    s = sub.add_parser("restore-figures")
    s.add_argument("raw", type=Path)
    s.add_argument("precision")
    s.add_argument("--json")
    s = sub.add_parser("train-plan")
    s.add_argument("--bench", type=Path, required=True)
    s.add_argument("--batch", type=int, help="the run's global batch (default: the benchmark's)")
    s.add_argument("--seconds", type=float, required=True)
    s.add_argument("--floor", type=int, default=100)
    s.add_argument("--cap", type=int, default=20000)
    s = sub.add_parser("train-summary")
    s.add_argument("runs", type=Path)
    s.add_argument("--json")
    s = sub.add_parser("export")
    s.add_argument("run", type=Path)
    s.add_argument("dest", type=Path)
    s.add_argument("--formats", nargs="+", default=["onnx", "torchscript"], choices=["onnx", "torchscript"])
    s.add_argument("--json")
    s = sub.add_parser("record")
    s.add_argument("work", type=Path)
    s.add_argument("name")
    s.add_argument("--rc", type=int, default=0)
    s.add_argument("--seconds", type=float, default=0.0)
    s.add_argument("--timeout", type=int)
    s.add_argument("--skip")
    s.add_argument("--log")
    s.add_argument("--cpu", type=float, help="CPU seconds of the stage's processes (user + system)")
    s = sub.add_parser("finish")
    s.add_argument("work", type=Path)
    s.add_argument("out", type=Path)
    s.add_argument("--meta", type=Path)
    a = p.parse_args(argv)
    if a.cmd == "unpack":
        return unpack(a.pack, a.dest, a.json)
    if a.cmd == "env":
        return env(a.json)
    if a.cmd == "cuda-tests":
        return cuda_tests(a.json, a.log_dir, a.list_only)
    if a.cmd == "list-cuda-tests":
        print("\n".join(cuda_test_ids(REPO / "tests")))
        return 0
    if a.cmd == "train-bench":
        return train_bench(a)
    if a.cmd == "ddp":
        return ddp(a)
    if a.cmd == "restore-figures":
        return restore_figures(a.raw, a.precision, a.json)
    if a.cmd == "train-plan":
        return train_plan(a.bench, a.batch, a.seconds, a.floor, a.cap)
    if a.cmd == "train-summary":
        return train_summary(a.runs, a.json)
    if a.cmd == "export":
        return export(a.run, a.dest, a.formats, a.json)
    if a.cmd == "record":
        return record(a.work, a.name, a.rc, a.seconds, a.skip, a.log, a.timeout, a.cpu)
    if a.cmd == "finish":
        return finish(a.work, a.out, a.meta)
    return 2


if __name__ == "__main__":
    sys.exit(main())
