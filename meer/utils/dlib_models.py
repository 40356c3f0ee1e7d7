"""Where dlib's model files are: the ``models/`` folder of the installed ``face_recognition_models``
package (the ``judge`` extra: ``pip install 'meer[judge]'``). Nothing is ever downloaded.

The package is located with ``importlib.util.find_spec`` and never imported (importing it needs
``pkg_resources``). ``dlib_model_dir()`` answers None when it is missing; ``dlib_model_path(name)``
raises a one-line ``MeerError`` instead.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from meer.utils.errors import MeerError

PACKAGE = "face_recognition_models"
INSTALL_HINT = "pip install 'meer[judge]': dlib-bin, face-recognition-models"

SHAPE_5 = "shape_predictor_5_face_landmarks.dat"
SHAPE_68 = "shape_predictor_68_face_landmarks.dat"
RESNET = "dlib_face_recognition_resnet_model_v1.dat"
MMOD = "mmod_human_face_detector.dat"


def dlib_model_dir() -> Path | None:
    """``face_recognition_models/models`` when that package is installed, else None."""
    try:
        spec = importlib.util.find_spec(PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        root = Path(list(spec.submodule_search_locations)[0])
    elif spec.origin is not None:
        root = Path(spec.origin).parent
    else:
        return None
    folder = root / "models"
    return folder if folder.is_dir() else None


def has_dlib_models(*names: str) -> bool:
    """Whether every model file in ``names`` is installed."""
    folder = dlib_model_dir()
    return folder is not None and all((folder / n).is_file() for n in names)


def dlib_available() -> bool:
    """Whether the ``dlib`` Python module is installed (it is not imported here)."""
    try:
        return importlib.util.find_spec("dlib") is not None
    except (ImportError, ValueError):
        return False


def dlib_model_path(name: str) -> Path:
    """Path of dlib model file ``name`` (e.g. ``RESNET``); one-line ``MeerError`` when it is missing."""
    folder = dlib_model_dir()
    if folder is None:
        raise MeerError(f"dlib model {name} needs the judge extra ({INSTALL_HINT})")
    path = folder / name
    if not path.is_file():
        raise MeerError(f"dlib model {name} is not in {folder} (reinstall face-recognition-models)")
    return path
