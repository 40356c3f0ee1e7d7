"""dlib's face-recognition ResNet in PyTorch (the network of dlib's ``dnn_face_recognition_ex.cpp``).

A ResNet with 29 convolutions on 150 x 150 RGB face chips giving a 128-d descriptor, trained by
Davis King on about 3 million faces of 7,485 identities (LFW identities excluded; 99.38% on LFW) and
released into the public domain. Weights come from the installed ``face-recognition-models``
package (``judge`` extra) through our own reader of dlib's file format (``meer.models.dlib_dat``);
nothing is downloaded and no C++ is built.

Input convention: ``B x 3 x 150 x 150`` float RGB in [0, 1], laid out like dlib's face chip
(``dlib.get_face_chip(image, shape5, 150, 0.25)``, or ``meer.faces.dlib_chip`` from meer's 112
crops). The network subtracts dlib's mean pixel and divides by 256 exactly as
``input_rgb_image_sized<150>`` does on 0..255 pixels. Output: the raw 128-d descriptor, as
``compute_face_descriptor`` returns it (dlib compares descriptors by Euclidean distance, same person
below 0.6); ``embed`` gives it L2-normalised.

Layers as in dlib: dlib's ``affine`` layers are batch norm folded into a fixed per-channel scale and
shift (no running statistics, so train and eval modes compute the same thing); a downsampling
residual block adds a 2x2 average-pooled copy of its input, and, like dlib's ``add_prev``, a sum of
tensors of different channel counts or sizes zero-pads the smaller one (bottom/right, extra
channels) instead of projecting it.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from meer.models.dlib_dat import BLOCKS, EMBED_DIM, INPUT_SIZE, STEM_CHANNELS, read_dlib_dat
from meer.utils.dlib_models import RESNET, dlib_model_dir, dlib_model_path
from meer.utils.errors import MeerError
from meer.utils.files import atomic_write_bytes
from meer.utils.torch_files import load_weights_only

log = logging.getLogger(__name__)

#: bump when the state-dict layout changes, so that older cache files are never reused
CACHE_FORMAT = 1
DEFAULT_MEAN_RGB = (122.782, 117.001, 104.298)  # what the v1 file holds; replaced by the loaded weights


class Affine(nn.Module):
    """dlib's ``affine_`` layer in conv mode: ``x * scale[c] + shift[c]``."""

    def __init__(self, channels: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(channels))
        self.shift = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(1, -1, 1, 1) + self.shift.view(1, -1, 1, 1)


def add_prev(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a + b`` the way dlib's ``add_prev`` sums tensors of different shapes: aligned at channel 0 and
    the top-left pixel, missing entries counted as zero (the result has the larger of each size)."""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def grow(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return grow(a) + grow(b)


class ResBlock(nn.Module):
    """dlib's ``ares`` / ``ares_down``: ``relu(x' + affine(conv(relu(affine(conv(x))))))`` where
    ``x'`` is ``x`` or, when downsampling, ``avg_pool2x2(x)``; a stride-2 convolution has no padding."""

    def __init__(self, in_ch: int, out_ch: int, down: bool):
        super().__init__()
        self.down = down
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=2 if down else 1, padding=0 if down else 1)
        self.affine1 = Affine(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1)
        self.affine2 = Affine(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        skip = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(add_prev(y, skip))


class Stem(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, STEM_CHANNELS, 7, stride=2, padding=0)
        self.affine = Affine(STEM_CHANNELS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.affine(self.conv(x))), 3, 2)


