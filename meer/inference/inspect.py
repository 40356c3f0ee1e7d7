"""Looking inside a trained MEER model: occlusion maps, the decoupling gate, identity-code swaps, 2-D projections
and how well each code separates identities from mask kinds (``notebooks/02_decoupling.ipynb``).

    from meer.inference import inspect as ins
    parts = ins.decouple_batches(model, masked_uint8, masks=gt)        # numpy: occ_map, gate, id_code, ..., iou
    att = ins.feature_attention(model, ins.to_tensor(masked_uint8))      # where the identity code reads from
    grid = ins.swap_restorations(model, ins.to_tensor(masked_uint8))     # [i, j]: face i restored with j's code
    xy, ratio = ins.pca(parts["id_code"])                                # 2-D projection, explained variance
    ins.knn_accuracy(parts["id_code"], identity, groups=photo)          # leave-one-out, same photo excluded

Everything works on any ``MEER`` instance (eval mode, any size); nothing here changes the model. Images are
``N x H x W x 3`` uint8 arrays (aligned crops) or ``N x 3 x H x W`` float tensors in [0, 1].
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from meer.losses.occlusion import mask_iou
from meer.utils.tensors import images_to_tensor, tensor_to_images

# ----------------------------------------------------------------------------------------------- conversions


def to_tensor(images: np.ndarray | Sequence[np.ndarray] | torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
    """``N x H x W x 3`` uint8 (or a list of ``H x W x 3``) -> ``N x 3 x H x W`` float32 in [0, 1]; tensors
    pass through (moved to ``device``)."""
    if isinstance(images, torch.Tensor):
        return images.to(device=device, dtype=torch.float32)
    arr = np.stack(list(images)) if not isinstance(images, np.ndarray) else images
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"expected N x H x W x 3 images, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return images_to_tensor(arr).to(device)
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float().to(device)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``N x 3 x H x W`` float in [0, 1] -> ``N x H x W x 3`` uint8 (:func:`meer.utils.tensors.tensor_to_images`)."""
    return tensor_to_images(images)


def mask_tensor(masks: np.ndarray | Sequence[np.ndarray] | torch.Tensor) -> torch.Tensor:
    """``N x H x W`` bool/0-1 masks (numpy or tensor, also ``N x 1 x H x W``) -> ``N x 1 x H x W`` float32."""
    t = masks if isinstance(masks, torch.Tensor) else torch.from_numpy(np.stack(list(masks)) if not isinstance(masks, np.ndarray) else masks)
    t = t.float()
    if t.dim() == 3:
        t = t[:, None]
    if t.dim() != 4 or t.shape[1] != 1:
        raise ValueError(f"expected N x H x W masks, got shape {tuple(t.shape)}")
    return t


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _check_eval(model: nn.Module) -> None:
    if model.training:
        raise ValueError("call model.eval() first: inspection uses the running BatchNorm statistics")


# ----------------------------------------------------------------------------------------------- occlusion / codes


