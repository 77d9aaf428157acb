"""A version table with several rows on a graph with one head (issue 11, item 8): never read as at head.

Alembic refuses to upgrade from rows that overlap (one below another); the no-op path would read them as
nothing pending. Every reader (status, verify, plan, upgrade) reports the tenant `unknown-revision`, says how
many rows there are, and how to fix it; nothing touches it."""

from __future__ import annotations

import sqlite3

import pytest
from helpers import HEAD, settings_for, version

from tenants import api
from tenants import plan as plan_module
from tenants.model import State, Status

FIX = "`alembic -x tenant=globex stamp --purge REVISION`"


def _two_rows(tmp_path, rows=(HEAD, "0001_users")):
    db = tmp_path / "db" / "globex.db"
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM alembic_version")
        conn.executemany("INSERT INTO alembic_version VALUES (?)", [(r,) for r in rows])
    return db


def _rows(db):
    with sqlite3.connect(db) as conn:
        return sorted(r[0] for r in conn.execute("SELECT version_num FROM alembic_version"))


MESSAGE = (f"version table alembic_version has 2 rows (0001_users, {HEAD}) and 0001_users is below {HEAD}, "
           f"which Alembic refuses; not touched: keep the one row the schema matches, e.g. {FIX}")


@pytest.fixture
def fleet(sqlite_config, tmp_path):
    settings = settings_for(sqlite_config())
    assert api.upgrade(settings, options=api.RunOptions(concurrency=1)).ok
    return settings, _two_rows(tmp_path)


def test_status_and_verify_say_unknown_revision_with_the_row_count_and_the_fix(fleet):
    settings, _ = fleet
    by = {t.tenant: t for t in api.status(settings).tenants}
    assert by["globex"].state is State.UNKNOWN_REVISION
    assert by["globex"].error == MESSAGE
    assert by["acme"].state is State.AT_HEAD
    assert not api.verify(settings).ok


def test_upgrade_reports_it_unknown_revision_and_leaves_the_rows(fleet):
    settings, db = fleet
    for options in (api.RunOptions(concurrency=1, max_failures=None),  # serial: the unit's own read
                    api.RunOptions(concurrency=2, max_failures=None)):  # processes: the parent's precheck
        report = api.upgrade(settings, options=options)
        by = {r.tenant: r for r in report.results}
        assert by["globex"].status is Status.UNKNOWN_REVISION, options
        assert by["globex"].error == MESSAGE
        assert by["acme"].status is Status.UP_TO_DATE
        assert not report.ok
    assert _rows(db) == sorted([HEAD, "0001_users"])


def test_plan_lists_it_apart_never_up_to_date(fleet):
    settings, _ = fleet
    result = plan_module.plan(settings)
    assert "globex" not in result.up_to_date and not result.ok
    assert result.unknown_revision == (("globex", f"0001_users,{HEAD} ({MESSAGE})"),)


def test_the_same_row_twice_is_refused_too(sqlite_config, tmp_path):
    settings = settings_for(sqlite_config())
    api.upgrade(settings, options=api.RunOptions(concurrency=1))
    db = tmp_path / "db" / "globex.db"
    with sqlite3.connect(db) as conn:  # a hand-made version table without its primary key
        conn.execute("DROP TABLE alembic_version")
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        conn.executemany("INSERT INTO alembic_version VALUES (?)", [(HEAD,), (HEAD,)])
    [row] = [t for t in api.status(settings).tenants if t.tenant == "globex"]
    assert row.state is State.UNKNOWN_REVISION
    assert row.error.startswith(f"version table alembic_version has 2 rows ({HEAD}, {HEAD}) and {HEAD} is there "
                                "twice, which Alembic refuses")


def test_cli_status_verify_plan_upgrade_exit_1_naming_the_rows(fleet, cli, sqlite_config):
    config = str(sqlite_config())
    for command in (["status"], ["verify"], ["plan"], ["upgrade", "--keep-going"]):
        run = cli("--config", config, "--env", "test", *command)
        assert run.code == 1, command
        said = " ".join((run.out + run.err).split())  # the status table wraps its detail column
        assert "has 2 rows" in said and FIX in said, command
    run = cli("--config", config, "--env", "test", "verify")
    assert f"unknown-revision globex  {MESSAGE}" in run.out
    assert version(fleet[1]) in (HEAD, "0001_users")
