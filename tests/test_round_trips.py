"""Issue 13: what one tenant costs on the wire, counted by scripts/latency_proxy.py in front of a real PostgreSQL
(no delay: only its counters are used): logins, round trips and frontend messages of the no-op read and of an
upgrade, and that the reads in autocommit leave every revision its own transaction.

Counts, not timings: each round trip costs a full network latency to a far-away pool, whatever the machine."""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from helpers import ALEMBIC_INI, DEMO_REVISIONS, PG_URL, ROOT, failing_project, pg_dsn
from sqlalchemy.engine import make_url

from tenants.db import Connector, Sessions
from tenants.engine.revisions import Revisions
from tenants.engine.unit import Job, precheck, run_tenant
from tenants.model import Status, Tenant

pytestmark = pytest.mark.postgres


def _tenant(pg_proxy, name: str) -> Tenant:
    url = make_url(PG_URL).set(host="127.0.0.1", port=pg_proxy.port, database=name,
                               query={"sslmode": "disable"})  # the proxy reads only plain framing
    return Tenant(name, url.render_as_string(hide_password=False))


def _settled(pg_proxy) -> dict:
    """The counters once every connection through the proxy has closed (its Terminate is counted)."""
    deadline = time.monotonic() + 5
    while pg_proxy.stats()["open_connections"] and time.monotonic() < deadline:
        time.sleep(0.01)
    return pg_proxy.stats()


def _job(ini=ALEMBIC_INI, run_id: str | None = "rt-run") -> Job:
    return Job(operation="upgrade", target=Revisions(ini).head(), alembic_ini=str(ini), run_id=run_id,
               retries=0)


def _warm(connector: Connector, tenant: Tenant, pg_proxy) -> None:
    """The engine's first connection initialises SQLAlchemy's dialect (several statements, once per process
    and server): not what a tenant costs."""
    for reads in (False, True):  # the migration engine, and the one of the parent's reads
        with connector.engine(tenant.url, reads=reads) as engine, engine.connect():
            pass
    _settled(pg_proxy)


def _probe(pg_proxy, name: str) -> dict:
    """A raw psycopg probe: connect, one SELECT, close; what the no-op read is held to."""
    pg_proxy.reset()
    url = make_url(PG_URL)
    with psycopg.connect(host="127.0.0.1", port=pg_proxy.port, user=url.username or "postgres", password=url.password,
                         dbname=name, sslmode="disable", autocommit=True) as conn:
        conn.execute("SELECT version_num FROM alembic_version").fetchall()
    return _settled(pg_proxy)


def test_the_no_op_read_costs_what_a_raw_probe_costs(pg_proxy, pg_database):
    name = pg_database()
    tenant, job, revisions, connector = _tenant(pg_proxy, name), _job(), Revisions(ALEMBIC_INI), Connector()
    assert run_tenant(tenant, job, revisions, connector).status is Status.UPGRADED
    _warm(connector, tenant, pg_proxy)
    pg_proxy.reset()
    result = precheck(tenant, job, revisions, connector)
    counts = _settled(pg_proxy)
    assert result is not None and result.status is Status.UP_TO_DATE
    probe = _probe(pg_proxy, name)
    # One login, one statement (the version, the pin and the tool's tables at once), no BEGIN/ROLLBACK.
    assert counts["connections"] == 1
    assert counts["round_trips"] == probe["round_trips"], (counts["by_type"], probe["by_type"])
    assert "Q" not in counts["by_type"] and counts["by_type"]["P"] == 1
    connector.dispose()


def test_an_upgrade_from_empty_costs_one_login_and_no_read_transactions(pg_proxy, pg_database):
    name = pg_database()
    tenant, job, revisions = _tenant(pg_proxy, name), _job(), Revisions(ALEMBIC_INI)
    connector = Connector(sessions=Sessions(batch_statements=True))
    _warm(connector, tenant, pg_proxy)
    pg_proxy.reset()
    result = run_tenant(tenant, job, revisions, connector, read_first=False)  # as a worker does
    counts = _settled(pg_proxy)
    assert result.status is Status.UPGRADED and list(result.applied) == DEMO_REVISIONS
    assert counts["connections"] == 1
    # Before issue 13: 41 statements over 43 round trips (each read in BEGIN/ROLLBACK, a failing SELECT of the
    # missing version and pin tables, a catalog query per guard, Alembic's and the history table's checks).
    # Now: the lock, the state, per revision BEGIN, its DDL, the version row, the history row, COMMIT (the
    # first revision also: Alembic's one check, CREATE of the version and history tables), the read-back. No
    # unlock: closing the session releases the lock.
    # (28 statements; with batching, several travel in one message, so messages no longer count them.)
    # Those 28 statements in 13 round trips (tenants.dialects.psycopg_batch, tenants.db.locked_state): the
    # lock with the state; BEGIN with Alembic's check; per revision, its DDL with the version row (whose row
    # count Alembic reads), and the history row with the COMMIT (revision 3 has one more: its UPDATE of data,
    # whose row count a revision may read); the read-back. 30 before batching.
    # Then 27 in 12: Alembic's check of its version table, answered from the state (tenants.db.known_tables),
    # begins the transaction itself, and the BEGIN goes with the first revision's DDL.
    assert counts["round_trips"] == 12
    with psycopg.connect(pg_dsn(name)) as conn:
        rows = conn.execute("SELECT to_revision FROM tenants_history ORDER BY id").fetchall()
    assert [r[0] for r in rows] == DEMO_REVISIONS
    connector.dispose()


