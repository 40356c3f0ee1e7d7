"""MaskMTL: a multitask network for (masked) faces -- one shared trunk, one small head per attribute.

Tasks are declared, not hard-coded: every :class:`TaskSpec` names a target key of the dataset items
(``gender``, ``age``, ``age_group``, ``race``, ``attr_Smiling``, ``mask_kind``, ``mask_coverage``,
``masked``...) and says whether it is a classification (``num_classes`` logits) or a regression (one
value, trained on ``target / scale`` so that ages in years and unit-range targets train alike; the
model's ``predict`` gives values back in the target's own unit).

Trunks: ``resnet18`` (torchvision's, randomly initialised -- nothing is downloaded) or ``small``, a
four-stage conv net for tests and CPU experiments. Inputs are ``B x 3 x H x W`` in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from meer.data.multitask import TaskSpec  # declared with the targets it names (data layer); also importable here
from meer.utils.errors import MeerError


@dataclass
class MaskMTLConfig:
    trunk: Literal["resnet18", "small"] = "resnet18"
    width: int = 32  # small trunk: channels of the first stage (doubling per stage)
    head_hidden: int = 0  # 0: linear heads; else one hidden layer of this width per head
    dropout: float = 0.2
    tasks: list[TaskSpec] = field(default_factory=list)


def _small_trunk(width: int) -> tuple[nn.Module, int]:
    layers: list[nn.Module] = []
    c_in = 3
    for k in range(4):
        c = width * 2**k
        layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                   nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
        c_in = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), c_in


def _resnet18_trunk() -> tuple[nn.Module, int]:
    from torchvision.models import resnet18

    net = resnet18(weights=None)
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


class MaskMTL(nn.Module):
    def __init__(self, cfg: MaskMTLConfig) -> None:
        super().__init__()
        if not cfg.tasks:
            raise MeerError("MaskMTL needs at least one task")
        names = [t.name for t in cfg.tasks]
        if len(set(names)) != len(names):
            raise MeerError(f"task names must be unique, got {names}")
        self.cfg = cfg
        self.tasks = {t.name: t for t in cfg.tasks}
        self.trunk, dim = _small_trunk(cfg.width) if cfg.trunk == "small" else _resnet18_trunk()
        self.feature_dim = dim
        heads = {}
        for t in cfg.tasks:
            if cfg.head_hidden:
                heads[t.name] = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(dim, cfg.head_hidden),
                                              nn.ReLU(inplace=True), nn.Linear(cfg.head_hidden, t.out_dim))
            else:
                heads[t.name] = nn.Sequential(nn.Dropout(cfg.dropout), nn.Linear(dim, t.out_dim))
        self.heads = nn.ModuleDict(heads)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise MeerError(f"MaskMTL expects B x 3 x H x W images, got {tuple(images.shape)}")
        return self.trunk(images * 2.0 - 1.0)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw outputs: ``B x C`` logits per classification task, ``B`` (target / scale) per regression."""
        f = self.features(images)
        out = {}
        for name, head in self.heads.items():
            y = head(f)
            out[name] = y[:, 0] if self.tasks[name].kind == "regression" else y
        return out

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Class indices per classification task, values in the target's unit per regression task."""
        out = {}
        for name, y in self.forward(images).items():
            t = self.tasks[name]
            out[name] = y.argmax(1) if t.kind == "classification" else y * t.scale
        return out
