"""The house's import graph, read from the source with `ast` (nothing is imported or run):

- the engine (harness/) imports no module of tasks/ or methods/: it reaches a task or a method only through the
  registry (harness/registry.py), which imports the module a catalogue entry names (tasks/__init__.py,
  methods/__init__.py CATALOGUE) by its name, the one plugin mechanism; methods and tasks do not import each other;
- no two project modules import each other, directly or through others;
- one epoch loop: the only function that runs gradient steps in a loop is harness.training.fit.

Every import statement counts, at module level and inside functions (a lazy import is still a dependency: it runs
the other module's top level). Edges go to the module named: `import a.b.c` and `from a.b import c` (c a
submodule) give a -> a.b.c edge, not edges to the parent packages whose __init__ Python runs on the way (a package's
face re-exporting its submodules would otherwise be a cycle with each of them). Cycles are found with networkx
(simple_cycles), which torch already installs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("harness", "methods", "tasks")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    """{dotted name: file} of every module of the three packages."""
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported_names(source: str, name: str, is_package: bool) -> list[tuple[str, int]]:
    """(absolute dotted name, line) of everything module `name` (a package's __init__ when is_package) imports,
    wherever the statement stands; `from m import x` gives m.x, resolved by `import_edges` to the submodule m.x or
    to m."""
    package = name if is_package else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's own package, one level up per extra dot
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            found += [(f"{source}.{alias.name}", node.lineno) for alias in node.names]
    return found


def import_edges() -> dict[tuple[str, str], list[int]]:
    """{(importer, imported project module): lines}. A name resolves to the longest project module it starts with
    (`from harness.launch import plan_runs` -> harness.launch; `from harness.extract import run` -> its submodule
    harness.extract.run)."""
    modules = project_modules()
    edges: dict[tuple[str, str], list[int]] = {}
    for importer, path in modules.items():
        for dotted, line in imported_names(path.read_text(), importer, path.name == "__init__.py"):
            parts = dotted.split(".")
            target = next((".".join(parts[:k]) for k in range(len(parts), 0, -1) if ".".join(parts[:k]) in modules),
                          None)
            if target is not None and target != importer:
                edges.setdefault((importer, target), []).append(line)
    return edges


def graph() -> nx.DiGraph:
    g = nx.DiGraph()
    g.add_nodes_from(project_modules())
    g.add_edges_from(import_edges())
    return g


def in_package(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_graph_is_read_from_every_kind_of_import_statement():
    """The reader itself: a module-level import, a lazy one inside a function, `from pkg import submodule` and a
    relative import all become edges (else the assertions below could pass on a graph with arrows missing)."""
    source = ("import harness.jobs\n"
              "from harness.extract import run\n"
              "def f():\n"
              "    from ..registry import TASKS\n"
              "    from . import sources\n"
              "    from .sidecar import NAME\n")
    assert imported_names(source, "harness.extract.loader", is_package=False) == [
        ("harness.jobs", 1), ("harness.extract.run", 2), ("harness.registry.TASKS", 4),
        ("harness.extract.sources", 5), ("harness.extract.sidecar.NAME", 6)]
    assert imported_names("from .graph import edges", "methods.dmd", is_package=True) == [
        ("methods.dmd.graph.edges", 1)]
    edges = import_edges()
    assert ("harness.task", "harness.data") in edges                      # from harness.data import ... (top level)
    assert ("harness.launch", "harness.runner") in edges                  # from harness.runner import execute (in launch)
    assert ("harness.extract.run", "harness.extract.backbones") in edges  # from harness.extract import backbones
    assert ("methods.dmd", "methods.dmd.graph") in edges                  # a package's face
    assert len(project_modules()) > 60 and len(edges) > 200


def test_the_engine_imports_no_task_or_method_module():
    """harness/ is the engine: tasks and methods plug into it through the registry, never the other way. The
    registry imports the module a CATALOGUE entry names through importlib (not an import statement, so not an
    edge here); the other importlib call of harness/ loads torchvision models (harness/extract/backbones.py)."""
    upward = {f"{a} -> {b} (line {', '.join(map(str, lines))})" for (a, b), lines in import_edges().items()
              if in_package(a, "harness") and (in_package(b, "tasks") or in_package(b, "methods"))}
    assert upward == set()
    dynamic = set()
    for name, path in project_modules().items():
        if in_package(name, "harness"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in (
                        "import_module", "__import__"):
                    dynamic.add(name)
    assert dynamic == {"harness.registry", "harness.extract.backbones"}


def test_methods_and_tasks_do_not_import_each_other():
    """Both plug into the engine: a method reads a task through its Split/TaskSpec (harness/data.py), never its
    module, and a task knows no method."""
    across = {(a, b) for a, b in import_edges() if {a.split(".")[0], b.split(".")[0]} == {"methods", "tasks"}}
    assert across == set()


def cycles() -> list[list[str]]:
    """Every elementary import cycle, each rotated to start at its smallest name."""
    out = []
    for c in nx.simple_cycles(graph()):
        k = c.index(min(c))
        out.append(c[k:] + c[:k])
    return sorted(out)


def test_no_import_cycle():
    assert cycles() == []


def own_nodes(fn: ast.AST):
    """The nodes of a function's body, not descending into the functions and classes defined inside it."""
    todo = list(ast.iter_child_nodes(fn))
    while todo:
        node = todo.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            todo += ast.iter_child_nodes(node)


def functions(tree: ast.AST, prefix: str = ""):
    """(qualified name, node) of every function of a module, nested ones included (`outer.inner`: a loop in a
    closure counts)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node
            yield from functions(node, f"{prefix}{node.name}.")
        elif isinstance(node, ast.ClassDef):
            yield from functions(node, f"{prefix}{node.name}.")
        else:
            yield from functions(node, prefix)


def gradient_loops() -> set[str]:
    """module:function of every function whose own body holds a for/while loop that calls `.backward()`: a
    training loop (the function that owns it, not the ones it is nested in)."""
    found = set()
    for name, path in project_modules().items():
        for qualname, fn in functions(ast.parse(path.read_text())):
            for loop in own_nodes(fn):
                if isinstance(loop, (ast.For, ast.While)) and any(
                        isinstance(c, ast.Call) and isinstance(c.func, ast.Attribute) and c.func.attr == "backward"
                        for c in ast.walk(loop)):
                    found.add(f"{name}:{qualname}")
    return found


def test_one_epoch_loop():
    """Every model of every method trains through harness.training.fit (batches, accumulation, early stopping,
    checkpoints, live curves), PKDOT's T-Net included (methods/pkdot.py get_tnet, since issue #29)."""
    assert gradient_loops() == {"harness.training:fit"}
