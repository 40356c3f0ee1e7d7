"""Reconstruction loss of the restored face: masked-weighted L1 + LPIPS (+ optional recognizer-feature loss).

``ReconstructionLoss(...)(restored, clean, mask, generated=None, feature_fn=None) -> (loss, parts)``:

* ``l1_masked``: ``sum(|restored - clean| * M) / (3 * sum(M))`` -- the error inside the occlusion, where the
  composite's content comes from the generator.
* ``l1_visible`` (when ``generated``, the raw generator output, is given): the same on ``1 - M`` for the raw
  output, a light term that teaches the generator to reproduce visible context (smooth seams).
* ``lpips`` (LPIPS v0.1, Zhang et al. 2018) on the whole composite. The linear calibration layers ship with the
  ``lpips`` package; the trunk (AlexNet or VGG16 ImageNet weights) is loaded from the local torchvision cache
  (``$TORCH_HOME/hub/checkpoints``) or ``trunk_weights=<file>``, never downloaded. Without them the trunk stays
  random: a warning is logged, ``lpips_is_real`` is ``False`` and the term is reported as
  ``perceptual_random_trunk``, never as ``lpips``.
* ``id_feature`` (``feature_weight > 0`` and a ``feature_fn``, e.g. the recognizer's encoder): mean L1 between
  the feature maps of restored and clean faces (the clean ones detached), computed in one batch so
  BatchNorm in train mode normalises both with the same statistics.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Callable, Literal, Sequence

import torch
from torch import nn

log = logging.getLogger("meer")

TRUNK_WEIGHTS = {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights"}


def cached_trunk_file(net: str) -> Path | None:
    """The torchvision ImageNet weights file for ``net`` if it is in the local torch hub cache, else None."""
    import torchvision.models as tvm

    weights = getattr(tvm, TRUNK_WEIGHTS[net]).IMAGENET1K_V1
    path = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    return path if path.is_file() else None


def build_lpips(net: Literal["alex", "vgg"] = "alex", trunk_weights: str | Path | None = None) -> tuple[nn.Module, bool]:
    """``(lpips_module, is_real)``: LPIPS with the package's calibrated linear layers and, when available
    locally, the real ImageNet trunk. Never touches the network. Parameters frozen, eval mode."""
    import lpips

    if net not in TRUNK_WEIGHTS:
        raise ValueError(f"LPIPS net must be 'alex' or 'vgg', got {net!r}")
    with warnings.catch_warnings():  # lpips passes torchvision's deprecated ``pretrained=False``
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    path = Path(trunk_weights) if trunk_weights is not None else cached_trunk_file(net)
    is_real = False
    if path is not None:
        if not path.is_file():
            raise FileNotFoundError(f"LPIPS trunk weights not found: {path}")
        state = torch.load(path, map_location="cpu", weights_only=True)
        features = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
        # lpips splits torchvision's ``features`` Sequential into slices whose children keep their indices.
        target = {}
        for name, _ in model.net.named_parameters():
            _, idx, kind = name.split(".")
            target[name] = features[f"{idx}.{kind}"]
        missing = model.net.load_state_dict(target, strict=True)
        is_real = not missing.missing_keys
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, is_real


def _masked_l1(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the weighted elements (``w`` already expanded to the 3 channels)."""
    w = w.float()
    return ((a.float() - b.float()).abs() * w).sum() / w.sum().clamp(min=1.0)


class ReconstructionLoss(nn.Module):
    def __init__(
        self,
        l1_weight: float = 1.0,
        visible_weight: float = 0.1,
        lpips_weight: float = 1.0,
        feature_weight: float = 0.0,
        lpips_net: Literal["alex", "vgg"] = "alex",
        trunk_weights: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.l1_weight = l1_weight
        self.visible_weight = visible_weight
        self.lpips_weight = lpips_weight
        self.feature_weight = feature_weight
        self.lpips: nn.Module | None = None
        self.lpips_is_real = False
        if lpips_weight > 0:
            self.lpips, self.lpips_is_real = build_lpips(lpips_net, trunk_weights)
            if not self.lpips_is_real:
                log.warning(
                    "LPIPS %s trunk weights are not in the local torch cache (%s): using a RANDOM trunk as a "
                    "perceptual loss; it is logged as 'perceptual_random_trunk' and is not LPIPS",
                    lpips_net, Path(torch.hub.get_dir()) / "checkpoints",
                )

    @property
    def perceptual_name(self) -> str:
        """Key of the perceptual term in ``parts``: ``lpips`` only with the real trunk."""
        return "lpips" if self.lpips_is_real else "perceptual_random_trunk"

    def train(self, mode: bool = True) -> "ReconstructionLoss":
        super().train(mode)
        if self.lpips is not None:
            self.lpips.eval()  # frozen metric network: dropout stays off
        return self

    def forward(
        self,
        restored: torch.Tensor,
        clean: torch.Tensor,
        mask: torch.Tensor,
        generated: torch.Tensor | None = None,
        feature_fn: Callable[[torch.Tensor], Sequence[torch.Tensor]] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if restored.shape != clean.shape or mask.shape != (restored.shape[0], 1, *restored.shape[-2:]):
            raise ValueError(
                f"restored {tuple(restored.shape)}, clean {tuple(clean.shape)} and mask {tuple(mask.shape)} do not match"
            )
        parts: dict[str, torch.Tensor] = {}
        parts["l1_masked"] = _masked_l1(restored, clean, mask.expand_as(restored))
        total = self.l1_weight * parts["l1_masked"]
        if generated is not None and self.visible_weight > 0:
            parts["l1_visible"] = _masked_l1(generated, clean, (1.0 - mask).expand_as(generated))
            total = total + self.visible_weight * parts["l1_visible"]
        if self.lpips is not None:
            d = self.lpips(restored * 2.0 - 1.0, clean.to(restored.dtype) * 2.0 - 1.0).float().mean()
            parts[self.perceptual_name] = d
            total = total + self.lpips_weight * d
        if feature_fn is not None and self.feature_weight > 0:
            # one batch: in train mode BatchNorm normalises restored and clean faces with the same statistics
            b = restored.shape[0]
            both = feature_fn(torch.cat([restored, clean.detach().to(restored.dtype)], dim=0))
            parts["id_feature"] = sum((f[:b].float() - f[b:].detach().float()).abs().mean() for f in both) / len(both)
            total = total + self.feature_weight * parts["id_feature"]
        return total, parts
