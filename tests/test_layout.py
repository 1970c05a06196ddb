"""The package's layout rules, measured from the code's imports (parsed with ``ast``; nothing is imported).

1. no import circle between modules of ``netcompress``;
2. no import running back up: the graph of units (each direct subpackage, each root module, the root
   ``__init__``) is acyclic;
3. at most 12 levels: the longest import chain counts at most 12 modules;
4. at most 10 ``.py`` files directly in ``src/netcompress/``;
5. no module over 400 lines;
6. no ``prototype`` or ``examples`` subpackage in the installed package.

The module graph: a node is a dotted module name (a package's ``__init__.py`` is the package itself, a
folder without one is a namespace package); an edge ``a -> b`` is an import in ``a`` of ``b``. Imports
inside functions count (they run when called); imports under ``if TYPE_CHECKING:`` do not. An import of
``netcompress.a.b`` is an edge to ``netcompress.a.b`` only (not to the parent packages it also runs), but
``import netcompress`` and ``from netcompress import name`` (``name`` not a submodule) are edges to the
root ``__init__``. An import of a module that is not in the tree (an old path answered by ``_compat``, or
a slip in the move) is listed as dangling, not drawn.

Run as a script (``python tests/test_layout.py``) it prints the figures.
"""

from __future__ import annotations

import ast
import sys
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "netcompress"
MAX_LEVELS = 12
MAX_ROOT_FILES = 10
MAX_LINES = 400
FORBIDDEN_SUBPACKAGES = ("prototype", "examples")

Edges = Mapping[str, set[str]]


# --- reading the tree ----------------------------------------------------------------------------------------


