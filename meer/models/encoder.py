"""IR-style (insightface "iresnet") encoder for masked aligned faces, width and depth configurable.

Block (``IRBlock``, as in ArcFace's IR/iresnet backbones): ``BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride)
-> BN`` plus a (1x1 conv + BN) shortcut when the shape changes. A stem ``conv3x3(stride) -> BN -> PReLU`` is
followed by ``len(layers)`` stages; stage ``i`` has ``min(width * 2**i, max_width)`` channels and starts with a
stride-2 block.

* ``width=64, layers=(3, 4, 14, 3), stem_stride=1`` is the IR-50 of insightface (112 -> 7x7x512).
* ``stem_stride=2`` halves every feature map: the cheap setting for CPU training.

``forward`` returns every level (stem output first, deepest last) so that the mask-decoupling module and the
U-Net generator can read the multi-scale features ("skips").
"""
from __future__ import annotations

import torch
from torch import nn


def _out_size(n: int, stride: int) -> int:
    """Spatial size after a 3x3 conv with padding 1 and the given stride."""
    return (n + 2 - 3) // stride + 1


class IRBlock(nn.Module):
    """Improved residual block (pre-BN, PReLU, BN at the end of the residual branch)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_ch),
            nn.Conv2d(in_ch, out_ch, 3, 1, 1, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.PReLU(out_ch),
            nn.Conv2d(out_ch, out_ch, 3, stride, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        )
        if stride != 1 or in_ch != out_ch:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, 0, bias=False), nn.BatchNorm2d(out_ch)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.shortcut(x)


class IREncoder(nn.Module):
    """Multi-scale IR backbone. Input ``B x 3 x S x S`` in [-1, 1]; output list of ``1 + len(layers)`` maps."""

    def __init__(
        self,
        width: int = 32,
        layers: tuple[int, ...] = (1, 1, 1, 1),
        max_width: int = 512,
        stem_stride: int = 1,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if width < 1 or not layers or any(n < 1 for n in layers):
            raise ValueError(f"encoder needs width >= 1 and at least one stage of >= 1 block, got {width}, {layers}")
        if stem_stride not in (1, 2):
            raise ValueError(f"encoder stem_stride must be 1 or 2, got {stem_stride}")
        self.stem_stride = stem_stride
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stem_stride, 1, bias=False), nn.BatchNorm2d(width), nn.PReLU(width)
        )
        self.channels: list[int] = [width]
        stages = []
        in_ch = width
        for i, n in enumerate(layers):
            out_ch = min(width * 2**i, max_width)
            blocks = [IRBlock(in_ch, out_ch, 2)] + [IRBlock(out_ch, out_ch, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            self.channels.append(out_ch)
            in_ch = out_ch
        self.stages = nn.ModuleList(stages)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="leaky_relu", a=0.25)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        # Start every residual branch near zero (last BN scale small): stable deep IR training.
        for m in self.modules():
            if isinstance(m, IRBlock):
                nn.init.constant_(m.body[-1].weight, 0.1)

    def feature_sizes(self, image_size: int) -> list[int]:
        """Side length of every returned level for a square ``image_size`` input."""
        sizes = [_out_size(image_size, self.stem_stride)]
        for _ in self.stages:
            sizes.append(_out_size(sizes[-1], 2))
        return sizes

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.stem(x)]
        for stage in self.stages:
            feats.append(stage(feats[-1]))
        return feats
