"""The ``task: meer`` step: builds MEER, its losses, discriminators and optimisers, and runs one step.

:class:`MEERTask` implements :class:`meer.training.task.Task` (data: identity folders, see
:class:`meer.training.data.IdentityFolderTask`); its hooks initialise the encoder and template prior
(``prepare``), validate and export the EMA model and draw the image grid.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.profiler import record_function

from meer.config import ConfigError, to_dict
from meer.losses.decoupling import DecouplingLoss
from meer.losses.margin import MarginHead
from meer.losses.reconstruction import ReconstructionLoss
from meer.masking.batch import MaskAugment
from meer.models.checkpoint import save_inference_checkpoint
from meer.models.discriminator_local import LocalDiscriminator
from meer.models.discriminator_patch import PatchDiscriminator
from meer.models.dlib_resnet import cached_state_dict
from meer.models.meer import MEER
from meer.models.teacher import build_teacher
from meer.training import distributed as dd
from meer.training import phases
from meer.training.data import IdentityFolderTask
from meer.training.distributed import DistInfo
from meer.training.ema import EMA
from meer.training.real_masked import IdentityTargets
from meer.training.teacher_targets import TargetTable, TeacherTargets
from meer.training.task import (NonFiniteLoss, TaskData, autocast_factory, build_schedulers, clip_grad_norm,
                                count_params, step_schedulers)
from meer.training.validate import ValSet, validate
from meer.utils.errors import MeerError

__all__ = ["MEERTask", "NonFiniteLoss", "autocast_factory", "build", "EXPORT_NAME"]

#: the inference checkpoint a run ends with (EMA weights), for meer-restore --checkpoint
EXPORT_NAME = "meer_inference.pt"



class MEERTask(IdentityFolderTask):
    name = "meer"

    def __init__(self, cfg, num_classes: int, num_mask_kinds: int, dist: DistInfo, masking: MaskAugment | None = None):
        self.cfg = cfg
        self.dist = dist
        self.masking = masking  # the data's MaskAugment (from_data); None: train_step only, no make_batch
        device = dist.device
        lc = cfg.loss
        model_cfg = dataclasses.replace(cfg.model, num_mask_kinds=num_mask_kinds)
        self.model = MEER(model_cfg)
        if dist.enabled and device.type == "cuda":
            # BatchNorm statistics over the global batch, so N processes train like one
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.model.to(device)
        emb_dim = model_cfg.embedding_dim
        self.margin = MarginHead(emb_dim, num_classes, kind=lc.margin, s=lc.margin_s, m=lc.margin_m).to(device)
        self.decoupling = None
        if lc.w_decouple > 0:
            self.decoupling = DecouplingLoss(
                model_cfg.id_dim, model_cfg.occ_dim, num_classes, num_mask_kinds, w_kind_adv=lc.decouple_kind_adv,
                w_id_adv=lc.decouple_id_adv, w_occ_kind=lc.decouple_occ_kind, w_decorr=lc.decouple_decorr,
                grl_lambda=lc.decouple_grl).to(device)
        self.recon = None
        if lc.w_l1 > 0 or lc.w_l1_visible > 0 or lc.w_lpips > 0 or lc.w_perceptual > 0:
            self.recon = ReconstructionLoss(l1_weight=1.0, visible_weight=1.0, lpips_weight=1.0 if lc.w_lpips > 0 else 0.0,
                                            feature_weight=1.0 if lc.w_perceptual > 0 else 0.0,
                                            lpips_net=lc.lpips_net).to(device)
        use_d = lc.w_adv_patch > 0 or lc.w_adv_local > 0
        dc = cfg.disc
        self.d_patch = (PatchDiscriminator(width=dc.patch_width, n_layers=dc.patch_layers).to(device)
                        if lc.w_adv_patch > 0 else None)
        self.d_local = (LocalDiscriminator(width=dc.local_width, local_size=dc.local_size).to(device)
                        if lc.w_adv_local > 0 else None)

        # frozen identity teacher (never in an optimiser, never in a checkpoint: rebuilt from loss.teacher)
        self.teacher = build_teacher(lc.teacher, device) if lc.teacher else None
        self.targets: TeacherTargets | None = None  # the clean faces' teacher embeddings (from_data sets it)
        self.real_targets: IdentityTargets | None = None  # the identities' mean teacher embeddings (real masks)
        self.distill_proj = None
        if self.teacher is not None and (lc.w_distill > 0 or lc.w_real_distill > 0) and self.teacher.dim != emb_dim:
            self.distill_proj = nn.Linear(emb_dim, self.teacher.dim, bias=False).to(device)

        oc = cfg.optim
        self.params_r = list(self.model.recognizer_parameters()) + list(self.margin.parameters())
        for extra in (self.decoupling, self.distill_proj):
            if extra is not None:
                self.params_r += list(extra.parameters())
        self.params_g = list(self.model.generator_parameters())
        self.params_d = [p for d in (self.d_patch, self.d_local) if d is not None for p in d.parameters()]
        covered = {id(p) for p in self.params_r + self.params_g}
        missing = [n for n, p in self.model.named_parameters() if id(p) not in covered]
        if missing:
            raise MeerError(f"MEER parameters in no optimiser: {', '.join(missing[:3])}")
        # a pretrained encoder and head (model.encoder: dlib) move at lr_r * lr_pretrained_ratio, the parts that
        # start from random (decoupling, margin and adversary heads) at lr_r
        pretrained = ({id(p) for m in (self.model.encoder, self.model.head) for p in m.parameters()}
                      if model_cfg.encoder == "dlib" and model_cfg.encoder_pretrained else set())
        groups = [{"params": [p for p in self.params_r if id(p) not in pretrained], "lr": oc.lr_r}]
        if pretrained:
            groups.insert(0, {"params": [p for p in self.params_r if id(p) in pretrained],
                              "lr": oc.lr_r * oc.lr_pretrained_ratio})
        self.opt_r = torch.optim.AdamW(groups, lr=oc.lr_r, betas=oc.betas_r, weight_decay=oc.weight_decay_r)
        self.opt_g = torch.optim.Adam(self.params_g, lr=oc.lr_g, betas=oc.betas_g)
        self.opt_d = None
        if use_d:
            # lazy R1 is added into the same D step (stylegan2-ada's lr/beta correction is for R1 as a separate
            # optimiser step, which this loop does not take), so D keeps its configured lr and betas
            self.opt_d = torch.optim.Adam(self.params_d, lr=oc.lr_d, betas=tuple(oc.betas_d))
        self.optimizers = {"r": self.opt_r, "g": self.opt_g}
        if self.opt_d is not None:
            self.optimizers["d"] = self.opt_d
        self.schedulers = build_schedulers(self.optimizers, cfg)
        fp16 = cfg.amp == "fp16"
        self.autocast = autocast_factory(cfg.amp, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=fp16)
        self.scaler_d = torch.amp.GradScaler(device.type, enabled=fp16)
        self.ema = EMA(self.model, cfg.ema.half_life_kimg, cfg.ema.rampup) if cfg.ema.enabled else None

    @classmethod
    def from_data(cls, cfg, data: TaskData, dist: DistInfo) -> "MEERTask":
        task = build(cfg, data.info["num_classes"], data.info["num_mask_kinds"], dist, masking=data.info["masking"])
        if task.teacher is not None and cfg.loss.teacher_cache:
            task.targets = TeacherTargets(len(data.train), task.teacher.dim)
        real = data.info["splits"].real if "splits" in data.info else None
        if real is not None and (cfg.loss.w_real_distill > 0 or cfg.loss.w_real_id > 0):
            task.real = real
            if cfg.loss.w_real_distill > 0:
                task.real_targets = IdentityTargets(data.train.labeled, task.teacher.dim)
        return task

    @torch.no_grad()
    def prepare(self, data: TaskData, max_images: int = 512) -> str | None:
        """Before the first step of a fresh run (resumed runs load all of this instead):

        * ``model.encoder: dlib`` with ``encoder_pretrained``: the encoder and the recognition head start from
          dlib's public-domain face ResNet (so the embedding starts as dlib's descriptor);
        * the generator's template prior (when configured) is set to the mean of up to ``max_images`` evenly
          spaced clean training faces."""
        messages = []
        targets = [self.model] + ([self.ema.model] if self.ema is not None else [])
        mc = self.model.cfg
        if mc.encoder == "dlib" and mc.encoder_pretrained:
            state = cached_state_dict()
            for m in targets:
                fc = m.encoder.load_pretrained(state)
                if m.head.net[1].weight.shape != fc.shape:
                    raise ConfigError(f"model.embedding_dim must be {fc.shape[0]} to start the head from dlib's "
                                      f"descriptor, got {m.head.net[1].weight.shape[0]}")
                m.head.net[1].weight.copy_(fc)
            messages.append("encoder and recognition head initialised from dlib's face ResNet")
        if self.model.generator.template is not None:
            train_set = data.train
            n = len(train_set)
            idx = torch.linspace(0, n - 1, min(n, max_images)).round().long().unique().tolist()
            mean = torch.stack([train_set[i]["clean"] for i in idx]).mean(dim=0)
            for m in targets:
                m.generator.init_template(mean)
            messages.append(f"generator template initialised from the mean of {len(idx)} training faces")
        return "; ".join(messages) or None

    def notes(self) -> list[str]:
        if self.recon is not None and self.cfg.loss.w_lpips > 0 and not self.recon.lpips_is_real:
            return ["LPIPS: no pretrained trunk in the local cache; training with a random-trunk feature "
                    "distance (logged as loss/perceptual_random_trunk, never reported as LPIPS)"]
        return []

    def validate(self, val_set: ValSet) -> dict[str, float]:
        """Restore and verification metrics of the exported (EMA) model (``meer.training.validate``)."""
        return validate(self.eval_model(), val_set, self.cfg.val.batch_size, self.dist.device, self.autocast)

    @torch.no_grad()
    def grid(self, batch: phases.Batch, n: int) -> list[torch.Tensor]:
        """Rows: masked input / predicted occlusion map / restored (EMA) / clean target."""
        model = self.eval_model()
        was = model.training
        model.eval()
        with self.autocast():
            restored, occ = model.restore(batch.masked[:n])
        model.train(was)
        return [batch.masked[:n], occ.float(), restored.float(), batch.clean[:n]]

    def export(self, run_dir: Path, meta: dict[str, Any]) -> Path:
        """``meer_inference.pt``: the EMA weights for ``meer-restore --checkpoint`` (a run stopped early
        exports too; ``meta`` says the step)."""
        path = Path(run_dir) / EXPORT_NAME
        save_inference_checkpoint(self.eval_model(), path, meta={
            **meta, "ema": self.cfg.ema.enabled, "train_config": to_dict(self.cfg)})
        return path

    # ------------------------------------------------------------------------------------------

    def live_model(self) -> nn.Module:
        return self.model

    def eval_model(self) -> nn.Module:
        """EMA weights when enabled: used for restore metrics, grids and the exported checkpoint."""
        return self.ema.model if self.ema is not None else self.model

    def param_counts(self) -> dict[str, int]:
        counts = {
            "recognizer": count_params(self.model.recognizer_parameters()),
            "generator": count_params(self.model.generator_parameters()),
            "margin_head": count_params(self.margin.parameters()),
        }
        if self.decoupling is not None:
            counts["decoupling_adversaries"] = count_params(self.decoupling.parameters())
        if self.distill_proj is not None:
            counts["distill_projection"] = count_params(self.distill_proj.parameters())
        if self.d_patch is not None:
            counts["d_patch"] = count_params(self.d_patch.parameters())
        if self.d_local is not None:
            counts["d_local"] = count_params(self.d_local.parameters())
        return counts

    def modules(self) -> dict[str, nn.Module]:
        """The trained modules (saved in checkpoints); the frozen teacher is not one of them."""
        mods = {"model": self.model, "margin": self.margin}
        for name in ("decoupling", "distill_proj", "d_patch", "d_local"):
            if getattr(self, name) is not None:
                mods[name] = getattr(self, name)
        return mods

    def state_dict(self) -> dict[str, Any]:
        return {
            "modules": {k: m.state_dict() for k, m in self.modules().items()},
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "scalers": {"g": self.scaler.state_dict(), "d": self.scaler_d.state_dict()},
            **{key: table.state_dict() for key, table in self._target_tables().items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        mods = self.modules()
        if set(state["modules"]) != set(mods) or set(state["optimizers"]) != set(self.optimizers):
            raise MeerError("checkpoint was written with different loss switches (modules "
                            f"{sorted(state['modules'])}, this config builds {sorted(mods)})")
        try:
            for k, m in mods.items():
                m.load_state_dict(state["modules"][k])
            if self.ema is not None:
                if state["ema"] is None:
                    raise MeerError("checkpoint has no EMA weights but ema.enabled is true")
                self.ema.load_state_dict(state["ema"])
            for k, o in self.optimizers.items():
                o.load_state_dict(state["optimizers"][k])
            for k, s in self.schedulers.items():
                s.load_state_dict(state["schedulers"][k])
        except RuntimeError as exc:
            raise MeerError(f"checkpoint does not fit this model config: {str(exc).splitlines()[0][:200]}") from None
        for key, table in self._target_tables().items():
            if key in state:  # else: filled again as faces are drawn
                try:
                    table.load_state_dict(state[key])
                except ValueError as exc:
                    raise MeerError(f"checkpoint's {exc} (a different training set?)") from None
        if state["scalers"]["g"]:
            self.scaler.load_state_dict(state["scalers"]["g"])
        if state["scalers"]["d"]:
            self.scaler_d.load_state_dict(state["scalers"]["d"])

    # ------------------------------------------------------------------------------------------

    def train_step(self, batch: phases.Batch, step: int, nimg: int) -> dict[str, float]:
        """One optimisation step; returns scalars to log. Raises ``NonFiniteLoss`` (fp32/bf16) on
        NaN/Inf; under fp16 the step is skipped instead (stats then hold ``skipped = 1``)."""
        lc = self.cfg.loss
        fp16 = self.scaler.is_enabled()
        stats: dict[str, float] = {}
        self._train_mode()
        for d in (self.d_patch, self.d_local):
            if d is not None:
                d.requires_grad_(False)

        # --- recognizer + generator phases: one forward, one backward ---
        # record_function scopes name the parts of a step in torch.profiler traces (benchmarks/bench_train.py)
        with self.autocast():
            t_clean = None
            if self.targets is not None and batch.index is not None and batch.flipped is not None:
                with record_function("meer/teacher_clean"):
                    hits = self.targets.hits
                    t_clean = self.targets.lookup(self.teacher, batch.clean, batch.index, batch.flipped)
                stats["teacher_targets/hit_share"] = (self.targets.hits - hits) / max(1, batch.index.numel())
                stats["teacher_targets/coverage"] = self.targets.coverage
            with record_function("meer/forward"):
                fwd = phases.forward(self.model, batch, lc, teacher=self.teacher, teacher_clean=t_clean)
            with record_function("meer/losses"):
                parts = phases.recognizer_phase(fwd, batch, self.margin, self.decoupling, lc, self.distill_proj)
                if batch.real is not None:
                    t_real = (self.real_targets.lookup(self.teacher.embed, batch.real_labels)
                              if self.real_targets is not None else None)
                    parts.update(phases.real_masked_phase(self.model, batch, self.margin, t_real, lc,
                                                          self.distill_proj))
                parts.update(phases.g_phase(fwd, batch, self.margin, self.recon, self.d_patch, self.d_local, lc,
                                            model=self.model, balance=self._balance if self.dist.enabled else None))
        diagnostics = {k: parts.pop(k) for k in [k for k in parts if "/" in k]}  # logged, not trained on
        terms = phases.weigh(parts, lc)
        total = sum(t.float() for t in terms.values())
        finite = dd.all_true(bool(torch.isfinite(total)), self.dist)
        if not finite and not fp16:
            bad = [k for k, v in terms.items() if not torch.isfinite(v)]
            raise NonFiniteLoss(f"non-finite loss at step {step} ({', '.join(bad) or 'total'})")
        self.opt_r.zero_grad(set_to_none=True)
        self.opt_g.zero_grad(set_to_none=True)
        with record_function("meer/backward"):
            self.scaler.scale(total).backward()
        norms = {}
        for key, opt, params in (("r", self.opt_r, self.params_r), ("g", self.opt_g, self.params_g)):
            dd.average_gradients(params, self.dist)
            self.scaler.unscale_(opt)
        stats.update(self._module_grad_norms(("encoder", "decoupling", "head", "generator", "margin",
                                               "decoupling_adversaries", "distill_proj")))
        for key, params in (("r", self.params_r), ("g", self.params_g)):
            norms[key] = self._clip(params)
        grads_ok = dd.all_true(all(math.isfinite(n) for n in norms.values()), self.dist)
        if not grads_ok and not fp16:
            raise NonFiniteLoss(f"non-finite gradient norm at step {step} "
                                f"({', '.join(k for k, n in norms.items() if not math.isfinite(n))})")
        # fp16: a non-finite loss or gradient skips the whole step (both optimisers), and the
        # GradScaler lowers its scale; GradScaler alone would still step an optimiser whose own
        # gradients happen to be finite
        skipped = fp16 and not (finite and grads_ok)
        if not skipped:
            with record_function("meer/optimizer"):
                self.scaler.step(self.opt_r)
                self.scaler.step(self.opt_g)
        self.scaler.update()

        # --- discriminator phase ---
        if self.opt_d is not None:
            self._d_step(batch, fwd, step, stats, norms, fp16)
        step_schedulers(self.schedulers)
        if self.ema is not None and not skipped:
            with record_function("meer/ema"):
                stats["ema_beta"] = self.ema.update(self.model, self.cfg.data.batch_size, nimg)
        return self._step_stats(stats, parts, diagnostics, total, norms, fp16, skipped)

    def _d_step(self, batch: phases.Batch, fwd: phases.Forward, step: int, stats: dict[str, float],
                norms: dict[str, float], fp16: bool) -> None:
        """The discriminators' step on the clean and the restored faces (lazy R1 on its interval)."""
        lc = self.cfg.loss
        with record_function("meer/d_phase"):
            for d in (self.d_patch, self.d_local):
                if d is not None:
                    d.requires_grad_(True)
            do_r1 = lc.r1_interval > 0 and step % lc.r1_interval == 0
            d_parts = phases.d_phase(batch.clean, fwd.out.restored, batch.mask, self.d_patch, self.d_local, lc,
                                     do_r1, self.autocast)
            d_total = sum(t.float() for t in phases.weigh(d_parts, lc).values())
            d_finite = dd.all_true(bool(torch.isfinite(d_total)), self.dist)
            if not d_finite and not fp16:
                raise NonFiniteLoss(f"non-finite discriminator loss at step {step}")
            self.opt_d.zero_grad(set_to_none=True)
            self.scaler_d.scale(d_total).backward()
            dd.average_gradients(self.params_d, self.dist)
            self.scaler_d.unscale_(self.opt_d)
            stats.update(self._module_grad_norms(("d_patch", "d_local")))
            norms["d"] = self._clip(self.params_d)
            self.scaler_d.step(self.opt_d)
            self.scaler_d.update()
            for k, v in d_parts.items():
                stats[f"loss/{k}"] = float(v.detach())
            stats["loss/d_total"] = float(d_total.detach())

    def _step_stats(self, stats: dict[str, float], parts: dict[str, torch.Tensor], diagnostics: dict[str, Any],
                    total: torch.Tensor, norms: dict[str, float], fp16: bool, skipped: bool) -> dict[str, float]:
        for k, v in parts.items():  # every part unweighted (the weights are in the config)
            stats[f"loss/{k}"] = float(v.detach())
        for k, v in diagnostics.items():  # decoupling adversaries' accuracies etc.
            stats[k] = float(v)
        stats["loss/total"] = float(total.detach())
        for k, n in norms.items():
            stats[f"grad_norm/{k}"] = n
        for k, o in self.optimizers.items():
            stats[f"lr/{k}"] = o.param_groups[-1]["lr"]  # the base lr (a pretrained group, first, runs lower)
        if fp16:
            stats["amp_scale"] = self.scaler.get_scale()
        stats["skipped"] = float(skipped)
        return stats

    def _module_grad_norms(self, names: tuple[str, ...]) -> dict[str, float]:
        """``grad_norm/module/<name>``: the gradient norm of each part before clipping (0 when it got none)."""
        parts = {"encoder": self.model.encoder, "decoupling": self.model.decoupling, "head": self.model.head,
                 "generator": self.model.generator, "margin": self.margin, "decoupling_adversaries": self.decoupling,
                 "distill_proj": self.distill_proj, "d_patch": self.d_patch, "d_local": self.d_local}
        out = {}
        for name in names:
            mod = parts[name]
            if mod is None:
                continue
            grads = [p.grad.detach().float().norm() for p in mod.parameters() if p.grad is not None]
            out[f"grad_norm/module/{name}"] = float(torch.stack(grads).norm()) if grads else 0.0
        return out

    def _balance(self, local: torch.Tensor) -> torch.Tensor:
        return local.detach() / dd.global_mean(local, self.dist).clamp(min=1e-12)

    def _target_tables(self) -> dict[str, TargetTable]:
        """The teacher-embedding tables this run keeps with its state, by their key in the checkpoint."""
        tables = {"teacher_targets": self.targets, "real_targets": self.real_targets}
        return {k: t for k, t in tables.items() if t is not None}

    def _train_mode(self) -> None:
        for m in self.modules().values():
            m.train()
            if self.cfg.freeze_bn:
                for sub in m.modules():
                    if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                        sub.eval()

    def _clip(self, params: list[nn.Parameter]) -> float:
        return clip_grad_norm(params, self.cfg.optim.grad_clip)


def build(cfg, num_classes: int, num_mask_kinds: int, dist: DistInfo, masking: MaskAugment | None = None) -> MEERTask:
    try:
        return MEERTask(cfg, num_classes, num_mask_kinds, dist, masking=masking)
    except ValueError as exc:  # the model/loss constructors check their sizes with ValueError
        raise ConfigError(f"config does not build a model: {exc}") from None