def module_files(src: Path, package: str) -> dict[str, Path]:
    """Each module's dotted name → its file; a package's ``__init__.py`` is named as the package."""
    files = {}
    for path in sorted((src / package).rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = path.relative_to(src).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    return files


def package_names(src: Path, package: str) -> set[str]:
    """The dotted names of ``package`` and every folder below it that holds Python files (namespace or not)."""
    names = {package}
    for path in (src / package).rglob("*.py"):
        if "__pycache__" not in path.parts:
            folder = path.parent.relative_to(src).parts
            names.update(".".join(folder[:i]) for i in range(1, len(folder) + 1))
    return names


def line_count(path: Path) -> int:
    """Physical lines of a file (a last line without its newline counts too)."""
    data = path.read_bytes()
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


# --- imports of one module -----------------------------------------------------------------------------------


def is_type_checking(test: ast.expr) -> bool:
    """Whether an ``if`` test is ``TYPE_CHECKING`` or ``<something>.TYPE_CHECKING``."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that can run: at any depth (functions too), except under ``if TYPE_CHECKING:``.

    The ``else:`` branch of such an ``if`` does run, so it is searched.
    """
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and is_type_checking(node.test):
            pending.extend(node.orelse)
        else:
            pending.extend(ast.iter_child_nodes(node))


def from_base(node: ast.ImportFrom, module: str, is_package: bool) -> str | None:
    """The absolute module a ``from ... import`` reads from, relative levels resolved; ``None`` past the top."""
    if node.level == 0:
        return node.module
    parts = (module if is_package else module.rpartition(".")[0]).split(".")
    if node.level - 1 >= len(parts):
        return None
    base = ".".join(parts[: len(parts) - (node.level - 1)])
    return f"{base}.{node.module}" if node.module else base


def imported_modules(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The modules one import statement names: ``from x import y`` is ``x.y`` when that is a module, else ``x``."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = from_base(node, module, is_package)
    if base is None:
        return ["." * node.level + (node.module or "")]  # past the top: dangling
    return [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]


# --- the module graph ----------------------------------------------------------------------------------------


@dataclass
class Graph:
    """The import graph of one package: modules, edges between them, imports of modules not in the tree."""

    package: str
    files: dict[str, Path]
    edges: dict[str, set[str]]
    dangling: list[tuple[str, str]] = field(default_factory=list)
    unparsed: list[tuple[str, str]] = field(default_factory=list)

    def edge_list(self) -> list[tuple[str, str]]:
        """All edges, sorted."""
        return sorted((a, b) for a, targets in self.edges.items() for b in targets)


def build_graph(src: Path, package: str) -> Graph:
    """Parse every module of ``src/package`` and draw an edge for each import of a module of ``package``."""
    files = module_files(src, package)
    known = set(files) | package_names(src, package)
    graph = Graph(package, files, {name: set() for name in sorted(known)})
    for module, path in files.items():
        try:
            tree = ast.parse(path.read_bytes(), str(path))
        except (OSError, SyntaxError) as error:  # a file moved away or half written meanwhile
            graph.unparsed.append((module, f"{type(error).__name__}: {error}"))
            continue
        is_package = path.name == "__init__.py"
        for node in import_nodes(tree):
            for target in imported_modules(node, module, is_package, known):
                if target != package and not target.startswith(package + "."):
                    continue  # another distribution (or a relative import past the top, below)
                if target not in known:
                    graph.dangling.append((module, target))
                elif target != module:
                    graph.edges[module].add(target)
            if isinstance(node, ast.ImportFrom) and from_base(node, module, is_package) is None:
                graph.dangling.append((module, "." * node.level + (node.module or "")))
    graph.dangling.sort()
    return graph


# --- measures on a graph -------------------------------------------------------------------------------------


def strongly_connected(edges: Edges) -> list[list[str]]:
    """Tarjan's strongly connected components of a graph, each sorted, in reverse topological order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 4 * len(edges) + 100))
    try:
        for node in sorted(edges):
            if node not in index:
                visit(node)
    finally:
        sys.setrecursionlimit(limit)
    return components


def cycles(edges: Edges) -> list[list[str]]:
    """The circles of a graph: its strongly connected components of more than one node."""
    return [component for component in strongly_connected(edges) if len(component) > 1]


def shortest_cycle(edges: Edges, component: list[str]) -> list[str]:
    """One shortest circle through the first node of a strongly connected component, as ``[a, ..., a]``."""
    start, members = component[0], set(component)
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for target in sorted(edges.get(node, ())):
            if target == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if target in members and target not in came_from:
                came_from[target] = node
                queue.append(target)
    return [start]


def unit_of(module: str, package: str) -> str:
    """The unit a module belongs to: its direct subpackage of ``package``, the root module itself, or the root."""
    parts = module.split(".")
    return package if len(parts) == 1 else f"{package}.{parts[1]}"


def unit_edges(graph: Graph) -> dict[str, set[str]]:
    """The graph collapsed into units; an import within one unit is no edge."""
    units: dict[str, set[str]] = {unit_of(name, graph.package): set() for name in graph.edges}
    for a, b in graph.edge_list():
        if unit_of(a, graph.package) != unit_of(b, graph.package):
            units[unit_of(a, graph.package)].add(unit_of(b, graph.package))
    return units


def unit_cycle_edges(graph: Graph) -> list[tuple[str, str]]:
    """The module edges that take part in a unit-level circle (both ends' units in one circle, but different)."""
    component_of = {unit: i for i, members in enumerate(cycles(unit_edges(graph))) for unit in members}
    found = []
    for a, b in graph.edge_list():
        unit_a, unit_b = unit_of(a, graph.package), unit_of(b, graph.package)
        if unit_a != unit_b and unit_a in component_of and component_of.get(unit_b) == component_of[unit_a]:
            found.append((a, b))
    return found


def longest_chain(edges: Edges) -> list[str]:
    """The longest import chain ``[a, b, c]`` (``a`` imports ``b`` imports ``c``; 3 levels), no module twice.

    Exact: once a chain leaves a circle (strongly connected component) it never comes back, so the
    components are taken in reverse topological order and only the chains inside each one are enumerated
    (exponential in the size of a circle; cheap while circles are small, and rule 1 wants none).
    """
    best_from: dict[str, list[str]] = {}
    for members in strongly_connected(edges):  # reverse topological: the components it leads to come first
        inside = set(members)
        for start in members:
            best_from[start] = longest_from(start, inside, edges, best_from)
    return max(best_from.values(), key=len, default=[])


def longest_from(start: str, inside: set[str], edges: Edges, best_from: Mapping[str, list[str]]) -> list[str]:
    """The longest chain from ``start``: a simple path within its component ``inside``, then the best way out."""
    best: list[str] = []

    def walk(path: list[str]) -> None:
        nonlocal best
        targets = sorted(edges.get(path[-1], ()))
        tail = max((best_from[t] for t in targets if t not in inside), key=len, default=[])
        if len(path) + len(tail) > len(best):
            best = path + tail
        for target in targets:
            if target in inside and target not in path:
                walk([*path, target])

    walk([start])
    return best


def root_files(src: Path, package: str) -> list[str]:
    """The ``.py`` files directly in the package's folder."""
    return sorted(path.name for path in (src / package).glob("*.py"))


def oversized(files: Mapping[str, Path], limit: int) -> list[tuple[str, int]]:
    """The modules with more than ``limit`` physical lines, longest first."""
    counts = ((name, line_count(path)) for name, path in files.items() if path.exists())
    return sorted(((name, n) for name, n in counts if n > limit), key=lambda item: (-item[1], item[0]))


def forbidden_subpackages(src: Path, package: str) -> list[str]:
    """The forbidden subpackages (``prototype``, ``examples``) that are present."""
    return [f"{package}.{name}" for name in FORBIDDEN_SUBPACKAGES if (src / package / name).exists()]


# --- the rules, on the real tree -----------------------------------------------------------------------------


@cache
def real_graph() -> Graph:
    """The import graph of ``src/netcompress`` (parsed once)."""
    return build_graph(SRC, PACKAGE)


def describe_cycles(edges: Edges) -> list[str]:
    """One line per circle: its members and one shortest circle through it."""
    return [f"{len(c)} members {c}; e.g. {' -> '.join(shortest_cycle(edges, c))}" for c in cycles(edges)]


def test_no_import_circle():
    graph = real_graph()
    found = describe_cycles(graph.edges)
    assert not found, "import circles between modules:\n  " + "\n  ".join(found)


def test_no_import_back_up():
    graph = real_graph()
    found = unit_cycle_edges(graph)
    units = describe_cycles(unit_edges(graph))
    assert not found, (
        "unit-level circles:\n  " + "\n  ".join(units) + f"\nthe {len(found)} edges taking part:\n  "
        + "\n  ".join(f"{a} -> {b}" for a, b in found)
    )


def test_at_most_twelve_levels():
    chain = longest_chain(real_graph().edges)
    assert len(chain) <= MAX_LEVELS, f"{len(chain)} levels (at most {MAX_LEVELS}): " + " -> ".join(chain)


def test_at_most_ten_root_files():
    files = root_files(SRC, PACKAGE)
    assert len(files) <= MAX_ROOT_FILES, f"{len(files)} .py files in src/{PACKAGE}/ (at most {MAX_ROOT_FILES}): {files}"


def test_no_module_over_400_lines():
    found = oversized(real_graph().files, MAX_LINES)
    assert not found, f"modules over {MAX_LINES} lines: " + ", ".join(f"{name} ({n})" for name, n in found)


def test_no_prototype_or_examples_subpackage():
    found = forbidden_subpackages(SRC, PACKAGE)
    assert not found, f"subpackages that do not belong in the installed package: {found}"


# --- the analyser itself, on tiny synthetic packages ---------------------------------------------------------


def write_package(root: Path, files: Mapping[str, str]) -> Path:
    """Write ``{relative path: source}`` under ``root``; returns ``root`` (the ``src`` of the package)."""
    for relative, source in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return root


def test_analyser_finds_a_two_module_circle(tmp_path):
    src = write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg.b import f\n",
        "pkg/b.py": "def g():\n    import pkg.a\n",  # inside a function: it runs, so it counts
        "pkg/c.py": "import pkg.a\n",
    })
    graph = build_graph(src, "pkg")
    assert cycles(graph.edges) == [["pkg.a", "pkg.b"]]
    assert shortest_cycle(graph.edges, ["pkg.a", "pkg.b"]) == ["pkg.a", "pkg.b", "pkg.a"]


def test_analyser_ignores_type_checking_imports(tmp_path):
    src = write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "import pkg.b\n",
        "pkg/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import A\n",
        "pkg/c.py": "import typing\nif typing.TYPE_CHECKING:\n    import pkg.a\nelse:\n    import pkg.b\n",
    })
    graph = build_graph(src, "pkg")
    assert graph.edge_list() == [("pkg.a", "pkg.b"), ("pkg.c", "pkg.b")]
    assert cycles(graph.edges) == []


