"""Dependencies inside ``meer`` point one way: every import (module level or inside a function) goes down
the layer order

    cli  ->  training / inference / evaluation  ->  models / losses  ->  data / faces / masking  ->  utils

(``meer.config`` sits with ``utils``). Imports inside a layer are allowed, except the pairs in
``FORBIDDEN``; ``EXCEPTIONS`` lists the imports that may still go against the order, each with its reason.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "meer"

LAYERS = {
    "cli": 4,
    "training": 3, "inference": 3, "evaluation": 3,
    "models": 2, "losses": 2,
    "data": 1, "faces": 1, "masking": 1,
    "utils": 0, "config": 0, "__init__": 0,
}

#: same-layer imports that are not allowed (importer, imported): reason
FORBIDDEN = {
    ("training", "evaluation"): "training must not depend on the evaluation harness; shared verification "
                                "metrics live in meer.utils.verification",
    ("losses", "models"): "losses must not depend on models; TaskSpec lives in meer.data.multitask, the "
                          "gradient-reversal layer in meer.losses.grad_reverse",
}

#: (importing module, imported module): reason -- imports allowed against the rules above
EXCEPTIONS: dict[tuple[str, str], str] = {}


def _package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    """``(line, absolute module)`` of every ``meer`` import in the file, at any depth."""
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    here = list(rel.parts[:-1]) if rel.name != "__init__" else list(rel.parts)
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "meer"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[:len(here) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != "meer":
                continue
            if module == "meer":  # from meer import training -> meer.training
                found += [(node.lineno, f"meer.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, module))
    return found


def violations() -> list[str]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        src = _package_of(importer)
        for line, module in _imports(path):
            dst = _package_of(module)
            assert dst in LAYERS, f"{importer}: unknown package {module} (add it to LAYERS)"
            if dst == src or (importer, module) in EXCEPTIONS:
                continue
            if LAYERS[dst] > LAYERS[src]:
                out.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {src} imports {module} (a higher layer)")
            elif (src, dst) in FORBIDDEN:
                out.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {src} imports {module} "
                           f"({FORBIDDEN[(src, dst)]})")
    return out


def test_imports_follow_the_layer_order():
    assert violations() == []


def test_exceptions_are_still_needed():
    """An exception that no import uses any more is deleted, not kept 'just in case'."""
    used = set()
    for path in PACKAGE.rglob("*.py"):
        importer = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        used |= {(importer, m) for _, m in _imports(path)}
    assert set(EXCEPTIONS) <= used


def test_the_checker_sees_imports_inside_functions(tmp_path, monkeypatch):
    """The walk finds an upward import hidden in a function body (and a relative one)."""
    pkg = tmp_path / "meer"
    (pkg / "losses").mkdir(parents=True)
    (pkg / "utils").mkdir()
    (pkg / "losses" / "x.py").write_text("def f():\n    from meer.models.meer import MEER\n    return MEER\n")
    (pkg / "utils" / "y.py").write_text("from ..training import loop\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    found = violations()
    assert any("losses/x.py:2: losses imports meer.models.meer" in v for v in found)
    assert any("utils/y.py:1: utils imports meer.training" in v for v in found)
