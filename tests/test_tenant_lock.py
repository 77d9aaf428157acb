"""The tenant's lock lives on the migration connection, and reports say only what this run did (issue 11).

Against a real PostgreSQL server: the advisory lock is held by the very session that runs the revisions and
carries the run's id as its application name; losing that session fails the revision in progress, and the
retry takes the lock again; a stale session of the same run is ended, another run's is named; a commit whose
acknowledgement was lost still counts as this run's work; a failure that is retried leaves no `failed` row;
"too many connections" lowers the concurrency like a throttle.
"""

from __future__ import annotations

import threading
import time
import uuid

import psycopg
import pytest
from helpers import ROOT, admin, make_project, pg_dsn

from tenants import api
from tenants.config import load_settings
from tenants.dialects.postgresql import LOCK_KEY
from tenants.model import Status
from tenants.selection import Selection

pytestmark = pytest.mark.postgres

HOLDER = ("SELECT l.pid, a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
          "WHERE l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid FROM pg_database "
          "WHERE datname = current_database())")


def settings_of(fleet):
    return load_settings(fleet.config, "pg", environ={})


def wait_for(predicate, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting")


def test_a_terminated_migration_session_loses_the_lock_with_the_revision_and_the_retry_finishes(pg_fleet, tmp_path):
    """The session holding the lock is the one running the revision: terminating it (an operator, a failover)
    rolls the revision back, and the retry takes the lock again and finishes. The session says which run it is."""
    marker = tmp_path / "slept"
    ini = make_project(tmp_path / "proj", {
        "r1": "op.execute('CREATE TABLE r1 (id int)')",
        "r2": f"""
            if not os.path.exists({str(marker)!r}):
                open({str(marker)!r}, 'w').close()
                op.execute('SELECT pg_sleep(30)')
            op.execute('CREATE TABLE r2 (id int)')
        """,
    }, env_py=(ROOT / "alembic" / "env.py").read_text())
    fleet = pg_fleet(1, alembic=ini)
    tenant, run_id = fleet.names[0], uuid.uuid4().hex
    done: list = []
    runner = threading.Thread(target=lambda: done.append(
        api.upgrade(settings_of(fleet), options=api.RunOptions(run_id=run_id))))
    runner.start()
    # (The revision's BEGIN travels in the same message as its first statement: tenants.dialects.psycopg_batch.)
    sleeping = wait_for(lambda: fleet.query(tenant, "SELECT pid, application_name FROM pg_stat_activity WHERE "
                                                   "query LIKE '%SELECT pg_sleep(30)%' AND state = 'active' "
                                                   "AND pid <> pg_backend_pid() AND datname = current_database()"))
    holder = fleet.query(tenant, HOLDER)
    assert holder == sleeping == [(sleeping[0][0], f"tenants {run_id}")]  # one session: lock and migration
    fleet.query(tenant, f"SELECT pg_terminate_backend({sleeping[0][0]})")
    runner.join(60)
    (result,) = done[0].results
    assert (result.status, result.attempts, result.applied, result.to_revision) == (
        Status.UPGRADED, 2, ("r1", "r2"), "r2")
    assert fleet.query(tenant, "SELECT from_revision, to_revision, outcome FROM tenants_history ORDER BY id") == [
        ("base", "r1", "applied"), ("r1", "r2", "applied")]  # no `failed` row for the retried attempt


def test_a_stale_session_of_the_same_run_is_ended_and_the_tenant_upgraded(pg_fleet):
    """A session of this run still holding the lock (an earlier attempt whose client is gone, as the server does
    not know yet) is ended, not waited for: its application name carries the run id."""
    fleet = pg_fleet(1)
    run_id = uuid.uuid4().hex
    stale = psycopg.connect(pg_dsn(fleet.names[0]), autocommit=True, application_name=f"tenants {run_id}")
    try:
        stale.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        report = api.upgrade(settings_of(fleet), options=api.RunOptions(run_id=run_id))
        assert [r.status for r in report.results] == [Status.UPGRADED]
        with pytest.raises(psycopg.OperationalError):
            stale.execute("SELECT 1")  # it was terminated
    finally:
        stale.close()


def test_another_runs_lock_is_reported_with_who_holds_it(pg_fleet):
    fleet = pg_fleet(1)
    other = psycopg.connect(pg_dsn(fleet.names[0]), autocommit=True, application_name="tenants 0ther")
    try:
        other.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        pid = other.info.backend_pid
        (result,) = api.upgrade(settings_of(fleet)).results
        assert result.status is Status.LOCKED
        assert result.error.startswith(f"held by another run (tenants 0ther, session {pid}, connected 20")
        assert result.error.endswith("): its lock is taken")
        assert other.execute("SELECT 1").fetchone() == (1,)  # another run's session is left alone
    finally:
        other.close()


def test_a_tenant_at_the_target_whose_lock_is_held_is_up_to_date_not_locked(pg_fleet):
    """On PostgreSQL the workers read each tenant under its lock. A tenant with nothing to do whose lock another
    session holds (a second run going over the fleet) is up-to-date, as a lock-free read says; one with work
    is locked. Parallel (workers) and serial (one tenant, in this process) agree."""
    fleet = pg_fleet(3)
    settings = settings_of(fleet)
    assert {r.status for r in api.upgrade(settings).results} == {Status.UPGRADED}
    behind = fleet.names[2]
    with psycopg.connect(pg_dsn(behind), autocommit=True) as conn:  # behind: it has work (never run: locked)
        conn.execute("UPDATE alembic_version SET version_num = '0003_invoice_status'")
    holders = [psycopg.connect(pg_dsn(name), autocommit=True, application_name="tenants 0ther")
               for name in (fleet.names[0], behind)]
    try:
        for holder in holders:
            holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        parallel = {r.tenant: r.status for r in api.upgrade(settings, options=api.RunOptions(concurrency=3)).results}
        assert parallel == {fleet.names[0]: Status.UP_TO_DATE, fleet.names[1]: Status.UP_TO_DATE,
                            behind: Status.LOCKED}
        serial = api.upgrade(settings, selection=Selection(tenants=(fleet.names[0],))).results
        assert [r.status for r in serial] == [Status.UP_TO_DATE]
    finally:
        for holder in holders:
            holder.close()


LOST_ACK_ENV_PY = """
    import os

    from alembic import context

    connection = context.config.attributes["connection"]
    context.configure(connection=connection, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
    if not os.path.exists({marker!r}):
        # Everything committed, then the session ends before the client hears back: a lost acknowledgement.
        open({marker!r}, "w").close()
        connection.exec_driver_sql("SELECT pg_terminate_backend(pg_backend_pid())")
"""


def test_revisions_committed_by_an_attempt_that_then_failed_are_this_runs(pg_fleet, tmp_path):
    """The first attempt commits both revisions and then loses its session; the retry finds the tenant at the
    target. It is `upgraded` by this run, with what this run applied (issue 11: it was `up-to-date`)."""
    ini = make_project(tmp_path / "proj", {"p1": "op.execute('CREATE TABLE p1 (id int)')",
                                           "p2": "op.execute('CREATE TABLE p2 (id int)')"},
                       env_py=LOST_ACK_ENV_PY.format(marker=str(tmp_path / "lost")))
    fleet = pg_fleet(1, alembic=ini)
    (result,) = api.upgrade(settings_of(fleet)).results
    assert (result.status, result.attempts, result.from_revision, result.to_revision, result.applied) == (
        Status.UPGRADED, 2, "base", "p2", ("p1", "p2"))


def test_a_tenant_that_fails_after_its_retries_has_one_failed_row(pg_fleet, tmp_path):
    ini = make_project(tmp_path / "proj", {
        "p1": "op.execute('CREATE TABLE p1 (id int)')",
        "p2": "op.execute('SELECT pg_terminate_backend(pg_backend_pid())')",  # transient, every time
    }, env_py=(ROOT / "alembic" / "env.py").read_text())
    fleet = pg_fleet(1, alembic=ini, extra="retries = 2")
    (result,) = api.upgrade(settings_of(fleet)).results
    assert (result.status, result.attempts, result.applied, result.to_revision) == (Status.FAILED, 3, ("p1",), "p1")
    rows = fleet.query(fleet.names[0], "SELECT from_revision, to_revision, outcome FROM tenants_history ORDER BY id")
    assert rows == [("base", "p1", "applied"), ("p1", "p2", "failed")]


def test_too_many_connections_lowers_the_concurrency_like_a_throttle(pg_fleet):
    """53300 (a role's connection limit here; max_connections alike) is the server saying it is saturated: the
    fan-out backs off and lowers its concurrency instead of retrying every tenant at full concurrency, and
    every tenant still gets there."""
    role = f"tt_limited_{uuid.uuid4().hex[:8]}"
    fleet = pg_fleet(6, extra="retries = 5")
    admin(f"CREATE ROLE {role} LOGIN CONNECTION LIMIT 2")
    try:
        for name in fleet.names:
            admin(f'ALTER DATABASE "{name}" OWNER TO {role}')
        text = fleet.config.read_text().replace("postgres@", f"{role}@", 1)
        fleet.config.write_text(text)
        assert f"{role}@" in text
        report = api.upgrade(settings_of(fleet), options=api.RunOptions(concurrency=6))
        assert [(r.status, r.error) for r in report.results] == [(Status.UPGRADED, None)] * 6
        assert report.throttled > 0
        assert report.concurrency_changes and min(n for _, n in report.concurrency_changes) < 6
    finally:
        for name in fleet.names:  # the role owns them and their tables: they go first (the fixture's drop is
            admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # IF EXISTS)
        admin(f"DROP ROLE IF EXISTS {role}")
