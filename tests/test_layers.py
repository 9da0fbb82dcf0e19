"""The package's stages import one way only, with no cycle (README, "Layout").

Every import in every module of ``s3_retriever`` is read with :mod:`ast` (module-level and inside
functions alike, ``TYPE_CHECKING`` blocks included) and checked against the layer order below: a
module may import its own stage package or a lower layer, never a higher one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import s3_retriever

PACKAGE = Path(s3_retriever.__file__).resolve().parent

LAYERS: dict[str, int] = {
    "errors": 0,
    "rwlock": 0,
    "console": 0,
    "files": 1,
    "model": 2,
    "models": 3,
    "sae": 3,
    "index": 4,
    "search": 5,
    "config": 6,
    "inputs": 6,
    "protocols": 6,
    "heads": 6,
    "schema": 7,
    "header": 8,
    "retriever": 9,
    "bulk": 10,
    "testing": 10,
    "serving": 10,
    "eval": 11,
    "distributed": 11,
    "cli_research": 12,
    "cli_query": 12,
    "cli_scale": 12,
    "cli": 13,
}
"""Layer of each top-level module or stage package, lowest first."""

MAX_LINES = 420
"""Modules stay small (STYLE.md: roughly 100-400 lines)."""


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, name: str) -> set[str]:
    """Modules of this package that ``path`` imports (resolved to existing module names)."""
    modules = _modules()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target.startswith("s3_retriever.") and target != name:
                found.add(target)
    return found


def _unit(name: str) -> str:
    """The top-level module or stage package a module belongs to."""
    return name.split(".")[1]


def _graph() -> dict[str, set[str]]:
    return {
        name: _imports(path, name) for name, path in _modules().items() if name != "s3_retriever"
    }


def test_every_unit_has_a_layer() -> None:
    units = {_unit(name) for name in _graph()}
    assert units <= set(LAYERS), f"give these a layer in LAYERS: {sorted(units - set(LAYERS))}"


def test_nothing_imports_upward() -> None:
    upward = [
        f"{name} imports {target}"
        for name, targets in _graph().items()
        for target in targets
        if target != "s3_retriever"
        and _unit(target) != _unit(name)
        and LAYERS[_unit(target)] >= LAYERS[_unit(name)]
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(name: str) -> list[str] | None:
        state[name] = 1
        stack.append(name)
        for target in sorted(graph.get(name, ())):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state:
            cycle = visit(name)
            assert cycle is None, " -> ".join(cycle)


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path: Path) -> None:
    """The import reader finds relative and function-level imports (so the checks can fail)."""
    source = tmp_path / "probe.py"
    source.write_text(
        "from s3_retriever.retriever import S3Retriever\n"
        "def f():\n    from s3_retriever.search import pipeline\n"
    )
    assert _imports(source, "s3_retriever.index.probe") == {
        "s3_retriever.retriever",
        "s3_retriever.search",
        "s3_retriever.search.pipeline",
    }


@pytest.mark.parametrize("name", sorted(_modules()))
def test_modules_stay_small(name: str) -> None:
    lines = len(_modules()[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines; split it by job"


def test_the_facade_stays_thin() -> None:
    lines = len((PACKAGE / "retriever.py").read_text(encoding="utf-8").splitlines())
    assert lines < 350, f"retriever.py has {lines} lines; move the work into a stage package"
