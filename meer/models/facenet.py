"""facenet-pytorch's InceptionResnetV1 with its VGGFace2 weights, only from the local torch cache.

facenet-pytorch downloads ``20180402-114759-vggface2.pt`` into ``$TORCH_HOME/checkpoints`` when asked
for ``pretrained="vggface2"``; meer never downloads, so it uses that file only when it is already
there (or at an explicit path) and says so in one line otherwise.
"""
from __future__ import annotations

from pathlib import Path

import torch

from meer.utils.errors import MeerError
from meer.utils.torch_files import load_weights_only

WEIGHTS_FILE = "20180402-114759-vggface2.pt"


def facenet_weights_path() -> Path:
    """Where facenet-pytorch caches its VGGFace2 weights (may not exist)."""
    from facenet_pytorch.models.inception_resnet_v1 import get_torch_home

    return Path(get_torch_home()) / "checkpoints" / WEIGHTS_FILE


def load_facenet(weights: str | Path | None = None) -> tuple[torch.nn.Module, Path]:
    """``(InceptionResnetV1 in eval mode, weights path)``; ``MeerError`` when the weights are not on disk."""
    path = Path(weights) if weights is not None else facenet_weights_path()
    if not path.is_file():
        raise MeerError(f"facenet VGGFace2 weights not found at {path} (meer never downloads them)")
    from facenet_pytorch import InceptionResnetV1

    model = InceptionResnetV1(pretrained=None, classify=False)
    state = load_weights_only(path, what="facenet weights file")
    if isinstance(state, dict):  # the published file carries the 8631-way VGGFace2 classifier too
        state = {k: v for k, v in state.items() if not str(k).startswith("logits.")}
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise MeerError(f"{path}: not facenet VGGFace2 weights ({str(exc).splitlines()[0][:160]})") from None
    return model.eval(), path
