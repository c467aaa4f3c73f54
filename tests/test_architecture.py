"""The code's own shape (docs/architecture.md): no import cycles between modules, and in
``server/`` short functions and no import inside a function without a comment saying why.
The layers themselves are checked by ``lint-imports`` (pyproject.toml), run by ``make test``."""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("clients", "server", "learner", "registration")
MAX_FUNCTION_LINES = 60


def _server_files() -> list[Path]:
    return sorted((ROOT / "server").rglob("*.py"))


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def _import_is_explained(lines: list[str], node: ast.stmt) -> bool:
    """A comment on the import's lines, or above its block of imports (blank lines allowed)."""
    if any("#" in lines[i] for i in range(node.lineno - 1, node.end_lineno)):
        return True
    i = node.lineno - 2
    while i >= 0:
        text = lines[i].strip()
        if text.startswith("#"):
            return True
        if text and not text.startswith(("import ", "from ")):
            return False
        i -= 1
    return False


def test_no_import_cycles():
    graph = grimp.build_graph(*PACKAGES)
    cycles = sorted(
        {tuple(sorted((a, b)))
         for a in graph.modules
         for b in graph.find_modules_directly_imported_by(a)
         if graph.chain_exists(importer=b, imported=a)}
    )
    assert cycles == []


@pytest.mark.parametrize("path", _server_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_server_functions_are_short(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    long = [f"{f.name} ({f.end_lineno - f.lineno + 1} lines)" for f in _functions(tree)
            if f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


@pytest.mark.parametrize("path", _server_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_server_imports_inside_functions_say_why(path: Path):
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    unexplained = [
        f"line {node.lineno} in {function.name}"
        for function in _functions(ast.parse(source))
        for node in ast.walk(function)
        if isinstance(node, ast.Import | ast.ImportFrom) and not _import_is_explained(lines, node)
    ]
    assert unexplained == []


def test_the_checks_can_fail():
    lines = ["def f():", "    import os", "    # optional dependency", "    import json"]
    tree = ast.parse("\n".join(lines))
    first, second = [n for n in ast.walk(tree) if isinstance(n, ast.Import)]
    assert not _import_is_explained(lines, first)
    assert _import_is_explained(lines, second)
