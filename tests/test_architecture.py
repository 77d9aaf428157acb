"""The architecture as code: layers and no cycles (import-linter, pyproject.toml), the complexity limit, and the
tests' own shape (shared code in tests/helpers.py, fixtures in conftest.py)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

from helpers import ROOT


def _tool(name: str) -> str:
    return shutil.which(name, path=str(Path(sys.executable).parent)) or name


def test_import_contracts_are_kept():
    run = subprocess.run([_tool("lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in run.stdout


def test_no_function_is_over_the_complexity_limit():
    """ruff's C901 with the limit in pyproject.toml (12): a function a reader can hold in their head."""
    run = subprocess.run([_tool("ruff"), "check", "--select", "C901", "tenants"], cwd=ROOT, capture_output=True,
                         text=True)
    assert run.returncode == 0, run.stdout[-3000:]


def test_no_test_module_imports_another_or_conftest():
    """Shared builders live in tests/helpers.py: a test module importing another runs that module's import-time
    code and ties two subjects together; conftest.py is pytest's, for fixtures and hooks."""
    offenders = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}:{node.lineno} imports {n}" for n in names
                          if n.split(".")[0].startswith("test_") or n.split(".")[0] == "conftest"]
    assert offenders == []
