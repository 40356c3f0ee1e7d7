"""dlib's face ResNet as MEER's encoder (``model.encoder: dlib``): a pretrained identity prior for the
recognition branch, with the mask-decoupling module and the generator on its feature maps.

The trunk is :class:`meer.models.dlib_resnet.DlibResNet` (dlib's architecture; training starts it from
dlib's public-domain weights, see ``MEERTask.prepare``). MEER's input, a 112 ArcFace crop, is warped
into dlib's 150 px chip geometry (:func:`meer.faces.dlib_chip.crops112_to_dlib_chips`, differentiable),
run through the trunk, and the levels are resampled back into the crop's geometry, so the occlusion
head and the U-Net generator read feature maps aligned with the pixels they predict:

==========================  ======================  =======================
trunk level (chip 150 px)   channels, chip size     crop level (112 px)
==========================  ======================  =======================
stem conv (before max-pool)  32, 72 x 72             56 x 56
residual stage 1             32, 35 x 35             28 x 28
stage 2 (down)               64, 17 x 17             14 x 14
stage 3 (down)              128,  8 x 8               7 x 7
stage 4 (down)              256,  4 x 4               4 x 4
last block (down)           256,  2 x 2              (recognition only)
==========================  ======================  =======================

``forward`` returns the five crop-space levels followed by the last block's chip-space map, which the
decoupling module pools into the identity code (``MaskDecoupling(id_pool=True)``): a mean over the
chip cells weighted by their visibility, which is exactly dlib's own average pooling when nothing is
masked, so a fresh model's embedding starts as dlib's descriptor.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from meer.faces.dlib_chip import DLIB_CHIP_SIZE, crop_to_chip_matrix, crops112_to_dlib_chips
from meer.models.dlib_resnet import DlibResNet

#: blocks of ``DlibResNet.blocks`` that end each crop-space level (after the stem level)
LEVEL_ENDS = (3, 7, 10, 13)
#: crop-space level sizes as a fraction of the image side (112 -> 56, 28, 14, 7, 4)
LEVEL_DIVISORS = (2, 4, 8, 16, 32)


def _crop_grid(size: int, image_size: int) -> torch.Tensor:
    """``1 x size x size x 2`` grid sampling a chip-space map at the centres of a ``size`` crop-space grid."""
    chip_to_crop = np.vstack([crop_to_chip_matrix(image_size), [0.0, 0.0, 1.0]])
    crop_to_chip = np.linalg.inv(chip_to_crop)
    centres = (np.arange(size, dtype=np.float64) + 0.5) * image_size / size - 0.5  # crop pixels
    ys, xs = np.meshgrid(centres, centres, indexing="ij")
    cx = crop_to_chip[0, 0] * xs + crop_to_chip[0, 1] * ys + crop_to_chip[0, 2]
    cy = crop_to_chip[1, 0] * xs + crop_to_chip[1, 1] * ys + crop_to_chip[1, 2]
    grid = np.stack([(2 * cx + 1) / DLIB_CHIP_SIZE - 1, (2 * cy + 1) / DLIB_CHIP_SIZE - 1], axis=-1)
    return torch.from_numpy(grid).float()[None]


class DlibEncoder(nn.Module):
    """Input ``B x 3 x S x S`` in [-1, 1] (an ArcFace crop); output ``[*crop_levels, chip_final]``."""

    extra_levels = 1  # the last entry of ``forward``'s list is the chip-space map for the identity code

    def __init__(self, image_size: int = 112) -> None:
        super().__init__()
        self.trunk = DlibResNet()
        self.trunk.fc = None  # the descriptor's projection lives in the recognition head
        self.channels: list[int] = [32, 32, 64, 128, 256]
        self.final_channels = 256
        self.image_size = int(image_size)
        for i, d in enumerate(LEVEL_DIVISORS):
            self.register_buffer(f"grid{i}", _crop_grid(-(-image_size // d), image_size), persistent=False)

    def feature_sizes(self, image_size: int) -> list[int]:
        return [-(-image_size // d) for d in LEVEL_DIVISORS]

    def to_crop(self, level: torch.Tensor, i: int) -> torch.Tensor:
        grid = getattr(self, f"grid{i}").to(level.dtype)
        return F.grid_sample(level, grid.expand(level.shape[0], -1, -1, -1), mode="bilinear",
                             padding_mode="border", align_corners=False)

    def to_chip(self, crop_map: torch.Tensor) -> torch.Tensor:
        """A crop-space map (e.g. the occlusion map, ``B x C x S x S`` in [0, 1]) in the chip's geometry."""
        return crops112_to_dlib_chips(crop_map)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        t = self.trunk
        chip = crops112_to_dlib_chips((x + 1.0) * 0.5)
        stem = F.relu(t.stem.affine(t.stem.conv(t.normalize_input(chip))))
        levels = [stem]
        h = F.max_pool2d(stem, 3, 2)
        start = 0
        for end in LEVEL_ENDS:
            for block in t.blocks[start:end]:
                h = block(h)
            levels.append(h)
            start = end
        final = h
        for block in t.blocks[start:]:
            final = block(final)
        return [self.to_crop(lv, i) for i, lv in enumerate(levels)] + [final]

    @torch.no_grad()
    def load_pretrained(self, state: dict[str, torch.Tensor]) -> torch.Tensor:
        """Load dlib's weights (a ``DlibResNet`` state dict) into the trunk; returns its ``fc.weight``
        (``128 x 256``) for the recognition head."""
        trunk_state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        self.trunk.load_state_dict(trunk_state)
        return state["fc.weight"]
