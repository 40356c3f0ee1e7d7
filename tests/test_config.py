"""Typed YAML configs: loading, overrides, and one-line errors naming the key and the file."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from meer.config import ConfigError, dump_config, load_config, parse_override


@dataclass
class Optim:
    lr: float = 1e-3
    kind: Literal["adam", "sgd"] = "adam"
    betas: tuple[float, float] = (0.0, 0.99)


@dataclass
class Cfg:
    name: str = "run"
    steps: int = 10
    amp: bool = False
    optim: Optim = field(default_factory=Optim)
    roots: list[str] = field(default_factory=list)
    resume: Optional[str] = None


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_yaml_and_overrides(tmp_path):
    p = write(tmp_path, "name: x\noptim:\n  lr: 1e-4\n  betas: [0.5, 0.9]\nroots: [a, b]\n")
    cfg = load_config(Cfg, p, ["steps=7", "optim.kind=sgd", "amp=true", "resume=runs/1"])
    assert cfg == Cfg(name="x", steps=7, amp=True, optim=Optim(lr=1e-4, kind="sgd", betas=(0.5, 0.9)),
                      roots=["a", "b"], resume="runs/1")


def test_defaults_without_file():
    assert load_config(Cfg) == Cfg()


def test_roundtrip(tmp_path):
    cfg = load_config(Cfg, None, ["optim.lr=0.5", "roots=[q]"])
    dump_config(cfg, tmp_path / "out.yaml")
    assert load_config(Cfg, tmp_path / "out.yaml") == cfg


@pytest.mark.parametrize(
    "text, overrides, expected",
    [
        ("optim:\n  lrr: 1\n", [], "unknown key 'optim.lrr' (did you mean 'optim.lr'?)"),
        ("stepz: 3\n", [], "unknown key 'stepz' (did you mean 'steps'?)"),
        ("steps: ten\n", [], "'steps' must be an integer, got str 'ten'"),
        ("amp: 1\n", [], "'amp' must be true or false"),
        ("optim:\n  kind: adm\n", [], "'optim.kind' must be one of 'adam', 'sgd', got 'adm' (did you mean 'adam'?)"),
        ("optim: 3\n", [], "'optim' must be a mapping"),
        ("optim:\n  betas: [1, 2, 3]\n", [], "'optim.betas' must have 2 items, got 3"),
        ("", ["optim.lr=fast"], "'optim.lr' must be a number"),
        ("", ["steps"], "must look like key.sub=value"),
        ("- a\n- b\n", [], "top level must be a mapping"),
        ("a: [\n", [], "invalid YAML"),
    ],
)
def test_errors_are_one_line_and_name_the_file(tmp_path, text, overrides, expected):
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(Cfg, p, overrides)
    msg = str(info.value)
    assert expected in msg
    assert "\n" not in msg
    if "key.sub" not in expected:
        assert str(p) in msg


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(Cfg, tmp_path / "nope.yaml")


def test_override_values_are_yaml():
    assert parse_override("a.b=1e-3") == ("a.b", 1e-3)
    assert parse_override("a=[1, 2]") == ("a", [1, 2])
    assert parse_override("a=hello world") == ("a", "hello world")


def test_override_errors_say_they_came_from_the_command_line(tmp_path):
    p = write(tmp_path, "steps: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(Cfg, p, ["optim.lrr=1"])
    assert str(info.value) == f"{p} (override optim.lrr=...): unknown key 'optim.lrr' (did you mean 'optim.lr'?)"
