"""Global PatchGAN discriminator (pix2pix style): an image -> a map of real/fake logits.

``conv4x4 s2 -> LeakyReLU`` x ``n_layers`` (widths ``width * 2**i`` capped at ``max_width``), then
``conv4x4 s1 -> LeakyReLU -> conv4x4 s1 -> 1``. Each output logit sees a patch (70x70 for ``n_layers=3``)
of the whole face. No normalisation layers: the R1 penalty (gradient of D w.r.t. its input) is then a
per-sample quantity, as in StyleGAN2.
"""
from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator(nn.Module):
    def __init__(self, width: int = 32, n_layers: int = 3, max_width: int = 256, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch = in_channels
        for i in range(n_layers):
            out = min(width * 2**i, max_width)
            layers += [nn.Conv2d(ch, out, 4, 2, 1), nn.LeakyReLU(0.2)]
            ch = out
        out = min(width * 2**n_layers, max_width)
        layers += [nn.Conv2d(ch, out, 4, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(out, 1, 4, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``B x 3 x H x W`` in [0, 1] -> ``B x 1 x h x w`` logits."""
        return self.net(images * 2.0 - 1.0)
