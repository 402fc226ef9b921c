"""Notebooks only call, show and plot: no definitions, short code, names that exist (checked without running them)."""

import ast
import builtins
import importlib
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
LEAN = ["01_prepare_data", "02_train", "03_evaluate", "04_ablation", "05_browse", "06_benchmark", "07_levers", "08_score"]
MAX_CODE_LINES = 90


def code_cells(name: str) -> list[str]:
    nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    return [c.source for c in nb.cells if c.cell_type == "code"]


def bound_names(tree: ast.AST) -> set[str]:
    """Every name the code binds anywhere (assignments, imports, loop and comprehension targets, arguments)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
    return names


@pytest.mark.parametrize("name", LEAN)
def test_notebook_defines_nothing_and_stays_short(name):
    cells = code_cells(name)
    trees = [ast.parse(src) for src in cells]
    defined = [n.name for t in trees for n in ast.walk(t) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    assert defined == [], f"definitions belong in addmlib/, tested there: {defined}"
    lines = sum(len(src.splitlines()) for src in cells)
    assert lines <= MAX_CODE_LINES, f"{lines} lines of code (parameters cell included)"


@pytest.mark.parametrize("name", LEAN)
def test_notebook_uses_only_names_it_binds_or_imports_that_exist(name):
    tree = ast.parse("\n".join(code_cells(name)))
    known = bound_names(tree) | set(dir(builtins))
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    assert used <= known, f"undefined: {sorted(used - known)}"
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module.startswith("addmlib"):
            module = importlib.import_module(node.module)
            missing = [a.name for a in node.names if not hasattr(module, a.name)
                       and importlib.util.find_spec(f"{node.module}.{a.name}") is None]
            assert missing == [], f"{node.module} has no {missing}"


def test_the_method_notebook_defines_nothing_either():
    """00 may be longer (it shows the maths), but its helpers live in the library too."""
    trees = [ast.parse(src) for src in code_cells("00_method")]
    assert [n.name for t in trees for n in ast.walk(t) if isinstance(n, (ast.FunctionDef, ast.ClassDef))] == []
