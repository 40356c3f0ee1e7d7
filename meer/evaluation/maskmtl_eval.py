"""Evaluate a MaskMTL checkpoint: per-task accuracy / MAE on unmasked vs synthetically masked inputs.

    python -m meer.cli.maskmtl_eval --checkpoint runs/00004-maskmtl/checkpoints/ckpt-00003000.pt
    python -m meer.cli.maskmtl_eval --checkpoint CKPT --utkface-root DIR --test-list FILE --json out.json

The test split is the one the run was configured with (``maskmtl.data``; for UTKFace the files of
``splits/utkface_test.txt``, never trained on) unless other data is given. Every test face is scored
twice: as it is, and with a synthetic mask drawn with a fixed seed (``MaskAugment(p=1)``), so the two
columns differ only by the mask. Mask attribute tasks are scored on the masked inputs only (an
unmasked face has no mask kind); the ``masked`` task on both (its target is 0 on unmasked faces).
Classification tasks report accuracy, regression tasks (age) the mean absolute error in years.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from meer.config import from_dict
from meer.masking.batch import MaskAugment
from meer.models.maskmtl import MaskMTL, MaskMTLConfig
from meer.utils.errors import MeerError
from meer.utils.torch_files import load_weights_only

MASK_ONLY = ("mask_kind", "mask_coverage", "mask_color")


def load_maskmtl_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[MaskMTL, dict]:
    """The model of a ``task: maskmtl`` training checkpoint, and the run's config as a dict."""
    path = Path(path)
    state = load_weights_only(path, device)
    task = state.get("task") if isinstance(state, dict) else None
    if not isinstance(task, dict) or "model_cfg" not in task:
        raise MeerError(f"{path}: not a MaskMTL training checkpoint (task: maskmtl)")
    model = MaskMTL(from_dict(MaskMTLConfig, task["model_cfg"], source=str(path)))
    model.load_state_dict(task["model"])
    return model.to(device).eval(), state.get("config", {})


@torch.no_grad()
def evaluate_maskmtl(model: MaskMTL, loader: DataLoader, masking: MaskAugment | None = None, seed: int = 0,
                     device: str | torch.device = "cpu", progress: bool = True) -> dict[str, dict[str, float]]:
    """``{task: {"metric": "acc"|"mae", "unmasked": value, "masked": value, "n_unmasked": n, "n_masked": n}}``."""
    from meer.data.multitask import mask_targets

    masking = masking or MaskAugment(p=1.0)
    masking = masking.to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    model.eval()
    sums: dict[tuple[str, str], list[float]] = {}
    for batch in tqdm(loader, desc="maskmtl-eval", unit="batch", disable=not progress, file=sys.stderr):
        clean = batch["clean"].to(device)
        masked, _, info = masking(clean, None, generator=gen)
        base = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor) and k != "clean"}
        for cond, images, targets in (
                ("unmasked", clean, {**base, "masked": torch.zeros(len(clean), dtype=torch.long, device=device)}),
                ("masked", masked.clamp(0, 1), {**base, **mask_targets(info)})):
            out = model(images)
            for name, y in out.items():
                if name not in targets or (cond == "unmasked" and name in MASK_ONLY):
                    continue
                t, tgt = model.tasks[name], targets[name]
                if t.kind == "classification":
                    keep = tgt >= 0
                    err = (y[keep].argmax(1) == tgt[keep]).float()
                else:
                    keep = torch.isfinite(tgt)
                    err = (y[keep].float() * t.scale - tgt[keep]).abs()
                acc = sums.setdefault((name, cond), [0.0, 0.0])
                acc[0] += float(err.sum())
                acc[1] += int(keep.sum())
    results: dict[str, dict[str, float]] = {}
    for name, t in model.tasks.items():
        row: dict = {"metric": "acc" if t.kind == "classification" else "mae"}
        for cond in ("unmasked", "masked"):
            s, n = sums.get((name, cond), (0.0, 0))
            row[cond] = s / n if n else float("nan")
            row[f"n_{cond}"] = int(n)
        results[name] = row
    return results


def format_table(results: dict[str, dict[str, float]]) -> str:
    lines = ["| task | metric | unmasked | masked | n |", "|---|---|---|---|---|"]
    for name, r in results.items():
        def cell(v: float) -> str:
            return "-" if v != v else (f"{v:.2f}" if r["metric"] == "mae" else f"{100 * v:.1f}%")

        n = max(r["n_unmasked"], r["n_masked"])
        lines.append(f"| {name} | {r['metric']}{' (years)' if r['metric'] == 'mae' else ''} | {cell(r['unmasked'])} | "
                     f"{cell(r['masked'])} | {n} |")
    return "\n".join(lines)
