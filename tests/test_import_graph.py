"""The package's import graph stays layered: no cycles, no private imports across modules.

Everything is read from the source with :mod:`ast` (nothing is imported), so function-local imports count
as edges too: a cycle hidden inside a function is still a cycle. Run this file directly
(``python tests/test_import_graph.py``) to print the counts.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).parents[1]
PACKAGE = "snb_ml"
#: A function-local import of the package's own module must say why it is deferred, on its own line
#: or the line above, with ``# deferred: <reason>`` (e.g. an optional heavy dependency such as mace or dask).
DEFERRED = re.compile(r"#\s*deferred:\s*\S")
#: Modules whose every own import is deferred for one reason, given once here instead of per line.
DEFERRING_MODULES = {
    # Command-line modules: `snb-ml --help` and `snb-run` (whose hook loads snb_ml at start-up) must not
    # import torch, ase or pymatgen before a command actually runs.
    re.compile(r"snb_ml\.(cli(\.\w+)?|_shakenbreak_hook)$"): "CLI start-up",
}


@dataclass
class ImportSite:
    """One import statement's target inside the package."""

    importer: str
    target: str
    names: tuple[str, ...]
    line: int
    local: bool
    type_checking: bool
    reason: bool


@dataclass
class Graph:
    """Modules of the package and every import of one of them."""

    modules: set[str] = field(default_factory=set)
    sites: list[ImportSite] = field(default_factory=list)


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _deferred_comment(lines: list[str], node: ast.stmt) -> bool:
    """A ``# deferred:`` comment on the import, or above the block of imports it belongs to."""
    if any(DEFERRED.search(line) for line in lines[node.lineno - 1 : node.end_lineno]):
        return True
    index = node.lineno - 2
    while index >= 0:
        line = lines[index].strip()
        if DEFERRED.search(line):
            return True
        if not (line.startswith(("from ", "import ", "#", ")")) or line.endswith(",")):
            return False
        index -= 1
    return False


def build_graph(root: Path = ROOT / PACKAGE) -> Graph:
    """Parse every module under ``root`` and collect its imports of the package's own modules."""
    graph = Graph()
    files = sorted(root.rglob("*.py"))
    graph.modules = {_module_name(path, root) for path in files}
    for path in files:
        importer = _module_name(path, root)
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines), filename=str(path))

        def visit(node: ast.AST, local: bool, type_checking: bool, importer=importer, lines=lines, path=path):
            for child in ast.iter_child_nodes(node):
                child_local = local or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
                if isinstance(child, ast.If) and _is_type_checking(child.test):
                    for grandchild in child.body:
                        _record(grandchild, child_local, True)
                        visit(grandchild, child_local, True)
                    for grandchild in child.orelse:
                        _record(grandchild, child_local, type_checking)
                        visit(grandchild, child_local, type_checking)
                    continue
                _record(child, local, type_checking)
                visit(child, child_local, type_checking)

        def _record(
            node: ast.AST, local: bool, type_checking: bool, importer=importer, lines=lines, path=path
        ):
            if not isinstance(node, ast.Import | ast.ImportFrom):
                return
            reason = _deferred_comment(lines, node) or any(p.match(importer) for p in DEFERRING_MODULES)
            if isinstance(node, ast.Import):
                targets = [(alias.name, ()) for alias in node.names]
            else:
                module = _resolve(importer, path.name == "__init__.py", node)
                targets = []
                plain = []
                for alias in node.names:
                    submodule = f"{module}.{alias.name}"
                    if submodule in graph.modules:
                        targets.append((submodule, ()))
                    else:
                        plain.append(alias.name)
                if plain or not targets:
                    targets.append((module, tuple(plain)))
            for target, names in targets:
                if target == PACKAGE or target.startswith(PACKAGE + "."):
                    while target not in graph.modules and "." in target:
                        target = target.rsplit(".", 1)[0]
                    graph.sites.append(
                        ImportSite(importer, target, names, node.lineno, local, type_checking, reason)
                    )

        visit(tree, False, False)
    return graph


