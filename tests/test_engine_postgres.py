"""The engine against a real PostgreSQL server: discovery, locks, transient errors, concurrent runs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from helpers import DEMO_REVISIONS, HEAD, ROOT, admin, make_project, pg_dsn
from sqlalchemy.exc import OperationalError

from tenants import api
from tenants.config import load_settings
from tenants.db import is_transient
from tenants.model import State, Status
from tenants.selection import Selection

pytestmark = pytest.mark.postgres


def settings_of(fleet, env: str = "pg"):
    return load_settings(fleet.config, env, environ={})


def test_server_discovery_upgrade_status_downgrade_upgrade(pg_fleet):
    fleet = pg_fleet(6)
    settings = settings_of(fleet)
    assert [t.name for t in api.discover(settings)] == fleet.names  # only this fleet's prefix matches

    report = api.upgrade(settings, options=api.RunOptions(concurrency=3))
    assert report.ok and [r.applied for r in report.results] == [tuple(DEMO_REVISIONS)] * 6
    assert {fleet.version(n) for n in fleet.names} == {HEAD}
    assert api.status(settings).ok

    one = fleet.names[2]
    plan = api.plan_downgrade(settings, one, "0001_users")
    assert plan.undo == tuple(reversed(DEMO_REVISIONS[1:]))
    assert api.downgrade(settings, plan).ok
    assert fleet.version(one) == "0001_users"
    assert fleet.query(one, "SELECT to_regclass('invoices')") == [(None,)]
    states = {t.tenant: (t.state, t.behind) for t in api.status(settings).tenants}
    assert states[one] == (State.BEHIND, 3) and sum(s == State.AT_HEAD for s, _ in states.values()) == 5

    again = api.upgrade(settings, options=api.RunOptions(concurrency=3))
    assert [r.status for r in again.results] == [Status.UP_TO_DATE] * 2 + [Status.UPGRADED] + [Status.UP_TO_DATE] * 3
    assert again.results[2].applied == tuple(DEMO_REVISIONS[1:])


def test_new_database_created_after_first_run_is_discovered(pg_fleet):
    fleet = pg_fleet(2)
    settings = settings_of(fleet)
    api.upgrade(settings)
    late = f"{fleet.prefix}late"
    admin(f'CREATE DATABASE "{late}"')
    try:
        report = api.upgrade(settings)
        assert [(r.tenant, r.status) for r in report.results][-1] == (late, Status.UPGRADED)
    finally:
        admin(f'DROP DATABASE "{late}" WITH (FORCE)')


def test_missing_database_fails_clearly_and_others_reach_head_with_keep_going(pg_fleet):
    fleet = pg_fleet(3, source="static")
    gone = fleet.names[1]
    admin(f'DROP DATABASE "{gone}" WITH (FORCE)')
    settings = settings_of(fleet)
    report = api.upgrade(settings, options=api.RunOptions(concurrency=2, max_failures=None))
    by = {r.tenant: r for r in report.results}
    assert by[gone].status is Status.FAILED
    assert f'database "{gone}" does not exist' in by[gone].error
    assert by[gone].attempts == 1  # a missing database is not a transient error
    assert [by[n].status for n in (fleet.names[0], fleet.names[2])] == [Status.UPGRADED] * 2
    assert fleet.version(fleet.names[0]) == fleet.version(fleet.names[2]) == HEAD


def test_locked_tenant_is_reported_locked(pg_fleet):
    from tenants.dialects.postgresql import LOCK_KEY as PG_LOCK_KEY

    fleet = pg_fleet(2)
    settings = settings_of(fleet)
    api.upgrade(settings, "0001_users")
    with psycopg.connect(pg_dsn(fleet.names[0]), autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (PG_LOCK_KEY,))
        report = api.upgrade(settings, options=api.RunOptions(concurrency=2, max_failures=None))
    locked = report.results[0]
    assert (locked.status, locked.from_revision, locked.to_revision, locked.applied) == (
        Status.LOCKED, "0001_users", "0001_users", ())
    assert report.results[1].status is Status.UPGRADED
    assert fleet.version(fleet.names[0]) == "0001_users"


def counting_project(root: Path, gate: Path) -> Path:
    """Each revision creates its table and logs its own application in `applied_log`, in its transaction.

    Revision c1 touches ``gate`` and then takes a while, so a second run can be started while the first is
    provably in the middle of the fleet.
    """
    revisions = {}
    for i in range(1, 5):
        revisions[f"c{i}"] = f"""
            if {i} == 1:
                open({str(gate)!r}, 'w').close()
                op.execute("CREATE TABLE applied_log (rev text NOT NULL, at timestamptz DEFAULT now())")
                op.execute("SELECT pg_sleep(0.15)")
            op.execute("CREATE TABLE t{i} (id int)")
            op.execute("INSERT INTO applied_log (rev) VALUES ('c{i}')")
        """
    return make_project(root, revisions, env_py=(ROOT / "alembic" / "env.py").read_text())


def test_two_concurrent_upgrades_apply_no_revision_twice(pg_fleet, tmp_path):
    gate = tmp_path / "first-run-is-migrating"
    ini = counting_project(tmp_path / "proj", gate)
    fleet = pg_fleet(16, alembic=ini, extra="lock_timeout = 0")
    cmd = [sys.executable, "-m", "tenants", "--config", str(fleet.config), "--env", "pg", "upgrade", "-j", "2",
           "--keep-going"]
    first = subprocess.Popen(cmd + ["--report", str(tmp_path / "r0.json")], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not gate.exists():
        assert time.monotonic() < deadline and first.poll() is None, "the first run never started migrating"
        time.sleep(0.02)
    second = subprocess.Popen(cmd + ["--report", str(tmp_path / "r1.json")], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    outs = [p.communicate(timeout=120) for p in (first, second)]
    reports = [json.loads((tmp_path / f"r{k}.json").read_text()) for k in range(2)]
    assert reports[1]["started_at"] <= reports[0]["finished_at"], "the runs did not overlap"
    for name in fleet.names:
        rows = fleet.query(name, "SELECT rev, count(*) FROM applied_log GROUP BY rev ORDER BY rev")
        assert rows == [(f"c{i}", 1) for i in range(1, 5)], name
        assert fleet.version(name) == "c4"
    for name in fleet.names:
        entries = [next(t for t in r["tenants"] if t["tenant"] == name) for r in reports]
        # Exactly one run applied the revisions; the other found them done, or the tenant held by the first.
        assert sorted(len(e["applied"]) for e in entries) == [0, 4], (name, entries, outs)
        assert sorted(e["status"] for e in entries)[-1] == "upgraded"
        assert {e["status"] for e in entries} <= {"upgraded", "up-to-date", "locked"}


def test_connection_refused_is_transient_and_retried(tmp_path, pg_available):
    config = tmp_path / "t.toml"
    config.write_text(
        '[environments.down]\nurl = "postgresql+psycopg://postgres:s3cr3t-pw@127.0.0.1:1/{tenant}"\n'
        'tenants = ["acme"]\nretries = 2\nretry_backoff = 0.01\n'
        f'alembic = "{ROOT / "alembic.ini"}"\n'
    )
    report = api.upgrade(load_settings(config, "down", environ={}))
    result = report.results[0]
    assert (result.status, result.attempts) == (Status.FAILED, 3)
    assert "Connection refused" in result.error or "connection refused" in result.error.lower()
    assert "s3cr3t-pw" not in json.dumps(report.to_dict())


def test_is_transient_classifies_real_postgres_errors(pg_fleet):
    from sqlalchemy import create_engine, text

    fleet = pg_fleet(1)
    engine = create_engine(fleet.url(fleet.names[0]))
    with pytest.raises(Exception) as sql_error:
        with engine.connect() as conn:
            conn.execute(text("SELECT * FROM no_such_table"))
    assert not is_transient(sql_error.value)
    with pytest.raises(OperationalError) as missing:
        create_engine(fleet.url("no_such_database_xyz")).connect()
    assert not is_transient(missing.value)
    with pytest.raises(OperationalError) as refused:
        create_engine("postgresql+psycopg://postgres@127.0.0.1:1/x").connect()
    assert is_transient(refused.value)
    # A session killed by the server (admin shutdown of the backend) is transient.
    with engine.connect() as victim:
        pid = victim.execute(text("SELECT pg_backend_pid()")).scalar()
        admin(f"SELECT pg_terminate_backend({pid})")
        with pytest.raises(OperationalError) as killed:
            victim.execute(text("SELECT 1"))
    assert is_transient(killed.value)
    engine.dispose()


def test_retry_resumes_where_the_tenant_stopped(pg_fleet, tmp_path):
    """A revision whose connection is killed once is retried on a fresh connection from where it stopped."""
    marker = tmp_path / "killed-once"
    ini = make_project(tmp_path / "proj", {
        "p1": "op.execute('CREATE TABLE p1 (id int)')",
        "p2": f"""
            op.execute('CREATE TABLE p2 (id int)')
            if not os.path.exists({str(marker)!r}):
                open({str(marker)!r}, 'w').close()
                op.execute('SELECT pg_terminate_backend(pg_backend_pid())')
        """,
    }, env_py=(ROOT / "alembic" / "env.py").read_text())
    fleet = pg_fleet(1, alembic=ini)
    report = api.upgrade(settings_of(fleet))
    result = report.results[0]
    assert (result.status, result.attempts, result.applied, result.to_revision) == (
        Status.UPGRADED, 2, ("p1", "p2"), "p2")
    assert fleet.query(fleet.names[0], "SELECT to_regclass('p1') IS NOT NULL, to_regclass('p2') IS NOT NULL") == [
        (True, True)]
    # One history row per applied revision: p2's first attempt died with its connection, its row with it;
    # a transient failure that is retried is no failure of the tenant, so it leaves no `failed` row (issue 11).
    assert fleet.query(fleet.names[0], "SELECT from_revision, to_revision, outcome, run_id FROM tenants_history "
                                       "ORDER BY id") == [("base", "p1", "applied", report.run_id),
                                                          ("p1", "p2", "applied", report.run_id)]


def test_too_many_connections_is_transient(pg_fleet):
    from sqlalchemy import create_engine

    fleet = pg_fleet(1)
    role = f"{fleet.prefix}limited"
    admin(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 0')
    try:
        url = fleet.url(fleet.names[0]).replace("postgres@", f"{role}@", 1)
        with pytest.raises(OperationalError) as err:
            create_engine(url).connect()
        assert "too many connections" in str(err.value)
        assert is_transient(err.value)
    finally:
        admin(f'DROP ROLE "{role}"')


def test_database_dropped_in_the_middle_of_a_run(pg_fleet, tmp_path):
    """Revision d1 of the first tenant drops another tenant's database: that one fails, the rest reach head."""
    victim_holder = tmp_path / "victim"
    ini = make_project(tmp_path / "proj", {"d1": f"""
        import psycopg
        from alembic import context
        victim = open({str(victim_holder)!r}).read()
        if context.config.get_main_option('sqlalchemy.url').endswith('000'):
            with psycopg.connect('{pg_dsn()}', autocommit=True) as admin:
                admin.execute(f'DROP DATABASE "{{victim}}" WITH (FORCE)')
        op.execute('CREATE TABLE d1 (id int)')
    """}, env_py=(ROOT / "alembic" / "env.py").read_text())
    fleet = pg_fleet(5, alembic=ini, source="static")
    victim_holder.write_text(fleet.names[3])
    run = subprocess.run([sys.executable, "-m", "tenants", "--config", str(fleet.config), "--env", "pg", "upgrade",
                          "-j", "1", "--keep-going", "--retries", "1"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr
    out = run.stdout.splitlines()
    assert out[3].startswith(f"failed           {fleet.names[3]}  at ?  (")
    assert f'database "{fleet.names[3]}" does not exist' in out[3]
    assert [ln.split()[0] for ln in out[:5]] == ["upgraded"] * 3 + ["failed", "upgraded"]
    assert {fleet.version(n) for n in fleet.names if n != fleet.names[3]} == {"d1"}


def test_status_reports_unreachable_tenant(pg_fleet):
    fleet = pg_fleet(2, source="static")
    admin(f'DROP DATABASE "{fleet.names[0]}" WITH (FORCE)')
    report = api.status(settings_of(fleet))
    first = report.tenants[0]
    assert first.state is State.UNREACHABLE and "does not exist" in first.error
    assert report.tenants[1].state is State.NEW and not report.ok


def test_plain_alembic_with_x_tenant(pg_fleet):
    fleet = pg_fleet(1)
    alembic = Path(sys.executable).parent / "alembic"
    run = subprocess.run(
        [alembic, "-c", str(ROOT / "alembic.ini"), "-x", f"tenant={fleet.names[0]}", "-x", f"config={fleet.config}",
         "-x", "env=pg", "upgrade", "head"], capture_output=True, text=True, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert fleet.version(fleet.names[0]) == HEAD
    bad = subprocess.run(
        [alembic, "-c", str(ROOT / "alembic.ini"), "-x", "tenant=nobody", "-x", f"config={fleet.config}",
         "-x", "env=pg", "upgrade", "head"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode != 0 and "unknown tenant 'nobody'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_selection_on_server_source(pg_fleet):
    fleet = pg_fleet(4)
    settings = settings_of(fleet)
    report = api.upgrade(settings, selection=Selection(exclude=(f"{fleet.prefix}00[01]",)))
    assert [r.tenant for r in report.results] == fleet.names[2:]
    assert fleet.version(fleet.names[0]) is None


def test_guards_answer_from_the_live_schema(pg_fleet, tmp_path):
    from helpers import GUARD_ANSWERS, guard_probe_project

    fleet = pg_fleet(1)
    assert api.upgrade(settings_of(fleet)).ok
    answers = tmp_path / "answers.json"
    ini = guard_probe_project(tmp_path / "probe", answers)
    probe_config = fleet.config.read_text().replace(str(ROOT / "alembic.ini"), str(ini))
    fleet.config.write_text(probe_config + 'version_table = "probe_version"\nunmanaged = "upgrade"\n')
    assert api.upgrade(settings_of(fleet)).ok
    assert json.loads(answers.read_text()) == GUARD_ANSWERS


def test_connector_shares_one_engine_per_server_and_each_thread_gets_its_tenant(pg_fleet):
    from concurrent.futures import ThreadPoolExecutor

    from sqlalchemy import text

    from tenants.db import Connector

    fleet = pg_fleet(6)
    connector = Connector()
    engines = set()

    def current_database(name: str) -> str:
        with connector.engine(fleet.url(name)) as engine, engine.connect() as conn:
            engines.add(id(engine))
            return conn.execute(text("SELECT current_database()")).scalar()

    try:
        with ThreadPoolExecutor(4) as pool:
            seen = list(pool.map(current_database, fleet.names * 5))
    finally:
        connector.dispose()
    assert seen == fleet.names * 5
    assert len(engines) == 1
