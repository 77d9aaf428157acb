"""The package as users install it: a wheel must carry every subpackage, not only the top one."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from helpers import ROOT
from setuptools import find_packages

from tenants.__main__ import _forks_workers


def test_the_wheel_includes_every_subpackage():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packaged = set(find_packages(where=str(ROOT), include=config["include"]))
    on_disk = {".".join(path.parent.relative_to(ROOT).parts) for path in Path(ROOT / "tenants").rglob("__init__.py")}
    assert on_disk <= packaged, f"left out of the wheel: {sorted(on_disk - packaged)}"
    assert {"tenants.dialects", "tenants.engine", "tenants.sources", "tenants.output"} <= on_disk


def test_a_worker_re_importing_the_console_script_imports_no_cli(tmp_path):
    """Every worker process of a parallel run imports the main script again, as ``__mp_main__``. The console
    script must then import nothing heavy: with the CLI (Typer, rich) it cost each worker about 0.25 s of CPU
    before its first tenant (issue 13). The script is the one pip writes for pyproject's entry point."""
    entry = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["tenants"]
    module, function = entry.split(":")
    script = tmp_path / "tenants"
    script.write_text(f"import re\nimport sys\nfrom {module} import {function}\nif __name__ == '__main__':\n"
                      f"    sys.exit({function}())\n")
    probe = (f"import runpy, sys; runpy.run_path({str(script)!r}, run_name='__mp_main__'); "
             "print(sorted(m for m in ('typer', 'rich', 'tenants.cli', 'sqlalchemy', 'alembic') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
    # And the script runs the CLI when it is the main script.
    help_run = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=ROOT)
    assert help_run.returncode == 0 and "upgrade" in help_run.stdout


@pytest.mark.parametrize(("argv", "forks"), [
    (["upgrade"], True),
    (["--config", "x.toml", "--env", "prod", "upgrade", "head"], True),
    (["-v", "upgrade", "-j", "8"], True),
    (["-c", "upgrade", "status"], False),  # "upgrade" is the configuration file's name here
    (["status"], False),
    (["downgrade", "-t", "acme"], False),
    (["upgrade", "--help"], False),
    (["upgrade", "-j", "1"], False),
    (["upgrade", "--concurrency", "1"], False),
    (["upgrade", "--concurrency=1"], False),
    (["upgrade", "-j1"], False),
    ([], False),
])
def test_the_entry_point_starts_the_forkserver_early_only_for_an_upgrade_that_may_fork(argv, forks):
    assert _forks_workers(argv) is forks
