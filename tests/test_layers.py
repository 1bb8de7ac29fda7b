"""The package's imports go one way: no cycles between modules or packages, lower layers never
import higher ones.

The imports are read with `ast` (no package import: a broken module cannot hide an edge): module
level, inside functions and `if TYPE_CHECKING:` blocks, `import a.b as c`, `from . import x`,
relative imports. Importing `bacon_zoo.p.m` also runs `bacon_zoo/p/__init__.py`, so an import of a
module in another sub-package adds an edge to that package's `__init__` too (the root package's
`__init__` is left out: it runs before everything, by design it only registers the models).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "bacon_zoo"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# Layers, lowest first: a module may import its own layer (without cycles) and the layers below.
# Top-level modules are their own nodes; a sub-package is one node.
LAYERS: dict[str, int] = {
    "bacon_zoo.errors": 0,
    "bacon_zoo.config": 0,
    "bacon_zoo.fileio": 0,
    "bacon_zoo.metrics": 0,
    "bacon_zoo.data": 1,
    "bacon_zoo.models": 1,
    "bacon_zoo.algorithms": 1,
    "bacon_zoo": 1,  # the package root: like `import timm`, it registers the models, no more
    "bacon_zoo.run": 2,
    "bacon_zoo.train": 3,
    "bacon_zoo.hub": 4,
    "bacon_zoo.analysis": 4,
    "bacon_zoo.study": 4,
    "bacon_zoo.cli": 5,
}


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.src} -> {self.dst}  ({self.file}:{self.line})"


def discover(root: Path, package: str) -> dict[str, tuple[Path, bool]]:
    """{module name: (file, is_package)} of every .py file under `root`."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("")
        parts = [package, *rel.parts]
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        out[".".join(parts)] = (path, is_pkg)
    return out