def test_an_upgrade_of_a_tenant_with_history_skips_every_existence_check(pg_proxy, pg_database):
    name = pg_database()
    tenant, revisions = _tenant(pg_proxy, name), Revisions(ALEMBIC_INI)
    connector = Connector(sessions=Sessions(batch_statements=True))
    partial = Job(operation="upgrade", target="0002_invoices", alembic_ini=str(ALEMBIC_INI), run_id="first")
    assert run_tenant(tenant, partial, revisions, connector).status is Status.UPGRADED
    _settled(pg_proxy)
    pg_proxy.reset()
    result = run_tenant(tenant, _job(), revisions, connector, read_first=False)
    counts = _settled(pg_proxy)
    assert result.status is Status.UPGRADED and list(result.applied) == DEMO_REVISIONS[2:]
    # lock, state; Alembic's SELECT of the version rows (its has_table answered from the state); revision 3:
    # BEGIN, ALTER, UPDATE, version, history, COMMIT; revision 4: BEGIN, CREATE INDEX, version, history, COMMIT;
    # read-back (no unlock: closing the session releases the lock).
    assert counts["round_trips"] == 9  # lock+state, BEGIN+SELECT, 3 for revision 3, 2 for revision 4, read-back
    connector.dispose()


def test_on_change_is_called_once_env_py_runs_and_never_for_a_tenant_at_the_target(pg_proxy, pg_database):
    """A worker tells its parent when env.py starts on its tenant (the first step that may change it): a worker
    killed before then changed nothing (tenants.engine.fanout.scheduler's timeout and stop reports)."""
    name = pg_database()
    tenant, job, revisions, connector = _tenant(pg_proxy, name), _job(), Revisions(ALEMBIC_INI), Connector()
    calls: list[int] = []
    for status in (Status.UPGRADED, Status.UP_TO_DATE):
        calls.clear()
        result = run_tenant(tenant, job, revisions, connector, read_first=False, on_change=lambda: calls.append(1))
        assert result.status is status
        assert calls == ([1] if status is Status.UPGRADED else [])
    connector.dispose()


def test_each_revision_still_commits_alone_after_reads_in_autocommit(pg_proxy, pg_database, tmp_path):
    """A failing second revision leaves the first committed (with its history row) and nothing of the second:
    the connection went back to transactions before env.py got it."""
    name = pg_database("_bad")
    ini = failing_project(tmp_path / "project")
    tenant, revisions, connector = _tenant(pg_proxy, name), Revisions(ini), Connector()
    result = run_tenant(tenant, _job(ini), revisions, connector, read_first=False)
    assert result.status is Status.FAILED and list(result.applied) == ["r1"]
    with psycopg.connect(pg_dsn(name)) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("r1",)]
        both = conn.execute("SELECT to_regclass('one') IS NOT NULL, to_regclass('two') IS NULL").fetchone()
        assert both == (True, True)
        outcomes = conn.execute("SELECT to_revision, outcome FROM tenants_history ORDER BY id").fetchall()
    assert outcomes == [("r1", "applied"), ("r2", "failed")]
    connector.dispose()


def test_a_new_tenant_whose_first_revision_fails_keeps_no_version_table(pg_proxy, pg_database, tmp_path):
    """Alembic creates its version table in the first revision's transaction: answering its existence check
    from the state read must not make that table commit on its own (the answer begins that transaction, as
    the catalog query it replaces did)."""
    from helpers import make_project

    name = pg_database()
    ini = make_project(tmp_path / "project", {"r1": "op.execute('SELECT * FROM no_such_table')"},
                       env_py=(ROOT / "alembic" / "env.py").read_text())
    tenant, revisions, connector = _tenant(pg_proxy, name), Revisions(ini), Connector()
    assert run_tenant(tenant, _job(ini, run_id=None), revisions, connector, read_first=False).status is Status.FAILED
    with psycopg.connect(pg_dsn(name)) as conn:
        assert conn.execute("SELECT to_regclass('alembic_version')").fetchone() == (None,)
    connector.dispose()


