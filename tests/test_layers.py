"""The package's layers hold: no module imports from a higher layer, no import loop.

The imports are read from the source with ``ast``, all of them: at the top,
inside functions, under ``if TYPE_CHECKING`` (a type named from a higher layer
is a dependency on it all the same). Layers, lowest first::

    base < config < store (ring.py, overflow.py) < scan
         < intake (ingest_socket.py) < work (worker.py) < control (supervisor.py)
         < command

A module imports from its own layer and lower ones only.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "ringtrap"

LAYERS = ("base", "config", "store", "scan", "intake", "work", "control", "command")

# the five modules the user fixed at the top of the package, each in its layer
TOP_LEVEL = {
    "ring": "store",
    "overflow": "store",
    "ingest_socket": "intake",
    "worker": "work",
    "supervisor": "control",
}

# Upward imports that other refactors are removing right now; each entry is
# (importer, imported). The list only shrinks: an entry that no longer
# happens fails too, so it is taken out when its import goes. A loop through
# one of these edges is left to it (every loop across layers has an upward edge).
ALLOWED_UPWARD: set[tuple[str, str]] = set()


def module_files(root: Path) -> dict[str, Path]:
    """Every module of the package under ``root``, by dotted name."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _resolve(name: str, known: set[str]) -> str:
    """The module a dotted name lands in: itself, or the nearest enclosing module."""
    while name not in known and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def imports_of(module: str, path: Path, known: set[str]) -> Iterator[tuple[str, int]]:
    """(imported module of the package, line) for every import statement in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    top = module.split(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".", 1)[0] == top:
                    yield _resolve(alias.name, known), node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".", 1)[0] != top:
                continue
            for alias in node.names:
                # "from ringtrap import config" imports the module ringtrap.config
                sub = f"{source}.{alias.name}"
                yield (sub if sub in known else _resolve(source, known)), node.lineno


def import_graph(root: Path) -> dict[str, dict[str, int]]:
    """Module -> {imported module: first line}, within the package, self-imports left out."""
    files = module_files(root)
    known = set(files)
    graph: dict[str, dict[str, int]] = {}
    for module, path in files.items():
        edges: dict[str, int] = {}
        for target, line in imports_of(module, path, known):
            if target != module:
                edges.setdefault(target, line)
        graph[module] = edges
    return graph


def layer_of(module: str) -> str | None:
    """The layer a module of ringtrap belongs to; None for a module outside every layer."""
    parts = module.split(".")
    if parts == ["ringtrap"]:
        return "base"  # the package root holds the version only
    if parts[1] in LAYERS:
        return parts[1]
    if len(parts) == 2:
        return TOP_LEVEL.get(parts[1])
    return None


def upward_imports(graph: dict[str, dict[str, int]]) -> set[tuple[str, str]]:
    """Every (importer, imported) where the imported module sits in a higher layer."""
    out = set()
    for module, edges in graph.items():
        here = layer_of(module)
        for target in edges:
            there = layer_of(target)
            if here and there and LAYERS.index(there) > LAYERS.index(here):
                out.add((module, target))
    return out


def import_loops(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    loops: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                loops.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(loops)


def describe(graph: dict[str, dict[str, int]], pairs: set[tuple[str, str]]) -> list[str]:
    return [f"{a} ({layer_of(a)}) line {graph[a][b]} imports {b} ({layer_of(b)})"
            for a, b in sorted(pairs)]


def test_every_module_has_a_layer() -> None:
    graph = import_graph(PACKAGE)
    assert [m for m in sorted(graph) if layer_of(m) is None] == []


def test_no_module_imports_from_a_higher_layer() -> None:
    graph = import_graph(PACKAGE)
    found = upward_imports(graph)
    assert describe(graph, found - ALLOWED_UPWARD) == []
    # an allowed import that is gone leaves the list
    assert sorted(ALLOWED_UPWARD - found) == []


def test_no_import_loop() -> None:
    graph = import_graph(PACKAGE)
    for importer, imported in ALLOWED_UPWARD:
        graph.get(importer, {}).pop(imported, None)
    assert import_loops(graph) == []


def test_the_ring_and_the_overflow_never_import_each_other() -> None:
    graph = import_graph(PACKAGE)
    assert "ringtrap.overflow" not in graph["ringtrap.ring"]
    assert "ringtrap.ring" not in graph["ringtrap.overflow"]


def test_the_reader_sees_imports_inside_functions_and_relative_ones(tmp_path: Path) -> None:
    pkg = tmp_path / "ringtrap"
    (pkg / "base").mkdir(parents=True)
    (pkg / "command").mkdir()
    for init in (pkg, pkg / "base", pkg / "command"):
        (init / "__init__.py").write_text("")
    (pkg / "base" / "low.py").write_text(
        "def f():\n    from ringtrap.command import high\n    return high\n")
    (pkg / "command" / "high.py").write_text(
        "from ..base import low\nfrom ringtrap.base.low import f\n")
    graph = import_graph(pkg)
    assert graph["ringtrap.base.low"] == {"ringtrap.command.high": 2}
    assert graph["ringtrap.command.high"] == {"ringtrap.base.low": 1}
    assert upward_imports(graph) == {("ringtrap.base.low", "ringtrap.command.high")}
    assert import_loops(graph) == [["ringtrap.base.low", "ringtrap.command.high"]]
