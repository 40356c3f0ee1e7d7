"""U-Net generator: identity code + visible-region encoder skips -> full (unmasked) face.

* **Bottleneck**: the deepest encoder features times the visibility ``1 - M`` (area-downsampled), concatenated
  with the identity code broadcast over the grid (``Linear(id_code)`` plus a learned positional constant, as
  StyleGAN's constant input), then ``conv3x3 -> GroupNorm -> FiLM(id_code) -> LeakyReLU``.
* **Up path**: for every shallower encoder level, upsample (bilinear, to the skip's exact size), concatenate the
  skip times the downsampled visibility, and apply two ``conv3x3 -> GroupNorm -> FiLM -> LeakyReLU`` layers.
  The FiLM scales and shifts come from the identity code (zero-initialised, so training starts from plain
  GroupNorm) -- identity modulates every scale, which is what fills the hole once the skips are zeroed there.
* **Output stage**: upsample to the image size, concatenate the visible input pixels ``x * (1 - M)`` and the
  visibility map, ``conv3x3 -> LeakyReLU -> conv3x3 -> tanh``, mapped to [0, 1].

* **Template prior** (``template=True``): a learned face template ``T`` (``3 x H x W``, initialised by training
  from the mean aligned training face, see :meth:`UNetGenerator.init_template`) is shifted per image and channel
  so its mean over the visible pixels matches the input's (lighting / skin tone), and the network predicts a
  residual on top of it in tanh pre-activation space: ``out = (tanh(atanh(T') + y) + 1) / 2``. Aligned faces all
  put the nose, mouth and chin in the same place, so a small decoder trained briefly starts from a face-shaped
  fill in the right tone rather than a flat colour; the last convolution starts at zero, so step 0 outputs ``T'``.
* **Low-pass template** (``template_lowpass=True``): the template is read through a fixed 5-tap binomial filter
  (``[1, 4, 6, 4, 1] / 16`` along each axis, reflected borders): zero response at a 2-pixel period, 1/4 at a 4-pixel
  period. ``T`` is a free per-pixel parameter, and its per-pixel gradients (the strided adversarial patch
  discriminators above all) grow periodic stripes and a step at the centre column into it that show through every
  restoration; through the filter the period-2 component has no effect on the output and receives no gradient.
  Measured on training identities: v2's period-2 grid (17x clean faces' share) went to 0.1x with a 3-tap
  ``[1, 2, 1]`` filter, but 1,500 steps of training through that filter grew the 4-pixel period to 2.2x; the 5-tap
  read-out brings it to 0.6x and the centre seam to 0.95 (clean 0.98), PSNR in the mask unchanged (+0.02 dB).
  ``template_lowpass_taps`` sets the binomial's length (odd, default 5): 2,500 further steps through 5 taps grew an
  8-pixel period (1.42x), which a 9-tap read-out (0.53 response at 8 px) takes to 0.81x.

Content inside the occluded region can therefore only come from the identity code and from visible context;
see ``docs/meer_model.md`` for the one leak this does not close (receptive fields of visible positions near the
mask border in the encoder).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from meer.utils.tensors import hw


def _groups(ch: int) -> int:
    return math.gcd(ch, 8)


class FiLMConv(nn.Module):
    """``conv3x3 -> GroupNorm(affine=False) -> x * (1 + gamma(z)) + beta(z) -> LeakyReLU(0.2)``."""

    def __init__(self, in_ch: int, out_ch: int, z_dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.norm = nn.GroupNorm(_groups(out_ch), out_ch, affine=False)
        self.film = nn.Linear(z_dim, 2 * out_ch)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.conv(x))
        gamma, beta = self.film(z).to(h.dtype).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        return F.leaky_relu(h * (1 + gamma) + beta, 0.2)


class UNetGenerator(nn.Module):
    """Decoder over the encoder levels ``enc_channels`` (stem first, deepest last)."""

    def __init__(
        self,
        enc_channels: list[int],
        deep_size: int,
        id_dim: int = 256,
        width: int = 32,
        max_width: int = 256,
        seed_channels: int | None = None,
        template: bool = False,
        image_size: int = 112,
        template_lowpass: bool = False,
        template_lowpass_taps: int = 5,
    ) -> None:
        super().__init__()
        n = len(enc_channels)
        widths = [min(width * 2**i, max_width) for i in range(n)]  # decoder width per level
        seed = seed_channels or widths[-1]
        self.seed = nn.Linear(id_dim, seed)
        self.seed_const = nn.Parameter(torch.zeros(1, seed, deep_size, deep_size))
        self.bottleneck = FiLMConv(enc_channels[-1] + seed, widths[-1], id_dim)
        ups = []
        for level in range(n - 2, -1, -1):
            in_ch = widths[level + 1] + enc_channels[level]
            ups.append(nn.ModuleList([FiLMConv(in_ch, widths[level], id_dim), FiLMConv(widths[level], widths[level], id_dim)]))
        self.ups = nn.ModuleList(ups)
        out_mid = max(widths[0] // 2, 8)
        self.to_rgb = nn.Sequential(
            nn.Conv2d(widths[0] + 3 + 1, out_mid, 3, 1, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(out_mid, 3, 3, 1, 1),
        )
        self.template = None
        self.template_lowpass = template_lowpass
        if template_lowpass_taps < 3 or template_lowpass_taps % 2 == 0 or template_lowpass_taps > 15:
            raise ValueError(f"template_lowpass_taps must be odd, 3..15, got {template_lowpass_taps}")
        k = torch.tensor([float(math.comb(template_lowpass_taps - 1, i)) for i in range(template_lowpass_taps)])
        k = k / k.sum()
        self.register_buffer("lowpass", (k[:, None] * k[None, :]).expand(3, 1, len(k), len(k)).clone(), persistent=False)
        if template:
            self.template = nn.Parameter(torch.zeros(1, 3, image_size, image_size))  # in [-1, 1]
            nn.init.zeros_(self.to_rgb[-1].weight)
            nn.init.zeros_(self.to_rgb[-1].bias)

    @torch.no_grad()
    def init_template(self, mean_face: torch.Tensor) -> None:
        """Set the template from a mean face (``3 x H x W`` or ``1 x 3 x H x W`` in [0, 1])."""
        if self.template is None:
            raise ValueError("this generator was built without a template (template=False)")
        t = mean_face.reshape(1, *mean_face.shape[-3:]).to(self.template)
        if t.shape != self.template.shape:
            raise ValueError(f"mean face must be {tuple(self.template.shape[1:])}, got {tuple(mean_face.shape)}")
        self.template.copy_(t * 2.0 - 1.0)

    def template_image(self) -> torch.Tensor:
        """The template as the generator reads it (``1 x 3 x H x W`` in [-1, 1]): low-passed when configured."""
        t = self.template.float()
        if self.template_lowpass:
            r = self.lowpass.shape[-1] // 2
            t = F.conv2d(F.pad(t, (r, r, r, r), mode="reflect"), self.lowpass.float(), groups=3)
        return t

    def shifted_template(self, visible: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The template with each channel shifted so its mean over the visible pixels equals ``x``'s."""
        v = visible.float()
        t = self.template_image()
        area = v.sum(dim=(-2, -1), keepdim=True).clamp_min(1.0)
        shift = ((x.float() - t) * v).sum(dim=(-2, -1), keepdim=True) / area
        return (t + shift).clamp(-0.98, 0.98)

    def forward(
        self, feats: list[torch.Tensor], id_code: torch.Tensor, visible: torch.Tensor, x: torch.Tensor
    ) -> torch.Tensor:
        """``feats``: encoder levels; ``id_code``: ``B x id_dim``; ``visible``: ``B x 1 x H x W`` (1 = visible);
        ``x``: the masked input in [-1, 1]. Returns ``B x 3 x H x W`` in [0, 1]."""

        def vis_at(t: torch.Tensor) -> torch.Tensor:
            return F.interpolate(visible, size=hw(t), mode="area").to(t.dtype)

        deep = feats[-1]
        b, _, h, w = deep.shape
        seed = self.seed(id_code).unsqueeze(-1).unsqueeze(-1) + self.seed_const
        seed = seed.expand(b, -1, h, w) if seed.shape[-2:] == (h, w) else F.interpolate(seed.expand(b, -1, -1, -1), size=(h, w))
        y = self.bottleneck(torch.cat([deep * vis_at(deep), seed.to(deep.dtype)], dim=1), id_code)
        for (conv_a, conv_b), skip in zip(self.ups, reversed(feats[:-1])):
            y = F.interpolate(y, size=hw(skip), mode="bilinear", align_corners=False)
            y = conv_a(torch.cat([y, (skip * vis_at(skip)).to(y.dtype)], dim=1), id_code)
            y = conv_b(y, id_code)
        y = F.interpolate(y, size=hw(x), mode="bilinear", align_corners=False)
        v = visible.to(y.dtype)
        y = self.to_rgb(torch.cat([y, (x * visible).to(y.dtype), v], dim=1)).float()
        if self.template is not None:
            y = y + torch.atanh(self.shifted_template(visible, x))
        return (torch.tanh(y) + 1.0) * 0.5