def _known(name: str, modules: dict) -> str | None:
    """The longest prefix of the dotted `name` that is one of our modules (None: not ours)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        cand = ".".join(parts[:i])
        if cand in modules:
            return cand
    return None


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def module_edges(modules: dict[str, tuple[Path, bool]], package: str) -> list[Edge]:
    """Every import edge between our modules, with the file and line of the import."""
    edges = []
    for name, (path, is_pkg) in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        here = name if is_pkg else name.rpartition(".")[0]  # the package relative imports start at
        rel_file = str(path.relative_to(path.parents[len(name.split(".")) - (0 if is_pkg else 1)]))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                # `from p import m` imports the module p.m when there is one, else a name of p
                targets = [
                    f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names
                ]
            for target in targets:
                dst = _known(target, modules)
                if dst is None or dst == name:
                    continue
                implied = [
                    p for p in _ancestors(dst) if p != package and not name.startswith(p + ".")
                ]
                for d in [dst, *implied]:
                    if d != name:
                        edges.append(Edge(name, d, rel_file, node.lineno))
    return edges


def package_of(module: str, package: str) -> str:
    """The layer node of a module: the root, a top-level module, or a sub-package."""
    parts = module.split(".")
    return package if len(parts) == 1 else ".".join(parts[:2])


def package_edges(edges: Iterable[Edge], package: str) -> list[Edge]:
    out: dict[Edge, None] = {}  # ordered set: a module and its implied package give one edge
    for e in edges:
        a, b = package_of(e.src, package), package_of(e.dst, package)
        if a != b:
            out[Edge(a, b, e.file, e.line)] = None
    return list(out)


def cycles(edges: Iterable[Edge]) -> list[list[Edge]]:
    """One cycle (as its edges) through every strongly connected component with more than one node."""
    graph: dict[str, dict[str, Edge]] = {}
    for e in edges:
        graph.setdefault(e.src, {}).setdefault(e.dst, e)
        graph.setdefault(e.dst, {})
    # Tarjan's strongly connected components (iterative)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack, stack, comps = set(), [], []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.add(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    comps.append(comp)
    out, seen_cycles = [], set()
    for comp in comps:  # a shortest cycle through each node of the component, without repeats
        for first in sorted(comp):
            cycle = _shortest_cycle(graph, comp, first)
            key = frozenset((e.src, e.dst) for e in cycle)
            if key not in seen_cycles:
                seen_cycles.add(key)
                out.append(cycle)
    return sorted(out, key=lambda c: [e.src for e in c])


def _shortest_cycle(graph: dict[str, dict[str, Edge]], comp: set[str], first: str) -> list[Edge]:
    """Breadth-first from `first` back to it, inside its strongly connected component."""
    prev: dict[str, Edge] = {}
    queue, seen = [first], {first}
    while queue:
        v = queue.pop(0)
        for w, e in sorted(graph[v].items()):
            if w == first:
                path = [e]
                while path[0].src != first:
                    path.insert(0, prev[path[0].src])
                return path
            if w in comp and w not in seen:
                seen.add(w)
                prev[w] = e
                queue.append(w)
    raise AssertionError(f"{first} is in a strongly connected component but on no cycle")


def _report(found: list[list[Edge]]) -> str:
    return "\n\n".join("cycle:\n  " + "\n  ".join(map(str, c)) for c in found)


# ---------------------------------------------------------------------------------------------
# the walker itself, on a small package written for the purpose


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_walker_sees_every_kind_of_import(tmp_path):
    pkg = tmp_path / "pk"
    _write(
        pkg,
        {
            "__init__.py": "from pk import a  # noqa\n",
            "a.py": "import pk.sub.b as bee\n",
            "sub/__init__.py": "",
            "sub/b.py": "def f():\n    from . import c\n    from ..d import g\n",
            "sub/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pk.a import x\n",
            "d.py": "import os\nfrom pk import VERSION\n",
        },
    )
    modules = discover(pkg, "pk")
    assert set(modules) == {"pk", "pk.a", "pk.sub", "pk.sub.b", "pk.sub.c", "pk.d"}
    got = {(e.src, e.dst, e.line) for e in module_edges(modules, "pk")}
    assert got == {
        ("pk", "pk.a", 1),
        ("pk.a", "pk.sub.b", 1),
        ("pk.a", "pk.sub", 1),  # importing pk.sub.b runs pk/sub/__init__.py
        ("pk.sub.b", "pk.sub.c", 2),  # inside a function, relative
        ("pk.sub.b", "pk.d", 3),  # two dots
        ("pk.sub.c", "pk.a", 3),  # under TYPE_CHECKING
        ("pk.d", "pk", 2),  # a name of the root package
    }
    found = cycles(module_edges(modules, "pk"))
    # pk -> a -> sub.b -> d -> pk, and a -> sub.b -> sub.c -> a
    assert [[e.src for e in c] for c in found] == [
        ["pk", "pk.a", "pk.sub.b", "pk.d"],
        ["pk.a", "pk.sub.b", "pk.sub.c"],
    ]
    assert "pk.sub.c -> pk.a  (pk/sub/c.py:3)" in _report(found)
    pkgs = package_edges(module_edges(modules, "pk"), "pk")
    assert {(e.src, e.dst) for e in pkgs} == {
        ("pk", "pk.a"),
        ("pk.a", "pk.sub"),
        ("pk.sub", "pk.d"),
        ("pk.sub", "pk.a"),
        ("pk.d", "pk"),
    }


def test_no_cycle_reported_for_a_tree(tmp_path):
    pkg = tmp_path / "pk"
    _write(pkg, {"__init__.py": "", "a.py": "from pk import b\n", "b.py": "import json\n"})
    modules = discover(pkg, "pk")
    assert [(e.src, e.dst) for e in module_edges(modules, "pk")] == [("pk.a", "pk.b")]
    assert cycles(module_edges(modules, "pk")) == []


# ---------------------------------------------------------------------------------------------
# bacon_zoo


@pytest.fixture(scope="module")
def edges() -> list[Edge]:
    return module_edges(discover(ROOT, PACKAGE), PACKAGE)


def test_every_package_has_a_layer(edges):
    nodes = {package_of(m, PACKAGE) for m in discover(ROOT, PACKAGE)}
    assert nodes - set(LAYERS) == set(), "add the new package to LAYERS"


def test_no_module_cycles(edges):
    found = cycles(edges)
    assert not found, _report(found)


def test_no_package_cycles(edges):
    found = cycles(package_edges(edges, PACKAGE))
    assert not found, _report(found)


def test_lower_layers_never_import_higher_ones(edges):
    bad = [
        e for e in package_edges(edges, PACKAGE) if LAYERS.get(e.src, 99) < LAYERS.get(e.dst, 99)
    ]
    assert not bad, "upward imports:\n  " + "\n  ".join(
        f"{e}  [layer {LAYERS[e.src]} -> {LAYERS[e.dst]}]" for e in bad
    )


# ---------------------------------------------------------------------------------------------
# file names: only the records layer spells them


# Spelled outside bacon_zoo.run by a format of its own, not a run's or an export's file:
# the study folder's shared recipe.yaml (bacon_zoo.study owns the study folder).
OWN_FORMATS = {
    "bacon_zoo/study/runner.py": {"recipe.yaml"},
    "bacon_zoo/study/report.py": {"recipe.yaml"},
}


def run_file_names() -> set[str]:
    """Every file name of a run, a checkpoint, an export or an analysis: the string constants
    with a dot that bacon_zoo/run/layout.py, checkpoint.py and lock.py assign to UPPER_CASE names
    (read with `ast`, like the imports above)."""
    names = set()
    for rel in ("run/layout.py", "run/checkpoint.py", "run/lock.py"):
        for node in ast.walk(ast.parse((ROOT / rel).read_text())):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                value = node.value.value
                upper = all(isinstance(t, ast.Name) and t.id.isupper() for t in node.targets)
                if upper and isinstance(value, str) and "." in value:
                    names.add(value)
    return names


def _docstrings(tree: ast.AST) -> set[int]:
    """ids of the Constant nodes that are docstrings (prose about the files may name them)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def file_name_literals(root: Path, names: set[str]) -> list[str]:
    """`file:line: 'name'` for every string literal outside run/ and fileio.py that spells a name."""
    import re

    pattern = re.compile(
        r"(?<![\w.-])("
        + "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
        + r")(?![\w-])"
    )
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).as_posix()
        if rel.startswith(f"{PACKAGE}/run/") or rel == f"{PACKAGE}/fileio.py":
            continue
        tree = ast.parse(path.read_text())
        skip = _docstrings(tree)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in skip
            ):
                for m in pattern.finditer(node.value):
                    if m.group(1) not in OWN_FORMATS.get(rel, ()):
                        found.append(f"{rel}:{node.lineno}: {m.group(1)!r}")
    return found


def test_the_file_name_rule_sees_literals_and_skips_docstrings(tmp_path):
    pkg = tmp_path / PACKAGE
    _write(
        pkg,
        {
            "a.py": '"""Reads summary.json."""\nP = "runs/x/summary.json"\nQ = f"in `{P}` and data.json"\n',
            "run/b.py": 'S = "summary.json"\n',
            "fileio.py": 'T = "summary.json"\n',
            "c.py": 'U = "my_summary.json.bak"\n',
        },
    )
    assert file_name_literals(pkg, {"summary.json", "data.json"}) == [
        f"{PACKAGE}/a.py:2: 'summary.json'",
        f"{PACKAGE}/a.py:3: 'data.json'",
    ]


def test_no_run_or_export_file_name_outside_the_records_layer():
    names = run_file_names()
    assert {
        "config.yaml",
        "summary.json",
        "model.safetensors",
        "README.md",
        "manifest.json",
    } <= names
    found = file_name_literals(ROOT, names)
    assert not found, "use bacon_zoo.run.layout (RunDir, ExportDir) instead of:\n  " + "\n  ".join(
        found
    )