def test_analyser_resolves_imports(tmp_path):
    src = write_package(tmp_path, {
        "pkg/__init__.py": "from . import sub\nfrom .top import name\n",
        "pkg/top.py": "from pkg import anything\n",  # not a submodule: the root __init__
        "pkg/sub/__init__.py": "from .m import x\nfrom . import n\n",
        "pkg/sub/m.py": "from ..top import y\nfrom . import n\nfrom .n import z\nfrom pkg.sub import w\n",
        "pkg/sub/n.py": "from ... import far\nimport pkg.gone\nimport os\n",
    })
    graph = build_graph(src, "pkg")
    assert graph.edge_list() == [
        ("pkg", "pkg.sub"), ("pkg", "pkg.top"),
        ("pkg.sub", "pkg.sub.m"), ("pkg.sub", "pkg.sub.n"),
        ("pkg.sub.m", "pkg.sub"), ("pkg.sub.m", "pkg.sub.n"), ("pkg.sub.m", "pkg.top"),
        ("pkg.top", "pkg"),
    ]
    assert graph.dangling == [("pkg.sub.n", "..."), ("pkg.sub.n", "pkg.gone")]  # past the top; not in the tree


def test_analyser_lists_dangling_imports(tmp_path):
    src = write_package(tmp_path, {"pkg/__init__.py": "", "pkg/a.py": "import pkg.gone\nfrom pkg.old import x\n"})
    assert build_graph(src, "pkg").dangling == [("pkg.a", "pkg.gone"), ("pkg.a", "pkg.old")]


