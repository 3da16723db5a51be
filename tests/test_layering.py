"""The import graph flows one way: trace → analyse → plan → emit → explain.

Every ``import`` in ``autopar/`` (``passes/`` included, function-level imports too) is read
with ``ast``; the test fails on any import cycle, on an import from a higher layer than the
importing module's, and on JAX internals used outside ``autopar/_compat.py``.
"""

from __future__ import annotations

import ast
import fnmatch
import os
import re
from pathlib import Path

import networkx as nx
import pytest

ROOT = Path(__file__).resolve().parent.parent / "autopar"

#: Lowest first. A module may import modules of its own layer or of a lower one.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundation", ("autopar.primitives", "autopar.registry", "autopar._compat", "autopar.dtypes", "autopar.errors")),
    ("structure", ("autopar.structure", "autopar.structure_matrix", "autopar.kinds", "autopar.kinds.*")),
    ("costs", ("autopar.costs",)),
    ("hoist", ("autopar.hoist",)),
    ("trace", ("autopar.trace",)),
    ("analyse", ("autopar.passes", "autopar.passes.*")),
    ("solvers", ("autopar.solvers", "autopar.solvers.*", "autopar.adjoint", "autopar.adjoint.*")),
    ("config", ("autopar.config",)),
    ("plan", ("autopar.plan",)),
    ("emit", ("autopar.emit", "autopar.shard")),
    ("explain", ("autopar.report", "autopar.measure")),
    ("api", ("autopar.api",)),
    ("package", ("autopar", "autopar.calibrate")),
)


JAX_INTERNALS = re.compile(r"\bjax\._src\b|\bjax\.extend\b|\bjax\.interpreters\b|\bjax\.core\b|from jax import core\b")


def _modules() -> dict[str, Path]:
    mods = {}
    files = [Path(d) / f for d, _, fs in os.walk(ROOT, followlinks=True) for f in fs if f.endswith(".py")]
    for p in sorted(files):  # autopar/passes is a symlink to ../passes: follow it
        rel = p.relative_to(ROOT.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def _edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    edges = {}
    for name, path in mods.items():
        pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        out = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:  # `from pkg import submodule` imports the submodule
                    sub = f"{target}.{alias.name}"
                    out.add(sub if sub in mods else target)
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names)
        edges[name] = {m for m in out if m in mods and m != name}
    return edges


def _layer(module: str) -> int:
    for i, (_, patterns) in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(module, p) for p in patterns):
            return i
    raise AssertionError(f"module {module} has no declared layer: add it to LAYERS in {__file__}")


@pytest.fixture(scope="module")
def graph():
    mods = _modules()
    return mods, _edges(mods)


def test_every_module_has_a_layer(graph):
    mods, _ = graph
    for m in mods:
        _layer(m)


def test_no_import_cycles(graph):
    _, edges = graph
    g = nx.DiGraph([(a, b) for a, bs in edges.items() for b in bs])
    cycles = [sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1]
    assert not cycles, f"import cycles: {cycles}"


def test_imports_respect_layers(graph):
    _, edges = graph
    bad = {(a, b) for a, bs in edges.items() for b in bs if _layer(b) > _layer(a)}
    names = [n for n, _ in LAYERS]
    assert not bad, "imports from a higher layer (" + " < ".join(names) + "): " + ", ".join(
        f"{a} ({names[_layer(a)]}) imports {b} ({names[_layer(b)]})" for a, b in sorted(bad))


def test_jax_internals_only_in_compat(graph):
    mods, _ = graph
    offenders = []
    for name, path in mods.items():
        if name == "autopar._compat":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if JAX_INTERNALS.search(code):
                offenders.append(f"{name}:{i}: {line.strip()}")
    assert not offenders, "JAX internals outside autopar/_compat.py:\n" + "\n".join(offenders)
