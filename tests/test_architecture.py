"""The architecture as code: layers and no cycles (import-linter, pyproject.toml), and the complexity limit."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT


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