class DlibResNet(nn.Module):
    """``forward(x)``: ``B x 3 x 150 x 150`` RGB in [0, 1] -> ``B x 128`` raw dlib descriptor."""

    input_size = INPUT_SIZE
    dim = EMBED_DIM

    def __init__(self):
        super().__init__()
        self.register_buffer("input_mean", torch.tensor(DEFAULT_MEAN_RGB, dtype=torch.float32))
        self.stem = Stem()
        blocks, ch = [], STEM_CHANNELS
        for out_ch, down in BLOCKS:
            blocks.append(ResBlock(ch, out_ch, down))
            ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(ch, EMBED_DIM, bias=False)

    def normalize_input(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] RGB -> dlib's input scaling ``(pixel - mean) / 256`` on 0..255 pixels."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise MeerError(f"DlibResNet needs B x 3 x H x W RGB images, got {tuple(x.shape)}")
        return (x * 255.0 - self.input_mean.to(x.dtype).view(1, 3, 1, 1)) / 256.0

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last residual stage's feature map (``B x 256 x 2 x 2`` for 150 px chips)."""
        return self.blocks(self.stem(self.normalize_input(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.forward_features(x).mean(dim=(2, 3)))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised descriptor (``B x 128``)."""
        return l2_normalize(self(x))


def l2_normalize(v: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    return F.normalize(v, dim=-1, eps=eps)


def cache_root(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir``, else ``$MEER_CACHE_DIR``, else ``$XDG_CACHE_HOME/meer`` or ``~/.cache/meer``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("MEER_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "meer"


def file_digest(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def cached_state_dict(dat_path: str | Path | None = None, cache_dir: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The state dict of ``dat_path`` (default: the installed dlib model), converted once and cached as
    ``<cache>/dlib_resnet_v1-<sha1 of the .dat>-f<format>.pt`` (written atomically; loaded with
    ``weights_only=True``). An unreadable cache file is converted again; an unwritable cache folder
    only costs the conversion next time.

    Without the installed model package (a machine that got only a converted file, e.g. the GPU pack of
    ``benchmarks/device``), the one converted ``dlib_resnet_v1-*-f<format>.pt`` in the cache folder is used."""
    if dat_path is None and dlib_model_dir() is None:
        found = sorted(cache_root(cache_dir).glob(f"dlib_resnet_v1-*-f{CACHE_FORMAT}.pt"))
        if len(found) == 1:
            state = load_weights_only(found[0], what="cached dlib ResNet")
            if isinstance(state, dict) and state:
                return state
            raise MeerError(f"{found[0]}: not a dlib ResNet state dict")
        if len(found) > 1:
            raise MeerError(f"{len(found)} converted dlib ResNet files in {found[0].parent} and no dlib model "
                            f"package to choose by: keep one ({', '.join(f.name for f in found[:3])})")
    dat = Path(dat_path) if dat_path is not None else dlib_model_path(RESNET)
    if not dat.is_file():
        raise MeerError(f"dlib model file not found: {dat}")
    target = cache_root(cache_dir) / f"dlib_resnet_v1-{file_digest(dat)}-f{CACHE_FORMAT}.pt"
    if target.is_file():
        try:
            state = load_weights_only(target, what="cached dlib ResNet")
            if isinstance(state, dict) and state:
                return state
        except MeerError as exc:
            log.warning("%s; converting %s again", exc, dat.name)
    state = read_dlib_dat(dat)
    buf = io.BytesIO()
    torch.save(state, buf)
    try:
        atomic_write_bytes(target, buf.getvalue())
    except OSError as exc:
        log.warning("cannot cache the converted dlib ResNet at %s (%s)", target, exc.strerror or exc)
    return state


def load_dlib_resnet(device: str | torch.device | None = None, cache_dir: str | Path | None = None,
                     dat_path: str | Path | None = None) -> DlibResNet:
    """dlib's ResNet with its pretrained weights, in eval mode with every parameter frozen
    (``requires_grad=False``); on ``device`` (default CPU)."""
    state = cached_state_dict(dat_path, cache_dir)
    model = DlibResNet()
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise MeerError(f"dlib ResNet weights do not fit the network ({str(exc).splitlines()[0][:160]})") from None
    model.requires_grad_(False)
    return model.to(torch.device(device) if device is not None else "cpu").eval()
