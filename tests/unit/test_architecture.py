"""The package's layering rules (docs/CONTRACT.md), checked on the source itself.

- Only ``hopscope/engine/`` runs the model or installs hooks: nothing else calls ``<x>.model(...)``,
  ``lm.model(...)`` or ``register_forward_*``, or imports an underscored name from the engine.
- ``hopscope/models/`` never imports ``hopscope.engine``; ``hopscope/data/`` never imports ``hopscope.methods``.
- Module-level imports form no cycle, and every module imports on its own.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "hopscope"
# training code runs models it builds itself (forward + backward), outside the intervention engine
TRAINING = ("train/",)


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT)).replace("\\", "/")


def _imports(tree: ast.AST, module: str, *, top_level_only: bool) -> set[str]:
    """Absolute hopscope modules imported by ``tree`` (module level only, outside TYPE_CHECKING, if asked)."""
    found: set[str] = set()
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("hopscope"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = module.split(".")
                if not MODULES[module].name == "__init__.py":
                    pkg = pkg[:-1]
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            if base.startswith("hopscope"):
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES)
    return found


def test_only_the_engine_runs_the_model():
    offenders = []
    for name, path in MODULES.items():
        rel = _rel(path)
        if rel.startswith("engine/") or rel.startswith(TRAINING):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                attr = node.func.attr
                if attr == "model" or attr.startswith("register_forward"):
                    offenders.append(f"{rel}:{node.lineno} {ast.unparse(node.func)}(...)")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hopscope.engine"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                if private:
                    offenders.append(f"{rel}:{node.lineno} imports private engine names {private}")
    assert not offenders, "model execution outside hopscope.engine:\n" + "\n".join(offenders)


@pytest.mark.parametrize("package, forbidden", [("models", "hopscope.engine"), ("data", "hopscope.methods"),
                                                ("engine", "hopscope.methods"), ("stats", "hopscope.")])
def test_layers_import_only_the_layers_above(package, forbidden):
    bad = []
    for name, path in MODULES.items():
        if not name.startswith(f"hopscope.{package}"):
            continue
        for imp in _imports(ast.parse(path.read_text()), name, top_level_only=False):
            if imp.startswith(forbidden) and not imp.startswith(f"hopscope.{package}"):
                bad.append(f"{_rel(path)} imports {imp}")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    graph = {name: {i for i in _imports(ast.parse(p.read_text()), name, top_level_only=True) if i in MODULES}
             for name, p in MODULES.items()}
    # a package's __init__ importing its own submodules is fine; a submodule importing its package back is the cycle
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for m in graph[n]:
            if m == n or n.startswith(m + "."):  # importing one's own parent package is resolved by Python first
                continue
            if state.get(m) == 1:
                cycles.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_imports(module):
    importlib.import_module(module)
