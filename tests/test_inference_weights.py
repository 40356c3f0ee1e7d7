"""Checkpoint lookup order and the error that lists every place looked at."""
from __future__ import annotations


import pytest

from meer.inference import weights
from meer.inference.weights import CheckpointNotFoundError, candidate_paths, find_checkpoint


@pytest.fixture
def no_shipped(monkeypatch, tmp_path):
    """Point the repo and cache locations at empty temp folders."""
    monkeypatch.setattr(weights, "REPO_ROOT", tmp_path / "repo")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("MEER_CHECKPOINT", raising=False)
    return tmp_path


def test_order_without_explicit(no_shipped, monkeypatch):
    monkeypatch.setenv("MEER_CHECKPOINT", str(no_shipped / "env.pt"))
    places = candidate_paths(None)
    assert [w for w, _ in places] == ["$MEER_CHECKPOINT", "shipped", "cache"]
    assert places[0][1] == no_shipped / "env.pt"
    assert places[1][1] == no_shipped / "repo" / "checkpoints" / "meer_112.pt"
    assert places[2][1] == no_shipped / "cache" / "meer" / "meer_112.pt"


def test_first_existing_wins(no_shipped, monkeypatch):
    shipped = no_shipped / "repo" / "checkpoints" / "meer_112.pt"
    cached = no_shipped / "cache" / "meer" / "meer_112.pt"
    for p in (shipped, cached):
        p.parent.mkdir(parents=True)
        p.write_bytes(b"x")
    assert find_checkpoint() == shipped
    shipped.unlink()
    assert find_checkpoint() == cached
    env = no_shipped / "env.pt"
    env.write_bytes(b"x")
    monkeypatch.setenv("MEER_CHECKPOINT", str(env))
    assert find_checkpoint() == env


def test_missing_everywhere_lists_every_place(no_shipped):
    with pytest.raises(CheckpointNotFoundError) as err:
        find_checkpoint()
    msg = str(err.value)
    assert "\n" not in msg
    assert str(no_shipped / "repo" / "checkpoints" / "meer_112.pt") in msg
    assert str(no_shipped / "cache" / "meer" / "meer_112.pt") in msg
    assert "$MEER_CHECKPOINT (not set)" in msg


def test_explicit_path_is_the_only_place(no_shipped):
    cached = no_shipped / "cache" / "meer" / "meer_112.pt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        find_checkpoint(no_shipped / "typo.pt")
    with pytest.raises(CheckpointNotFoundError, match="is a folder"):
        find_checkpoint(no_shipped)
    assert find_checkpoint(cached) == cached
