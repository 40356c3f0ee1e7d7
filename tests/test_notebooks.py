"""Every inspection notebook runs headless, top to bottom, in its quick variant (``MEER_NOTEBOOK_SMALL=1``).

The committed notebooks carry the outputs of the full variant; this test only proves that they still run
against the current package and the shipped checkpoint, and that the committed files stay small.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from meer.inference import weights

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
SHIPPED = weights.REPO_ROOT / "checkpoints" / weights.CHECKPOINT_NAME
ALL = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def _runner():
    spec = importlib.util.spec_from_file_location("nb_execute", NOTEBOOKS / "execute.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_three_notebooks_exist_and_are_committed_with_outputs_under_3_mb():
    names = [p.name for p in ALL]
    assert names == ["01_restore_walkthrough.ipynb", "02_decoupling.ipynb", "03_verification.ipynb"]
    for path in ALL:
        assert path.stat().st_size < 3_000_000, f"{path.name} is {path.stat().st_size / 1e6:.1f} MB"
        cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
        assert cells and all(c.get("outputs") is not None for c in cells)
        assert sum(bool(c.get("outputs")) for c in cells) >= len(cells) // 2, f"{path.name} has no outputs"
        errors = [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
        assert not errors, f"{path.name} was committed with an error output"


@pytest.mark.skipif(not SHIPPED.is_file(), reason=f"no shipped checkpoint at {SHIPPED}")
@pytest.mark.parametrize("path", ALL, ids=[p.stem for p in ALL])
def test_notebook_runs_headless(path, tmp_path, monkeypatch):
    monkeypatch.delenv("MEER_CHECKPOINT", raising=False)
    monkeypatch.delenv("MEER_NOTEBOOK_SHOW_DATA", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    out = tmp_path / path.name
    _runner().execute(path, out, small=True, timeout=300)
    cells = json.loads(out.read_text())["cells"]
    outputs = [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) or "image/jpeg" in o.get("data", {}) for o in outputs)
