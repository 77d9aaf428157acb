"""The package as users install it: a wheel must carry every subpackage, not only the top one."""

from __future__ import annotations

import tomllib
from pathlib import Path

from helpers import ROOT
from setuptools import find_packages


def test_the_wheel_includes_every_subpackage():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packaged = set(find_packages(where=str(ROOT), include=config["include"]))
    on_disk = {".".join(path.parent.relative_to(ROOT).parts) for path in Path(ROOT / "tenants").rglob("__init__.py")}
    assert on_disk <= packaged, f"left out of the wheel: {sorted(on_disk - packaged)}"
    assert {"tenants.dialects", "tenants.engine", "tenants.sources", "tenants.output"} <= on_disk
