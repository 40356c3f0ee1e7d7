"""What an evaluation run scored, typed: the crops of every view (:class:`Views`) and the run's result
(:class:`EvalResult`: the ``results.json`` dict, the views, every scored list of pairs and every embedding).
Everything is keyed by :class:`meer.evaluation.keys.ViewKey` / :class:`~meer.evaluation.keys.ScoreKey`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meer.evaluation.dataset import EvalData
from meer.evaluation.keys import ScoreKey, ViewKey
from meer.evaluation.prepare import Face
from meer.evaluation.scoring import PairScores

#: judge name -> view -> image path -> embedding (enrolled images only)
Embeddings = dict[str, dict[ViewKey, dict[Path, np.ndarray]]]


class Views:
    """The 112 crops of each view, as the judges saw them (``None`` from :meth:`get`: the photo has no face, a
    failure to enrol): the clean photos, each mask source's masked crops and each method's restorations, with
    the ground-truth masks of synthetic sources (``truth``) and the region each method reported (``regions``)."""

    def __init__(self, faces: dict[Path, Face], data: EvalData):
        self.faces = faces
        self.data = data
        self.crops: dict[ViewKey, dict[Path, np.ndarray]] = {
            ViewKey.clean(): {p: f.crop for p, f in faces.items() if not data.images[p].real_masked}}
        self.truth: dict[str, dict[Path, np.ndarray]] = {}  # source -> ground-truth masks (synthetic only)
        self.regions: dict[ViewKey, dict[Path, np.ndarray]] = {}  # restored view -> region the method replaced

    @property
    def sources(self) -> list[str]:
        return [k.source for k in self.crops if k.role == "masked"]

    def methods(self, source: str) -> list[str]:
        """The methods whose restorations of ``source`` are in the views."""
        return [k.method for k in self.crops if k.role == "restored" and k.source == source]

    def get(self, key: ViewKey, path: Path) -> np.ndarray | None:
        if key not in self.crops:
            ran = ", ".join(m for m in self.methods(key.source)) or "none"
            raise ValueError(f"view {key} is not in this run (sources: {', '.join(self.sources) or 'none'}; "
                             f"methods on {key.source or 'it'}: {ran})")
        return self.crops[key].get(path)

    def region(self, key: ViewKey, path: Path) -> np.ndarray:
        """The region a view's method replaced (empty for clean and masked views)."""
        if key.role != "restored":
            return np.zeros((112, 112), bool)
        return self.regions[key][path]


@dataclass
class EvalResult:
    """What ``run_evaluation`` returns (and writes: ``results.json`` is ``results``, ``scores.npz`` holds
    ``scores``)."""

    results: dict
    views: Views
    scores: dict[ScoreKey, PairScores] = field(default_factory=dict)
    embeddings: Embeddings = field(default_factory=dict)

    @property
    def data(self) -> EvalData:
        return self.views.data
