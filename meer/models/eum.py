"""Embedding Unmasking Model (EUM) on top of a frozen face recognizer.

Boutros et al., "Self-restrained triplet loss for accurate masked face recognition" (arXiv:2103.01716):
a small network maps the embedding of a masked face to an embedding that should lie close to the
unmasked embedding of the same person; the recognizer itself stays frozen. The authors' model is four
fully connected layers of the embedding width, each followed by batch norm (LeakyReLU 0.2 between
them). ``EUMConfig(residual=False)`` is that network; ``residual=True`` adds the input back
(``x + MLP(x)`` with the last batch norm initialised to zero), so an untrained EUM is the identity and
training can only move embeddings where the loss asks it to.

:class:`FrozenEmbedder` wraps whatever produces the embeddings -- an ``nn.Module``, a TorchScript
file, or any callable ``images B x 3 x H x W [0, 1] -> B x D`` (e.g. the MEER recognition branch,
facenet-pytorch's ``InceptionResnetV1`` with local weights, the dlib descriptor) -- and guarantees that
no gradient and no parameter update ever reaches it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn

from meer.utils.errors import MeerError
from meer.utils.torch_files import load_weights_only


@dataclass
class EUMConfig:
    embedding_dim: int = 512  # width of the recognizer's embeddings (128 for dlib, 512 for ArcFace/facenet)
    hidden_dim: int | None = None  # None: embedding_dim (the paper)
    depth: int = 4  # fully connected layers (the paper: 4)
    dropout: float = 0.0
    negative_slope: float = 0.2  # LeakyReLU slope (the paper: 0.2)
    residual: bool = False  # False: the paper's plain MLP; True: x + MLP(x), identity at init

    def __post_init__(self) -> None:
        if self.embedding_dim < 1 or self.depth < 1:
            raise ValueError(f"embedding_dim and depth must be >= 1, got {self.embedding_dim}, {self.depth}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")


class EUM(nn.Module):
    """``B x D`` masked-face embedding -> ``B x D`` "unmasked" embedding (not normalised)."""

    def __init__(self, cfg: EUMConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or EUMConfig()
        dim, hidden = cfg.embedding_dim, cfg.hidden_dim or cfg.embedding_dim
        layers: list[nn.Module] = []
        width = dim
        for k in range(cfg.depth):
            out = dim if k == cfg.depth - 1 else hidden
            layers += [nn.Linear(width, out), nn.BatchNorm1d(out)]
            if k < cfg.depth - 1:
                layers.append(nn.LeakyReLU(cfg.negative_slope))
                if cfg.dropout > 0:
                    layers.append(nn.Dropout(cfg.dropout))
            width = out
        self.net = nn.Sequential(*layers)
        if cfg.residual:
            nn.init.zeros_(self.net[-1].weight)  # last BN: the residual branch starts at exactly 0

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        if embedding.dim() != 2 or embedding.shape[1] != self.cfg.embedding_dim:
            raise MeerError(f"EUM expects B x {self.cfg.embedding_dim} embeddings, got {tuple(embedding.shape)} "
                            "(set eum.model.embedding_dim to the recognizer's width)")
        x = embedding.float()
        out = self.net(x)
        return x + out if self.cfg.residual else out


Embedder = Callable[[torch.Tensor], torch.Tensor]


class FrozenEmbedder(nn.Module):
    """A recognizer that is never trained: parameters frozen, always in eval mode, run without grad.

    Args:
        embedder: ``nn.Module`` / TorchScript module / callable taking images and returning ``B x D``.
        input_size: resize the ``[0, 1]`` images to this square size first (None: as given).
        input_range: ``"unit"`` passes ``[0, 1]``; ``"symmetric"`` maps to ``[-1, 1]``;
            ``"facenet"`` applies facenet-pytorch's ``fixed_image_standardization`` ``(255 x - 127.5) / 128``.
    """

    def __init__(self, embedder: nn.Module | Embedder, input_size: int | None = None,
                 input_range: Literal["unit", "symmetric", "facenet"] = "unit") -> None:
        super().__init__()
        if not callable(embedder):
            raise MeerError(f"embedder must be callable, got {type(embedder).__name__}")
        if input_range not in ("unit", "symmetric", "facenet"):
            raise MeerError(f"input_range must be unit, symmetric or facenet, got {input_range!r}")
        self.embedder = embedder
        self.input_size = input_size
        self.input_range = input_range
        if isinstance(embedder, nn.Module):
            for p in embedder.parameters():  # (ScriptModules have no requires_grad_)
                p.requires_grad_(False)
            embedder.eval()

    def train(self, mode: bool = True) -> "FrozenEmbedder":
        super().train(mode)
        if isinstance(self.embedder, nn.Module):
            self.embedder.eval()  # BN statistics and dropout of a frozen recognizer never change
        return self

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if self.input_size is not None and x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=True)
        if self.input_range == "symmetric":
            x = x * 2.0 - 1.0
        elif self.input_range == "facenet":
            x = (x * 255.0 - 127.5) / 128.0
        return x

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise MeerError(f"embedder expects B x 3 x H x W images, got {tuple(images.shape)}")
        out = self.embedder(self.prepare(images))
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != images.shape[0]:
            raise MeerError(f"embedder must return a B x D tensor, got "
                            f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
        return out.float().detach()


def load_torchscript_embedder(path: str | Path, input_size: int | None = None,
                              input_range: Literal["unit", "symmetric", "facenet"] = "unit") -> FrozenEmbedder:
    """A TorchScript recognizer file as a frozen embedder (loaded on the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise MeerError(f"TorchScript embedder not found: {path}")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except (RuntimeError, ValueError) as exc:
        raise MeerError(f"{path}: not a TorchScript file ({str(exc).splitlines()[0]})") from None
    return FrozenEmbedder(module, input_size, input_range)


def load_facenet_embedder(weights: str | Path) -> FrozenEmbedder:
    """facenet-pytorch ``InceptionResnetV1`` (512-d) with a local state-dict file (nothing downloaded).

    The file is what ``InceptionResnetV1(pretrained='vggface2').state_dict()`` saves (a classifier
    ``logits.*`` entry, if any, is ignored). Inputs are resized to 160 and standardised as facenet does."""
    from facenet_pytorch import InceptionResnetV1

    weights = Path(weights)
    if not weights.is_file():
        raise MeerError(f"facenet weights not found: {weights} (save InceptionResnetV1(pretrained=...).state_dict())")
    state = torch.load(str(weights), map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("logits.")}
    model = InceptionResnetV1(pretrained=None, classify=False)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise MeerError(f"{weights}: not InceptionResnetV1 weights ({len(missing)} missing, {len(unexpected)} unexpected keys)")
    return FrozenEmbedder(model, input_size=160, input_range="facenet")


def load_eum(path: str | Path, device: str | torch.device = "cpu") -> tuple[EUM, dict]:
    """An EUM from a ``meer-train`` checkpoint of a ``task: eum_srt`` run (or a file written by
    :func:`save_eum`). Returns the model in eval mode and the embedder settings it was trained on
    (``{"kind": ..., "path": ...}``: the EUM is only meaningful on top of that recognizer)."""
    from dataclasses import fields

    path = Path(path)
    state = load_weights_only(path, device)
    if isinstance(state, dict) and "eum_state" in state:  # save_eum
        model_cfg, weights, embedder = state["eum_config"], state["eum_state"], state.get("embedder", {})
    elif isinstance(state, dict) and isinstance(state.get("task"), dict) and "eum" in state["task"]:
        eum_cfg = state.get("config", {}).get("eum", {})
        model_cfg, weights, embedder = eum_cfg.get("model", {}), state["task"]["eum"], eum_cfg.get("embedder", {})
    else:
        raise MeerError(f"{path}: not an EUM checkpoint (train one with task: eum_srt)")
    names = {f.name for f in fields(EUMConfig)}
    model = EUM(EUMConfig(**{k: v for k, v in model_cfg.items() if k in names}))
    model.load_state_dict(weights)
    return model.to(device).eval(), dict(embedder)


def save_eum(eum: EUM, path: str | Path, embedder: dict | None = None) -> Path:
    """A standalone EUM file (config, weights, the embedder settings) readable by :func:`load_eum`."""
    from dataclasses import asdict

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"eum_config": asdict(eum.cfg), "eum_state": eum.state_dict(), "embedder": dict(embedder or {})},
               str(path))
    return path