def import_cycles(graph: Graph) -> list[list[str]]:
    """Strongly connected components (size > 1, or self-loops) of the runtime import graph."""
    edges: dict[str, set[str]] = {module: set() for module in graph.modules}
    for site in graph.sites:
        # The root package's lazy ``__getattr__`` is no import edge; TYPE_CHECKING imports never run.
        if not site.type_checking and site.target != PACKAGE and site.target != site.importer:
            edges[site.importer].add(site.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = [0]

    def strongconnect(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for succ in edges[node]:
            if succ not in index:
                strongconnect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for module in sorted(edges):
        if module not in index:
            strongconnect(module)
    return components


def private_imports(graph: Graph) -> list[ImportSite]:
    """Imports of a ``_private`` name (or ``_private`` module) defined in another module."""
    found = []
    for site in graph.sites:
        if site.target == site.importer:
            continue
        private_name = any(name.startswith("_") and not name.startswith("__") for name in site.names)
        private_module = any(
            part.startswith("_") and not part.startswith("__") for part in site.target.split(".")
        )
        if private_name or private_module:
            found.append(site)
    return found


def local_imports(graph: Graph) -> list[ImportSite]:
    """Function-local imports of the package's own modules."""
    return [site for site in graph.sites if site.local]


def _describe(site: ImportSite) -> str:
    names = f" ({', '.join(site.names)})" if site.names else ""
    return f"{site.importer}:{site.line} -> {site.target}{names}"


GRAPH = build_graph()


def test_the_graph_sees_every_module_and_local_imports():
    # The measurement itself must work: the package has dozens of modules and local imports are seen.
    assert "snb_ml.runner" in GRAPH.modules and "snb_ml.batch.engine" in GRAPH.modules
    assert any(site.importer == "snb_ml.cli" and site.local for site in GRAPH.sites)


def test_cycle_detection_finds_a_planted_cycle(tmp_path):
    package = tmp_path / PACKAGE
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from snb_ml.sub import b\n")
    (package / "sub" / "b.py").write_text("from snb_ml.a import f\nfrom snb_ml.a import _g\n")
    (package / "c.py").write_text(
        "def f():\n    # deferred: a reason for the block\n    from .sub import b\n    from . import a\n"
    )
    graph = build_graph(package)
    assert import_cycles(graph) == [["snb_ml.a", "snb_ml.sub.b"]]
    assert [_describe(site) for site in private_imports(graph)] == ["snb_ml.sub.b:2 -> snb_ml.a (_g)"]
    assert [_describe(site) for site in local_imports(graph)] == [
        "snb_ml.a:2 -> snb_ml.sub.b",
        "snb_ml.c:3 -> snb_ml.sub.b",
        "snb_ml.c:4 -> snb_ml.a",
    ]
    # Only c's imports say why they are deferred (one comment above the block covers both).
    assert [site.reason for site in local_imports(graph)] == [False, True, True]


def test_no_import_cycles():
    assert import_cycles(GRAPH) == []


def test_no_private_imports_across_modules():
    assert [_describe(site) for site in private_imports(GRAPH)] == []


def test_local_imports_of_own_modules_say_why():
    undocumented = [_describe(site) for site in local_imports(GRAPH) if not site.reason]
    assert undocumented == []


if __name__ == "__main__":
    cycles = import_cycles(GRAPH)
    private = private_imports(GRAPH)
    local = local_imports(GRAPH)
    print(f"modules: {len(GRAPH.modules)}")
    print(f"import cycles: {len(cycles)}")
    for cycle in cycles:
        print("   ", " <-> ".join(cycle))
    print(f"private imports across modules: {len(private)}")
    for site in private:
        print("   ", _describe(site))
    undocumented = sum(not site.reason for site in local)
    print(f"function-local imports of own modules: {len(local)} ({undocumented} without a reason)")
    if "-v" in sys.argv:
        for site in local:
            print("   ", _describe(site), "" if site.reason else "[no reason]")
