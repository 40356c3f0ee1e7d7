"""Reader of dlib's serialized face-recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``).

Written from dlib's own serialization code (``dlib/serialize.h``, ``dlib/cuda/tensor.h``,
``dlib/dnn/core.h``, ``layers.h``, ``input.h``, ``loss.h``); no dlib build is needed. What the file holds:

* integers: a control byte (low 4 bits: byte count, bit 0x80: negative) then little-endian bytes;
* strings: an integer length then the characters; booleans: the ASCII characters ``'1'`` / ``'0'``;
* scalar floats: ``mantissa * 2**exponent``, two integers;
* tensors: version 2, ``num_samples, k, nr, nc``, then raw little-endian float32 values; an
  ``alias_tensor`` (a view into a layer's single parameter tensor) is version 1 and its 4 dimensions;
* the network: ``add_loss_layer`` writes its version, the loss, then the sub-network. Each
  ``add_layer`` writes its version, its sub-network, *then* its layer details and state (3 booleans
  and 2-3 cached tensors); the innermost one writes the input layer first; tag and skip layers
  write only their version (1). So the file starts with the nesting versions, outermost first, and
  then the layers follow in forward order, input first.

The network is the one of dlib's ``dnn_face_recognition_ex.cpp`` (``anet_type``); the expected
layer sequence is checked one by one and any difference is a one-line ``MeerError`` naming the file.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from meer.utils.errors import MeerError

#: residual blocks in forward order: (output channels, downsampling). dlib's alevel4 (3 x ares<32>),
#: alevel3 (ares_down<64> + 3 x ares<64>), alevel2 and alevel1 (ares_down + 2 x ares, 128 and 256
#: channels), alevel0 (ares_down<256>)
BLOCKS: tuple[tuple[int, bool], ...] = (
    ((32, False),) * 3 + ((64, True),) + ((64, False),) * 3 + ((128, True),) + ((128, False),) * 2
    + ((256, True),) + ((256, False),) * 2 + ((256, True),)
)
STEM_CHANNELS = 32
EMBED_DIM = 128
INPUT_SIZE = 150

# float_details special exponents (dlib/float_details.h)
_INF, _NINF, _NAN = 32000, 32001, 32002


@dataclass
class DatLayer:
    """One layer of the file in forward order: its type string and what it carries."""

    kind: str  # con_, affine_, relu_, max_pool_, avg_pool_, add_prev_, fc_, tag (tags and skips)
    name: str = ""  # state-dict prefix for layers with parameters
    info: dict = field(default_factory=dict)
    tensors: dict = field(default_factory=dict)


def expected_layers() -> list[DatLayer]:
    """``anet_type`` in forward order (tags/skips included: the file marks them by position only)."""
    seq = [DatLayer("con_", "stem.conv", {"filters": STEM_CHANNELS, "size": 7, "stride": 2}),
           DatLayer("affine_", "stem.affine"), DatLayer("relu_"),
           DatLayer("max_pool_", info={"size": 3, "stride": 2})]
    for i, (ch, down) in enumerate(BLOCKS):
        p = f"blocks.{i}"
        seq += [DatLayer("tag"),
                DatLayer("con_", f"{p}.conv1", {"filters": ch, "size": 3, "stride": 2 if down else 1}),
                DatLayer("affine_", f"{p}.affine1"), DatLayer("relu_"),
                DatLayer("con_", f"{p}.conv2", {"filters": ch, "size": 3, "stride": 1}),
                DatLayer("affine_", f"{p}.affine2")]
        if down:  # add_prev2<avg_pool<2,2,2,2,skip1<tag2<block<...,tag1<SUBNET>>>>>>
            seq += [DatLayer("tag"), DatLayer("tag"), DatLayer("avg_pool_", info={"size": 2, "stride": 2})]
        seq += [DatLayer("add_prev_"), DatLayer("relu_")]
    seq += [DatLayer("avg_pool_", info={"size": 0, "stride": 1}), DatLayer("fc_", "fc", {"outputs": EMBED_DIM})]
    return seq


class _Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError(f"file ends early (wanted {n} bytes at offset {self.pos} of {len(self.data)})")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def int(self) -> int:
        ctrl = self.take(1)[0]
        size = ctrl & 0x0F
        if size > 8 or ctrl & 0x70:
            raise ValueError(f"bad integer control byte 0x{ctrl:02x} at offset {self.pos - 1}")
        value = int.from_bytes(self.take(size), "little") if size else 0
        return -value if ctrl & 0x80 else value

    def float(self) -> float:
        mantissa, exponent = self.int(), self.int()
        if exponent == _INF:
            return math.inf
        if exponent == _NINF:
            return -math.inf
        if exponent == _NAN:
            return math.nan
        return math.ldexp(float(mantissa), exponent)

    def string(self) -> str:
        n = self.int()
        if n > 256:
            raise ValueError(f"implausible string length {n} at offset {self.pos}")
        return self.take(n).decode("latin-1")

    def bool(self) -> bool:
        ch = self.take(1)
        if ch not in (b"0", b"1"):
            raise ValueError(f"bad boolean {ch!r} at offset {self.pos - 1}")
        return ch == b"1"

    def tensor(self) -> np.ndarray:
        version = self.int()
        if version != 2:
            raise ValueError(f"unexpected tensor version {version} at offset {self.pos}")
        dims = [self.int() for _ in range(4)]
        if any(d < 0 for d in dims):
            raise ValueError(f"negative tensor size {dims}")
        count = int(np.prod(dims))
        return np.frombuffer(self.take(4 * count), dtype="<f4").reshape(dims).astype(np.float32)

    def alias(self) -> tuple[int, int, int, int]:
        version = self.int()
        if version != 1:
            raise ValueError(f"unexpected alias_tensor version {version} at offset {self.pos}")
        return tuple(self.int() for _ in range(4))  # type: ignore[return-value]

    def expect(self, what: str, got: object, want: object) -> None:
        if got != want:
            raise ValueError(f"{what}: expected {want!r}, found {got!r} (offset {self.pos})")


def _read_details(r: _Reader, layer: DatLayer) -> None:
    """The layer-details part of ``layer`` (its type string first), into ``layer.info``/``tensors``."""
    version = r.string()
    kind = layer.kind
    if kind == "con_":
        if version not in ("con_4", "con_5"):
            raise ValueError(f"layer: expected con_4 or con_5, found {version!r} (offset {r.pos})")
        params = r.tensor().reshape(-1)
        filters, _nr, _nc = r.int(), r.int(), r.int()
        stride_y, stride_x, pad_y, pad_x = r.int(), r.int(), r.int(), r.int()
        fshape, bshape = r.alias(), r.alias()
        for _ in range(4):  # learning-rate and weight-decay multipliers
            r.float()
        use_bias = r.bool() if version == "con_5" else True
        want = layer.info
        r.expect("filters", filters, want["filters"])
        r.expect("kernel", (_nr, _nc), (want["size"], want["size"]))
        r.expect("stride", (stride_y, stride_x), (want["stride"], want["stride"]))
        r.expect("padding", (pad_y, pad_x), ((0, 0) if want["stride"] != 1 else (want["size"] // 2,) * 2))
        r.expect("filter shape", fshape[0], filters)
        nw = int(np.prod(fshape))
        nb = filters if use_bias else 0
        r.expect("parameter count", params.size, nw + nb)
        layer.info.update(padding=pad_y)
        layer.tensors["weight"] = params[:nw].reshape(fshape)
        if use_bias:
            r.expect("bias shape", int(np.prod(bshape)), filters)
            layer.tensors["bias"] = params[nw:].copy()
    elif kind == "affine_":
        r.expect("layer", version, "affine_")
        params = r.tensor().reshape(-1)
        gshape, bshape = r.alias(), r.alias()
        mode = r.int()
        r.expect("affine mode (0 = per channel, CONV_MODE)", mode, 0)
        n = int(np.prod(gshape))
        r.expect("affine sizes", (params.size, int(np.prod(bshape))), (2 * n, n))
        layer.tensors["scale"] = params[:n].copy()
        layer.tensors["shift"] = params[n:].copy()
    elif kind == "relu_":
        r.expect("layer", version, "relu_")
    elif kind in ("max_pool_", "avg_pool_"):
        r.expect("layer", version, kind + "2")
        nr, nc, sy, sx, py, px = (r.int() for _ in range(6))
        want = layer.info
        r.expect(f"{kind} window", (nr, nc), (want["size"], want["size"]))
        r.expect(f"{kind} stride", (sy, sx), (want["stride"], want["stride"]))
        r.expect(f"{kind} padding", (py, px), (0, 0))
    elif kind == "add_prev_":
        r.expect("layer", version, "add_prev_")
    elif kind == "fc_":
        r.expect("layer", version, "fc_2")
        outputs, inputs = r.int(), r.int()
        params = r.tensor().reshape(-1)
        wshape, _bshape = r.alias(), r.alias()
        bias_mode = r.int()
        for _ in range(4):
            r.float()
        r.expect("fc outputs", outputs, layer.info["outputs"])
        r.expect("fc bias mode (1 = no bias)", bias_mode, 1)
        r.expect("fc weight shape", wshape[:2], (inputs, outputs))
        r.expect("fc parameter count", params.size, inputs * outputs)
        # dlib computes x @ W with W (inputs x outputs); torch's Linear keeps W transposed
        layer.tensors["weight"] = np.ascontiguousarray(params.reshape(inputs, outputs).T)
    else:  # pragma: no cover - expected_layers() lists only the kinds above
        raise ValueError(f"unsupported layer {version}")


def parse_dat(data: bytes) -> tuple[dict, list[DatLayer]]:
    """Parse the bytes of the file: ``(input info, layers in forward order)``; ``ValueError`` on anything unexpected."""
    r = _Reader(data)
    r.expect("loss layer version", r.int(), 1)
    loss = r.string()
    if loss not in ("loss_metric_", "loss_metric_2"):
        raise ValueError(f"expected loss_metric (dlib's face recognition network), found {loss!r}")
    loss_info = {}
    if loss == "loss_metric_2":
        loss_info = {"margin": r.float(), "distance_threshold": r.float()}
    layers = expected_layers()
    # nesting versions, outermost first: add_layer 1-2, tag/skip 1, the input-level add_layer 2-3
    versions = [r.int() for _ in layers]
    for depth, (layer, v) in enumerate(zip(reversed(layers), versions)):
        innermost = depth == len(layers) - 1
        ok = v == 1 if layer.kind == "tag" else (v in (2, 3) if innermost else v in (1, 2))
        if not ok:
            raise ValueError(f"unexpected network structure at depth {depth} ({layer.kind} version {v})")
    r.expect("input layer", r.string(), "input_rgb_image_sized")
    mean = [r.float() for _ in range(3)]
    size = (r.int(), r.int())
    r.expect("input size", size, (INPUT_SIZE, INPUT_SIZE))
    first_version = versions[-1]
    for i, (layer, v) in enumerate(zip(layers, reversed(versions))):
        if layer.kind == "tag":
            continue
        _read_details(r, layer)
        for _ in range(3):  # setup called, gradient stale, output disabled
            r.bool()
        if i == 0:  # the input-level add_layer: x_grad, cached_output, grad_final [, sample expansion]
            for _ in range(3):
                r.tensor()
            if first_version >= 3:
                r.int()
        else:  # x_grad, cached_output [, params_grad]
            for _ in range(3 if v == 2 else 2):
                r.tensor()
    if r.pos != len(data):
        raise ValueError(f"{len(data) - r.pos} unexpected bytes after the network")
    return {"mean_rgb": mean, "size": size, "loss": loss, **loss_info}, layers


def read_dlib_dat(path: str | Path) -> dict[str, torch.Tensor]:
    """State dict of ``meer.models.dlib_resnet.DlibResNet`` read from dlib's ``.dat`` file at ``path``.

    Keys: ``input_mean`` (3, in 0..255 pixel units), ``stem.conv.weight``/``bias``,
    ``stem.affine.scale``/``shift``, ``blocks.{i}.conv{1,2}.*``, ``blocks.{i}.affine{1,2}.*``,
    ``fc.weight`` (128 x 256). A missing, truncated or foreign file gives a one-line ``MeerError``."""
    path = Path(path)
    if not path.is_file():
        raise MeerError(f"dlib model file not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MeerError(f"cannot read dlib model file {path}: {exc.strerror or exc}") from None
    try:
        info, layers = parse_dat(data)
    except (ValueError, IndexError, struct.error) as exc:
        raise MeerError(f"{path}: not a readable dlib face recognition model ({str(exc).splitlines()[0]})") from None
    state: dict[str, torch.Tensor] = {"input_mean": torch.tensor(info["mean_rgb"], dtype=torch.float32)}
    for layer in layers:
        for key, value in layer.tensors.items():
            if not np.isfinite(value).all():
                raise MeerError(f"{path}: non-finite values in layer {layer.name}")
            state[f"{layer.name}.{key}"] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    return state
