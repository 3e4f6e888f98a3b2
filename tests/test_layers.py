"""
Imports run one way only: down the layers, never up, and never in a cycle.

The layers, lowest first (a module may import its own layer and the ones
below it; ``pilotproto/X/...`` is in the layer of ``X``):

ground: errors, wire, identity, common, interfaces
1: tunnel, streams, trust, beacon       (beacon/ imports nothing of the node)
2: rendezvous                            (beacon client, TLS link, signed requests)
3: session                               (sessions, paths, NAT probing)
4: node                                  (the boss and its own workers)
5: control
6: endpoints, http, tap, cli, lab, aio
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "pilotproto"

LAYERS = {
    "errors": 0, "wire": 0, "identity": 0, "common": 0, "interfaces": 0,
    "tunnel": 1, "streams": 1, "trust": 1, "beacon": 1,
    "rendezvous": 2,
    "session": 3,
    "node": 4,
    "control": 5,
    "endpoints": 6, "http": 6, "tap": 6, "cli": 6, "lab": 6, "aio": 6,
}
#: siblings in one layer that must still not know each other
FORBIDDEN = {("beacon", "trust"), ("beacon", "tunnel"), ("beacon", "streams"), ("tunnel", "trust"), ("streams", "trust")}


def _top(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "pilotproto" or len(parts) < 2:
        return None
    return parts[1]


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: pathlib.Path) -> list[tuple[str, int]]:
    """Every pilotproto module ``path`` imports (at any depth: lazy imports count too)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.module is None or node.level:
                # "from . import x" / "from .pkg import x": x may be a module
                found += [(f"{target}.{alias.name}", node.lineno) for alias in node.names]
            found.append((target, node.lineno))
    return [(m, line) for m, line in found if m.startswith("pilotproto")]


def _all_modules():
    return sorted(PACKAGE.rglob("*.py"))


def test_every_top_level_part_has_a_layer():
    tops = {_top(_module_name(p)) for p in _all_modules()} - {None}
    assert tops <= set(LAYERS), f"give these a layer in LAYERS: {sorted(tops - set(LAYERS))}"


def test_no_import_runs_up_a_layer():
    upward = []
    for path in _all_modules():
        src = _top(_module_name(path))
        if src is None:
            continue
        for target, line in _imports(path):
            dst = _top(target)
            if dst is None or dst == src or dst not in LAYERS:
                continue
            if LAYERS[dst] > LAYERS[src] or (src, dst) in FORBIDDEN:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} {src} -> {dst} ({target})")
    assert not upward, "imports that run up a layer:\n" + "\n".join(upward)


def _existing(module: str) -> str | None:
    """The module file ``module`` names, or its package if it names a symbol."""
    while module:
        base = PACKAGE.parent / pathlib.Path(*module.split("."))
        if base.with_suffix(".py").exists() or (base / "__init__.py").exists():
            return module
        module = module.rpartition(".")[0]
    return None


def test_no_import_cycles():
    graph: dict[str, set[str]] = {}
    for path in _all_modules():
        name = _module_name(path)
        graph[name] = {m for m in (_existing(t) for t, _ in _imports(path)) if m and m != name}
    # A package's __init__ importing its own modules is not a cycle of layers.
    for name in graph:
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    cycles = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("path", _all_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_size(path):
    lines = len(path.read_text().splitlines())
    assert lines <= 520, f"{path.name} has {lines} lines; split it (modules stay under ~500)"
