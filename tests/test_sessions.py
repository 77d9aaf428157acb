"""Every wait has a deadline (issue 11, items 1 and 2): the DDL lock timeout, keepalives, idle-in-transaction and
statement timeouts, read back from real PostgreSQL sessions; a migration queued behind a customer's table lock
gives up after ``ddl_lock_timeout`` and is retried; the keys are validated like every other."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg
import pytest
from helpers import ALEMBIC_INI, HEAD, ROOT, fleet_config, make_project, pg_dsn, settings_for
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from tenants import api
from tenants.db import Connector, is_transient
from tenants.dialects import Sessions, dialect_for
from tenants.dialects.mssql import diagnose, session_setup
from tenants.engine.revisions import Revisions
from tenants.engine.unit import Job, precheck
from tenants.model import Status, Tenant
from tenants.sources.server import ServerSource

ENV_PY = (ROOT / "alembic" / "env.py").read_text()


# --- configuration -------------------------------------------------------------------------------------------

def test_session_keys_default_by_dialect_and_zero_turns_off(tmp_path: Path):
    sqlite = settings_for(fleet_config(tmp_path / "a.toml", ["a"])).environment
    assert sqlite.sessions == Sessions(0.0, 60.0, 300.0, 0.0, 30.0)  # no DDL lock timeout on SQLite
    pg = settings_for(fleet_config(tmp_path / "b.toml", ["a"], url="postgresql+psycopg://h/{tenant}")).environment
    assert pg.sessions.ddl_lock_timeout == 30.0
    off = settings_for(fleet_config(tmp_path / "c.toml", ["a"], url="postgresql+psycopg://h/{tenant}", extra="""
        ddl_lock_timeout = 0
        network_timeout = 0
        idle_in_transaction_timeout = 0
        read_timeout = 0
    """)).environment.sessions
    dialect = dialect_for("postgresql")
    assert dialect.connect_args(make_url("postgresql+psycopg://h/t"), off) == {"connect_timeout": 10}


@pytest.mark.parametrize(("line", "message"), [
    ("ddl_lock_timeout = -1", "ddl_lock_timeout must not be negative"),
    ('network_timeout = "1m"', "network_timeout must be a int or float, not str"),
    ("read_timeout = -0.5", "read_timeout must not be negative"),
])
def test_session_keys_are_validated_in_one_line(cli, tmp_path: Path, line: str, message: str):
    config = fleet_config(tmp_path / "t.toml", ["a"], extra=line)
    run = cli("--config", str(config), "--env", "test", "status")
    assert run.code == 2
    assert run.err.count("\n") == 1 and message in run.err and f"{config}:" in run.err


# --- what each dialect asks of its connections ---------------------------------------------------------------

def test_postgresql_connect_args_leave_what_the_url_sets():
    dialect = dialect_for("postgresql")
    url = make_url("postgresql+psycopg://h/t?keepalives_idle=5&connect_timeout=3&options=-c%20lock_timeout%3D2s")
    args = dialect.connect_args(url, Sessions(ddl_lock_timeout=7, statement_timeout=9))
    assert "keepalives_idle" not in args and "connect_timeout" not in args
    assert args["keepalives"] == 1 and args["tcp_user_timeout"] == 60000 and args["keepalives_count"] == 3
    # the URL's lock_timeout wins; the others follow it
    assert args["options"] == ("-c lock_timeout=2s -c idle_in_transaction_session_timeout=300000 "
                               "-c statement_timeout=9000")
    assert dialect.connect_args(make_url("postgresql+pg8000://h/t"), Sessions()) == {}  # not libpq


class FakeOdbc:
    def __init__(self) -> None:
        self.executed: list[str] = []
        self.timeout = 0

    def cursor(self):
        return self

    def execute(self, sql: str) -> None:
        self.executed.append(sql)

    def close(self) -> None:
        pass


def test_mssql_sets_lock_timeout_and_query_timeout_only_when_asked():
    conn = FakeOdbc()
    session_setup(30, 0)(conn, None)  # a migration connection: no query timeout by default
    assert conn.executed == ["SET LOCK_TIMEOUT 30000"] and conn.timeout == 0
    reads = FakeOdbc()
    session_setup(0, 30)(reads, None)
    assert reads.executed == [] and reads.timeout == 30


def test_lock_timeout_is_transient_on_sql_server():
    err = type("Error", (Exception,), {"__module__": "pyodbc"})(
        "HYT00", "[HYT00] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]Lock request time out period "
        "exceeded. (1222) (SQLExecDirectW)")
    assert diagnose(err).numbers == (1222,) and is_transient(err)


# --- real PostgreSQL sessions --------------------------------------------------------------------------------

SHOW = ("SELECT current_setting('lock_timeout') AS l, current_setting('idle_in_transaction_session_timeout') AS i, "
        "current_setting('statement_timeout') AS s")


@pytest.mark.postgres
def test_postgresql_sessions_carry_the_settings(pg_available):
    url = make_url(pg_dsn()).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    connector = Connector(sessions=Sessions(ddl_lock_timeout=30, read_timeout=15))
    try:
        with connector.engine(url) as engine, engine.connect() as conn:
            assert tuple(conn.execute(text(SHOW)).one()) == ("30s", "5min", "0")
            params = conn.connection.dbapi_connection.info.get_parameters()
            assert (params["keepalives"], params["keepalives_idle"], params["keepalives_interval"],
                    params["keepalives_count"], params["tcp_user_timeout"]) == ("1", "30", "10", "3", "60000")
        with connector.engine(url, reads=True) as engine, engine.connect() as conn:
            assert tuple(conn.execute(text(SHOW)).one()) == ("30s", "5min", "15s")
    finally:
        connector.dispose()


@pytest.mark.postgres
def test_a_session_idle_in_a_transaction_is_ended_by_the_server_and_that_is_transient(pg_available):
    url = make_url(pg_dsn()).set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    connector = Connector(sessions=Sessions(idle_in_transaction_timeout=0.5))
    try:
        with connector.engine(url) as engine, engine.connect() as conn:
            conn.execute(text("SELECT 1"))  # a transaction is open, and nothing more comes
            time.sleep(1.5)
            with pytest.raises(DBAPIError) as raised:
                conn.execute(text("SELECT 1"))
    finally:
        connector.dispose()
    assert is_transient(raised.value), raised.value


@pytest.mark.postgres
def test_upgrade_migrates_with_the_lock_timeout_and_discovery_reads_with_a_deadline(pg_fleet, tmp_path: Path):
    project = make_project(tmp_path / "p", {"r1": f"op.execute(\"CREATE TABLE seen AS {SHOW}\")"}, env_py=ENV_PY)
    fleet = pg_fleet(2, alembic=project, extra="ddl_lock_timeout = 2.5\nidle_in_transaction_timeout = 60")
    settings = settings_for(fleet.config, "pg")
    report = api.upgrade(settings, options=api.RunOptions(concurrency=2))  # in worker processes
    assert report.ok, report.results
    for name in fleet.names:
        assert fleet.query(name, "SELECT * FROM seen") == [("2500ms", "1min", "0")]
    listing = ServerSource(settings.environment)._query("SELECT current_setting('statement_timeout')")
    assert listing == ["30s"]


@pytest.mark.postgres
def test_a_precheck_that_stalls_gives_up_after_read_timeout(pg_fleet):
    fleet = pg_fleet(1, source="static")
    name = fleet.names[0]
    assert api.upgrade(settings_for(fleet.config, "pg"), "0001_users").ok
    holder = psycopg.connect(pg_dsn(name))
    holder.execute("LOCK TABLE alembic_version IN ACCESS EXCLUSIVE MODE")  # the version read now waits
    connector = Connector(sessions=Sessions(ddl_lock_timeout=0, read_timeout=1))
    job = Job(operation="upgrade", target=HEAD, alembic_ini=str(ALEMBIC_INI))
    try:
        started = time.monotonic()
        assert precheck(Tenant(name, fleet.url(name)), job, Revisions(ALEMBIC_INI), connector) is None
        assert time.monotonic() - started < 5  # the worker reads again, with retries, and reports
    finally:
        connector.dispose()
        holder.close()


# --- a migration queued behind a customer's lock -------------------------------------------------------------

LOCKED_PROJECT = {
    "r1": "op.create_table('users', sa.Column('id', sa.Integer, primary_key=True))",
    "r2": "op.add_column('users', sa.Column('email', sa.String(100)))",  # ACCESS EXCLUSIVE on users
}


def _locked_fleet(pg_fleet, tmp_path: Path, extra: str):
    fleet = pg_fleet(1, alembic=make_project(tmp_path / "p", LOCKED_PROJECT, env_py=ENV_PY), source="static",
                     extra=f"ddl_lock_timeout = 1\n{extra}")
    name = fleet.names[0]
    assert api.upgrade(settings_for(fleet.config, "pg"), "r1").ok
    return fleet, name


@pytest.mark.postgres
def test_ddl_behind_a_held_table_lock_times_out_and_is_retried_until_the_lock_is_released(pg_fleet, tmp_path):
    fleet, name = _locked_fleet(pg_fleet, tmp_path, "retries = 6")
    holder = psycopg.connect(pg_dsn(name))
    holder.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")  # a customer's open transaction
    release = threading.Timer(2.5, holder.rollback)
    release.start()
    try:
        started = time.monotonic()
        report = api.upgrade(settings_for(fleet.config, "pg"))
    finally:
        release.join()
        holder.close()
    result = report.results[0]
    assert result.status is Status.UPGRADED and result.attempts >= 2, result
    assert fleet.version(name) == "r2"
    assert fleet.query(name, "SELECT count(*) FROM information_schema.columns WHERE column_name = 'email'") == [(1,)]
    assert time.monotonic() - started < 10


@pytest.mark.postgres
def test_ddl_that_never_gets_its_lock_fails_and_customers_wait_at_most_about_the_timeout(pg_fleet, tmp_path):
    fleet, name = _locked_fleet(pg_fleet, tmp_path, "retries = 2")
    holder = psycopg.connect(pg_dsn(name))
    holder.execute("SELECT count(*) FROM users")  # a long customer transaction: ACCESS SHARE, held open
    waits: list[float] = []
    done = threading.Event()

    def customer() -> None:  # the queries that queue behind the migration's ALTER while it waits
        with psycopg.connect(pg_dsn(name), autocommit=True) as conn:
            while not done.is_set():
                started = time.monotonic()
                conn.execute("SELECT count(*) FROM users")
                waits.append(time.monotonic() - started)
                time.sleep(0.05)

    probe = threading.Thread(target=customer)
    probe.start()
    try:
        started = time.monotonic()
        report = api.upgrade(settings_for(fleet.config, "pg"))
        elapsed = time.monotonic() - started
    finally:
        done.set()
        probe.join()
        holder.close()
    result = report.results[0]
    assert result.status is Status.FAILED and result.attempts == 3
    assert "lock timeout" in result.error
    assert fleet.version(name) == "r1"  # r2 rolled back each time
    # ddl_lock_timeout = 1 s: a customer's query waits about that at most, never the whole run (3 attempts)
    assert waits and max(waits) < 2.5 < elapsed, (max(waits), elapsed)
