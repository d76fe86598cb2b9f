"""The package's shape: no import cycle between diffjax's modules, no module too long to read.

The import graph is read from the source with :mod:`ast` (nothing is imported), so a cycle is
found even where a deferred import inside a function would hide it at run time until the
wrong module is imported first.
"""
from __future__ import annotations

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "diffjax")
MAX_LINES = 400


def _modules() -> dict[str, str]:
    """Every module of diffjax by dotted name (``diffjax.samplers`` for its ``__init__``)."""
    found = {}
    for dirpath, dirnames, files in os.walk(PACKAGE):
        dirnames[:] = [d for d in dirnames if not d.startswith((".", "__"))]
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, name), REPO)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                found[".".join(rel)] = os.path.join(dirpath, name)
    return found


def _resolve(node: ast.AST, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The diffjax modules that one import statement of ``module`` loads."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in known]
    if node.level:  # relative: from .x import y
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[:len(parts) - node.level + 1]
        base = ".".join(parts + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    targets = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        if sub in known:  # from package import submodule
            targets.append(sub)
        elif base in known:
            targets.append(base)
    return targets


def _top_level_imports(tree: ast.Module):
    """Import statements run when the module is imported (not those inside functions)."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            for field in ("body", "orelse", "finalbody", "handlers"):
                stack.extend(getattr(node, field, []))
        elif isinstance(node, ast.ExceptHandler):
            stack.extend(node.body)


def _all_imports(tree: ast.Module):
    return (n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)))


def import_graph(deferred: bool) -> dict[str, set[str]]:
    """``module -> the diffjax modules it imports``; with ``deferred`` also the imports inside
    functions."""
    modules = _modules()
    known = set(modules)
    graph = {}
    for name, path in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        walk = _all_imports if deferred else _top_level_imports
        is_package = path.endswith("__init__.py")
        targets = {t for node in walk(tree) for t in _resolve(node, name, is_package, known)}
        # Importing a.b.c first runs a/__init__ and a/b/__init__: those are imported too, except
        # the importer's own enclosing packages (already running when it runs).
        own = set(_packages_above(name))
        graph[name] = {m for t in targets for m in (t, *_packages_above(t))
                       if m in known and m != name and m not in own}
    return graph


def _packages_above(module: str) -> list[str]:
    """``a.b.c -> [a, a.b]``."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_importing_a_submodule_imports_the_packages_above_it():
    # A cycle that once shipped: autoencoder.model imported diffjax.models.blocks, whose
    # package __init__ imports the registry, which imports autoencoder.model; so
    # `import diffjax.autoencoder` failed in a fresh interpreter though every test passed.
    graph = import_graph(deferred=True)
    # controlnet.network imports diffjax.models.unet: diffjax.models' __init__ runs first.
    assert {"diffjax.models.unet", "diffjax.models"} <= graph["diffjax.controlnet.network"]
    assert "diffjax.models" not in graph["diffjax.models.dit"]  # its own package: not an edge
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-c", "import diffjax.autoencoder.model"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_cycle_finder_finds_a_planted_cycle_and_passes_a_tree():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_import_reader_sees_relative_submodule_and_attribute_imports():
    source = ("from diffjax import paths\nfrom diffjax.samplers import sample\n"
              "from . import grids\nimport diffjax.targets\n"
              "def f():\n    from diffjax import train\n")
    tree = ast.parse(source)
    known = {"diffjax.paths", "diffjax.samplers", "diffjax.samplers.grids", "diffjax.targets",
             "diffjax.train"}
    top = {t for n in _top_level_imports(tree)
           for t in _resolve(n, "diffjax.samplers.ddim", False, known)}
    assert top == {"diffjax.paths", "diffjax.samplers", "diffjax.samplers.grids",
                   "diffjax.targets"}
    every = {t for n in _all_imports(tree) for t in _resolve(n, "diffjax.samplers.ddim", False,
                                                            known)}
    assert every == top | {"diffjax.train"}


@pytest.mark.parametrize("deferred", [False, True], ids=["module_level", "with_deferred"])
def test_no_import_cycle_between_diffjax_modules(deferred):
    # Deferred imports count too: they only move the failure to whichever module a user
    # happens to import first.
    graph = import_graph(deferred=deferred)
    assert len(graph) > 20 and "diffjax.checkpoint" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_validation_and_checkpoints_do_not_depend_on_the_trainer_even_when_deferred():
    # The cycle issue 12 named: checkpoint -> config_validation -> train -> checkpoint. The
    # errors and choice lists live in diffjax.errors / diffjax.choices instead.
    graph = import_graph(deferred=True)
    for low in ("diffjax.errors", "diffjax.choices", "diffjax.checkpoint",
                "diffjax.config_validation", "diffjax.parallel"):
        reach, todo = set(), [low]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt not in reach:
                    reach.add(nxt)
                    todo.append(nxt)
        trainer = sorted(m for m in reach if m == "diffjax.train" or
                         m.startswith("diffjax.training"))
        assert not trainer, f"{low} imports the trainer ({trainer})"
    assert graph["diffjax.errors"] == set() and graph["diffjax.choices"] == set()


def _line_count(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for _ in f)


def test_no_module_is_longer_than_a_reader_can_hold():
    long = {name: n for name, path in _modules().items()
            if (n := _line_count(path)) > MAX_LINES}
    assert not long, f"modules above {MAX_LINES} lines (split them): {long}"


@pytest.mark.parametrize("old, new", [
    ("diffjax.config_validation:ConfigError", "diffjax.errors:ConfigError"),
    ("diffjax.checkpoint:WorkdirError", "diffjax.errors:WorkdirError"),
    ("diffjax.checkpoint:BrokenCheckpointWarning", "diffjax.errors:BrokenCheckpointWarning"),
    ("diffjax.parallel:BACKENDS", "diffjax.choices:BACKENDS"),
    ("diffjax.models.blocks:conv_general_dilated", "diffjax.conv:conv_general_dilated"),
])
def test_old_import_paths_of_moved_names_still_work(old, new):
    import importlib

    def get(spec):
        module, name = spec.split(":")
        return getattr(importlib.import_module(module), name)

    assert get(old) is get(new)


def test_task_names_for_validation_are_the_registered_tasks():
    import diffjax.train  # noqa: F401  (registers every task)
    from diffjax import choices
    from diffjax.training import tasks

    assert tuple(choices.TASKS) == tuple(tasks.TASKS)