def test_one_connection_per_tenant_in_pg_stat_activity(pg_fleet, tmp_path):
    """Issue 13's acceptance: during a run, the server sees one session per tenant being migrated (the lock
    lives on the migration connection; nothing else connects to it)."""
    from helpers import make_project

    from tenants import api
    from tenants.config import load_settings
    from tenants.selection import Selection

    ini = make_project(tmp_path / "slow", {"r1": "op.execute('SELECT pg_sleep(1.5)')"},
                       env_py=(ROOT / "alembic" / "env.py").read_text())
    fleet = pg_fleet(3, alembic=ini, extra="concurrency = 3\n")
    seen: dict[str, int] = {}
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            with psycopg.connect(pg_dsn(), autocommit=True) as conn:
                for datname, count in conn.execute(
                        "SELECT datname, count(*) FROM pg_stat_activity WHERE datname LIKE %s GROUP BY datname",
                        (fleet.prefix + "%",)).fetchall():
                    seen[datname] = max(seen.get(datname, 0), count)
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        settings = load_settings(str(fleet.config), "pg")
        report = api.upgrade(settings, selection=Selection())
    finally:
        done.set()
        watcher.join(5)
    assert {r.status for r in report.results} == {Status.UPGRADED}
    assert set(seen) == set(fleet.names) and set(seen.values()) == {1}


def test_a_run_logs_into_each_tenant_once_whether_it_needs_work_or_not(pg_fleet, pg_proxy):
    """Issue 13's acceptance, for whole runs: on PostgreSQL over psycopg the workers read every tenant under its
    lock, in one round trip with it (no read ahead in the parent, whose login a tenant with work would pay
    twice), so an upgrade of new tenants and the no-op pass after it each log into every tenant's database
    exactly once. The only other login is discovery's, to the maintenance database."""
    from tenants import api
    from tenants.config import load_settings
    from tenants.selection import Selection

    fleet = pg_fleet(5, extra="concurrency = 3\n")
    direct = make_url(PG_URL)
    text = fleet.config.read_text().replace(f"@{direct.host or '127.0.0.1'}:{direct.port or 5432}/",
                                            f"@127.0.0.1:{pg_proxy.port}/")
    assert f":{pg_proxy.port}/" in text
    fleet.config.write_text(text)
    settings = load_settings(str(fleet.config), "pg")
    for expected in (Status.UPGRADED, Status.UP_TO_DATE):
        pg_proxy.reset()
        report = api.upgrade(settings, selection=Selection())
        assert {r.status for r in report.results} == {expected}
        logins = _settled(pg_proxy)["logins_by_database"]
        assert {name: logins.pop(name, 0) for name in fleet.names} == dict.fromkeys(fleet.names, 1)
        assert logins == {direct.database or "postgres": 1}  # discovery


@pytest.mark.parametrize(("batch", "reads"), [(False, False), (True, False), (True, True)])
def test_an_engines_first_connection_asks_what_the_login_did_not_say_in_one_query(pg_proxy, pg_database, batch,
                                                                                   reads):
    """SQLAlchemy's set-up of an engine's first connection: the server's version and standard_conforming_strings
    come with the login, the default schema and isolation level in one query (tenants.dialects.postgresql's
    _answer_from_login). The dialect ends up knowing what it would have asked for itself."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    name = pg_database()
    url = _tenant(pg_proxy, name).url
    connector = Connector(sessions=Sessions(batch_statements=batch))
    with connector.engine(url, reads=reads) as engine, engine.connect():
        pass
    counts = _settled(pg_proxy)
    # After the login: BEGIN and the one query (one message when batching), the ROLLBACK, and the closing
    # Terminate (the proxy counts it). 9 statements before. The tool's reads run in autocommit from the login
    # on: the query alone.
    assert counts["connections"] == 1
    assert counts["round_trips"] == (2 if reads else 3 if batch else 4), counts["by_type"]
    plain = create_engine(make_url(url).set(drivername="postgresql+psycopg"), poolclass=NullPool)
    with plain.connect():
        pass
    for attribute in ("server_version_info", "default_schema_name", "default_isolation_level", "_backslash_escapes"):
        assert getattr(engine.dialect, attribute) == getattr(plain.dialect, attribute), attribute
    plain.dispose()
    connector.dispose()
