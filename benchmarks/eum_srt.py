"""EUM/SRT vs plain triplet vs no EUM: masked-probe vs clean-reference verification on the LFW
evaluation-only identities, with dlib's pretrained 128-d descriptor as the frozen recognizer.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/eum_srt.py            # ~20-30 min on 2 busy CPU cores
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/eum_srt.py --train-ids 60 --eval-images 4   # quicker

1. Embeddings (cached in ``cache/eum_bench/``): for each photo of the chosen identities, dlib's HOG
   detector and 68-point predictor find the face on the clean photo; a synthetic mask is drawn onto
   the photo with ``meer.masking.apply_mask`` (seed = photo index, 68-point geometry); the descriptor
   of the clean and of the masked photo are computed with the *clean* photo's landmarks (as the
   evaluation harness does: masked faces are never re-detected). Photos where dlib finds no face are
   counted and left out.
2. EUMs are trained on the training identities' embeddings (LFW minus the evaluation-only list,
   never an evaluation identity) with SRT and with plain triplet (paper settings: margins 2 / 1, SGD
   0.1 Nesterov, semi-hard online mining), several seeds.
3. On the evaluation identities every masked photo is compared with every clean photo of another
   image (genuine: same person; impostor: different person): AUC, EER, TAR@FAR=1%, best-threshold
   accuracy, and rank-1 of masked probes against a clean gallery (first photo per identity).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from meer.data.folders import scan_identity_root  # noqa: E402
from meer.data.splits import read_identity_list, shared_data_root  # noqa: E402
from meer.evaluation.metrics import eer, rank1, roc_auc, tar_at_far  # noqa: E402
from meer.losses.srt import SRTConfig, SRTLoss  # noqa: E402
from meer.masking.apply import apply_mask  # noqa: E402
from meer.models.eum import EUM, EUMConfig  # noqa: E402
from meer.training.tasks.eum_srt import eum_step  # noqa: E402
from meer.utils.images import read_image  # noqa: E402


def dlib_models():
    import dlib

    d = Path(list(importlib.util.find_spec("face_recognition_models").submodule_search_locations)[0]) / "models"
    return (dlib.get_frontal_face_detector(), dlib.shape_predictor(str(d / "shape_predictor_68_face_landmarks.dat")),
            dlib.face_recognition_model_v1(str(d / "dlib_face_recognition_resnet_model_v1.dat")))


def extract(files: list[tuple[str, Path]], cache: Path, seed_offset: int) -> dict:
    """Clean and masked descriptors of ``[(identity, path)]`` (cached in ``cache``)."""
    if cache.is_file():
        z = np.load(cache, allow_pickle=False)
        return {k: z[k] for k in z.files}
    det, sp, rec = dlib_models()
    names, clean, masked, paths = [], [], [], []
    missed = 0
    for k, (name, path) in enumerate(tqdm(files, desc=f"dlib {cache.stem}", unit="img")):
        rgb = np.ascontiguousarray(read_image(path).rgb)
        boxes = det(rgb, 1)
        if not boxes:
            missed += 1
            continue
        box = max(boxes, key=lambda r: r.width() * r.height())
        shape = sp(rgb, box)
        lm68 = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
        m = apply_mask(rgb, lm68, seed_offset + k)
        clean.append(np.asarray(rec.compute_face_descriptor(rgb, shape), np.float32))
        masked.append(np.asarray(rec.compute_face_descriptor(np.ascontiguousarray(m.image), shape), np.float32))
        names.append(name)
        paths.append(str(path))
    out = {"names": np.array(names), "clean": np.stack(clean), "masked": np.stack(masked), "paths": np.array(paths),
           "missed": np.array(missed)}
    cache.parent.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **out)
    return out


def pick(tree: dict[str, list[Path]], names: list[str], per_id: int, rng: np.random.Generator) -> list[tuple[str, Path]]:
    out = []
    for n in names:
        files = tree[n]
        idx = sorted(rng.choice(len(files), size=min(per_id, len(files)), replace=False))
        out += [(n, files[i]) for i in idx]
    return out


def train_eum(data: dict, kind: str, seed: int, epochs: int, residual: bool, batch: int = 64) -> EUM:
    torch.manual_seed(seed)
    labels = torch.from_numpy(np.unique(data["names"], return_inverse=True)[1])
    xm, xc = torch.from_numpy(data["masked"]), torch.from_numpy(data["clean"])
    eum = EUM(EUMConfig(embedding_dim=xm.shape[1], residual=residual))
    loss_fn = SRTLoss(SRTConfig(kind=kind, mining="semihard"))
    opt = torch.optim.SGD(eum.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        eum.train()
        perm = torch.randperm(len(labels), generator=g)
        for s in range(0, len(perm) - batch + 1, batch):
            i = perm[s:s + batch]
            out = eum_step(xm[i], xc[i], labels[i], eum, None, loss_fn, g, precomputed=True)
            opt.zero_grad()
            out["loss"].backward()
            opt.step()
        if len(perm) >= batch:
            sched.step()
    return eum.eval()


def scores_and_labels(probe: np.ndarray, ref: np.ndarray, names: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = probe / np.linalg.norm(probe, axis=1, keepdims=True)
    r = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    sim = p @ r.T
    same = names[:, None] == names[None, :]
    off_diag = ~np.eye(len(names), dtype=bool)  # never the masked and clean versions of one photo
    return sim[off_diag], same[off_diag]


def best_accuracy(s: np.ndarray, y: np.ndarray) -> float:
    """Accuracy at the best threshold (O(n log n); ``accept`` = score >= t over every cut of the sorted scores)."""
    order = np.argsort(-s, kind="stable")
    ys = y[order]
    tp = np.concatenate([[0], np.cumsum(ys)])  # genuine accepted when the top-k are accepted
    fp = np.concatenate([[0], np.cumsum(~ys)])
    correct = tp + (len(ys) - ys.sum() - fp)  # + impostors rejected
    ss = s[order]
    valid = np.concatenate([[True], ss[1:] != ss[:-1], [True]])  # cut only between distinct scores
    return float(correct[valid].max() / len(ys))


def metrics(probe: np.ndarray, ref: np.ndarray, names: np.ndarray) -> dict[str, float]:
    s, y = scores_and_labels(probe, ref, names)
    first = {n: i for i, n in reversed(list(enumerate(names)))}
    gal = np.array(sorted(first.values()))
    probes = np.array([i for i in range(len(names)) if i not in set(gal)])
    p = probe[probes] / np.linalg.norm(probe[probes], axis=1, keepdims=True)
    g = ref[gal] / np.linalg.norm(ref[gal], axis=1, keepdims=True)
    return {"auc": roc_auc(s, y), "eer": eer(s, y), "tar@far1%": tar_at_far(s, y, 0.01)[0],
            "acc": best_accuracy(s, y), "rank1": rank1(p @ g.T, names[probes], names[gal]),
            "cos_masked_clean_same_photo": float(np.mean(np.sum(
                (probe / np.linalg.norm(probe, axis=1, keepdims=True)) * (ref / np.linalg.norm(ref, axis=1, keepdims=True)), 1)))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train-ids", type=int, default=150, help="training identities (LFW minus eval-only)")
    ap.add_argument("--train-images", type=int, default=5, help="photos per training identity")
    ap.add_argument("--eval-images", type=int, default=6, help="photos per evaluation identity")
    ap.add_argument("--eval-ids", type=int, default=0, help="evaluation identities (0: all 63)")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--cache", default=str(REPO / "cache" / "eum_bench"))
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    shared = shared_data_root()
    lfw = shared / "faces" / "lfw"
    tree = scan_identity_root(lfw)
    evals = read_identity_list(shared / "splits" / "lfw_eval_identities.txt")
    rng = np.random.default_rng(0)
    train_pool = sorted(n for n in tree if n not in evals)
    train_names = sorted(rng.choice(train_pool, size=min(args.train_ids, len(train_pool)), replace=False).tolist())
    assert not set(train_names) & evals
    eval_names = sorted(n for n in tree if n in evals)[:args.eval_ids or None]
    tag = f"t{args.train_ids}x{args.train_images}_e{len(eval_names)}x{args.eval_images}"
    t0 = time.time()
    train = extract(pick(tree, train_names, args.train_images, rng), Path(args.cache) / f"train_{tag}.npz", 0)
    test = extract(pick(tree, eval_names, args.eval_images, rng), Path(args.cache) / f"eval_{tag}.npz", 10**6)
    print(f"embeddings: train {len(train['names'])} photos of {len(set(train['names']))} identities "
          f"(dlib missed {int(train['missed'])}), eval {len(test['names'])} photos of {len(set(test['names']))} "
          f"identities (missed {int(test['missed'])}); {time.time() - t0:.0f} s", flush=True)

    results = {"clean vs clean (ceiling)": metrics(test["clean"], test["clean"], test["names"]),
               "no EUM (masked vs clean)": metrics(test["masked"], test["clean"], test["names"])}
    for residual in (False, True):
        for kind in ("triplet", "srt"):
            runs = []
            for seed in range(args.seeds):
                eum = train_eum(train, kind, seed, args.epochs, residual)
                with torch.no_grad():
                    probe = eum(torch.from_numpy(test["masked"])).numpy()
                runs.append(metrics(probe, test["clean"], test["names"]))
            key = f"EUM {'residual' if residual else 'paper MLP'} + {'SRT' if kind == 'srt' else 'triplet'}"
            results[key] = {k: float(np.mean([r[k] for r in runs])) for k in runs[0]}
            results[key].update({f"{k}_std": float(np.std([r[k] for r in runs])) for k in ("auc", "tar@far1%", "rank1")})
            print(f"{key}: done", flush=True)
    cols = ["auc", "eer", "tar@far1%", "acc", "rank1", "cos_masked_clean_same_photo"]
    print("\n| method | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for k, r in results.items():
        cells = []
        for c in cols:
            std = r.get(f"{c}_std")
            cells.append(f"{r[c]:.4f}" + (f" ± {std:.4f}" if std is not None else ""))
        print(f"| {k} | " + " | ".join(cells) + " |")
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
