"""scripts/fault_campaign.py (issue 11): one cheap scenario of the campaign end to end, and its checkers."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from helpers import PG_URL, ROOT


def _load():
    """scripts/ is not a package: load the module from its path."""
    spec = importlib.util.spec_from_file_location("fault_campaign", ROOT / "scripts" / "fault_campaign.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


fault_campaign = _load()


@pytest.mark.postgres
def test_terminated_backends_mid_revision_break_no_invariant(pg_available):
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fault_campaign.py"), "--scenario", "terminate-backends",
         "--backend", "pg", "--rounds", "1", "--pg-tenants", "4", "--sleep", "0.2", "--pg-url", PG_URL],
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    row = next(line for line in done.stdout.splitlines() if line.startswith("terminate-backends (pg)"))
    cells = [cell.strip() for cell in row.split("|")]
    assert cells[1:3] == ["1", "4"] and int(cells[3]) > 0  # a round on 4 tenants, with faults injected
    assert cells[4:] == ["0"] * 7


def test_the_checkers_see_what_they_look_for():
    history = [(1, "a", "upgrade", "base", "r1", "applied"), (2, "a", "upgrade", "r1", "r2", "failed"),
               (3, "b", "upgrade", "r1", "r2", "applied"), (4, "c", "downgrade", "r2", "r1", "applied"),
               (5, "c", "upgrade", "r1", "r2", "applied"), (6, "d", "upgrade", "r1", "r2", "applied")]
    assert fault_campaign.applied_twice(history) == ["r2"]  # row 6; row 5 follows a downgrade

    at_r2 = fault_campaign.TenantState(versions=("r2",))
    honest = {"status": "upgraded", "to": "r2", "applied": ["r1", "r2"]}
    assert fault_campaign.dishonesty(honest, at_r2, ["r1", "r2"], "r2", single=True) == []
    assert len(fault_campaign.dishonesty({**honest, "applied": ["r2"]}, at_r2, ["r1", "r2"], "r2", True)) == 1
    assert len(fault_campaign.dishonesty({**honest, "to": "r1"}, at_r2, ["r1", "r2"], "r2", True)) == 1
    assert fault_campaign.dishonesty({**honest, "to": "r1"}, at_r2, ["r1", "r2"], "r2", single=False) == []
    said_up_to_date = {"status": "up-to-date", "to": "r2", "applied": []}
    assert len(fault_campaign.dishonesty(said_up_to_date, at_r2, ["r2"], "r2", True)) == 2
