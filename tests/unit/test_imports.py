"""The package's imports, read from the source (ast): no circles between its
modules (imports inside functions and under TYPE_CHECKING count too), and no
private name (``_x``) imported from another module."""

from __future__ import annotations

import ast
import os

import pyxdp

PKG = os.path.dirname(os.path.abspath(pyxdp.__file__))


def _modules() -> dict[str, str]:
    out = {}
    for root, _dirs, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(root, f), os.path.dirname(PKG))[:-3].replace(os.sep, ".")
                out[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(root, f)
    return out


def _imports(mod: str, path: str, mods: dict[str, str]) -> list[tuple[str, str]]:
    """(module imported, name imported from it or '') for each import of ``mod``."""
    package = mod if path.endswith("__init__.py") else mod.rsplit(".", 1)[0]
    with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read(), path)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, "") for a in node.names if a.name.split(".")[0] == "pyxdp"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            elif node.module and node.module.split(".")[0] == "pyxdp":
                base = node.module
            else:
                continue
            for a in node.names:
                sub = f"{base}.{a.name}"
                out.append((sub, "") if sub in mods else (base, a.name))
    return out


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    private = []
    for mod, path in mods.items():
        for target, name in _imports(mod, path, mods):
            if target != mod and target in mods:
                graph[mod].add(target)
            dunder = name.startswith("__") and name.endswith("__")  # __version__: public by convention
            if name.startswith("_") and not dunder and target != mod:
                private.append(f"{mod} imports {name} from {target}")
    return graph, private


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles() -> None:
    graph, _ = _graph()
    assert len(graph) > 30 and graph["pyxdp.filter"]  # the walk found the package and its imports
    assert _cycles(graph) == []


def test_no_private_name_imported_across_modules() -> None:
    assert _graph()[1] == []


def test_the_walk_sees_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
