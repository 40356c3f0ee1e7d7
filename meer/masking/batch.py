"""``MaskAugment``: synthetic masks as a batched torch op, for on-the-fly augmentation in training.

    op = MaskAugment(kinds=("surgical", "kn95", "cloth"))
    masked, mask, info = op(images, landmarks, generator=torch.Generator().manual_seed(0))

Each sample draws one integer seed from ``generator``; its whole mask (kind, coverage, colours,
texture, jitter, details) is a hash of that seed (``meer.masking.noise``), so the op runs the same on
CPU and CUDA, and ``info["seed"][i]`` redraws sample ``i`` with ``apply_mask`` via
``spec_from_params``. No Python loop runs over pixels or samples (only over the handful of kinds and
textures present in the batch).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from meer.masking.geometry import ARCFACE_112
from meer.masking.noise import hash_uniform
from meer.masking.render import render_masks
from meer.masking.sampling import MaskParams, params_from_seeds
from meer.masking.spec import COVERAGES, KINDS, TEXTURES, MaskSpecError
from meer.masking.templates import TemplateBank, TemplateLibrary, render_templates
from meer.masking.textures import BANK_SIZE, load_texture_bank


class MaskAugment(nn.Module):
    """Put a random synthetic mask on each image of a batch.

    Args:
        p: probability that a sample gets a mask (others pass through with an empty mask, kind -1).
        kinds, coverages, textures: allowed names (default: all), see ``KINDS`` etc.
        texture_images: image paths (or ``N x 3 x S x S`` tensor) for the "image" texture.
        texture_size: side of the stored texture tiles.
        template_dir: MaskTheFace template folder (``masks.cfg``) or a ``TemplateLibrary``: a sample then
            gets a template (warped with kornia) with probability ``template_p``.
        templates: template names to use (default: the frontal ones); template_size: longest side kept.

    Call: ``op(images B x 3 x H x W in [0, 1], landmarks B x 5 x 2 pixels or None, generator=None)``
    -> ``(masked, mask B x 1 x H x W in {0, 1}, info)``. ``landmarks=None`` assumes crops aligned to the
    ArcFace template (scaled to H x W). ``info``: ``kind``, ``coverage``, ``texture`` (B long indices
    into ``KINDS``/``COVERAGES``/``TEXTURES``, -1 where no mask; kind 5 = "template"), ``template``
    (index into ``template_bank.names``, -1 for procedural masks), ``color`` (B x 3 in [0, 1]),
    ``seed`` (B long).
    """

    KINDS = KINDS + ("template",)  # index 5: a MaskTheFace template (info["template"] says which)
    COVERAGES = COVERAGES
    TEXTURES = TEXTURES

    def __init__(self, p: float = 1.0, kinds: Sequence[str] | None = None, coverages: Sequence[str] | None = None,
                 textures: Sequence[str] | None = None,
                 texture_images: Sequence[str | Path] | torch.Tensor | None = None,
                 texture_size: int = BANK_SIZE, template_dir: str | Path | TemplateLibrary | None = None,
                 templates: Sequence[str] | None = None, template_p: float = 0.25, template_size: int = 256) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise MaskSpecError(f"p must be within 0-1, got {p}")
        if not 0.0 <= template_p <= 1.0:
            raise MaskSpecError(f"template_p must be within 0-1, got {template_p}")
        self.template_bank: TemplateBank | None = None
        if template_dir is not None:
            lib = template_dir if isinstance(template_dir, TemplateLibrary) else TemplateLibrary(template_dir)
            self.template_bank = TemplateBank(lib, templates, max_side=template_size)
        elif templates:
            raise MaskSpecError("templates need a template_dir (the folder with masks.cfg)")
        self.template_p = float(template_p) if self.template_bank is not None else 0.0
        self.p = float(p)
        self.kinds = tuple(kinds) if kinds is not None else None
        self.coverages = tuple(coverages) if coverages is not None else None
        self.textures = tuple(textures) if textures is not None else None
        if isinstance(texture_images, torch.Tensor):
            if texture_images.dim() != 4 or texture_images.shape[1] != 3:
                raise MaskSpecError(f"texture_images must be N x 3 x S x S, got {tuple(texture_images.shape)}")
            bank = texture_images.float().clamp(0, 1)
        else:
            bank = load_texture_bank(list(texture_images or []), texture_size)
        self.register_buffer("bank", bank, persistent=False)
        # check the constraints once, here, rather than at the first batch
        params_from_seeds(torch.zeros(1, dtype=torch.long), self.kinds, self.coverages, self.textures,
                          int(self.bank.shape[0]))

    def sample_params(self, seeds: torch.Tensor) -> MaskParams:
        return params_from_seeds(seeds, self.kinds, self.coverages, self.textures, int(self.bank.shape[0]))

    @torch.no_grad()
    def forward(self, images: torch.Tensor, landmarks: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise MaskSpecError(f"images must be a B x 3 x H x W tensor, got {shape}")
        if not images.is_floating_point():
            raise MaskSpecError(f"images must be float in [0, 1], got dtype {images.dtype}")
        b, _, h, w = images.shape
        dev = images.device
        if landmarks is None:
            scale = np.array([w / 112.0, h / 112.0], dtype=np.float32)
            landmarks = torch.from_numpy(ARCFACE_112 * scale)[None].expand(b, -1, -1)
        if not isinstance(landmarks, torch.Tensor) or landmarks.shape != (b, 5, 2):
            shape = tuple(landmarks.shape) if isinstance(landmarks, torch.Tensor) else type(landmarks).__name__
            raise MaskSpecError(f"landmarks must be a {b} x 5 x 2 tensor (or None), got {shape}")
        if not bool(torch.isfinite(landmarks).all()):
            raise MaskSpecError("landmarks contain NaN or infinite values")
        gen_dev = generator.device if generator is not None else torch.device("cpu")
        seeds = torch.randint(0, 2**31 - 1, (b,), generator=generator, device=gen_dev)
        keep = torch.rand(b, generator=generator, device=gen_dev) < self.p
        seeds, keep = seeds.to(dev), keep.to(dev)
        params = self.sample_params(seeds)
        use_t = torch.zeros_like(keep)
        t_idx = torch.full_like(seeds, -1)
        if self.template_bank is not None:
            n_t = len(self.template_bank)
            use_t = hash_uniform(seeds, 120) < self.template_p
            t_idx = torch.where(use_t, (hash_uniform(seeds, 121) * n_t).long().clamp_max(n_t - 1), t_idx)
        lm = landmarks.to(dev)
        masked = torch.empty_like(images)
        mask = torch.empty_like(images[:, :1])
        proc = (~use_t).nonzero(as_tuple=True)[0]
        if proc.numel() == b:
            masked, mask = render_masks(images, lm, params, bank=self.bank)
        else:
            if proc.numel():
                masked[proc], mask[proc] = render_masks(images[proc], lm[proc], params.select(proc), bank=self.bank)
            tpl = use_t.nonzero(as_tuple=True)[0]
            assert self.template_bank is not None
            masked[tpl], mask[tpl] = render_templates(
                images[tpl], lm[tpl], t_idx[tpl], self.template_bank, params.seed[tpl], params.coverage[tpl],
                params.scale[tpl], params.shift[tpl], params.tilt[tpl])
        if not bool(keep.all()):
            masked = torch.where(keep[:, None, None, None], masked, images)
            mask = mask * keep[:, None, None, None].to(mask.dtype)
        none = torch.full_like(params.kind, -1)
        kind = torch.where(use_t, torch.full_like(params.kind, len(KINDS)), params.kind)
        texture = torch.where(use_t, torch.zeros_like(params.texture), params.texture)
        color = params.color
        if self.template_bank is not None and bool(use_t.any()):
            means = torch.tensor(self.template_bank.mean_colors, dtype=color.dtype, device=dev) / 255.0
            color = torch.where(use_t[:, None], means[t_idx.clamp_min(0)], color)
        info = {
            "kind": torch.where(keep, kind, none),
            "coverage": torch.where(keep, params.coverage, none),
            "texture": torch.where(keep, texture, none),
            "template": torch.where(keep, t_idx, none),
            "color": color.to(images.dtype) * keep[:, None].to(images.dtype),
            "seed": params.seed,
        }
        return masked, mask, info

    def extra_repr(self) -> str:
        n_t = len(self.template_bank) if self.template_bank is not None else 0
        return (f"p={self.p}, kinds={self.kinds or 'all'}, coverages={self.coverages or 'all'}, "
                f"textures={self.textures or 'all'}, texture_images={int(self.bank.shape[0])}, "
                f"templates={n_t} (p={self.template_p})")
