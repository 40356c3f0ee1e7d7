"""Pretrained backbones from the field: insightface ``arcface_torch`` iresnet (r18 / r34 / r50 / r100) weights in
meer's IR encoder.

``arcface_torch`` saves ``backbone.pth`` as the plain ``state_dict`` of its ``IResNet``: a stem (``conv1``, ``bn1``,
``prelu``), four stages ``layer1..layer4`` of ``IBasicBlock`` (``bn1 -> conv1 -> bn2 -> prelu -> conv2(stride) ->
bn3``, plus ``downsample.{0,1}`` = 1x1 conv + BN on the first block of each stage) and an embedding head (``bn2`` on
the 7 x 7 x 512 map, ``fc``, ``features`` = BN1d). Widths 64, 128, 256, 512, stride-1 stem, every stage starting
with a stride-2 block: exactly :class:`meer.models.encoder.IREncoder` with ``width=64, stem_stride=1`` and the
stage depths of the architecture (``ARCHS``). Its input is the aligned 112 x 112 RGB face scaled to [-1, 1], as
meer's encoder takes it.

:func:`load_arcface_backbone` maps the keys (``module.`` prefixes of DDP saves are dropped), infers the depth from the
file, checks every shape, and returns the encoder plus the head's weights; :class:`ArcfaceEmbedder` runs the whole
network (encoder + head) for 512-d embeddings as ``arcface_torch`` computes them. A file that is not such a backbone,
or one of another architecture than asked for, raises :class:`BackboneError` with one line naming the file and the
first key that does not fit.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from meer.models.encoder import IREncoder
from meer.utils.errors import MeerError
from meer.utils.torch_files import load_weights_only

#: stage depths of arcface_torch's iresnets
ARCHS: dict[str, tuple[int, int, int, int]] = {
    "r18": (2, 2, 2, 2), "r34": (3, 4, 6, 3), "r50": (3, 4, 14, 3), "r100": (3, 13, 30, 3), "r200": (6, 26, 60, 6),
}
#: arcface_torch block part -> index in meer's ``IRBlock.body`` (``downsample`` -> ``shortcut``)
_BLOCK = {"bn1": "body.0", "conv1": "body.1", "bn2": "body.2", "prelu": "body.3", "conv2": "body.4", "bn3": "body.5",
          "downsample.0": "shortcut.0", "downsample.1": "shortcut.1"}
_STEM = {"conv1": "stem.0", "bn1": "stem.1", "prelu": "stem.2"}
#: the embedding head after the last stage (not part of the encoder)
HEAD_PREFIXES = ("bn2.", "fc.", "features.")
_BLOCK_KEY = re.compile(r"^layer([1-4])\.(\d+)\.(bn1|conv1|bn2|prelu|conv2|bn3|downsample\.0|downsample\.1)\.(.+)$")
_STEM_KEY = re.compile(r"^(conv1|bn1|prelu)\.(.+)$")


class BackboneError(MeerError):
    """A backbone file that does not fit (wrong architecture, not an iresnet, unreadable)."""


def arcface_key(key: str) -> str | None:
    """meer encoder key of an arcface_torch backbone key (``None`` for head keys and keys of neither)."""
    m = _BLOCK_KEY.match(key)
    if m:
        stage, block, part, rest = m.groups()
        return f"stages.{int(stage) - 1}.{block}.{_BLOCK[part]}.{rest}"
    m = _STEM_KEY.match(key)
    if m:
        return f"{_STEM[m.group(1)]}.{m.group(2)}"
    return None


def infer_arch(state: Mapping[str, torch.Tensor]) -> tuple[int, int, int, int]:
    """Stage depths from the block indices present in an arcface_torch state dict."""
    depth = [0, 0, 0, 0]
    for k in state:
        m = _BLOCK_KEY.match(k)
        if m:
            i = int(m.group(1)) - 1
            depth[i] = max(depth[i], int(m.group(2)) + 1)
    return tuple(depth)  # type: ignore[return-value]


def _plain_state(obj, source: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]  # a training checkpoint that wraps the backbone's weights
    if not isinstance(obj, Mapping) or not obj:
        raise BackboneError(f"{source}: not an arcface_torch backbone state dict (got {type(obj).__name__})")
    out = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise BackboneError(f"{source}: entry {k!r} is not a tensor ({type(v).__name__})")
        out[k[7:] if k.startswith("module.") else k] = v
    return out


class ArcfaceEmbedder(nn.Module):
    """arcface_torch's whole iresnet on meer's encoder: ``B x 3 x 112 x 112`` in [0, 1] (RGB aligned crops, as
    everywhere in meer) -> ``B x num_features`` embeddings (``normalize=True``: unit norm; arcface_torch returns
    them unnormalised and compares by cosine)."""

    def __init__(self, encoder: IREncoder, num_features: int = 512, normalize: bool = True):
        super().__init__()
        self.encoder = encoder
        c = encoder.channels[-1]
        self.bn2 = nn.BatchNorm2d(c, eps=1e-5)
        self.fc = nn.Linear(c * 7 * 7, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)
        self.normalize = normalize

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.encoder(images * 2.0 - 1.0)[-1]
        x = self.features(self.fc(torch.flatten(self.bn2(x), 1)))
        return F.normalize(x.float(), dim=1) if self.normalize else x


def load_arcface_backbone(source: str | Path | Mapping[str, torch.Tensor], arch: str | None = None,
                          encoder: IREncoder | None = None, strict: bool = True
                          ) -> tuple[IREncoder, dict[str, torch.Tensor]]:
    """``(encoder, head state)`` from an arcface_torch ``backbone.pth`` (a path or its state dict).

    ``arch`` (``r18``, ``r34``, ``r50``, ``r100``, ``r200``) checks the file is that network; ``encoder`` loads into
    an existing :class:`IREncoder` (e.g. ``MEER(cfg).encoder`` with ``enc_width=64, enc_layers=ARCHS[arch],
    enc_stem_stride=1``) instead of building one. ``strict``: every encoder weight must come from the file. The
    head state holds ``bn2.*``, ``fc.*``, ``features.*`` as in the file (for :class:`ArcfaceEmbedder`)."""
    name = str(source) if isinstance(source, (str, Path)) else "<state dict>"
    raw = load_weights_only(source, what="arcface_torch backbone", error=BackboneError) \
        if isinstance(source, (str, Path)) else source
    state = _plain_state(raw, name)
    depth = infer_arch(state)
    if not any(depth):
        first = next(iter(state))
        raise BackboneError(f"{name}: not an arcface_torch iresnet (no layer1..layer4 blocks; first key {first!r})")
    if arch is not None:
        if arch not in ARCHS:
            raise BackboneError(f"unknown iresnet {arch!r} (choose from {', '.join(ARCHS)})")
        if depth != ARCHS[arch]:
            bad = _first_depth_mismatch(depth, ARCHS[arch])
            raise BackboneError(f"{name}: not an arcface_torch {arch} (stage depths {depth}, {arch} has "
                                f"{ARCHS[arch]}; first mismatch at {bad})")
    if encoder is None:
        width = int(state["conv1.weight"].shape[0]) if "conv1.weight" in state else 64
        encoder = IREncoder(width=width, layers=depth, max_width=512, stem_stride=1)
    target = encoder.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k.startswith(HEAD_PREFIXES):
            head[k] = v
            continue
        mk = arcface_key(k)
        if mk is None or mk not in target:
            raise BackboneError(f"{name}: key {k!r} has no place in meer's IR encoder "
                                f"(stage depths {tuple(len(s) for s in encoder.stages)}, file {depth})")
        if tuple(v.shape) != tuple(target[mk].shape):
            raise BackboneError(f"{name}: key {k!r} has shape {tuple(v.shape)}, meer's encoder expects "
                                f"{tuple(target[mk].shape)} at {mk!r} (another width or architecture)")
        mapped[mk] = v.to(target[mk].dtype)
    missing = [k for k in target if k not in mapped and not k.endswith("num_batches_tracked")]
    if strict and missing:
        raise BackboneError(f"{name}: the file has no weight for meer's {missing[0]!r} "
                            f"({len(missing)} missing; file stage depths {depth})")
    encoder.load_state_dict(mapped, strict=False)
    return encoder, head


def _first_depth_mismatch(got: tuple[int, ...], want: tuple[int, ...]) -> str:
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:
            return f"'layer{i + 1}.{min(g, w)}.*' ({'extra' if g > w else 'missing'})"
    return "?"


def load_arcface_embedder(source: str | Path | Mapping[str, torch.Tensor], arch: str | None = None,
                          normalize: bool = True) -> ArcfaceEmbedder:
    """The whole arcface_torch network (encoder + head) in eval mode, for embeddings."""
    encoder, head = load_arcface_backbone(source, arch)
    name = str(source) if isinstance(source, (str, Path)) else "<state dict>"
    if "fc.weight" not in head:
        raise BackboneError(f"{name}: no embedding head (fc.weight) in the file")
    model = ArcfaceEmbedder(encoder, int(head["fc.weight"].shape[0]), normalize)
    target = {k: v for k, v in model.state_dict().items() if k.startswith(HEAD_PREFIXES)}
    for k, t in target.items():
        if k.endswith("num_batches_tracked") and k not in head:
            continue
        if k not in head:
            raise BackboneError(f"{name}: the file has no weight for the head's {k!r}")
        if tuple(head[k].shape) != tuple(t.shape):
            raise BackboneError(f"{name}: key {k!r} has shape {tuple(head[k].shape)}, expected {tuple(t.shape)}")
    model.load_state_dict({k: v for k, v in head.items() if k in target}, strict=False)
    return model.eval()