def test_analyser_finds_unit_cycles_not_within_unit_imports(tmp_path):
    src = write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/one/__init__.py": "",
        "pkg/one/low.py": "",
        "pkg/one/high.py": "import pkg.one.low\nfrom pkg.two.mid import f\n",  # within the unit, then down
        "pkg/two/mid.py": "",  # a namespace package (no __init__.py)
        "pkg/two/back.py": "from pkg.one import low\n",  # runs back up: one -> two -> one
        "pkg/tool.py": "import pkg.one.high\n",  # a root module: its own unit, in no circle
    })
    graph = build_graph(src, "pkg")
    assert cycles(graph.edges) == []  # no circle between modules ...
    assert cycles(unit_edges(graph)) == [["pkg.one", "pkg.two"]]  # ... but one between units
    assert unit_cycle_edges(graph) == [("pkg.one.high", "pkg.two.mid"), ("pkg.two.back", "pkg.one.low")]


def test_analyser_counts_levels_in_modules(tmp_path):
    src = write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "import pkg.b\n",
        "pkg/b.py": "import pkg.c\n",
        "pkg/c.py": "",
        "pkg/d.py": "import pkg.c\n",
    })
    graph = build_graph(src, "pkg")
    assert longest_chain(graph.edges) == ["pkg.a", "pkg.b", "pkg.c"]
    graph.edges["pkg.c"].add("pkg.a")  # a circle: the chain goes round it once, no module twice
    assert longest_chain(graph.edges) == ["pkg.d", "pkg.c", "pkg.a", "pkg.b"]


def test_analyser_counts_files_lines_and_forbidden_folders(tmp_path):
    src = write_package(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/long.py": "x = 1\n" * 5 + "y = 2",
        "pkg/examples/__init__.py": "",
    })
    assert root_files(src, "pkg") == ["__init__.py", "long.py"]
    assert oversized(module_files(src, "pkg"), 5) == [("pkg.long", 6)]
    assert forbidden_subpackages(src, "pkg") == ["pkg.examples"]


# --- the figures ---------------------------------------------------------------------------------------------


def print_figures() -> None:
    """Print the measurements of the real tree, rule by rule."""
    graph = real_graph()
    edges = graph.edge_list()
    print(f"src/{PACKAGE}: {len(graph.files)} modules (.py files), {len(graph.edges)} nodes with namespace "
          f"packages, {len(edges)} import edges, {len(unit_edges(graph))} units")
    for module, error in graph.unparsed:
        print(f"  not parsed: {module}: {error}")
    for module, target in graph.dangling:
        print(f"  dangling import (no such module in the tree): {module} -> {target}")

    found = describe_cycles(graph.edges)
    print(f"\n1. import circles between modules: {len(found)}")
    for line in found:
        print(f"  {line}")

    unit_found = unit_cycle_edges(graph)
    print(f"\n2. unit-level circles: {len(cycles(unit_edges(graph)))}; edges taking part: {len(unit_found)}")
    for line in describe_cycles(unit_edges(graph)):
        print(f"  {line}")
    for a, b in unit_found:
        print(f"  {a} -> {b}")

    chain = longest_chain(graph.edges)
    print(f"\n3. longest chain: {len(chain)} levels (at most {MAX_LEVELS}):\n  " + "\n  -> ".join(chain))

    files = root_files(SRC, PACKAGE)
    print(f"\n4. .py files directly in src/{PACKAGE}/: {len(files)} (at most {MAX_ROOT_FILES}): {', '.join(files)}")

    big = oversized(graph.files, MAX_LINES)
    print(f"\n5. modules over {MAX_LINES} lines: {len(big)}")
    for name, n in big:
        print(f"  {name}: {n}")

    print(f"\n6. forbidden subpackages present: {forbidden_subpackages(SRC, PACKAGE) or 'none'}")


if __name__ == "__main__":
    print_figures()
