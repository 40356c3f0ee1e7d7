"""The ``task: eum_srt`` step: train an Embedding Unmasking Model on top of a frozen recognizer.

Each step embeds the masked and the clean face with the frozen recognizer (no gradient), maps the
masked embedding through the EUM (anchor) and applies the self-restrained triplet loss with the clean
embedding of the same image as positive and a mined clean embedding of another identity as negative
(``meer.losses.srt``). Only the EUM has parameters to train.

:func:`eum_step` is the whole computation, usable without the ``meer-train`` loop; :class:`EUMTask`
is the :class:`meer.training.task.Task` the loop drives (identity-folder data like MEER's; SGD with the
``optim`` section's learning-rate schedule; fp16 steps with a non-finite loss are skipped).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from meer.losses.srt import SRTConfig, SRTLoss
from meer.masking.batch import MaskAugment
from meer.models.eum import EUM, EUMConfig, FrozenEmbedder, load_facenet_embedder, load_torchscript_embedder
from meer.training.data import IdentityFolderTask
from meer.training.distributed import DistInfo
from meer.training.task import TaskData, autocast_factory, build_schedulers, scaled_step, step_schedulers
from meer.training.validate import ValSet
from meer.utils.errors import MeerError
from meer.utils.verification import best_threshold, roc_auc


@dataclass
class EmbedderConfig:
    # the frozen recognizer: "meer" (recognition branch of a MEER checkpoint), "torchscript" (any
    # scripted module images -> B x D), "facenet" (InceptionResnetV1 state dict, 512-d), "dlib"
    # (dlib's 128-d ResNet descriptor, pretrained and offline: meer's PyTorch port of dlib's network on
    # dlib's chip warped from the crop, batched on any device)
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


class DlibCropEmbedder(nn.Module):
    """Aligned ArcFace crops (``B x 3 x S x S`` in [0, 1]) -> dlib's raw 128-d descriptors (unnormalised,
    as dlib's ``compute_face_descriptor`` returns them and the ``dlib`` judges compare them).

    The frozen dlib teacher's network (:class:`meer.models.teacher.DlibTeacher`: the PyTorch port of
    dlib's ResNet, equal to dlib's C++ network to 5e-7 on the same chip) on dlib's 150 px chip warped
    from the crop with the fixed mean-landmark geometry (``meer.faces.dlib_chip.crops112_to_dlib_chips``).
    Every face is embedded (no enrolment check): the EUM must learn from all of them. The ``dlib-torch``
    judge uses the same fixed geometry; dlib's C++ judge fits the landmarks of each face instead (mean
    descriptor distance between the two about 0.18 on LFW photos, docs/dlib_resnet.md)."""

    def __init__(self, device: str | torch.device | None = None) -> None:
        super().__init__()
        from meer.models.teacher import build_teacher

        self.teacher = build_teacher("dlib", device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.teacher.features(images).float()


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


class EUMTask(IdentityFolderTask):
    """What ``meer-train`` drives for ``task: eum_srt``."""

    name = "eum_srt"

    def __init__(self, cfg, dist: DistInfo, masking: MaskAugment | None = None) -> None:
        self.cfg = cfg
        self.dist = dist
        self.masking = masking  # the data's MaskAugment (from_data); None: train_step only, no make_batch
        tc: EUMTaskConfig = cfg.eum
        self.device = dist.device
        self.embedder = build_embedder(tc.embedder).to(self.device)
        self.eum = EUM(tc.model).to(self.device)
        self.loss_fn = SRTLoss(tc.loss)
        self.opt = torch.optim.SGD(self.eum.parameters(), lr=tc.lr, momentum=tc.momentum, nesterov=tc.momentum > 0,
                                   weight_decay=tc.weight_decay)
        self.schedulers = build_schedulers({"eum": self.opt}, cfg)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.amp == "fp16")
        self.mine_gen = torch.Generator().manual_seed(cfg.seed + 7)
        # AMP applies to the frozen recognizer's forward; the EUM and the loss always run in float32
        self.autocast = autocast_factory(cfg.amp, self.device)

    @classmethod
    def from_data(cls, cfg, data: TaskData, dist: DistInfo) -> "EUMTask":
        return cls(cfg, dist, masking=data.info["masking"])

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
        skipped, norm = scaled_step(out["loss"], self.opt, list(self.eum.parameters()), self.scaler, self.dist, step,
                                    what="EUM loss")
        step_schedulers(self.schedulers)
        loss = out["loss"].item()
        stats = {f"loss/{self.cfg.eum.loss.kind}": loss, "loss/total": loss}
        stats.update({f"eum/{k}": float(v) for k, v in out.items() if k != "loss"})
        stats["grad_norm/eum"] = norm
        stats["lr/eum"] = self.opt.param_groups[0]["lr"]
        if self.scaler.is_enabled():
            stats["amp_scale"] = self.scaler.get_scale()
        stats["skipped"] = float(skipped)
        return stats

    @torch.no_grad()
    def validate(self, vs: ValSet) -> dict[str, float]:
        """Verification on the held-out identities: EUM(masked probe) against the clean reference."""
        batch_size, device = self.cfg.val.batch_size, self.device
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
        return {"eum": self.eum.state_dict(), "opt": self.opt.state_dict(), "mine_gen": self.mine_gen.get_state(),
                "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
                "scalers": {"eum": self.scaler.state_dict()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "schedulers" not in state:
            raise MeerError("checkpoint of an older eum_srt trainer (no learning-rate schedule state): retrain")
        self.eum.load_state_dict(state["eum"])
        self.opt.load_state_dict(state["opt"])
        self.mine_gen.set_state(state["mine_gen"])
        for k, s in self.schedulers.items():
            s.load_state_dict(state["schedulers"][k])
        if state["scalers"]["eum"]:
            self.scaler.load_state_dict(state["scalers"]["eum"])
