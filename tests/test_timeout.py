"""Per-tenant timeout: the tenant that overruns is killed with its worker and reported timed-out; its revision in
progress rolls back; every other tenant, including those in flight at the kill, is untouched by it."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
from helpers import ROOT, make_project, settings_for, tables, version

from tenants import api
from tenants.config import load_settings
from tenants.engine.fanout import ProcessStrategy, SerialStrategy, choose_strategy
from tenants.errors import UsageError
from tenants.model import Status

TIMEOUT = 2.0


def slow_project(root: Path, marks: Path) -> Path:
    """r1 creates a table. r2 creates another, then, by the tenant's name:

    * ``slow``: notes its pid and start time in ``marks/slow`` and sleeps 30 s (unless ``marks/fast`` exists);
    * any other, started while ``slow`` runs and at least 0.8 s after it (so that the kill comes before its
      own timeout): a *witness*. It runs until it sees the slow tenant's worker dead, then 0.3 s more, and
      notes in ``marks/NAME`` whether it saw that: proof it was in flight at the kill, and went on after it;
    * any other started before that (with the slow one, or before it): 1.2 s, to keep the first workers busy
      so that the next ones become witnesses; started after the kill: nothing more.

    Witnesses are chosen by timing, not by name: the parent's prechecks finish in any order, and so the
    tenants start in any order.
    """
    marks.mkdir()
    return make_project(root, {
        "r1": "op.create_table('one', sa.Column('id', sa.Integer, primary_key=True))",
        "r2": f"""
            import json
            from alembic import context
            marks = {str(marks)!r}
            name = context.config.get_main_option('sqlalchemy.url').rsplit('/', 1)[-1].split('.')[0]
            start = time.time()
            op.create_table('two', sa.Column('id', sa.Integer, primary_key=True))

            def dead(pid):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    return True
                try:  # not reaped yet
                    return open(f'/proc/{{pid}}/stat').read().rsplit(') ', 1)[1].startswith('Z')
                except OSError:
                    return True

            if name == 'slow':
                if not os.path.exists(marks + '/fast'):
                    with open(marks + '/slow.tmp', 'w') as f:
                        f.write(f'{{os.getpid()}} {{start}}')
                    os.replace(marks + '/slow.tmp', marks + '/slow')
                    time.sleep(30)
            else:
                seen = open(marks + '/slow').read().split() if os.path.exists(marks + '/slow') else None
                pid, since = (int(seen[0]), float(seen[1])) if seen else (None, None)
                if seen and not dead(pid) and start - since >= 0.8:
                    saw = False
                    while time.time() < start + {TIMEOUT} - 0.5:  # never overrun the timeout ourselves
                        if dead(pid):
                            saw = True
                            time.sleep(0.3)
                            break
                        time.sleep(0.02)
                    with open(marks + '/' + name, 'w') as f:
                        json.dump({{'saw_kill': saw, 'start': start, 'end': time.time()}}, f)
                elif not seen or not dead(pid):
                    time.sleep(1.2)
        """,
    }, env_py=(ROOT / "alembic" / "env.py").read_text())


FLEET = ["slow"] + [f"t{i}" for i in range(7)]


def witnesses(marks: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in marks.iterdir() if p.name.startswith("t")}


def test_a_tenant_over_the_timeout_is_killed_rolled_back_and_the_rest_go_on(sqlite_config, tmp_path):
    marks = tmp_path / "marks"
    ini = slow_project(tmp_path / "proj", marks)
    settings = settings_for(sqlite_config(FLEET, alembic=ini))
    started = time.monotonic()
    report = api.upgrade(settings, options=api.RunOptions(concurrency=3, max_failures=None, tenant_timeout=TIMEOUT))
    took = time.monotonic() - started
    assert took < 15, "the slow tenant's 30 s sleep must not be waited for"
    by = {r.tenant: r for r in report.results}
    slow = by["slow"]
    # It committed r1 before the kill: its history rows say so, its killed worker could not (issue 11).
    assert (slow.status, slow.from_revision, slow.to_revision, slow.applied, slow.attempts) == (
        Status.TIMED_OUT, "base", "r1", ("r1",), 1)
    assert slow.error.startswith("timed out: still running 2s after it started (--tenant-timeout)")
    assert TIMEOUT <= slow.duration < TIMEOUT + 2
    assert [(n, by[n].status, by[n].applied) for n in FLEET[1:]] == [
        (n, Status.UPGRADED, ("r1", "r2")) for n in FLEET[1:]]
    assert not report.ok and report.counts == {"upgraded": 7, "timed-out": 1}
    assert report.to_dict()["tenants"][0]["status"] == "timed-out"
    # Its revision in progress died with its connection: the table it created and the version bump are gone.
    db = tmp_path / "db" / "slow.db"
    assert version(db) == "r1" and "one" in tables(db) and "two" not in tables(db)
    # The tenants in flight in other workers when it was killed saw it die, and finished after it.
    seen = witnesses(marks)
    assert seen and all(w["saw_kill"] for w in seen.values()), seen
    # A rerun resumes where it stopped.
    (marks / "fast").touch()
    again = api.upgrade(settings, options=api.RunOptions(concurrency=3, tenant_timeout=TIMEOUT))
    assert [(r.tenant, r.status, r.applied) for r in again.results if r.tenant == "slow"] == [
        ("slow", Status.UPGRADED, ("r2",))]
    assert version(db) == "r2"


def test_a_timeout_stops_new_tenants_under_the_default_failure_policy(sqlite_config, tmp_path):
    marks = tmp_path / "marks"
    ini = slow_project(tmp_path / "proj", marks)
    settings = settings_for(sqlite_config(FLEET, alembic=ini))
    report = api.upgrade(settings, options=api.RunOptions(concurrency=3, tenant_timeout=TIMEOUT))
    by = {r.tenant: r for r in report.results}
    assert by["slow"].status is Status.TIMED_OUT
    # Those in flight at the kill finish (nobody is killed for the policy); none starts after it.
    seen = witnesses(marks)
    assert seen and all(w["saw_kill"] and by[name].status is Status.UPGRADED for name, w in seen.items()), seen
    skipped = [r.tenant for r in report.results if r.status is Status.SKIPPED]
    assert skipped and {r.status for r in report.results} == {Status.TIMED_OUT, Status.UPGRADED, Status.SKIPPED}
    assert all(by[n].error == "not started: the failure policy stopped the run" for n in skipped)
    assert not any((tmp_path / "db" / f"{n}.db").exists() for n in skipped)


def test_one_tenant_at_concurrency_1_is_timed_out_too(sqlite_config, tmp_path):
    """A timeout cannot kill the process it runs in: with one, even a serial run uses one worker process."""
    assert isinstance(choose_strategy(1, 1), SerialStrategy)
    assert choose_strategy(1, 1, tenant_timeout=5) == ProcessStrategy(1, tenant_timeout=5)
    ini = slow_project(tmp_path / "proj", tmp_path / "marks")
    settings = settings_for(sqlite_config(["slow"], alembic=ini))
    started = time.monotonic()
    report = api.upgrade(settings, options=api.RunOptions(concurrency=1, tenant_timeout=TIMEOUT))
    assert time.monotonic() - started < 15
    assert [(r.status, r.to_revision) for r in report.results] == [(Status.TIMED_OUT, "r1")]
    assert report.concurrency == 1


def test_tenant_timeout_is_checked_before_any_tenant_is_touched(sqlite_config, tmp_path):
    settings = settings_for(sqlite_config())
    with pytest.raises(UsageError, match="--tenant-timeout 0: give a number of seconds above 0"):
        api.upgrade(settings, options=api.RunOptions(tenant_timeout=0))
    with pytest.raises(UsageError, match="a tenant timeout with an explicit strategy"):
        api.upgrade(settings, options=api.RunOptions(strategy=SerialStrategy(), tenant_timeout=5))
    assert not (tmp_path / "db").exists()
    # A strategy given its own timeout needs none in the options.
    fast = api.upgrade(settings, options=api.RunOptions(strategy=ProcessStrategy(2, tenant_timeout=60)))
    assert fast.counts == {"upgraded": 3}


@pytest.mark.postgres
def test_postgres_rolls_back_the_killed_tenants_transaction_at_once(pg_fleet, tmp_path):
    """pg_sleep(30) inside the revision's transaction: the server must not run it to its end for a dead client."""
    flag = tmp_path / "hang"
    flag.touch()
    ini = make_project(tmp_path / "proj", {
        "p1": "op.create_table('one', sa.Column('id', sa.Integer, primary_key=True))",
        "p2": f"""
            from alembic import context
            op.create_table('two', sa.Column('id', sa.Integer, primary_key=True))
            if '_000' in context.config.get_main_option('sqlalchemy.url') and os.path.exists({str(flag)!r}):
                op.execute('SELECT pg_sleep(30)')
        """,
    }, env_py=(ROOT / "alembic" / "env.py").read_text())
    fleet = pg_fleet(3, alembic=ini)
    settings = load_settings(fleet.config, "pg", environ={})
    slow = fleet.names[0]
    started = time.monotonic()
    report = api.upgrade(settings, options=api.RunOptions(concurrency=2, max_failures=None, tenant_timeout=TIMEOUT))
    assert time.monotonic() - started < 20
    by = {r.tenant: r for r in report.results}
    assert (by[slow].status, by[slow].to_revision) == (Status.TIMED_OUT, "p1")
    assert [by[n].status for n in fleet.names[1:]] == [Status.UPGRADED, Status.UPGRADED]
    # The killed worker's backend goes within seconds (client_connection_check_interval), not after 30 s.
    deadline = time.monotonic() + 5
    while fleet.query("postgres", f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{slow}'")[0][0]:
        assert time.monotonic() < deadline, "the killed tenant's backend is still there: its transaction lives on"
        time.sleep(0.1)
    assert fleet.version(slow) == "p1"
    assert fleet.query(slow, "SELECT to_regclass('two')") == [(None,)]
    flag.unlink()
    again = api.upgrade(settings, options=api.RunOptions(concurrency=2, tenant_timeout=TIMEOUT))
    assert [(r.status, r.applied) for r in again.results if r.tenant == slow] == [(Status.UPGRADED, ("p2",))]
    assert fleet.version(slow) == "p2"


@pytest.mark.postgres
def test_a_worker_killed_before_env_py_ran_reports_nothing_changed(pg_fleet, tmp_path):
    """On PostgreSQL the workers read every tenant under its lock (no read ahead in the parent). A tenant whose
    worker is killed while still waiting for its lock (another session holds it) changed nothing, and its
    report says so; one killed inside a revision says its revision in progress rolls back."""
    import psycopg
    from helpers import pg_dsn

    from tenants.dialects.postgresql import LOCK_KEY

    ini = make_project(tmp_path / "proj", {"p1": """
        from alembic import context
        if '_001' in context.config.get_main_option('sqlalchemy.url'):
            op.execute('SELECT pg_sleep(30)')
    """}, env_py=(ROOT / "alembic" / "env.py").read_text())
    fleet = pg_fleet(2, alembic=ini, extra="lock_timeout = 60\n")
    waiting, sleeping = fleet.names
    settings = load_settings(fleet.config, "pg", environ={})
    with psycopg.connect(pg_dsn(waiting), autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (LOCK_KEY,))
        report = api.upgrade(settings, options=api.RunOptions(concurrency=2, max_failures=None,
                                                               tenant_timeout=TIMEOUT))
    by = {r.tenant: r for r in report.results}
    assert by[waiting].status is Status.TIMED_OUT and by[waiting].to_revision == "base"
    assert by[waiting].error.startswith("timed out: 2s after it started (--tenant-timeout) env.py had not run on "
                                        "it yet (connecting, waiting for its lock, reading): its worker process "
                                        "was killed; nothing was changed")
    assert by[sleeping].status is Status.TIMED_OUT
    assert by[sleeping].error.startswith("timed out: still running 2s after it started (--tenant-timeout): its "
                                         "worker process was killed and the server rolls the revision in progress")


def test_the_timeout_covers_the_parents_read_of_a_tenant(sqlite_config, tmp_path):
    """The parent reads each tenant's revision before handing it to a worker (the precheck). A read that hangs
    (here: the file locked by someone else; the read waits for SQLite's 30 s busy timeout) is given up at the
    tenant timeout, and the tenant reported timed out with nothing changed; the other tenants go on."""
    settings = settings_for(sqlite_config(["stuck", "a", "b"]))
    db = tmp_path / "db"
    db.mkdir()
    for name in ("stuck", "a", "b"):
        sqlite3.connect(db / f"{name}.db").close()  # existing files: the parent reads them first
    holder = sqlite3.connect(db / "stuck.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # no reader gets in until it ends
    try:
        started = time.monotonic()
        report = api.upgrade(settings, options=api.RunOptions(concurrency=2, max_failures=None,
                                                              tenant_timeout=TIMEOUT))
        took = time.monotonic() - started
    finally:
        holder.rollback()
        holder.close()
    assert took < 10, f"{took:.1f}s: the read's 30 s busy wait was waited for"
    by = {r.tenant: r for r in report.results}
    stuck = by["stuck"]
    assert (stuck.status, stuck.from_revision, stuck.to_revision, stuck.applied) == (Status.TIMED_OUT, None, None, ())
    assert stuck.error.startswith("timed out: reading its revision (before any change) took 2s (--tenant-timeout)")
    assert TIMEOUT <= stuck.duration < TIMEOUT + 1
    assert by["a"].status is by["b"].status is Status.UPGRADED
    assert version(db / "stuck.db") is None