@torch.no_grad()
def decouple_batches(model: nn.Module, images: np.ndarray | torch.Tensor, masks: Any = None,
                     batch_size: int = 64) -> dict[str, np.ndarray]:
    """``MEER.decouple`` over many faces in batches, as numpy arrays.

    Returns ``occ_map`` (``N x H x W`` soft occlusion probabilities), ``composite_mask`` (``N x H x W`` bool,
    the binarised dilated map the restorer uses), ``gate`` (``N x h x w``, the map at the deepest level),
    ``id_code``, ``occ_code``, ``embedding`` and ``occluded`` (fraction of pixels with ``occ_map > 0.5``);
    with ``masks`` (ground truth, ``N x H x W``) also ``iou`` (per face, at the model's threshold)."""
    _check_eval(model)
    dev = _device(model)
    x_all = to_tensor(images)
    m_all = mask_tensor(masks) if masks is not None else None
    if m_all is not None and (m_all.shape[0] != x_all.shape[0] or m_all.shape[-2:] != x_all.shape[-2:]):
        raise ValueError(f"masks {tuple(m_all.shape)} do not match the images {tuple(x_all.shape)}")
    thr = float(getattr(getattr(model, "cfg", None), "infer_threshold", 0.5))
    keys = ("occ_map", "composite_mask", "gate", "id_code", "occ_code", "embedding")
    out: dict[str, list[np.ndarray]] = {k: [] for k in (*keys, "occluded", "iou")}
    for s in range(0, x_all.shape[0], batch_size):
        x = x_all[s:s + batch_size].to(dev)
        d = model.decouple(x)
        for k in keys:
            v = d[k].float().cpu()
            out[k].append((v[:, 0] if v.dim() == 4 else v).numpy())
        out["occluded"].append((d["occ_map"] > thr).float().mean(dim=(1, 2, 3)).cpu().numpy())
        if m_all is not None:
            out["iou"].append(mask_iou(d["occ_map"].float().cpu(), m_all[s:s + batch_size], thr).numpy())
    res = {k: np.concatenate(v) for k, v in out.items() if v}
    res["composite_mask"] = res["composite_mask"] > 0.5
    return res


def _id_linear(model: nn.Module) -> nn.Linear:
    lin = next((m for m in model.decoupling.id_fc if isinstance(m, nn.Linear)), None)
    if lin is None:
        raise ValueError("the decoupling module has no linear id projection")
    return lin


