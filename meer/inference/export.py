"""Deployment files of a MEER checkpoint: ONNX and TorchScript graphs of the restorer and the embedder.

Both graphs take ``B x 3 x S x S`` float32 ArcFace-aligned crops in ``[0, 1]`` (``S`` = the model's
``image_size``, 112 for the shipped checkpoint; RGB, channels first; the batch size is free):

* ``meer_restorer``: masked crop -> ``restored`` (``B x 3 x S x S``, the composite with the binarised,
  dilated predicted occlusion, pixels outside it equal to the input) and ``occlusion`` (``B x 1 x S x S``, the
  soft predicted map, 1 = occluded) -- ``MEER.restore``;
* ``meer_embedder``: crop (masked, clean or restored) -> ``embedding`` (``B x D``, unit norm) -- ``MEER.embed``.

ONNX files use opset 18 (the dlib encoder's resampling is ``GridSample``, opset >= 16) and torch's ``torch.export``
based exporter (``onnx`` + ``onnxscript``, the ``export`` extra); ``onnxruntime`` runs them. (The older TorchScript
exporter cannot convert the area resampling of the occlusion map once the batch size is free.)
TorchScript files (``torch.jit.trace``) load with ``torch.jit.load`` and no meer import.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from meer.models.meer import MEER
from meer.utils.errors import MeerError

OPSET = 18


class RestorerGraph(nn.Module):
    """``x -> (restored, occlusion)`` of a MEER model in eval mode (``MEER.restore``)."""

    def __init__(self, model: MEER):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(x)
        return out.restored, out.occ_map


class EmbedderGraph(nn.Module):
    """``x -> embedding`` of a MEER model in eval mode."""

    def __init__(self, model: MEER):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.embed(x)


@dataclass
class ExportResult:
    files: dict[str, Path] = field(default_factory=dict)  # "restorer.onnx" -> path, ...
    notes: list[str] = field(default_factory=list)  # what was not written and why


GRAPHS = ("restorer", "embedder")


def onnx_available() -> bool:
    """``onnx`` and ``onnxscript`` (torch's ONNX exporter) are installed."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


def _graphs(model: MEER) -> dict[str, tuple[nn.Module, list[str]]]:
    return {"restorer": (RestorerGraph(model), ["restored", "occlusion"]),
            "embedder": (EmbedderGraph(model), ["embedding"])}


def export_onnx(module: nn.Module, example: torch.Tensor, path: Path, outputs: list[str]) -> Path:
    """``module`` (one input, ``outputs`` named) as ONNX with a free batch size, checked by ``onnx.checker``."""
    module(example)  # one eager pass fills lazily built constants (the dlib encoder's chip grids) before tracing
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export's and onnxscript's notices
        torch.onnx.export(module, (example,), str(path), dynamo=True, opset_version=OPSET, input_names=["image"],
                          output_names=outputs, dynamic_axes={"image": {0: "batch"}, **{o: {0: "batch"} for o in outputs}},
                          do_constant_folding=True, verbose=False, optimize=True, external_data=False)
    import onnx

    onnx.checker.check_model(str(path))
    return path


def export_torchscript(module: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """``module`` traced to TorchScript (``torch.jit.load`` needs no meer import)."""
    module(example)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, (example,), check_trace=False)
    traced.save(str(path))
    return path


@torch.no_grad()
def export_model(model: MEER, out_dir: str | Path, formats: tuple[str, ...] = ("onnx", "torchscript"),
                 meta: dict | None = None, overwrite: bool = False,
                 graphs: tuple[str, ...] = ("restorer", "embedder")) -> ExportResult:
    """Write ``graphs`` (``restorer``, ``embedder``) in each of ``formats`` into ``out_dir`` plus ``export.json``
    (input layout, output names, the model's config and ``meta``). ONNX is skipped with a note when ``onnx`` /
    ``onnxscript`` are not installed (``pip install 'meer[export]'``)."""
    bad = [f for f in formats if f not in ("onnx", "torchscript")] + [g for g in graphs if g not in GRAPHS]
    if bad:
        raise MeerError(f"unknown export format or graph {', '.join(bad)} (formats: onnx, torchscript; "
                        f"graphs: {', '.join(GRAPHS)})")
    out_dir = Path(out_dir)
    model = model.eval().float().cpu()
    s = model.cfg.image_size
    example = torch.rand(2, 3, s, s, generator=torch.Generator().manual_seed(0))
    res = ExportResult()
    if "onnx" in formats and not onnx_available():
        res.notes.append("ONNX not written: onnx / onnxscript are not installed (pip install 'meer[export]')")
        formats = tuple(f for f in formats if f != "onnx")
    planned = [out_dir / f"{name}.{'onnx' if f == 'onnx' else 'ts'}" for f in formats for name in graphs]
    existing = [p for p in planned + [out_dir / "export.json"] if p.exists()]
    if existing and not overwrite:
        raise MeerError(f"{existing[0]} already exists (use --overwrite to replace it)")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, (module, outputs) in _graphs(model).items():
        if name not in graphs:
            continue
        if "onnx" in formats:
            res.files[f"{name}.onnx"] = export_onnx(module, example, out_dir / f"{name}.onnx", outputs)
        if "torchscript" in formats:
            res.files[f"{name}.ts"] = export_torchscript(module, example, out_dir / f"{name}.ts")
    from dataclasses import asdict

    info = {"input": {"name": "image", "shape": ["batch", 3, s, s], "dtype": "float32",
                      "layout": "RGB, channels first, values in [0, 1], ArcFace-aligned crop"},
            "restorer": {"outputs": {"restored": ["batch", 3, s, s], "occlusion": ["batch", 1, s, s]}},
            "embedder": {"outputs": {"embedding": ["batch", model.cfg.embedding_dim]}},
            "onnx_opset": OPSET, "files": sorted(res.files), "config": asdict(model.cfg), "meta": meta or {}}
    (out_dir / "export.json").write_text(json.dumps(info, indent=1, default=str), encoding="utf-8")
    res.files["export.json"] = out_dir / "export.json"
    return res
