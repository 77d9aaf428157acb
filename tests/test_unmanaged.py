"""Onboarding an existing fleet: a database with tables but no version table is `unmanaged`, never migrated
from base by an upgrade, shown by status and plan, until `tenants stamp` adopts it."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import psycopg
import pytest
import sqlglot
from helpers import DEMO_REVISIONS, HEAD, settings_for, tables, write_config
from sqlalchemy.engine import make_url

from tenants import api
from tenants import plan as plan_module
from tenants.dialects.mssql import TABLES_SQL
from tenants.errors import ConfigError
from tenants.model import State, Status
from tenants.selection import Selection

CUSTOMER_TABLE = "CREATE TABLE customer_orders (id INTEGER PRIMARY KEY, total INTEGER)"


def customer_db(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as conn:
        conn.execute(CUSTOMER_TABLE)
        conn.execute("INSERT INTO customer_orders VALUES (1, 100)")


def test_sqlite_database_with_tables_and_no_version_table_is_unmanaged_and_untouched(sqlite_config, tmp_path):
    settings = settings_for(sqlite_config(["legacy", "fresh"]))
    customer_db(tmp_path / "db" / "legacy.db")
    report = api.upgrade(settings)
    by_name = {r.tenant: r for r in report.results}
    assert by_name["legacy"].status is Status.UNMANAGED
    assert "1 table(s) (customer_orders) but no alembic_version table" in by_name["legacy"].error
    assert "Adopt it with `tenants adopt`" in by_name["legacy"].error
    assert by_name["fresh"].status is Status.UPGRADED  # a database with nothing in it is new, as before
    assert not report.ok
    # untouched: no demo tables, no version table, no history table, the customer's row still there
    assert tables(tmp_path / "db" / "legacy.db") == {"customer_orders"}
    status = {t.tenant: t for t in api.status(settings).tenants}
    assert status["legacy"].state is State.UNMANAGED and status["fresh"].state is State.AT_HEAD


def test_a_wrong_version_table_setting_is_hinted(sqlite_config, tmp_path):
    settings = settings_for(sqlite_config(["a"]))
    api.upgrade(settings)
    wrong = settings_for(sqlite_config(["a"], extra='version_table = "app_version"'))
    result = api.upgrade(wrong).results[0]
    assert result.status is Status.UNMANAGED
    assert "but no app_version table (it has alembic_version: is the environment's version_table right?)" \
        in result.error


def test_tool_tables_alone_do_not_make_a_database_unmanaged(sqlite_config, tmp_path):
    """A tenant pinned before its first migration holds only the pin table: still new, not unmanaged."""
    settings = settings_for(sqlite_config(["early"]))
    api.pin(settings, "early", "onboarding call first")
    assert tables(tmp_path / "db" / "early.db") == {"tenants_pin"}
    row = api.status(settings).tenants[0]
    assert row.state is State.NEW and row.pin is not None
    # Pinned before its first migration, it stays out of fleet upgrades like any pinned tenant.
    assert api.upgrade(settings).results[0].status is Status.PINNED
    assert tables(tmp_path / "db" / "early.db") == {"tenants_pin"}
    api.unpin(settings, "early")
    assert api.upgrade(settings).results[0].status is Status.UPGRADED


def test_an_empty_version_table_means_managed_at_base(sqlite_config, tmp_path):
    """`alembic stamp base` leaves an empty version table: the database is managed, at base."""
    settings = settings_for(sqlite_config(["based"]))
    db = tmp_path / "db" / "based.db"
    customer_db(db)
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
    assert api.status(settings).tenants[0].state is State.NEW
    result = api.upgrade(settings).results[0]
    assert result.status is Status.UPGRADED and result.applied == tuple(DEMO_REVISIONS)


def test_unmanaged_upgrade_keeps_running_the_graph_from_base(sqlite_config, tmp_path):
    settings = settings_for(sqlite_config(["legacy"], extra='unmanaged = "upgrade"'))
    customer_db(tmp_path / "db" / "legacy.db")
    assert api.status(settings).tenants[0].state is State.NEW
    result = api.upgrade(settings).results[0]
    assert result.status is Status.UPGRADED and result.applied == tuple(DEMO_REVISIONS)
    assert {"customer_orders", "users", "invoices"} <= tables(tmp_path / "db" / "legacy.db")


def test_unmanaged_setting_is_validated(sqlite_config):
    with pytest.raises(ConfigError, match=r'unmanaged must be "report" .* or "upgrade" .*, not \'yes\''):
        settings_for(sqlite_config(extra='unmanaged = "yes"'))


def test_cli_upgrade_reports_unmanaged_exit_1_and_plan_shows_it(cli, sqlite_config, tmp_path):
    config = str(sqlite_config(["legacy", "fresh"]))
    customer_db(tmp_path / "db" / "legacy.db")
    plan = cli("--config", config, "-e", "test", "plan", "--format", "json")
    assert plan.code == 1
    data = json.loads(plan.out)
    assert data["ok"] is False and data["summary"]["unmanaged"] == 1
    assert [u["tenant"] for u in data["unmanaged"]] == ["legacy"]
    assert [c["tenants"] for c in data["cohorts"]] == [["fresh"]]
    text = cli("--config", config, "-e", "test", "plan")
    assert "unmanaged (1, tables but no version table: the upgrade leaves them alone until stamped):" in text.out
    assert "  legacy: 1 table(s) (customer_orders) but no alembic_version table" in text.out

    run = cli("--config", config, "-e", "test", "upgrade")
    assert run.code == 1
    line = next(ln for ln in run.out.splitlines() if ln.startswith("unmanaged"))
    assert re.sub(r"\d+\.\d\ds", "T", line) == (
        "unmanaged        legacy  (T)  1 table(s) (customer_orders) but no alembic_version table: a schema Alembic "
        "never recorded; not touched. Adopt it with `tenants adopt` (finds the revision its schema matches, and stamps "
        "it with --yes), or set unmanaged = \"upgrade\" in the environment to run the graph from base on it")
    assert tables(tmp_path / "db" / "legacy.db") == {"customer_orders"}

    status = cli("--config", config, "-e", "test", "status", "--json")
    assert status.code == 1
    states = {t["tenant"]: (t["state"], t["current"]) for t in json.loads(status.out)["tenants"]}
    assert states == {"legacy": ("unmanaged", None), "fresh": ("at-head", HEAD)}
    verify = cli("--config", config, "-e", "test", "verify")
    assert verify.code == 1 and any(ln.startswith("unmanaged        legacy") for ln in verify.out.splitlines())


def test_stamp_all_yes_adopts_the_fleet_then_upgrade_is_a_no_op(cli, sqlite_config, tmp_path):
    config = str(sqlite_config(["a", "b", "c"]))
    for name in ("a", "b"):
        customer_db(tmp_path / "db" / f"{name}.db")
    run = cli("--config", config, "-e", "test", "stamp", "--all", "--exclude", "c", "--yes", "head")
    assert run.code == 0, run.err
    out = run.out.splitlines()
    assert out[:2] == [f"stamp {HEAD} on 2 tenant(s) of test, recording it without running any migration:",
                       "  from unmanaged (tables, no version table): a, b"]
    assert sorted(ln.split()[:2] for ln in out[2:4]) == [["stamped", "a"], ["stamped", "b"]]  # as they finish
    assert not (tmp_path / "db" / "c.db").exists()
    again = cli("--config", config, "-e", "test", "upgrade", "--tenant", "a", "--tenant", "b")
    assert again.code == 0
    assert sorted(ln.split()[:2] for ln in again.out.splitlines()[:2]) == [["up-to-date", "a"], ["up-to-date", "b"]]
    assert tables(tmp_path / "db" / "a.db") == {"customer_orders", "alembic_version", "tenants_history"}


def test_stamp_by_tag_and_what_it_shows(cli, tmp_path):
    config = write_config(tmp_path / "t.toml", f"""
        [environments.test]
        url = "sqlite:///db/{{tenant}}.db"
        tenants = [{{ name = "a", tags = ["eu"] }}, {{ name = "b", tags = ["eu"] }}, "c"]
        alembic = "{Path(__file__).resolve().parent.parent / 'alembic.ini'}"
    """)
    cli("--config", str(config), "-e", "test", "upgrade", "--tenant", "b", "0002")
    run = cli("--config", str(config), "-e", "test", "stamp", "--tag", "eu", "-y", "0003")
    assert run.code == 0, run.err
    assert run.out.splitlines()[1:3] == ["  from base (none recorded): a", "  from 0002_invoices: b"]
    settings = settings_for(config)
    assert {t.tenant: t.current for t in api.status(settings).tenants} == {
        "a": ("0003_invoice_status",), "b": ("0003_invoice_status",), "c": ()}


def test_library_stamp_needs_a_selection_and_ignores_waves(sqlite_config, tmp_path):
    settings = settings_for(sqlite_config(["a", "b"], extra='waves = [{ count = 1 }, { rest = true }]'))
    prepared = api.prepare_stamp(settings, "0001", everyone=True)
    assert prepared.groups() == {"base": ["a", "b"]}
    assert len(prepared.run.waves()) == 1
    report = prepared.run.run()
    assert [r.status for r in report.results] == [Status.STAMPED, Status.STAMPED] and report.waves == ()
    assert api.stamp(settings, "0001", Selection(tenants=("a",))).results[0].status is Status.UP_TO_DATE


def test_tables_query_of_sql_server_parses_as_t_sql():
    parsed = sqlglot.parse_one(TABLES_SQL, read="tsql")
    assert parsed.find(sqlglot.exp.Table).name == "objects"


# --- PostgreSQL ------------------------------------------------------------------------------------------

@pytest.mark.postgres
def test_postgres_database_with_tables_but_no_version_table_is_unmanaged(pg_fleet, cli):
    fleet = pg_fleet(3)
    legacy, other_schema, fresh = fleet.names
    for name, ddl in ((legacy, "CREATE TABLE customers (id int primary key)"),
                      (other_schema, "CREATE SCHEMA billing; CREATE TABLE billing.ledger (id int)")):
        with psycopg.connect(make_url(fleet.url(name)).set(drivername="postgresql").render_as_string(False),
                             autocommit=True) as conn:
            conn.execute(ddl)
    settings = settings_for(fleet.config, "pg")
    report = api.upgrade(settings, options=api.RunOptions(max_failures=None))
    statuses = {r.tenant: r.status for r in report.results}
    assert statuses == {legacy: Status.UNMANAGED, other_schema: Status.UNMANAGED, fresh: Status.UPGRADED}
    assert "(billing.ledger)" in next(r.error for r in report.results if r.tenant == other_schema)
    assert fleet.version(legacy) is None
    assert fleet.query(legacy, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(1,)]
    plan = plan_module.plan(settings)
    assert [name for name, _ in plan.unmanaged] == [legacy, other_schema] and not plan.ok

    run = cli("--config", str(fleet.config), "-e", "pg", "upgrade")
    assert run.code == 1
    adopt = cli("--config", str(fleet.config), "-e", "pg", "stamp", "--all", "--yes", "head")
    assert adopt.code == 0, adopt.err
    assert [fleet.version(n) for n in fleet.names] == [HEAD] * 3
    assert fleet.query(legacy, "SELECT to_regclass('public.users')") == [(None,)]  # stamped, nothing ran
    assert cli("--config", str(fleet.config), "-e", "pg", "upgrade").code == 0
