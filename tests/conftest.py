"""Shared test fixtures: paths to the bundled examples and to ../shared/data (skipped when absent)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"

# keep the suite predictable on small CI machines
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def shared_data_root() -> Path:
    """``$MEER_SHARED_DATA`` or ``../shared/data`` next to the repository."""
    env = os.environ.get("MEER_SHARED_DATA")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_root()
    if not (root / "MANIFEST.md").is_file():
        pytest.skip(f"real face data not found at {root} (set MEER_SHARED_DATA)")
    return root


@pytest.fixture(scope="session")
def astronaut_path() -> Path:
    return EXAMPLES / "astronaut.png"


@pytest.fixture(scope="session")
def no_face_path() -> Path:
    return EXAMPLES / "no_face_cat.jpg"


@pytest.fixture
def one_thread():
    """Run a test on one intra-op thread (elementwise ops and tiny matrices gain nothing from a
    second thread, and lose badly on a busy 2-core machine); restores the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
