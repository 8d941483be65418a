"""The project's import graph, read from the source with ``ast``: no circles, and the
arrows point one way (the foundation below serving and training, training never up into
serving, serving never into training).

Every import counts, at the top of a module or inside a function: an import hidden in a
function body is still an arrow, and hiding one to live with a circle is what this test
stops. Imports under ``if TYPE_CHECKING:`` do not run and are left out.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("modelapp", "smserve")

# The request path: what a serving process imports to answer /invocations.
SERVING = (
    "modelapp.batch",
    "modelapp.invocation_log",
    "modelapp.middleware",
    "modelapp.multimodel",
    "modelapp.negotiation",
    "modelapp.openapi",
    "modelapp.parsers",
    "modelapp.predictors",
    "modelapp.registry",
    "modelapp.renderers",
    "modelapp.request_signals",
    "modelapp.views",
    "smserve.fastpaths",
    "smserve.urls",
    "smserve.workers",
    "smserve.wsgi",
)
# What training must not reach: the HTTP side of serving. (The predictor kinds are
# allowed: training writes the compiled engine's files with its converter.)
SERVING_ONLY = (
    "modelapp.multimodel",
    "modelapp.negotiation",
    "modelapp.parsers",
    "modelapp.registry",
    "modelapp.renderers",
    "modelapp.views",
)
# Serving modules allowed to import training, and why. None today.
SERVING_IMPORTS_TRAINING: dict[str, str] = {}


def module_files() -> dict[str, Path]:
    """Dotted name -> file, for every module of the project's packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _runtime_imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements of ``tree`` that run, i.e. not under ``if TYPE_CHECKING``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                yield from _runtime_imports(ast.Module(body=[child], type_ignores=[]))
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _runtime_imports(node)


def import_graph() -> dict[str, set[str]]:
    """Dotted name -> the project modules it imports (a package stands for its
    ``__init__``; ``from package import submodule`` is an arrow to the submodule)."""
    files = module_files()

    def known(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        arrows = set()
        for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[
                        : len(package.split(".")) - node.level + 1
                    ]
                    base = ".".join([*parts, base] if base else parts)
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base
                    for alias in node.names
                ]
            for target in targets:
                module = known(target)
                if module is not None and module != name:
                    arrows.add(module)
        graph[name] = arrows
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of ``graph`` as a path that ends where it starts, or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = GREY
        stack.append(node)
        for nxt in sorted(graph[node]):
            if colour[nxt] == GREY:
                return [*stack[stack.index(nxt) :], nxt]
            if colour[nxt] == WHITE and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        colour[node] = BLACK
        return None

    for node in sorted(graph):
        if colour[node] == WHITE and (cycle := visit(node)):
            return cycle
    return None


def path_to(
    graph: dict[str, set[str]], start: str, goal: Callable[[str], bool]
) -> list[str] | None:
    """The first import chain from ``start`` to a module ``goal(module)`` accepts.
    Importing a module runs its packages' ``__init__`` too, so those are followed."""
    seen = {start}
    queue = [[start]]
    while queue:
        chain = queue.pop(0)
        here = chain[-1]
        nexts = set(graph[here])
        parent = here.rpartition(".")[0]
        if parent in graph:
            nexts.add(parent)
        for nxt in sorted(nexts - seen):
            if goal(nxt):
                return [*chain, nxt]
            seen.add(nxt)
            queue.append([*chain, nxt])
    return None


def under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_graph_is_read():
    """The reader sees the arrows a reader of the code sees, in function bodies too."""
    graph = import_graph()
    assert "modelapp.predictors.sklearn" in graph["modelapp.predictors"]
    assert "modelapp.predictors.compiled" in graph["modelapp.training.compile"]
    assert "modelapp.conf" in graph["smserve.fastpaths"]  # a function-body import


def test_no_import_circles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_conf_imports_only_leaves():
    """``conf`` is the foundation: it imports nothing of the app but modules that
    import nothing of the project themselves."""
    graph = import_graph()
    bad = [m for m in graph["modelapp.conf"] if m != "modelapp" and graph[m]]
    assert not bad, (
        f"modelapp.conf imports {bad}, which import {[graph[m] for m in bad]}"
    )


def test_training_does_not_reach_the_http_side():
    graph = import_graph()
    for name in sorted(graph):
        if under(name, ("modelapp.training",)):
            chain = path_to(graph, name, lambda m: under(m, SERVING_ONLY))
            assert chain is None, "training reaches serving: " + " -> ".join(chain)


def test_serving_does_not_reach_training():
    graph = import_graph()
    for name in sorted(graph):
        if under(name, SERVING) and name not in SERVING_IMPORTS_TRAINING:
            chain = path_to(graph, name, lambda m: under(m, ("modelapp.training",)))
            assert chain is None, "serving reaches training: " + " -> ".join(chain)
