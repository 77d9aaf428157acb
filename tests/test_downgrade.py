"""Downgrading one tenant, on real SQLite files: the plan, the confirmation against a tenant that moved since,
down to base and back, and a pin that is only replaced when the downgrade ends well."""

from __future__ import annotations

import fcntl
import os
import sqlite3

import pytest
from helpers import DEMO_REVISIONS, HEAD, settings_for, tables, version

from tenants import api
from tenants.errors import RevisionError, UsageError
from tenants.model import Status
from tenants.selection import Selection


def test_downgrade_one_tenant_then_upgrade_again(sqlite_config, tmp_path):
    settings = settings_for(sqlite_config())
    api.upgrade(settings)
    plan = api.plan_downgrade(settings, "acme", "0002_invoices")
    assert plan.undo == ("0004_invoice_user_index", "0003_invoice_status")
    assert plan.descriptions[0] == "0004_invoice_user_index: index invoices by user and issue date"
    report = api.downgrade(settings, plan)
    assert (report.results[0].status, report.results[0].applied, report.results[0].to_revision) == (
        Status.DOWNGRADED, plan.undo, "0002_invoices")
    with sqlite3.connect(tmp_path / "db" / "acme.db") as conn:
        assert "status" not in {r[1] for r in conn.execute("PRAGMA table_info(invoices)")}
    assert version(tmp_path / "db" / "globex.db") == HEAD
    assert api.plan_downgrade(settings, "acme", "-1").target == "0001_users"
    with pytest.raises(RevisionError, match="not below the tenant's current revision"):
        api.plan_downgrade(settings, "acme", "0004")
    again = api.upgrade(settings)
    assert [r.status for r in again.results] == [Status.UPGRADED, Status.UP_TO_DATE, Status.UP_TO_DATE]
    assert again.results[0].applied == ("0003_invoice_status", "0004_invoice_user_index")


def test_downgrade_refuses_a_tenant_that_moved_since_the_plan(sqlite_config, tmp_path):
    settings = settings_for(sqlite_config())
    api.upgrade(settings, "0003")
    plan = api.plan_downgrade(settings, "acme", "0001")
    api.upgrade(settings)  # a fleet upgrade lands between the plan and the confirmation
    result = api.downgrade(settings, plan).results[0]
    assert result.status is Status.FAILED
    assert result.error.startswith("the tenant moved from 0003_invoice_status to 0004_invoice_user_index since")
    assert version(tmp_path / "db" / "acme.db") == HEAD


def test_downgrade_to_base_and_back(sqlite_config, tmp_path):
    settings = settings_for(sqlite_config())
    api.upgrade(settings)
    plan = api.plan_downgrade(settings, "globex", "base")
    assert plan.target is None and plan.undo == tuple(reversed(DEMO_REVISIONS))
    result = api.downgrade(settings, plan).results[0]
    assert (result.status, result.to_revision, result.applied) == (Status.DOWNGRADED, "base", plan.undo)
    assert tables(tmp_path / "db" / "globex.db") == {"alembic_version", "tenants_history"}
    assert api.upgrade(settings, selection=Selection(tenants=("globex",))).results[0].applied == tuple(DEMO_REVISIONS)


def test_downgrade_and_pin_keeps_an_earlier_pin_until_the_downgrade_ends_well(sqlite_config, tmp_path):
    settings = settings_for(sqlite_config())
    assert api.upgrade(settings).ok
    api.pin(settings, "acme", "INC-1: held by support", actor="alice")
    db_dir = tmp_path / "db"
    fd = os.open(db_dir / "acme.db.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another run holds acme: this downgrade undoes nothing
    try:
        report, state = api.downgrade_and_pin(settings, api.plan_downgrade(settings, "acme", "base"), "INC-2")
    finally:
        os.close(fd)
    assert (report.ok, state) == (False, "unchanged")
    assert api.status(settings, Selection(tenants=("acme",))).tenants[0].pin.endswith("UTC: INC-1: held by support")
    report, state = api.downgrade_and_pin(settings, api.plan_downgrade(settings, "acme", "base"), "INC-2")
    assert (report.ok, state) == (True, "pinned")
    assert api.status(settings, Selection(tenants=("acme",))).tenants[0].pin.endswith("UTC: INC-2")
    with pytest.raises(UsageError, match="--pin needs a reason"):
        api.downgrade_and_pin(settings, api.plan_downgrade(settings, "globex", "base"), "  ")
