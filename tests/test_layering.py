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


# ---------------------------------------------------------------------------------------------- import cycles

def _modules(package: Path) -> dict[str, Path]:
    """``{dotted name: file}`` of every module under ``package`` (a package by its ``__init__``)."""
    out = {}
    for path in package.rglob("*.py"):
        parts = path.relative_to(package.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph(package: Path | None = None) -> dict[str, set[str]]:
    """Module -> the ``meer`` modules it imports anywhere in its file (also inside functions; ``from pkg import
    sub`` counts as importing ``pkg.sub``; ``if TYPE_CHECKING:`` blocks are left out: they never run)."""
    package = package or PACKAGE
    mods = _modules(package)
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(here[:len(here) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else (node.module or "")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                while t and t not in mods:  # an attribute of a module: the module
                    t = t.rpartition(".")[0]
                if t and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (each holds at least one cycle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_inside_meer():
    """No module reaches itself through imports, function-level ones included (they hide cycles, not remove
    them: harness <-> report <-> plots and faces.detect <-> faces.fallback were such cycles)."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    assert import_cycles(import_graph()) == []


def test_the_cycle_check_sees_function_level_and_from_package_imports(tmp_path):
    pkg = tmp_path / "meer"
    (pkg / "faces").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "faces" / "__init__.py").write_text("")
    (pkg / "faces" / "a.py").write_text("from meer.faces import b\n")
    (pkg / "faces" / "b.py").write_text("def f():\n    from .a import g\n    return g\n")
    (pkg / "faces" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from meer.faces.a import g\n")
    graph = import_graph(pkg)
    assert graph["meer.faces.a"] == {"meer.faces.b"} and graph["meer.faces.b"] == {"meer.faces.a"}
    assert graph["meer.faces.c"] == set()
    assert import_cycles(graph) == [["meer.faces.a", "meer.faces.b"]]
