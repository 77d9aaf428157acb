"""The commands that run no migration: `stamp` records a revision on an existing database, `sql` renders the
migration offline (for the fleet, a range, or one tenant from where it is)."""

from __future__ import annotations

import pytest
from helpers import settings_for, tables, version

from tenants import api
from tenants.errors import UsageError
from tenants.model import Status
from tenants.selection import Selection


def test_stamp_adopts_an_existing_database(sqlite_config, tmp_path):
    settings = settings_for(sqlite_config())
    with pytest.raises(UsageError, match="stamp needs --tenant NAME, --tag TAG or --all"):
        api.stamp(settings, "head")
    report = api.stamp(settings, "0002_invoices", Selection(tenants=("initech",)))
    assert report.results[0].status is Status.STAMPED and report.results[0].to_revision == "0002_invoices"
    assert version(tmp_path / "db" / "initech.db") == "0002_invoices"
    # nothing ran but the record
    assert tables(tmp_path / "db" / "initech.db") == {"alembic_version", "tenants_history"}


def test_offline_sql(sqlite_config):
    settings = settings_for(sqlite_config())
    full = api.sql(settings, "head")
    assert "CREATE TABLE users" in full and "CREATE INDEX ix_invoices_user_id_issued_at" in full
    assert full.count("INSERT INTO alembic_version") == 1
    step = api.sql(settings, "0003_invoice_status:head")
    assert "CREATE TABLE" not in step and "ix_invoices_user_id_issued_at" in step
    down = api.sql(settings, "head:0003")
    assert "DROP INDEX ix_invoices_user_id_issued_at" in down
    api.upgrade(settings, "0003", Selection(tenants=("acme",)))
    assert api.sql(settings, "head", tenant="acme") == step
    assert api.sql(settings, "head", tenant="globex") == full
