"""Local discriminator on the masked region: crop the occlusion's bounding box, judge it.

For every sample the bounding box of ``mask > 0.5`` is enlarged by ``margin`` (a fraction of its size, so the
critic sees the seam with the visible face), cropped from the image and resized to ``local_size`` with
``kornia.geometry.transform.crop_and_resize`` (differentiable, also twice: the R1 penalty can be taken w.r.t. the
full image). The cropped mask is stacked as a 4th channel. A sample without occlusion uses the whole image.
Then ``conv4x4 s2 -> LeakyReLU`` until 4x4 and a linear layer: one logit per sample, ``B x 1``.
The crop runs in float32 with autocast disabled; the convolutions follow the caller's autocast.
"""
from __future__ import annotations

import torch
from kornia.geometry.transform import crop_and_resize
from torch import nn


def mask_boxes(mask: torch.Tensor, margin: float = 0.15) -> torch.Tensor:
    """``B x 1 x H x W`` -> ``B x 4 x 2`` box corners (tl, tr, br, bl; x, y in pixels) of ``mask > 0.5``,
    enlarged by ``margin`` x box size on each side and clipped to the image; empty masks give the full image."""
    b, _, h, w = mask.shape
    occ = mask[:, 0] > 0.5
    rows = occ.any(dim=2)  # B x H
    cols = occ.any(dim=1)  # B x W
    empty = ~rows.any(dim=1)
    y0 = rows.float().argmax(dim=1).float()
    y1 = (h - 1 - rows.flip(1).float().argmax(dim=1)).float()
    x0 = cols.float().argmax(dim=1).float()
    x1 = (w - 1 - cols.flip(1).float().argmax(dim=1)).float()
    my = (y1 - y0 + 1) * margin
    mx = (x1 - x0 + 1) * margin
    y0 = torch.where(empty, torch.zeros_like(y0), (y0 - my).clamp(min=0))
    y1 = torch.where(empty, torch.full_like(y1, h - 1), (y1 + my).clamp(max=h - 1))
    x0 = torch.where(empty, torch.zeros_like(x0), (x0 - mx).clamp(min=0))
    x1 = torch.where(empty, torch.full_like(x1, w - 1), (x1 + mx).clamp(max=w - 1))
    tl = torch.stack([x0, y0], dim=1)
    tr = torch.stack([x1, y0], dim=1)
    br = torch.stack([x1, y1], dim=1)
    bl = torch.stack([x0, y1], dim=1)
    return torch.stack([tl, tr, br, bl], dim=1)


class LocalDiscriminator(nn.Module):
    def __init__(self, width: int = 32, local_size: int = 64, max_width: int = 256, margin: float = 0.15) -> None:
        super().__init__()
        if local_size < 8 or local_size & (local_size - 1):
            raise ValueError(f"local_size must be a power of two >= 8, got {local_size}")
        self.local_size = local_size
        self.margin = margin
        layers: list[nn.Module] = []
        ch, size, i = 4, local_size, 0
        while size > 4:
            out = min(width * 2**i, max_width)
            layers += [nn.Conv2d(ch, out, 4, 2, 1), nn.LeakyReLU(0.2)]
            ch, size, i = out, size // 2, i + 1
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(ch * 4 * 4, 1)

    def crop(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The ``B x 4 x local x local`` input the critic sees: cropped RGB in [-1, 1] and the cropped mask."""
        if mask.shape[0] != images.shape[0] or mask.shape[-2:] != images.shape[-2:]:
            raise ValueError(f"mask {tuple(mask.shape)} does not match images {tuple(images.shape)}")
        boxes = mask_boxes(mask.detach(), self.margin)
        size = (self.local_size, self.local_size)
        with torch.autocast(device_type=images.device.type, enabled=False):
            stacked = torch.cat([images.float() * 2.0 - 1.0, mask.float()], dim=1)
            return crop_and_resize(stacked, boxes.to(images.device), size, align_corners=True)

    def forward(self, images: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``images`` ``B x 3 x H x W`` in [0, 1], ``mask`` ``B x 1 x H x W`` (1 = occluded) -> ``B x 1`` logits."""
        h = self.features(self.crop(images, mask))
        return self.fc(h.flatten(1))
