"""dlib's face ResNet in PyTorch against dlib's C++ network (not timed tests).

    # faces/s of the PyTorch network (fp32, fp32 channels-last, bf16 autocast) and of dlib's C++
    # compute_face_descriptor on the same 150 px chips; CUDA rows too when a GPU is present
    python benchmarks/bench_dlib.py speed [--faces 64] [--threads 2] [--seconds 4]

    # verification on the LFW evaluation-only identities (needs ../shared/data): dlib's C++ network on
    # its own chips vs the PyTorch network on meer's 112 crops through the fixed warp, 10-fold accuracy
    python benchmarks/bench_dlib.py accuracy [--per-fold 300] [--out cache/bench_dlib]

``accuracy`` runs both pipelines on every photo of ``faces/lfw`` whose identity is listed in
``splits/lfw_eval_identities.txt``:

* dlib: dlib's HOG detector (1 upsampling; the face overlapping meer's detection), its 5-point shape
  predictor, ``get_face_chip(150, 0.25)`` and ``compute_face_descriptor``, as ``dnn_face_recognition_ex``;
* meer: meer's detector and ArcFace alignment (``meer.faces``) to the 112 crop, then
  ``crops112_to_dlib_chips`` (reflection, zeros and border fills) and the PyTorch network;
* meer-photo: the same alignment, but the chip cut straight from the photo (``photo_to_dlib_chip``): what
  a larger aligned crop would give (the chin below the 112 crop is real, no second resampling);
* torch-on-dlib-chips: the PyTorch network on dlib's own chips (parity, on every face).

Pairs come from ``meer.data.pairs.make_pairs`` (10 identity-disjoint folds, seed 0); accuracy is
LFW-style 10-fold accuracy on the Euclidean distance of the raw 128-d descriptors, scored on the
pairs where every pipeline found both faces.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def example_chips(n: int) -> np.ndarray:
    """dlib chips of LFW faces (shared data) or of the bundled examples, repeated to ``n``."""
    import dlib

    from meer.data.splits import shared_data_root
    from meer.utils.dlib_models import SHAPE_5, dlib_model_path
    from meer.utils.images import read_image

    hog, sp = dlib.get_frontal_face_detector(), dlib.shape_predictor(str(dlib_model_path(SHAPE_5)))
    lfw = shared_data_root() / "faces" / "lfw"
    files = ([sorted(d.glob("*.jpg"))[0] for d in sorted(lfw.iterdir()) if d.is_dir()][: n + 8] if lfw.is_dir()
             else sorted((REPO / "examples").glob("*.png")) + sorted((REPO / "examples").glob("*.jpg")))
    chips = []
    for f in files:
        rgb = read_image(f).rgb
        found = list(hog(rgb, 1))
        if found:
            chips.append(dlib.get_face_chip(rgb, sp(rgb, max(found, key=lambda r: r.area())), 150, 0.25))
        if len(chips) == n:
            break
    return np.stack([chips[i % len(chips)] for i in range(n)])


def rate(fn, faces: int, seconds: float) -> float:
    fn()  # warm-up
    fn()
    t0, runs = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds or runs < 2:
        fn()
        runs += 1
    return faces * runs / (time.perf_counter() - t0)


def speed(args) -> dict:
    import dlib
    import torch

    from meer.models.dlib_resnet import load_dlib_resnet
    from meer.utils.dlib_models import RESNET, dlib_model_path

    torch.set_num_threads(args.threads)
    chips = example_chips(args.faces)
    rec = dlib.face_recognition_model_v1(str(dlib_model_path(RESNET)))
    rows = []
    listed = [c for c in chips]
    rows.append(("dlib C++ compute_face_descriptor, list of chips", "cpu", len(chips),
                 rate(lambda: rec.compute_face_descriptor(listed), len(chips), args.seconds)))
    rows.append(("dlib C++ compute_face_descriptor, one chip per call", "cpu", 1,
                 rate(lambda: rec.compute_face_descriptor(listed[0]), 1, args.seconds)))
    net = load_dlib_resnet()
    x_all = torch.from_numpy(chips).permute(0, 3, 1, 2).float() / 255.0
    ref = np.array([np.array(v) for v in rec.compute_face_descriptor(listed)], np.float32)
    diffs = {}
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        m = net.to(dev)
        batches = (1, 16, 64) if dev == "cpu" else (64, 256)
        variants = [("fp32", None, False), ("fp32 channels-last", None, True), ("bf16 autocast", torch.bfloat16, False)]
        if dev == "cuda":
            variants.append(("fp16 autocast", torch.float16, False))
        for label, dtype, cl in variants:
            mm = m.to(memory_format=torch.channels_last) if cl else m.to(memory_format=torch.contiguous_format)
            for b in batches:
                xb = x_all[:b] if b <= len(x_all) else x_all.repeat((b + len(x_all) - 1) // len(x_all), 1, 1, 1)[:b]
                xb = xb.to(dev)
                xb = xb.contiguous(memory_format=torch.channels_last) if cl else xb

                def run(xb=xb, mm=mm, dtype=dtype, dev=dev):
                    with torch.inference_mode(), torch.autocast(dev, dtype=dtype or torch.float32, enabled=dtype is not None):
                        out = mm(xb)
                    if dev == "cuda":
                        torch.cuda.synchronize()
                    return out

                rows.append((f"PyTorch {label}", dev, b, rate(run, b, args.seconds)))
            with torch.inference_mode(), torch.autocast(dev, dtype=dtype or torch.float32, enabled=dtype is not None):
                out = mm(x_all.to(dev).contiguous(memory_format=torch.channels_last) if cl else x_all.to(dev))
            diffs[f"{label} ({dev})"] = float(np.abs(out.float().cpu().numpy() - ref).max())
        net = net.cpu()
    return {"rows": rows, "max_abs_diff_vs_dlib": diffs, "threads": args.threads, "faces": len(chips),
            "cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__, "dlib": dlib.__version__,
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def speed_table(res: dict) -> str:
    L = [f"{res['cpu']}, {res['cores']} cores, torch {res['torch']} ({res['threads']} threads), dlib {res['dlib']}"
         + (f", GPU {res['gpu']}" if res["gpu"] else ", no GPU"), "",
         "| network | device | batch | faces/s |", "|---|---|---|---|"]
    for name, dev, b, r in res["rows"]:
        L.append(f"| {name} | {dev} | {b} | {r:.1f} |")
    L += ["", "max |diff| vs dlib C++ on the same chips: "
          + ", ".join(f"{k} {v:.1e}" for k, v in res["max_abs_diff_vs_dlib"].items())]
    return "\n".join(L)


# ----------------------------------------------------------------------------------------- accuracy

def overlap(box, r) -> float:
    ix = max(0.0, min(box[2], r.right()) - max(box[0], r.left()))
    iy = max(0.0, min(box[3], r.bottom()) - max(box[1], r.top()))
    inter = ix * iy
    union = (box[2] - box[0]) * (box[3] - box[1]) + r.area() - inter
    return inter / union if union > 0 else 0.0


def prepare(files: list[Path], cache: Path) -> dict:
    """Per photo: meer's 112 crop and photo chip, dlib's chip and C++ descriptor (cached in ``cache``)."""
    import dlib
    import torch

    from meer.faces.align import align_face
    from meer.faces.detect import FaceDetector
    from meer.faces.dlib_chip import photo_to_dlib_chip
    from meer.utils.dlib_models import RESNET, SHAPE_5, dlib_model_path
    from meer.utils.images import read_image

    path = cache / "faces.npz"
    keys = [str(f) for f in files]
    if path.is_file():
        data = dict(np.load(path, allow_pickle=False))
        if data["files"].tolist() == keys:
            return data
    torch.set_num_threads(2)
    det = FaceDetector(device="cpu", batch_size=16)
    hog, sp = dlib.get_frontal_face_detector(), dlib.shape_predictor(str(dlib_model_path(SHAPE_5)))
    rec = dlib.face_recognition_model_v1(str(dlib_model_path(RESNET)))
    n = len(files)
    out = {"files": np.array(keys), "meer_ok": np.zeros(n, bool), "dlib_ok": np.zeros(n, bool),
           "crops": np.zeros((n, 112, 112, 3), np.uint8), "photo_chips": np.zeros((n, 150, 150, 3), np.uint8),
           "dlib_chips": np.zeros((n, 150, 150, 3), np.uint8), "dlib_desc": np.zeros((n, 128), np.float32)}
    t0 = time.perf_counter()
    for s in range(0, n, 16):
        images = [read_image(f).rgb for f in files[s:s + 16]]
        for k, (rgb, dets) in enumerate(zip(images, det.detect(images))):
            i = s + k
            box = None
            if dets:
                al = align_face(rgb, dets[0].landmarks)
                out["crops"][i], out["meer_ok"][i] = al.crop, True
                out["photo_chips"][i] = photo_to_dlib_chip(rgb, al.matrix)
                box = dets[0].box
            found = list(hog(rgb, 1))
            if box is not None and found:
                best = max(found, key=lambda r: overlap(box, r))
                found = [best] if overlap(box, best) >= 0.3 else []
            elif found:  # no meer face: dlib's own largest face
                found = [max(found, key=lambda r: r.area())]
            if found:
                chip = dlib.get_face_chip(rgb, sp(rgb, found[0]), 150, 0.25)
                out["dlib_chips"][i], out["dlib_ok"][i] = chip, True
                out["dlib_desc"][i] = np.array(rec.compute_face_descriptor(chip), np.float32)
        print(f"  prepared {min(s + 16, n)}/{n} photos ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **out)
    return out


def accuracy(args) -> dict:
    import torch

    from meer.data.pairs import make_pairs
    from meer.data.splits import shared_data_root
    from meer.evaluation.metrics import kfold_accuracy, roc_auc
    from meer.faces.dlib_chip import crops112_to_dlib_chips
    from meer.models.dlib_resnet import load_dlib_resnet

    root = Path(args.shared) if args.shared else shared_data_root()
    ids = (root / "splits" / "lfw_eval_identities.txt").read_text().split()
    files = {name: sorted((root / "faces" / "lfw" / name).glob("*.jpg")) for name in ids}
    files = {k: v for k, v in files.items() if v}
    pairs = make_pairs(files, n_folds=10, per_fold=args.per_fold, seed=0)
    ordered = sorted({p for pr in pairs for p in (pr.path_a, pr.path_b)})
    index = {p: i for i, p in enumerate(ordered)}
    data = prepare(ordered, Path(args.out))
    torch.set_num_threads(2)
    net = load_dlib_resnet()

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return torch.cat([net(x[s:s + 64]) for s in range(0, len(x), 64)]).numpy()

    def to_t(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255.0

    crops = to_t(data["crops"])
    desc = {"dlib C++ on dlib's chips": data["dlib_desc"],
            "PyTorch on dlib's chips": run(to_t(data["dlib_chips"]))}
    for mode in ("reflection", "zeros", "border"):
        chips = torch.cat([crops112_to_dlib_chips(crops[s:s + 64], padding_mode=mode) for s in range(0, len(crops), 64)])
        desc[f"PyTorch on meer 112 crops, warp ({mode})"] = run(chips)
    desc["PyTorch on chips cut from the photo via meer's alignment"] = run(to_t(data["photo_chips"]))
    ok = data["meer_ok"] & data["dlib_ok"]
    a = np.array([index[p.path_a] for p in pairs])
    b = np.array([index[p.path_b] for p in pairs])
    labels = np.array([p.same for p in pairs])
    folds = np.array([p.fold for p in pairs])
    keep = ok[a] & ok[b]
    rows = []
    for name, d in desc.items():
        dist = np.linalg.norm(d[a[keep]] - d[b[keep]], axis=1)
        r = kfold_accuracy(-dist, labels[keep], folds[keep])
        at06 = float(((dist < 0.6) == labels[keep]).mean())
        rows.append({"pipeline": name, "accuracy": r.accuracy, "std": r.std, "auc": roc_auc(-dist, labels[keep]),
                     "accuracy_at_0.6": at06})
    parity = float(np.abs(desc["PyTorch on dlib's chips"][data["dlib_ok"]] - data["dlib_desc"][data["dlib_ok"]]).max())
    to_dlib = {name: float(np.linalg.norm(d[ok] - data["dlib_desc"][ok], axis=1).mean())
               for name, d in desc.items() if name.startswith("PyTorch on meer") or "photo" in name}
    return {"identities": len(files), "photos": len(ordered), "pairs": len(pairs), "pairs_scored": int(keep.sum()),
            "genuine_scored": int(labels[keep].sum()), "meer_found": int(data["meer_ok"].sum()),
            "dlib_found": int(data["dlib_ok"].sum()), "rows": rows, "parity_max_abs_diff": parity,
            "parity_faces": int(data["dlib_ok"].sum()), "mean_distance_to_dlib_descriptor": to_dlib,
            "cpu": cpu_name()}


def accuracy_table(res: dict) -> str:
    L = [f"LFW evaluation-only identities: {res['identities']} identities, {res['photos']} photos; meer found "
         f"{res['meer_found']}, dlib's HOG {res['dlib_found']}; {res['pairs_scored']} of {res['pairs']} pairs scored "
         f"({res['genuine_scored']} genuine), 10 identity-disjoint folds", "",
         "| pipeline | 10-fold accuracy % (std) | AUC | accuracy at dlib's 0.6 % |", "|---|---|---|---|"]
    for r in res["rows"]:
        L.append(f"| {r['pipeline']} | {100 * r['accuracy']:.2f} ({100 * r['std']:.2f}) | {r['auc']:.4f} | "
                 f"{100 * r['accuracy_at_0.6']:.2f} |")
    L += ["", f"parity on {res['parity_faces']} dlib chips: max |diff| {res['parity_max_abs_diff']:.1e}", "",
          "mean Euclidean distance to dlib's C++ descriptor of the same photo: "
          + "; ".join(f"{k}: {v:.3f}" for k, v in res["mean_distance_to_dlib_descriptor"].items())]
    return "\n".join(L)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--faces", type=int, default=64)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--seconds", type=float, default=4.0)
    s.add_argument("--json", type=Path)
    a = sub.add_parser("accuracy")
    a.add_argument("--per-fold", type=int, default=300)
    a.add_argument("--shared", help="shared data root (default ../shared/data or $MEER_SHARED_DATA)")
    a.add_argument("--out", default=str(REPO / "cache" / "bench_dlib"))
    args = ap.parse_args(argv)
    if args.cmd == "speed":
        res = speed(args)
        print(speed_table(res))
        if args.json:
            args.json.write_text(json.dumps(res, indent=2))
    else:
        res = accuracy(args)
        print(accuracy_table(res))
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "accuracy.json").write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
