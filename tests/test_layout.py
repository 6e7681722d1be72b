"""The package stays easy to change: small modules, short functions, no import cycles.

Read with ``ast`` from the files under ``scoresde/`` (nothing is imported):

* no module over :data:`MAX_MODULE_LINES` lines;
* no function or method (nested ones included) over :data:`MAX_FUNCTION_LINES` lines, counted
  from its ``def`` line to its last line;
* no cycle in the import graph of the package's modules. Every import statement counts, at
  module level and inside functions alike: a deferred import only hides a circle (``sde.py``
  imported ``call_score`` from ``score.py`` inside two functions, while ``score.py`` imported
  ``sde.py``), it does not remove the coupling. ``from . import x`` is an edge to the submodule
  ``x`` when there is one (the package itself is already being imported), else to the package
  (a name its ``__init__`` defines); imports under ``if TYPE_CHECKING:`` would not count.

Exceptions are listed below, each with its reason; an exception that no longer applies fails the
test, so that the list is kept short.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "scoresde"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 120

#: module name -> why it may be longer
LONG_MODULES: dict[str, str] = {}
#: "module:qualified.function" -> why it may be longer
LONG_FUNCTIONS: dict[str, str] = {}
#: (importer, imported) -> why this edge may close a cycle
CYCLE_EDGES: dict[tuple[str, str], str] = {}


def _modules() -> dict[str, tuple[Path, bool]]:
    """{dotted name: (path, is_package)} of every module under ``scoresde/``."""
    mods = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        if is_pkg:
            parts = parts[:-1]
        mods[".".join(parts)] = (path, is_pkg)
    return mods


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:`` (not run)."""
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for b in node.body for n in ast.walk(b))
    return skip


def _imports(name: str, path: Path, is_pkg: bool, mods) -> set[str]:
    """The scoresde modules that ``name`` imports anywhere in its file."""
    tree = ast.parse(path.read_text(), str(path))
    package = name.split(".") if is_pkg else name.split(".")[:-1]
    skip = _type_checking_blocks(tree)
    out = set()

    def known(dotted: str) -> str | None:  # the longest prefix that is a module of ours
        parts = dotted.split(".")
        for k in range(len(parts), 0, -1):
            if ".".join(parts[:k]) in mods:
                return ".".join(parts[:k])
        return None

    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [known(a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in mods else known(module) for a in node.names]
        else:
            continue
        out.update(t for t in targets if t is not None and t != name)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {name: _imports(name, path, is_pkg, mods) for name, (path, is_pkg) in mods.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _functions():
    """(module, qualified name, lines) of every function and method of the package."""
    for name, (path, _) in _modules().items():
        tree = ast.parse(path.read_text(), str(path))

        def walk(node, prefix):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield name, prefix + child.name, child.end_lineno - child.lineno + 1
                    yield from walk(child, prefix + child.name + ".")
                elif isinstance(child, ast.ClassDef):
                    yield from walk(child, prefix + child.name + ".")
                else:
                    yield from walk(child, prefix)

        yield from walk(tree, "")


def test_no_module_is_too_long():
    lengths = {name: len(path.read_text().splitlines()) for name, (path, _) in _modules().items()}
    long = {name: n for name, n in lengths.items() if n > MAX_MODULE_LINES}
    bad = {name: n for name, n in long.items() if name not in LONG_MODULES}
    assert not bad, f"modules over {MAX_MODULE_LINES} lines (split them by responsibility): {bad}"
    stale = sorted(set(LONG_MODULES) - set(long))
    assert not stale, f"no longer over {MAX_MODULE_LINES} lines: remove {stale} from LONG_MODULES"


def test_no_function_is_too_long():
    long = {f"{mod}:{qual}": n for mod, qual, n in _functions() if n > MAX_FUNCTION_LINES}
    bad = {k: n for k, n in long.items() if k not in LONG_FUNCTIONS}
    assert not bad, f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps): {bad}"
    stale = sorted(set(LONG_FUNCTIONS) - set(long))
    assert not stale, f"no longer over {MAX_FUNCTION_LINES} lines: remove {stale} from LONG_FUNCTIONS"


def test_import_graph_has_no_cycles():
    graph = _graph()
    for (src, dst), _ in CYCLE_EDGES.items():
        assert dst in graph.get(src, ()), f"CYCLE_EDGES lists {src} -> {dst}, which is no import any more"
    assert all(_cycles({**graph, src: graph[src] - {dst}}) != _cycles(graph) for src, dst in CYCLE_EDGES), \
        "removing an edge of CYCLE_EDGES changes no cycle: it is not needed (remove it), or another import closes the same cycle"
    for src, dst in CYCLE_EDGES:
        graph[src] = graph[src] - {dst}
    cycles = _cycles(graph)
    assert not cycles, ("import cycles among scoresde's modules (move the shared piece into a module both can "
                        f"import): {cycles}")


def test_the_graph_sees_deferred_and_relative_imports():
    """The checker itself: a function-level ``from .x import y`` and ``from .. import x`` are edges."""
    graph = _graph()
    assert "scoresde.sde" in graph["scoresde.score"]  # module level
    assert "scoresde.losses" in graph["scoresde.train_config"]  # inside _objective: from . import losses
    assert "scoresde.data" in graph["scoresde.cli.common"]  # inside load_data: from .. import data as D
    assert "scoresde" in graph["scoresde.cli.measure"]  # from .. import bits_per_dim: the package's __init__
    assert "scoresde" not in graph["scoresde.cli.common"]  # a submodule import is not an edge to the package
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
