"""MEER: multi-task generative mask-decoupling face recognition (after arXiv 2311.11512), one module per part.

The paper's code is not public; this is a re-implementation from its description. Architecture, for a masked
aligned face ``x`` (``B x 3 x S x S`` in [0, 1], mapped to [-1, 1] inside):

1. **Encoder** (:class:`~meer.models.encoder.IREncoder`): insightface IR backbone returning every level
   (stem, stage 1 ... stage N). ``enc_width=64, enc_layers=(3, 4, 14, 3), enc_stem_stride=1`` is IR-50.
2. **Mask decoupling** (:class:`~meer.models.decoupling.MaskDecoupling`): an FPN-lite head predicts
   ``occ_logits`` (``B x 1 x S x S``, 1 = occluded; trained with BCE + Dice on the synthetic mask). The map,
   area-downsampled to the deepest level and *detached* (``detach_gate``), gates the deepest features:
   the **identity code** (``id_dim``) reads only visible positions (``features * (1 - gate)``, flattened with
   their layout, ``Linear -> BN``); the **occlusion code** (``occ_dim``) is the gate-weighted average over
   occluded positions plus the occluded fraction. The structural split is backed by
   :class:`meer.losses.decoupling.DecouplingLoss`: a mask-kind adversary behind gradient reversal on the
   identity code, an identity adversary behind gradient reversal on the occlusion code, a positive mask-kind
   classifier on the occlusion code (so it cannot collapse to zero) and a cross-covariance penalty.
   *Why this choice*: gating by the predicted map removes most mask pixels from the identity code by
   construction (nothing to unlearn), the adversaries remove what leaks through receptive fields, and the
   decorrelation term is cheap and batch-local. Detaching the gate keeps the occlusion map an honest
   segmentation that the recognition loss cannot bend into an attention map.
3. **Recognition head** (:class:`~meer.models.recognition_head.RecognitionHead`): identity code -> 512-d
   L2-normalised embedding, trained with :class:`meer.losses.margin.MarginHead` (ArcFace or CosFace).
4. **Generator** (:class:`~meer.models.generator.UNetGenerator`): U-Net decoder; the identity code is broadcast
   at the bottleneck and modulates every level (FiLM); encoder skips are multiplied by the downsampled
   visibility ``1 - M``. Output composited ``restored = M * G(x) + (1 - M) * x`` (computed with ``torch.where``
   so that pixels with ``M == 0`` are bit-identical to the input). At inference ``M`` is the predicted map
   binarised at ``infer_threshold`` and dilated by ``infer_dilate`` pixels (a flat square dilation, identical to
   ``kornia.morphology.dilation``); a given ground-truth mask replaces it, or with ``union_predicted`` is united
   with it (training's default composite, ``loss.composite: union``).
5. **Id-preserving branch**: ``forward(masked, mask, clean=clean)`` also embeds the restored and the clean face
   in the same call (one forward per step). ``id_grad_to_generator`` / ``id_grad_to_recognizer`` stop the
   gradient of that loss into either side (ablations).

Gradient routing switches: ``gen_grad_to_encoder=False`` detaches the encoder features and identity code the
generator reads, so reconstruction/adversarial losses train only the generator.

Discriminators (:mod:`~meer.models.discriminator_patch`, :mod:`~meer.models.discriminator_local`) and all
losses are separate modules; the training task owns them. In a normal step (all loss weights > 0) every
parameter of ``MEER`` receives a gradient; an ablation that zeroes a loss leaves some unused (e.g. no
decoupling loss -> the occlusion-code layers). Several processes need nothing special for that: the trainer
averages gradients itself (``meer.training.distributed.average_gradients``, zeros for a missing gradient),
not through ``DistributedDataParallel``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from meer.models.decoupling import MaskDecoupling
from meer.models.encoder import IREncoder
from meer.models.encoder_dlib import DlibEncoder
from meer.models.generator import UNetGenerator
from meer.models.recognition_head import RecognitionHead


@dataclass
class MEERConfig:
    """Sizes and switches of a MEER model. Defaults are a small model; see ``docs/meer_model.md`` for the
    tiny (tests), CPU and GPU (IR-50-like) settings."""

    image_size: int = 112
    # "ir": insightface IR encoder trained from scratch (sizes below); "dlib": dlib's face ResNet
    # (meer.models.encoder_dlib; the enc_* sizes are ignored, id_dim must be 256 and the recognition head is
    # dlib's 256 -> embedding_dim linear projection, 128 for dlib's own)
    encoder: Literal["ir", "dlib"] = "ir"
    # training starts the dlib encoder and head from dlib's public-domain weights (fresh runs; needs the
    # judge extra); false = random initialisation (ablation). Checkpoints always hold the trained weights.
    encoder_pretrained: bool = True
    # encoder (insightface IR): stage i has min(enc_width * 2**i, enc_max_width) channels
    enc_width: int = 32
    enc_layers: tuple[int, ...] = (1, 1, 1, 1)
    enc_max_width: int = 512
    enc_stem_stride: int = 1  # 1: IR-50 layout (112 -> 7x7); 2: every map halved (CPU)
    # mask decoupling
    split_channels: int = 64  # channels of the id/occ projections of the deepest features
    occ_head_width: int = 32
    id_dim: int = 256
    occ_dim: int = 64
    num_mask_kinds: int = 5  # size of the mask-kind classifiers (DecouplingLoss reads it)
    detach_gate: bool = True
    gate_identity: bool = True  # False: the identity code ignores the occlusion map (ablation: no decoupling)
    # recognition head
    embedding_dim: int = 512
    head_dropout: float = 0.0
    # generator
    gen_width: int = 32
    gen_max_width: int = 256
    gen_grad_to_encoder: bool = True
    gen_template: bool = False  # mean-face template prior (see UNetGenerator); training initialises it
    gen_template_lowpass: bool = False  # read the template through a binomial filter: no stripe grid, no seam
    gen_template_lowpass_taps: int = 5  # its length (odd, 3..15): 5 kills the 2 px period, 9 also damps 8 px to 0.53
    gen_template_frozen: bool = False  # the template stays as initialised (or loaded): it cannot learn per-pixel detail
    # id-preserving loss gradient switches (ablations)
    id_grad_to_generator: bool = True
    id_grad_to_recognizer: bool = True
    # inference compositing
    infer_threshold: float = 0.5
    infer_dilate: int = 2  # pixels
    # rows above this fraction of the crop height are never restored: masks sit below the eyes (the ArcFace eye line
    # is at 0.46), so predicted occlusion up there is a forehead highlight, a hat or a fringe (0: no limit)
    infer_top: float = 0.0

    def __post_init__(self) -> None:
        self.enc_layers = tuple(int(n) for n in self.enc_layers)
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {self.image_size}")
        if not 0.0 < self.infer_threshold < 1.0:
            raise ValueError(f"infer_threshold must be in (0, 1), got {self.infer_threshold}")
        if self.infer_dilate < 0:
            raise ValueError(f"infer_dilate must be >= 0, got {self.infer_dilate}")
        if not 0.0 <= self.infer_top < 1.0:
            raise ValueError(f"infer_top must be a fraction in [0, 1), got {self.infer_top}")
        for name in ("enc_width", "split_channels", "occ_head_width", "id_dim", "occ_dim", "embedding_dim", "gen_width", "num_mask_kinds"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.encoder not in ("ir", "dlib"):
            raise ValueError(f"encoder must be 'ir' or 'dlib', got {self.encoder!r}")
        if self.encoder == "dlib" and self.id_dim != 256:
            raise ValueError(f"the dlib encoder's identity code is its 256 pooled channels: id_dim must be 256, got {self.id_dim}")


@dataclass
class MEEROutput:
    """Everything one forward pass produces (``None`` where not computed)."""

    occ_logits: torch.Tensor  # B x 1 x H x W
    occ_map: torch.Tensor  # sigmoid(occ_logits), 1 = occluded
    id_code: torch.Tensor  # B x id_dim
    occ_code: torch.Tensor  # B x occ_dim
    embedding: torch.Tensor  # B x embedding_dim, unit norm (of the masked input)
    generated: torch.Tensor  # raw generator output, [0, 1]
    restored: torch.Tensor  # M * generated + (1 - M) * masked
    composite_mask: torch.Tensor  # the M used for the skips and the composite
    embedding_restored: torch.Tensor | None = None  # when ``clean`` was passed
    embedding_clean: torch.Tensor | None = None


class MEER(nn.Module):
    def __init__(self, cfg: MEERConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or MEERConfig()
        self.cfg = cfg
        dlib = cfg.encoder == "dlib"
        self.encoder = (DlibEncoder(cfg.image_size) if dlib else
                        IREncoder(cfg.enc_width, cfg.enc_layers, cfg.enc_max_width, cfg.enc_stem_stride))
        deep_size = self.encoder.feature_sizes(cfg.image_size)[-1]
        self.decoupling = MaskDecoupling(
            self.encoder.channels, deep_size, cfg.id_dim, cfg.occ_dim, cfg.split_channels, cfg.occ_head_width,
            cfg.detach_gate, dropout=0.0, id_pool=dlib, gate_identity=cfg.gate_identity,
        )
        self.head = RecognitionHead(cfg.id_dim, cfg.embedding_dim, cfg.head_dropout, norm=not dlib)
        self.generator = UNetGenerator(self.encoder.channels, deep_size, cfg.id_dim, cfg.gen_width, cfg.gen_max_width,
                                       template=cfg.gen_template, image_size=cfg.image_size,
                                       template_lowpass=cfg.gen_template_lowpass,
                                       template_lowpass_taps=cfg.gen_template_lowpass_taps)
        if cfg.gen_template_frozen and self.generator.template is not None:
            self.generator.template.requires_grad_(False)  # no gradient: the optimiser never moves it

    # ---- parameter groups -------------------------------------------------------------------------------
    def recognizer_parameters(self) -> Iterator[nn.Parameter]:
        """Encoder + mask decoupling + recognition head."""
        for m in (self.encoder, self.decoupling, self.head):
            yield from m.parameters()

    def generator_parameters(self) -> Iterator[nn.Parameter]:
        """The generator (decoder) only."""
        yield from self.generator.parameters()

    # ---- pieces -----------------------------------------------------------------------------------------
    def _check(self, images: torch.Tensor, name: str = "images") -> None:
        s = self.cfg.image_size
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[-2:] != (s, s):
            raise ValueError(f"MEER expects {name} of shape B x 3 x {s} x {s}, got {tuple(images.shape)}")

    def _recognize(
        self, images: torch.Tensor, frozen: bool = False, track_stats: bool = True
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor], torch.Tensor]:
        """Encoder -> decoupling -> head.

        ``frozen=True`` uses detached parameters (no weight gradients; the gradient still reaches ``images``).
        ``track_stats=False`` (auxiliary passes: restored and clean faces during training) leaves every buffer
        untouched: BatchNorm still normalises with the batch's statistics in train mode, but its running
        statistics are updated on throw-away copies, so they keep describing the masked faces of the main pass."""
        aux = frozen or not track_stats

        def call(mod: nn.Module, *args: Any) -> Any:
            if not aux:
                return mod(*args)
            state = {n: (p.detach() if frozen else p) for n, p in mod.named_parameters()}
            state.update({n: b.clone() for n, b in mod.named_buffers()})
            return functional_call(mod, state, args, strict=False)

        feats = call(self.encoder, images * 2.0 - 1.0)
        if self.cfg.encoder == "dlib":  # crop-aligned levels + the chip-space map the identity code pools
            feats, pooled = feats[:-1], feats[-1]
            dec = call(self.decoupling, feats, tuple(images.shape[-2:]), pooled, self.encoder.to_chip)
        else:
            dec = call(self.decoupling, feats, tuple(images.shape[-2:]))
        return feats, dec, call(self.head, dec["id_code"])

    def restorable(self, occ_map: torch.Tensor) -> torch.Tensor:
        """The soft occlusion map where the model may restore: zero above ``infer_top`` of the crop's height."""
        if self.cfg.infer_top <= 0:
            return occ_map
        h = int(occ_map.shape[-2])  # a Python int also when traced for export (the crop size is fixed)
        top = int(self.cfg.infer_top * h + 0.5)
        rows = torch.arange(h, device=occ_map.device).view(-1, 1) >= top
        return occ_map * rows.to(occ_map.dtype)

    def composite_mask(self, occ_map: torch.Tensor) -> torch.Tensor:
        """Binarise a soft occlusion map at ``infer_threshold`` (above ``infer_top``: nothing), dilate it by
        ``infer_dilate`` pixels."""
        m = (self.restorable(occ_map.detach().float()) > self.cfg.infer_threshold).float()
        r = self.cfg.infer_dilate
        if r > 0:
            # Dilation by a flat (2r+1)^2 square is exactly a stride-1 max-pool (the tests check equality with
            # kornia.morphology.dilation); max_pool2d is ~100x faster on CPU (12 ms vs 0.1 ms per 112 px mask).
            m = F.max_pool2d(m, kernel_size=2 * r + 1, stride=1, padding=r)
        return m

    @staticmethod
    def composite(generated: torch.Tensor, masked: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """``M * generated + (1 - M) * masked``; where ``M == 0`` the result *is* ``masked`` bit for bit."""
        m = m.to(masked.dtype)
        g = generated.to(masked.dtype)
        return torch.where(m > 0, m * g + (1 - m) * masked, masked)

    def forward(
        self, masked: torch.Tensor, mask: torch.Tensor | None = None, clean: torch.Tensor | None = None,
        union_predicted: bool = False,
    ) -> MEEROutput:
        """Run every branch. ``mask`` (``B x 1 x H x W``, 1 = occluded): ground truth for the skips and the
        composite (else the binarised, dilated prediction, as at inference); ``union_predicted=True`` uses
        both, ``max(mask, prediction)``, so training also fills the dilated ring and the false positives that
        inference fills. ``clean``: the unmasked faces; when given, the restored and clean faces are embedded
        for the id-preserving loss (honouring the gradient switches)."""
        self._check(masked, "masked")
        feats, dec, embedding = self._recognize(masked)
        if mask is not None:
            if mask.shape != (masked.shape[0], 1, *masked.shape[-2:]):
                raise ValueError(f"mask must be B x 1 x H x W matching the images, got {tuple(mask.shape)}")
            m = mask.to(masked.dtype)
            if union_predicted:
                m = torch.maximum(m, self.composite_mask(dec["occ_map"]).to(m.dtype))
        else:
            m = self.composite_mask(dec["occ_map"])
        id_code = dec["id_code"]
        g_feats, g_code = feats, id_code
        if not self.cfg.gen_grad_to_encoder:
            g_feats, g_code = [f.detach() for f in feats], id_code.detach()
        generated, restored = self.generate(g_feats, g_code, m, masked)
        out = MEEROutput(
            occ_logits=dec["occ_logits"], occ_map=dec["occ_map"], id_code=id_code, occ_code=dec["occ_code"],
            embedding=embedding, generated=generated, restored=restored, composite_mask=m,
        )
        if clean is not None:
            self._check(clean, "clean")
            out.embedding_restored, out.embedding_clean = self.id_embeddings(restored, clean)
        return out

    def generate(self, feats: list[torch.Tensor], id_code: torch.Tensor, m: torch.Tensor,
                 masked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(generated, restored)``: the generator's output from encoder features ``feats`` and an identity code,
        and its composite into ``masked`` where ``m`` (1 = replace). ``forward`` calls it with the face's own code;
        passing another face's code is the identity-code swap (``meer.inference.inspect``)."""
        generated = self.generator(feats, id_code, 1.0 - m, masked * 2.0 - 1.0)
        return generated, self.composite(generated, masked, m)

    def id_embeddings(self, restored: torch.Tensor, clean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of the restored and the clean faces (one batch through the recognizer).

        ``id_grad_to_generator=False`` detaches ``restored`` (the loss then trains the recognizer only);
        ``id_grad_to_recognizer=False`` runs the recognizer with detached parameters (the gradient still flows
        through it into the restored image and the generator, but no recognizer weight is changed by it)."""
        if not self.cfg.id_grad_to_generator:
            restored = restored.detach()
        both = torch.cat([restored, clean.to(restored.dtype)], dim=0)
        emb = self._recognize(both, frozen=not self.cfg.id_grad_to_recognizer, track_stats=False)[2]
        return emb[: restored.shape[0]], emb[restored.shape[0] :]

    # ---- inference API ----------------------------------------------------------------------------------
    def embed(self, images: torch.Tensor, track_stats: bool = True) -> torch.Tensor:
        """Identity embedding (``B x embedding_dim``, unit norm) of any face: masked, clean or restored.
        Differentiable; wrap in ``torch.no_grad()`` and call ``eval()`` for inference. ``track_stats=False``:
        an auxiliary training pass that leaves the BatchNorm running statistics untouched."""
        self._check(images)
        return self._recognize(images, track_stats=track_stats)[2]

    @torch.no_grad()
    def restore(self, masked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(restored, occ_map)``: the composite with the binarised, dilated predicted map (pixels outside it
        are bit-identical to ``masked``) and the soft predicted occlusion map. Call ``eval()`` first."""
        out = self.forward(masked)
        return out.restored, out.occ_map

    @torch.no_grad()
    def restore_selected(self, masked: torch.Tensor, select: Callable[[torch.Tensor], torch.Tensor]) -> MEEROutput:
        """Inference: ``forward(masked)``, except that the generator runs only for the faces that
        ``select(occ_map)`` (a ``B`` bool tensor from the soft maps) picks; the others come back as they went in
        (``generated = restored = masked``, an all-zero composite mask). A face that will be passed through
        anyway costs the recognizer only, not the generator (~60 % of a face's FLOPs). Call ``eval()`` first."""
        self._check(masked, "masked")
        feats, dec, embedding = self._recognize(masked)
        m = self.composite_mask(dec["occ_map"])
        keep = select(dec["occ_map"]).to(device=masked.device, dtype=torch.bool).reshape(-1)
        if keep.shape[0] != masked.shape[0]:
            raise ValueError(f"select must return one flag per face ({masked.shape[0]}), got {tuple(keep.shape)}")
        generated, restored = masked.clone(), masked.clone()
        m = torch.where(keep.view(-1, 1, 1, 1), m, torch.zeros_like(m))
        if bool(keep.any()):
            idx = keep.nonzero().flatten()
            g, r = self.generate([f[idx] for f in feats], dec["id_code"][idx], m[idx], masked[idx])
            generated[idx], restored[idx] = g.to(masked.dtype), r.to(masked.dtype)
        return MEEROutput(
            occ_logits=dec["occ_logits"], occ_map=dec["occ_map"], id_code=dec["id_code"], occ_code=dec["occ_code"],
            embedding=embedding, generated=generated, restored=restored, composite_mask=m,
        )

    @torch.no_grad()
    def decouple(self, masked: torch.Tensor) -> dict[str, Any]:
        """Codes and maps for inspection: ``occ_logits``, ``occ_map``, ``composite_mask``, ``gate`` (the map at
        the deepest level), ``id_code``, ``occ_code``, ``embedding``."""
        self._check(masked, "masked")
        _, dec, embedding = self._recognize(masked)
        return {**dec, "composite_mask": self.composite_mask(dec["occ_map"]), "embedding": embedding}


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


__all__ = ["MEER", "MEERConfig", "MEEROutput", "count_parameters"]
