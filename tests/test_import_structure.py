"""The import structure of ntkit: no cycle between modules or between subpackages, no upward import, and every
subpackage importable first, whatever the order of ``ntkit/__init__.py``.

The graphs are read from the source with :mod:`ast` (module-level imports only, the ones that run at import
time; ``if TYPE_CHECKING:`` blocks and imports inside functions are left out). ``from ntkit.a import b`` is an
edge to the module ``ntkit.a.b`` when ``b`` is a submodule, else to ``ntkit.a`` (its ``__init__``).
A unit of the package graph is a top-level module or subpackage of ntkit (``ntkit.solve``, ``ntkit.sklearn``),
or the root ``ntkit`` itself.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

SPEC = importlib.util.find_spec("ntkit")
assert SPEC is not None and SPEC.submodule_search_locations is not None
ROOT = Path(next(iter(SPEC.submodule_search_locations)))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    rel = ROOT.parent.joinpath(*name.split("."))
    return rel.with_suffix(".py").is_file() or (rel / "__init__.py").is_file()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """The import statements that run when the module is imported (also in module-level ``try`` / ``if``)."""
    out: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                out += _module_level(node.body)
            out += _module_level(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                out += _module_level(block)
    return out


def _targets(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The ntkit modules an import statement of ``module`` executes."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "ntkit"]
    base = node.module or ""
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        anchor = package[: len(package) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
    if base.split(".")[0] != "ntkit":
        return []
    subs = [f"{base}.{a.name}" for a in node.names if _is_module(f"{base}.{a.name}")]
    return subs + ([base] if len(subs) < len(node.names) else [])


def module_graph() -> dict[str, set[str]]:
    """``module -> the ntkit modules it imports at module level`` for every module of src/ntkit."""
    graph: dict[str, set[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        name = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges = graph.setdefault(name, set())
        for node in _module_level(tree.body):
            edges.update(t for t in _targets(name, path.name == "__init__.py", node) if t != name)
    return graph


def unit(module: str) -> str:
    """The top-level module or subpackage ``module`` belongs to (``ntkit`` for the root)."""
    return ".".join(module.split(".")[:2])


def package_graph() -> dict[str, set[str]]:
    """The graph of :func:`module_graph` between units (top-level modules / subpackages)."""
    graph: dict[str, set[str]] = {}
    for module, targets in module_graph().items():
        graph.setdefault(unit(module), set()).update(unit(t) for t in targets if unit(t) != unit(module))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)) is not None:
            return found
    return None


def test_cycle_finder_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_graph_reader_resolves_submodules_and_relative_imports() -> None:
    graph = module_graph()
    assert "ntkit.solve.system" in graph["ntkit.solve"]  # from ntkit.solve.system import KernelSystem
    assert "ntkit.predict" in graph["ntkit"]  # from ntkit import activations, nn, predict: a subpackage
    assert unit("ntkit.solve.system") == "ntkit.solve" and unit("ntkit") == "ntkit"
    node = ast.parse("from .linalg import cho_solve\nfrom . import cg").body
    assert _targets("ntkit.solve.system", False, node[0]) == ["ntkit.solve.linalg"]  # type: ignore[arg-type]
    assert _targets("ntkit.solve", True, node[1]) == ["ntkit.solve.cg"]  # type: ignore[arg-type]


def test_no_cycle_between_subpackages() -> None:
    graph = package_graph()
    assert {"ntkit.solve", "ntkit.random_features", "ntkit.predict", "ntkit.sklearn"} <= graph.keys()
    assert find_cycle(graph) is None, f"package import cycle: {' -> '.join(find_cycle(graph) or [])}"


def test_solve_and_random_features_layering() -> None:
    """``solve`` uses ``random_features`` (the ``"features"`` solver); ``random_features`` reaches the
    Cholesky helpers through the leaf ``ntkit._linalg``, never through ``solve``."""
    graph = package_graph()
    assert "ntkit.random_features" in graph["ntkit.solve"]
    assert "ntkit.solve" not in graph["ntkit.random_features"]
    assert "ntkit._linalg" in graph["ntkit.random_features"]
    assert graph["ntkit._linalg"] == set()


def test_no_cycle_between_modules() -> None:
    graph = module_graph()
    assert find_cycle(graph) is None, f"module import cycle: {' -> '.join(find_cycle(graph) or [])}"


def test_no_upward_import() -> None:
    """No module imports (the ``__init__`` of) a package that contains it: not the root ``ntkit``, not its own
    subpackage. Importing a sibling submodule through the package (``from ntkit.infinite import native``) is
    an import of that submodule, not of the package."""
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in module_graph().items()
        for target in targets
        if module.startswith(target + ".")
    )
    assert upward == []


SUBPACKAGES = ("ntkit.random_features", "ntkit.solve", "ntkit.predict")


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_subpackage_imports_first_in_a_fresh_process(name: str) -> None:
    done = _run(f"import sys, {name}; print(sorted(m for m in sys.modules if m.startswith('ntkit.'))[0])")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().startswith("ntkit.")


def imported_by(name: str, graph: dict[str, set[str]]) -> set[str]:
    """The ntkit modules importing ``name`` executes by :func:`module_graph` (with the packages above each one,
    whose ``__init__`` runs first), the root ``ntkit`` left out."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        module = todo.pop()
        parts = module.split(".")
        for nxt in [*graph.get(module, ()), *(".".join(parts[:i]) for i in range(2, len(parts)))]:
            if nxt != "ntkit" and nxt not in seen and nxt != module:
                seen.add(nxt)
                todo.append(nxt)
    return seen | {name}


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_subpackage_imports_without_the_root_init(name: str) -> None:
    """With ``ntkit`` a bare package (its ``__init__`` not run), ``name`` imports alone: it needs nothing that
    the order of ``ntkit/__init__.py`` would have provided, and loads exactly the modules the static graph
    says it imports."""
    code = (
        "import sys, types\n"
        "root = types.ModuleType('ntkit')\n"
        f"root.__path__ = [{str(ROOT)!r}]\n"
        "sys.modules['ntkit'] = root\n"
        f"import {name}\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('ntkit.'))))\n"
    )
    done = _run(code)
    assert done.returncode == 0, done.stderr
    loaded = set(done.stdout.split())
    assert name in loaded
    assert loaded == imported_by(name, module_graph())
    if name == "ntkit.random_features":
        assert not any(unit(m) == "ntkit.solve" for m in loaded)


def test_every_module_is_under_500_lines() -> None:
    """One concept per module: no source file of the package over 500 lines (the house rule)."""
    long = {str(p.relative_to(ROOT)): n for p in ROOT.rglob("*.py") if (n := len(p.read_text().splitlines())) > 500}
    assert not long, f"modules over 500 lines: {long}"