@torch.no_grad()
def feature_attention(model: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Where the codes read from, at the deepest encoder level (``B x h x w`` maps):

    * ``gate``: the predicted occlusion map at that level (the occlusion code's pooling weights);
    * ``id_contribution``: for each position ``p``, the norm of its exact share ``W_p f_p (1 - g_p)`` of the
      identity code before its BatchNorm (``id_code = BN(sum_p W_p f_p (1 - g_p))``);
    * ``id_contribution_ungated``: the same without the gate (what the identity code would read if nothing
      were hidden), so ``1 - id_contribution / id_contribution_ungated`` is what the gate removes.
    """
    _check_eval(model)
    x = to_tensor(images, _device(model))
    model._check(x)
    feats, dec, _ = model._recognize(x)
    deep = feats[-1]
    if getattr(model.decoupling, "id_pool", False):
        # dlib encoder: the identity code is the visibility-weighted mean of the chip-space last block; each
        # cell's share is w_p f_p / sum(w) (gated) or f_p / n (ungated), shown on the deepest crop level's grid
        pooled = model.encoder(x * 2.0 - 1.0)[-1].float()
        g = F.adaptive_avg_pool2d(model.encoder.to_chip(dec["occ_map"].float()), pooled.shape[-2:])
        wgt = (1.0 - g).clamp_min(1e-3)
        gated = (pooled * wgt / wgt.sum(dim=(2, 3), keepdim=True)).norm(dim=1, keepdim=True)
        ungated = (pooled / (pooled.shape[-2] * pooled.shape[-1])).norm(dim=1, keepdim=True)
        size = dec["gate"].shape[-2:]
        return {"gate": dec["gate"][:, 0].float(), "id_contribution": F.interpolate(gated, size=size)[:, 0],
                "id_contribution_ungated": F.interpolate(ungated, size=size)[:, 0]}
    f = model.decoupling.id_proj(deep).float()  # B x C x h x w
    b, c, h, w = f.shape
    weight = _id_linear(model).weight.float().view(-1, c, h, w)  # D x C x h x w (flatten order c, y, x)
    ungated = torch.einsum("dcyx,bcyx->bdyx", weight, f).norm(dim=1)
    gated = torch.einsum("dcyx,bcyx->bdyx", weight, f * (1.0 - dec["gate"].float())).norm(dim=1)
    return {"gate": dec["gate"][:, 0].float(), "id_contribution": gated, "id_contribution_ungated": ungated}


def upsample(maps: torch.Tensor | np.ndarray, size: int | tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    """``N x h x w`` maps -> ``N x H x W`` numpy (``mode``: ``"bilinear"`` or ``"nearest"``, which shows the cells)."""
    t = torch.as_tensor(np.asarray(maps) if isinstance(maps, np.ndarray) else maps.detach().cpu()).float()[:, None]
    size = (size, size) if isinstance(size, int) else tuple(size)
    kw = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(t, size=size, mode=mode, **kw)[:, 0].numpy()


def share_inside(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per image, the share of a non-negative map's mass that lies inside ``masks`` (``N x H x W``; maps of
    another size are resized bilinearly to the masks)."""
    maps = np.asarray(maps, dtype=np.float64)
    masks = np.asarray(masks, dtype=np.float64)
    if maps.shape[-2:] != masks.shape[-2:]:
        maps = upsample(maps.astype(np.float32), masks.shape[-2:]).astype(np.float64)
    maps = np.clip(maps, 0, None)
    total = maps.sum(axis=(1, 2))
    return np.where(total > 0, (maps * masks).sum(axis=(1, 2)) / np.where(total > 0, total, 1.0), 0.0)


def embedding_sensitivity(model: nn.Module, images: torch.Tensor, directions: int = 8, seed: int = 0) -> np.ndarray:
    """How strongly each pixel moves the embedding: an estimate of the squared Jacobian norm of
    ``model.embed`` per pixel (``N x H x W``, summed over colours), from ``directions`` random unit
    projections ``v`` (``E_v |d(v . emb)/dx|^2`` is proportional to ``||J||^2``). The gate is detached in
    the default model, so this is the sensitivity with the occlusion map held fixed."""
    _check_eval(model)
    x = to_tensor(images, _device(model)).detach().requires_grad_(True)
    gen = torch.Generator().manual_seed(seed)
    emb = model.embed(x)
    acc = torch.zeros_like(x)
    for i in range(directions):
        v = torch.randn(emb.shape, generator=gen).to(emb)
        v = v / v.norm(dim=1, keepdim=True)
        (g,) = torch.autograd.grad((emb * v).sum(), x, retain_graph=i < directions - 1)
        acc += g.detach() ** 2
    return (acc.sum(dim=1) / directions).cpu().numpy()


# ----------------------------------------------------------------------------------------------- code swaps


@torch.no_grad()
def restore_with_codes(model: nn.Module, masked: torch.Tensor, id_codes: torch.Tensor | Sequence[torch.Tensor],
                       mask: torch.Tensor | None = None) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
    """Restore ``masked`` (``B x 3 x H x W``) as ``MEER.forward`` does, but feed the generator the identity codes
    ``id_codes`` (``B x id_dim``) instead of the faces' own. Everything else is each face's own: the encoder
    skips (visible context), the predicted occlusion map (or ``mask``) and the composite. Returns ``restored``,
    ``generated`` and ``composite_mask``. With the faces' own codes this equals ``model(masked).restored``.

    ``id_codes`` may be a list of such tensors: the encoder then runs once and a list of results comes back."""
    _check_eval(model)
    dev = _device(model)
    x = to_tensor(masked, dev)
    model._check(x, "masked")
    many = not isinstance(id_codes, torch.Tensor)
    code_sets = [z.to(dev, torch.float32) for z in (id_codes if many else [id_codes])]
    for z in code_sets:
        if z.shape != (x.shape[0], model.cfg.id_dim):
            raise ValueError(f"id_codes must be {x.shape[0]} x {model.cfg.id_dim}, got {tuple(z.shape)}")
    feats, dec, _ = model._recognize(x)
    m = mask_tensor(mask).to(dev) if mask is not None else model.composite_mask(dec["occ_map"])
    out = []
    for z in code_sets:
        generated, restored = model.generate(feats, z.to(feats[-1].dtype), m, x)
        out.append({"restored": restored, "generated": generated, "composite_mask": m})
    return out if many else out[0]


@torch.no_grad()
def swap_restorations(model: nn.Module, masked: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``N x N x 3 x H x W``: entry ``[i, j]`` is face ``i`` (its visible context and occlusion map) restored
    with face ``j``'s identity code; the diagonal is the ordinary restoration."""
    _check_eval(model)
    x = to_tensor(masked, _device(model))
    codes = model.decouple(x)["id_code"]
    n = x.shape[0]
    outs = restore_with_codes(model, x, [codes[j:j + 1].expand(n, -1) for j in range(n)], mask)
    return torch.stack([o["restored"] for o in outs], dim=1)  # [i, j]


def region_change(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray, mask: Any) -> np.ndarray:
    """Mean absolute difference of two image batches inside ``mask`` (per image, in [0, 1] units; 0 where
    the mask is empty). uint8 ``N x H x W x 3`` arrays or ``N x 3 x H x W`` float tensors."""
    ta, tb, m = to_tensor(a).cpu(), to_tensor(b).cpu(), mask_tensor(mask).cpu()
    diff = (ta - tb).abs().mean(dim=1, keepdim=True)
    area = m.sum(dim=(1, 2, 3))
    return torch.where(area > 0, (diff * m).sum(dim=(1, 2, 3)) / area.clamp_min(1), torch.zeros_like(area)).numpy()


# ----------------------------------------------------------------------------------------------- projections, stats


def pca(x: np.ndarray, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Project rows of ``x`` (``N x D``) on their first ``k`` principal components (numpy SVD of the centred
    data). Returns ``(N x k projection, k explained-variance ratios)``; signs fixed so each component's
    largest loading is positive (deterministic plots)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"pca needs an N x D array with N >= 2, got shape {x.shape}")
    xc = x - x.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    k = min(k, vt.shape[0])
    comps = vt[:k]
    signs = np.sign(comps[np.arange(k), np.abs(comps).argmax(axis=1)])
    comps = comps * np.where(signs == 0, 1.0, signs)[:, None]
    var = s ** 2
    ratio = var[:k] / var.sum() if var.sum() > 0 else np.zeros(k)
    return xc @ comps.T, ratio


def _distances(x: np.ndarray, metric: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if metric == "cosine":
        n = np.linalg.norm(x, axis=1, keepdims=True)
        xn = x / np.where(n > 0, n, 1.0)
        return np.clip(1.0 - xn @ xn.T, 0.0, 2.0)
    if metric == "euclidean":
        sq = (x ** 2).sum(1)
        return np.sqrt(np.clip(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0, None))
    raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")


def knn_accuracy(x: np.ndarray, labels: Sequence, k: int = 1, groups: Sequence | None = None,
                 metric: str = "cosine") -> float:
    """Leave-one-out k-nearest-neighbour accuracy of predicting ``labels`` from the rows of ``x``.

    ``groups`` (e.g. the source photo of each masked face): neighbours from the sample's own group are
    excluded too, so a photo masked twice cannot vote for itself. Majority vote; ties go to the label of
    the nearest tied neighbour. Samples with no admissible neighbour are skipped."""
    labels = np.asarray(labels)
    d = _distances(x, metric)
    n = len(labels)
    if d.shape[0] != n:
        raise ValueError(f"{d.shape[0]} rows but {n} labels")
    block = np.eye(n, dtype=bool)
    if groups is not None:
        g = np.asarray(groups)
        block |= g[:, None] == g[None, :]
    d = np.where(block, np.inf, d)
    correct = total = 0
    for i in range(n):
        admissible = np.isfinite(d[i]).sum()
        if admissible == 0:
            continue
        order = np.argsort(d[i], kind="stable")[:min(k, admissible)]
        votes: dict[Any, int] = {}
        for j in order:
            votes[labels[j]] = votes.get(labels[j], 0) + 1
        best = max(votes.values())
        pred = next(labels[j] for j in order if votes[labels[j]] == best)
        correct += int(pred == labels[i])
        total += 1
    return correct / total if total else float("nan")


def silhouette(x: np.ndarray, labels: Sequence, metric: str = "cosine") -> float:
    """Mean silhouette coefficient (Rousseeuw 1987): per sample ``(b - a) / max(a, b)`` with ``a`` the mean
    distance to its own label and ``b`` the smallest mean distance to another label; 0 for singletons.
    Near 1: tight, separate clusters; near 0 or below: the labels do not cluster."""
    labels = np.asarray(labels)
    uniq = np.unique(labels)
    if len(uniq) < 2:
        raise ValueError("silhouette needs at least two labels")
    d = _distances(x, metric)
    n = len(labels)
    s = np.zeros(n)
    for i in range(n):
        same = labels == labels[i]
        if same.sum() < 2:
            continue
        a = d[i, same].sum() / (same.sum() - 1)
        b = min(d[i, labels == u].mean() for u in uniq if u != labels[i])
        s[i] = (b - a) / max(a, b) if max(a, b) > 0 else 0.0
    return float(s.mean())


def chance_level(labels: Sequence) -> float:
    """Accuracy of always guessing the most frequent label."""
    _, counts = np.unique(np.asarray(labels), return_counts=True)
    return float(counts.max() / counts.sum())


def separability_table(codes: dict[str, np.ndarray], targets: dict[str, Sequence], groups: Sequence | None = None,
                       k: int = 1, metric: str = "cosine", center: bool = True) -> list[dict[str, Any]]:
    """One row per (code, target): leave-one-out kNN accuracy (same-group neighbours excluded), the chance
    level and the silhouette of the target's labels in that code space. ``center``: subtract each code's mean
    first (a constant offset, e.g. a bias shared by every occlusion code, would otherwise dominate cosines)."""
    rows = []
    for cname, x in codes.items():
        x = np.asarray(x, dtype=np.float64)
        if center:
            x = x - x.mean(axis=0, keepdims=True)
        for tname, y in targets.items():
            rows.append({"code": cname, "target": tname, "knn_acc": knn_accuracy(x, y, k, groups, metric),
                         "chance": chance_level(y), "silhouette": silhouette(x, y, metric)})
    return rows


def format_table(rows: list[dict[str, Any]], floats: str = "{:.3f}") -> str:
    """Plain-text table of dict rows (same keys), for printing in notebooks."""
    if not rows:
        return ""
    keys = list(rows[0])
    cells = [[floats.format(r[k]) if isinstance(r[k], float) else str(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(keys), line(["-" * w for w in widths]), *(line(c) for c in cells)])


# ----------------------------------------------------------------------------------------------- figures


def scatter_by_label(ax, xy: np.ndarray, labels: Sequence, title: str = "", names: dict | None = None,
                     legend: bool = True, size: float = 14.0, max_legend: int = 12) -> None:
    """2-D scatter on a matplotlib ``ax``, one colour (and marker cycle) per label, legend outside on the right."""
    import matplotlib.pyplot as plt

    labels = np.asarray(labels)
    uniq = list(dict.fromkeys(labels.tolist()))
    cmap = plt.get_cmap("tab10" if len(uniq) <= 10 else "tab20")
    markers = "os^Dv<>Ph*"
    for i, u in enumerate(uniq):
        sel = labels == u
        ax.scatter(xy[sel, 0], xy[sel, 1], s=size, color=cmap(i % cmap.N), marker=markers[(i // 10) % len(markers)],
                   label=str(names.get(u, u) if names else u), alpha=0.8, linewidths=0)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    if legend and len(uniq) <= max_legend:
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, markerscale=1.2)


__all__ = ["chance_level", "decouple_batches", "embedding_sensitivity", "feature_attention",
           "format_table", "knn_accuracy", "mask_tensor", "pca", "region_change", "restore_with_codes",
           "scatter_by_label", "separability_table", "share_inside", "silhouette", "swap_restorations",
           "to_tensor", "to_uint8", "upsample"]
