"""Every shape written in a docstring (``[B, T, k]``) uses the letters of the one glossary, capo.shapes."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from capo.shapes import LETTERS, TABULAR_LETTERS

ROOT = Path(__file__).resolve().parents[1]
SHAPE = re.compile(r"\[([A-Za-z][A-Za-z0-9_]*(?:\s*[,·×*+\-−]\s*[A-Za-z0-9_^]+)+|[A-Z])\]")
SPARSE = ["capo", "capo_app/experiments"]
TABULAR = ["reference", "toy_mdps", "verification", "capo_app/experiments/toy_regime.py"]


def shape_letters(path: Path) -> set[str]:
    """The single upper-case letters (and k, d) inside the shapes of ``path``'s docstrings."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            for match in SHAPE.finditer(ast.get_docstring(node) or ""):
                tokens = re.split(r"[\s,·×*+\-−^]+", match.group(1))
                found |= {t for t in tokens if re.fullmatch(r"[A-Zkd]", t)}
    return found


def files(parts: list[str]) -> list[Path]:
    out = []
    for part in parts:
        p = ROOT / part
        out += [p] if p.is_file() else sorted(p.rglob("*.py"))
    return out


@pytest.mark.parametrize("path", files(SPARSE), ids=lambda p: str(p.relative_to(ROOT)))
def test_sparse_code_uses_the_glossary(path):
    if path in files(TABULAR):
        pytest.skip("a tabular module")
    assert shape_letters(path) <= set(LETTERS)


@pytest.mark.parametrize("path", files(TABULAR), ids=lambda p: str(p.relative_to(ROOT)))
def test_tabular_code_uses_the_paper_letters(path):
    assert shape_letters(path) <= set(TABULAR_LETTERS) | set(LETTERS)
