"""The engine at the library level, on real SQLite files and real worker processes."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import DEMO_REVISIONS, HEAD, ROOT, make_project

from tenants import api
from tenants.config import load_settings
from tenants.engine.fanout import ProcessStrategy, SerialStrategy
from tenants.errors import MultipleHeads, RevisionError, TenantNotFound, UsageError
from tenants.model import State, Status
from tenants.selection import Selection


def settings_for(path: Path, env: str = "test"):
    return load_settings(path, env, environ={})


def tables(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def version(db: Path) -> str | None:
    if not db.exists():  # connecting would create it
        return None
    with sqlite3.connect(db) as conn:
        try:
            rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        except sqlite3.OperationalError:
            return None
    return rows[0][0] if rows else None


def test_upgrade_brings_every_tenant_to_head_then_noop(sqlite_config, tmp_path):
    settings = settings_for(sqlite_config())
    first = api.upgrade(settings, options=api.RunOptions(concurrency=2))
    assert first.ok and first.target == HEAD and first.head == HEAD
    assert [(r.tenant, r.status, r.from_revision, r.to_revision, r.applied) for r in first.results] == [
        (name, Status.UPGRADED, "base", HEAD, tuple(DEMO_REVISIONS)) for name in ("acme", "globex", "initech")
    ]
    for name in ("acme", "globex", "initech"):
        db = tmp_path / "db" / f"{name}.db"
        assert version(db) == HEAD
        assert {"users", "invoices", "alembic_version"} <= tables(db)

    again = api.upgrade(settings, options=api.RunOptions(concurrency=2))
    assert [(r.status, r.applied, r.attempts) for r in again.results] == [(Status.UP_TO_DATE, (), 1)] * 3

    status = api.status(settings)
    assert status.ok and [t.state for t in status.tenants] == [State.AT_HEAD] * 3


def test_parallel_run_equals_serial_run(sqlite_config, tmp_path):
    names = [f"t{i}" for i in range(8)]
    serial_settings = settings_for(sqlite_config(names))
    # A second, identical fleet for the parallel strategy.
    parallel_cfg = tmp_path / "parallel.toml"
    parallel_cfg.write_text(sqlite_config(names).read_text().replace("sqlite:///db/", "sqlite:///pdb/"))
    parallel_settings = settings_for(parallel_cfg)
    # Start the fleets at different revisions per tenant so the runs are not all alike.
    for i, name in enumerate(names):
        if i % 3:
            for s in (serial_settings, parallel_settings):
                api.upgrade(s, DEMO_REVISIONS[i % 3], Selection(tenants=(name,)))

    serial = api.upgrade(serial_settings, options=api.RunOptions(strategy=SerialStrategy()))
    parallel = api.upgrade(parallel_settings, options=api.RunOptions(strategy=ProcessStrategy(4)))

    def key(report):
        return [(r.tenant, r.status, r.from_revision, r.to_revision, r.applied, r.error) for r in report.results]

    assert key(parallel) == key(serial)
    assert {r.status for r in serial.results} == {Status.UPGRADED}


def test_upgrade_to_an_intermediate_revision_and_status_counts_behind(sqlite_config):
    settings = settings_for(sqlite_config())
    report = api.upgrade(settings, "0002", Selection(tenants=("acme",)))
    assert report.results[0].applied == ("0001_users", "0002_invoices")
    rows = {t.tenant: (t.state, t.current, t.behind) for t in api.status(settings).tenants}
    assert rows == {
        "acme": (State.BEHIND, ("0002_invoices",), 2),
        "globex": (State.NEW, (), 4),
        "initech": (State.NEW, (), 4),
    }
    assert not api.status(settings).ok


def test_selection_tenant_exclude_tag(sqlite_config, tmp_path):
    path = sqlite_config(names=())
    path.write_text(path.read_text().replace(
        "tenants = []", 'tenants = [{name = "a1", tags = ["canary"]}, "a2", {name = "b1", tags = ["eu"]}]'))
    settings = settings_for(path)
    names = lambda sel: [t.name for t in api.discover(settings, sel)]  # noqa: E731
    assert names(Selection()) == ["a1", "a2", "b1"]
    assert names(Selection(exclude=("a*",))) == ["b1"]
    assert names(Selection(tags=("canary", "eu"))) == ["a1", "b1"]
    assert names(Selection(tenants=("b1", "a2"))) == ["b1", "a2"]
    with pytest.raises(TenantNotFound, match="unknown tenant 'zz' \\(--tenant\\) in environment 'test'"):
        names(Selection(tenants=("zz",)))


def test_bad_revision_touches_nothing(sqlite_config, tmp_path):
    settings = settings_for(sqlite_config())
    with pytest.raises(RevisionError, match="unknown revision 'nope'"):
        api.upgrade(settings, "nope")
    assert not (tmp_path / "db").exists()


def test_unknown_revision_is_reported_and_not_touched(sqlite_config, tmp_path):
    settings = settings_for(sqlite_config())
    api.upgrade(settings, "0001_users")
    db = tmp_path / "db" / "globex.db"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'hotfix_by_hand'")
    report = api.upgrade(settings, options=api.RunOptions(max_failures=None))
    by = {r.tenant: r for r in report.results}
    assert by["globex"].status is Status.UNKNOWN_REVISION
    assert "hotfix_by_hand is not in the revision graph" in by["globex"].error
    assert version(db) == "hotfix_by_hand" and "invoices" not in tables(db)
    assert by["acme"].status is by["initech"].status is Status.UPGRADED
    assert not report.ok
    assert {t.tenant: t.state for t in api.status(settings).tenants}["globex"] is State.UNKNOWN_REVISION


def failing_project(root: Path) -> Path:
    """Revision r2 creates a table, then fails for tenants whose database name contains 'bad'."""
    return make_project(root, {
        "r1": "op.create_table('one', sa.Column('id', sa.Integer, primary_key=True))",
        "r2": """
            op.create_table('two', sa.Column('id', sa.Integer, primary_key=True))
            from alembic import context
            if 'bad' in context.config.get_main_option('sqlalchemy.url'):
                op.execute('SELECT * FROM no_such_table')
        """,
    }, env_py=(ROOT / "alembic" / "env.py").read_text())


def test_failed_revision_rolls_back_and_tenant_stays_at_previous_revision(sqlite_config, tmp_path):
    ini = failing_project(tmp_path / "proj")
    settings = settings_for(sqlite_config(["ok1", "bad1", "ok2"], alembic=ini))
    report = api.upgrade(settings, options=api.RunOptions(concurrency=1, max_failures=None))
    by = {r.tenant: r for r in report.results}
    bad = by["bad1"]
    assert (bad.status, bad.from_revision, bad.to_revision, bad.applied, bad.attempts) == (
        Status.FAILED, "base", "r1", ("r1",), 1)  # an SQL error is not retried
    assert bad.error.startswith("OperationalError: no such table: no_such_table [SQL: SELECT * FROM no_such_table]")
    db = tmp_path / "db" / "bad1.db"
    assert version(db) == "r1"
    assert "two" not in tables(db), "the failed revision's CREATE TABLE must roll back with it"
    assert by["ok1"].status is by["ok2"].status is Status.UPGRADED


def test_fail_fast_skips_tenants_not_started_and_keep_going_runs_all(sqlite_config, tmp_path):
    ini = failing_project(tmp_path / "proj")
    names = ["a_bad", "b", "c", "d"]
    settings = settings_for(sqlite_config(names, alembic=ini))
    fast = api.upgrade(settings, options=api.RunOptions(strategy=SerialStrategy()))
    assert [r.status for r in fast.results] == [Status.FAILED, Status.SKIPPED, Status.SKIPPED, Status.SKIPPED]
    assert version(tmp_path / "db" / "b.db") is None

    keep = api.upgrade(settings, options=api.RunOptions(concurrency=2, max_failures=None))
    assert [r.status for r in keep.results] == [Status.FAILED, Status.UPGRADED, Status.UPGRADED, Status.UPGRADED]


def test_max_failures_in_parallel_stops_new_tenants(sqlite_config, tmp_path):
    ini = failing_project(tmp_path / "proj")
    names = ["bad1", "bad2", "bad3"] + [f"z{i}" for i in range(6)]
    settings = settings_for(sqlite_config(names, alembic=ini))
    report = api.upgrade(settings, options=api.RunOptions(strategy=ProcessStrategy(2), max_failures=2))
    counts = report.counts
    assert counts["failed"] >= 2
    assert counts.get("skipped", 0) >= 1  # in-flight tenants finish, later ones never start
    assert sum(counts.values()) == len(names)


def test_locked_tenant_is_reported_locked_not_failed(sqlite_config, tmp_path):
    settings = settings_for(sqlite_config())
    db_dir = tmp_path / "db"
    db_dir.mkdir()
    fd = os.open(db_dir / "globex.db.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)  # another run holds globex
    try:
        report = api.upgrade(settings, options=api.RunOptions(concurrency=2))
    finally:
        os.close(fd)
    by = {r.tenant: r for r in report.results}
    assert by["globex"].status is Status.LOCKED and "held by another run" in by["globex"].error
    assert by["acme"].status is Status.UPGRADED and not report.ok
    assert api.upgrade(settings).results[1].status is Status.UPGRADED


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


def test_guards_make_revisions_safe_to_rerun(sqlite_config, tmp_path):
    """A tenant that already has the schema but no version table (pre-dating the project) is unmanaged by
    default; with unmanaged = "upgrade" the graph runs from base on it and the guards make that clean."""
    settings = settings_for(sqlite_config(["old"]))
    api.upgrade(settings)
    db = tmp_path / "db" / "old.db"
    with sqlite3.connect(db) as conn:
        conn.execute("INSERT INTO users (id, email) VALUES (1, 'a@example.com')")
        conn.execute("INSERT INTO invoices (id, user_id, number, amount_cents, issued_at, paid_at, status) "
                     "VALUES (1, 1, 'F-1', 100, '2026-01-01', '2026-01-02', 'open')")
        conn.execute("DROP TABLE alembic_version")
    assert api.upgrade(settings).results[0].status is Status.UNMANAGED
    settings = settings_for(sqlite_config(["old"], extra='unmanaged = "upgrade"'))
    report = api.upgrade(settings)
    assert report.results[0].status is Status.UPGRADED and report.results[0].applied == tuple(DEMO_REVISIONS)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT status FROM invoices").fetchall() == [("paid",)]  # the backfill ran


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


def test_multiple_heads_are_bad_input(sqlite_config, tmp_path):
    ini = make_project(tmp_path / "proj", {"r1": "pass"})
    versions = tmp_path / "proj" / "migrations" / "versions"
    (versions / "branch.py").write_text("revision = 'r2'\ndown_revision = None\nbranch_labels = None\n"
                                        "depends_on = None\ndef upgrade(): pass\ndef downgrade(): pass\n")
    settings = settings_for(sqlite_config(alembic=ini))
    with pytest.raises(MultipleHeads, match="the revision graph has 2 heads \\(r1, r2\\); merge them"):
        api.upgrade(settings)


def test_third_party_project_with_stock_env_py(sqlite_config, tmp_path):
    """`alembic init`'s own env.py knows only sqlalchemy.url; the engine drives it all the same."""
    ini = make_project(tmp_path / "proj", {
        "a1": "op.create_table('things', sa.Column('id', sa.Integer, primary_key=True))",
        "a2": "op.add_column('things', sa.Column('label', sa.String(20)))",
    })
    settings = settings_for(sqlite_config(["x", "y", "z"], alembic=ini))
    report = api.upgrade(settings, options=api.RunOptions(concurrency=3))
    assert [(r.status, r.applied) for r in report.results] == [(Status.UPGRADED, ("a1", "a2"))] * 3
    assert version(tmp_path / "db" / "y.db") == "a2"
    assert [r.status for r in api.upgrade(settings).results] == [Status.UP_TO_DATE] * 3


def test_worker_killed_mid_revision_leaves_previous_revision(sqlite_config, tmp_path):
    """SIGKILL in the middle of a revision: its transaction dies with the process; a rerun resumes."""
    gate = tmp_path / "started"
    ini = make_project(tmp_path / "proj", {
        "k1": "op.create_table('one', sa.Column('id', sa.Integer, primary_key=True))",
        "k2": f"""
            op.create_table('two', sa.Column('id', sa.Integer, primary_key=True))
            open({str(gate)!r}, 'w').close()
            if os.environ.get('TENANTS_TEST_HANG'):
                time.sleep(60)
        """,
    }, env_py=(ROOT / "alembic" / "env.py").read_text())
    config = sqlite_config(["victim"], alembic=ini)
    env = {**os.environ, "TENANTS_TEST_HANG": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tenants", "--config", str(config), "--env", "test", "upgrade"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while not gate.exists():
        assert time.monotonic() < deadline and proc.poll() is None, "the revision never started"
        time.sleep(0.05)
    os.killpg(proc.pid, 9)
    proc.wait()
    db = tmp_path / "db" / "victim.db"
    assert version(db) == "k1"
    assert "two" not in tables(db)
    report = api.upgrade(settings_for(config))
    assert (report.results[0].status, report.results[0].applied) == (Status.UPGRADED, ("k2",))
    assert version(db) == "k2"


def test_ctrl_c_lets_tenants_in_flight_finish_and_skips_the_rest(sqlite_config, tmp_path):
    """SIGINT to the whole process group, as a terminal sends it: in-flight tenants complete, none start."""
    gate = tmp_path / "gate"
    ini = make_project(tmp_path / "proj", {
        "s1": f"""
            open({str(gate)!r} + str(os.getpid()), 'w').close()
            time.sleep(1.5)
            op.create_table('one', sa.Column('id', sa.Integer, primary_key=True))
        """,
    }, env_py=(ROOT / "alembic" / "env.py").read_text())
    names = [f"t{i}" for i in range(8)]
    config = sqlite_config(names, alembic=ini)
    report = tmp_path / "r.json"
    proc = subprocess.Popen([sys.executable, "-m", "tenants", "--config", str(config), "--env", "test", "upgrade",
                             "-j", "2", "--report", str(report)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            # A suite started in the background (`pytest &`) runs with SIGINT ignored, and Python
                            # keeps a signal that was ignored at startup ignored: give the child a terminal's.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 30
    while len(list(tmp_path.glob("gate*"))) < 2:
        assert time.monotonic() < deadline and proc.poll() is None, "the first tenants never started"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, (out, err)
    import json

    statuses = [t["status"] for t in json.loads(report.read_text())["tenants"]]
    assert statuses.count("upgraded") == 2, out
    assert statuses.count("skipped") == 6
    skipped_line = next(ln for ln in out.splitlines() if ln.startswith("skipped: ") and "t7" in ln)
    assert skipped_line.endswith(": not started: interrupted (Ctrl-C)")  # one folded line for all six
    upgraded = [t for t in names if version(tmp_path / "db" / f"{t}.db") == "s1"]
    assert len(upgraded) == 2 and all("one" in tables(tmp_path / "db" / f"{t}.db") for t in upgraded)


def test_guards_answer_from_the_live_schema(sqlite_config, tmp_path):
    from conftest import GUARD_ANSWERS, guard_probe_project

    settings = settings_for(sqlite_config(["g"]))
    api.upgrade(settings)
    answers = tmp_path / "answers.json"
    ini = guard_probe_project(tmp_path / "probe", answers)
    probe = settings_for(sqlite_config(["g"], alembic=ini,
                                       extra='version_table = "probe_version"\nunmanaged = "upgrade"'))
    assert api.upgrade(probe).ok
    import json

    assert json.loads(answers.read_text()) == GUARD_ANSWERS


def test_a_killed_worker_fails_its_tenants_and_the_run_goes_on(sqlite_config, tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    ini = make_project(tmp_path / "proj", {
        "w1": f"""
            from alembic import context
            if 'victim' in context.config.get_main_option('sqlalchemy.url'):
                open({str(pids)!r} + '/' + str(os.getpid()), 'w').close()
                time.sleep(30)
            op.create_table('one', sa.Column('id', sa.Integer, primary_key=True))
        """,
    }, env_py=(ROOT / "alembic" / "env.py").read_text())
    names = ["victim"] + [f"t{i}" for i in range(5)]
    settings = settings_for(sqlite_config(names, alembic=ini))

    def killer():
        deadline = time.monotonic() + 30
        while not list(pids.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(int(next(pids.iterdir()).name), signal.SIGKILL)

    import threading

    thread = threading.Thread(target=killer)
    thread.start()
    report = api.upgrade(settings, options=api.RunOptions(strategy=ProcessStrategy(2), max_failures=None))
    thread.join()
    by = {r.tenant: r for r in report.results}
    assert by["victim"].status is Status.FAILED
    assert by["victim"].error.startswith("the worker pool broke (a worker process died")
    # The victim's sibling in flight (if any) went down with the pool; every other tenant reached head.
    others = [by[n].status for n in names[1:]]
    assert others.count(Status.UPGRADED) >= 4 and set(others) <= {Status.UPGRADED, Status.FAILED}
    assert len(report.results) == len(names)
    assert version(tmp_path / "db" / "victim.db") is None


def test_parallel_equals_serial_on_a_mixed_fleet(sqlite_config, tmp_path):
    """Failed, unknown-revision, up-to-date and more than 2 x concurrency tenants with work, both strategies."""
    ini = failing_project(tmp_path / "proj")
    names = [f"n{i:02d}" for i in range(12)] + ["bad1", "held", "odd"] + [f"z{i}" for i in range(4)]
    results = {}
    for kind, strategy in (("serial", SerialStrategy()), ("parallel", ProcessStrategy(2))):
        config = tmp_path / f"{kind}.toml"
        config.write_text(sqlite_config(names, alembic=ini).read_text().replace("sqlite:///db/", f"sqlite:///{kind}/"))
        settings = settings_for(config)
        api.upgrade(settings, selection=Selection(tenants=("odd", "z0", "z1", "z2", "z3")))
        with sqlite3.connect(tmp_path / kind / "odd.db") as conn:
            conn.execute("UPDATE alembic_version SET version_num = 'elsewhere'")
        report = api.upgrade(settings, options=api.RunOptions(strategy=strategy, max_failures=None))
        results[kind] = [(r.tenant, r.status, r.from_revision, r.to_revision, r.applied, r.error)
                         for r in report.results]
    assert results["parallel"] == results["serial"]
    statuses = {name: status for name, status, *_ in results["serial"]}
    assert statuses["bad1"] is Status.FAILED and statuses["odd"] is Status.UNKNOWN_REVISION
    assert statuses["z0"] is Status.UP_TO_DATE and statuses["n05"] is Status.UPGRADED


def test_env_py_reading_another_version_table_stops_the_tenant(sqlite_config, tmp_path):
    ini = make_project(tmp_path / "proj", {"a1": "op.create_table('t1', sa.Column('id', sa.Integer))",
                                           "a2": "op.create_table('t2', sa.Column('id', sa.Integer))"})
    config = sqlite_config(["x"], alembic=ini)
    assert api.upgrade(settings_for(config), "a1").ok
    config.write_text(config.read_text() + 'version_table = "not_what_env_py_uses"\nunmanaged = "upgrade"\n')
    report = api.upgrade(settings_for(config))
    result = report.results[0]
    assert result.status is Status.FAILED and result.applied == ()
    assert "env.py's version table holds a1 but base was read: set the environment's version_table" in result.error
    assert "t2" not in tables(tmp_path / "db" / "x.db")


def test_downgrade_refuses_a_tenant_that_moved_since_the_plan(sqlite_config, tmp_path):
    settings = settings_for(sqlite_config())
    api.upgrade(settings, "0003")
    plan = api.plan_downgrade(settings, "acme", "0001")
    api.upgrade(settings)  # a fleet upgrade lands between the plan and the confirmation
    result = api.downgrade(settings, plan).results[0]
    assert result.status is Status.FAILED
    assert result.error.startswith("the tenant moved from 0003_invoice_status to 0004_invoice_user_index since")
    assert version(tmp_path / "db" / "acme.db") == HEAD


def test_sqlite_server_source_discovers_files_and_never_recreates_a_vanished_one(tmp_path):
    folder = tmp_path / "fleet"
    folder.mkdir()
    for name in ("t_a", "t_b", "other"):
        sqlite3.connect(folder / f"{name}.sqlite").close()
    (folder / "t_a.sqlite.lock").touch()
    (folder / "t_c.sqlite-journal").touch()
    config = tmp_path / "t.toml"
    config.write_text(f'[environments.s]\nurl = "sqlite:///fleet/{{tenant}}.sqlite"\nsource = "server"\n'
                      f'match = "t_*"\nalembic = "{ROOT / "alembic.ini"}"\nretries = 0\n')
    settings = settings_for(config, "s")
    prepared = api.prepare_upgrade(settings)
    assert [t.name for t in prepared.tenants] == ["t_a", "t_b"]
    (folder / "t_b.sqlite").unlink()  # dropped between discovery and its turn
    report = prepared.run(api.RunOptions(concurrency=1, max_failures=None))
    by = {r.tenant: r for r in report.results}
    assert by["t_a"].status is Status.UPGRADED
    assert by["t_b"].status is Status.FAILED and "unable to open database file" in by["t_b"].error
    assert not (folder / "t_b.sqlite").exists()


def test_readme_first_command_on_the_embedded_dev_environment(tmp_path):
    """A fresh directory with the project's alembic files and no tenants.toml: `tenants upgrade` just works."""
    for name in ("alembic.ini", "alembic"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTS_")}
    tenants = [sys.executable, "-m", "tenants"]
    status = subprocess.run([*tenants, "status"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert status.returncode == 1 and "0/3 tenants at head" in status.stdout
    assert not (tmp_path / ".tenants").exists(), "status must not create the demo tenants"
    first = subprocess.run([*tenants, "upgrade"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert sorted(ln.split()[1] for ln in first.stdout.splitlines()[:3]) == ["acme", "globex", "initech"]
    assert {version(tmp_path / ".tenants" / f"{n}.db") for n in ("acme", "globex", "initech")} == {HEAD}
    status = subprocess.run([*tenants, "status"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert status.returncode == 0 and "3/3 tenants at head" in status.stdout
    again = subprocess.run([*tenants, "upgrade"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "3 tenants, 3 up-to-date in" in again.stdout


def test_workers_that_cannot_start_fail_the_tenants_cleanly(sqlite_config, tmp_path):
    """A main module that a worker cannot import again (a script piped on stdin) breaks every pool."""
    config = sqlite_config(["a", "b", "c", "d"])
    script = ("from tenants import api\nfrom tenants.config import load_settings\n"
              # Keep going: with the default stop-at-first-failure, how many tenants started before the first
              # failure came back is a race (4 failed, or 2 failed and 2 skipped).
              f"r = api.upgrade(load_settings({str(config)!r}, 'test', environ={{}}),\n"
              "                 options=api.RunOptions(max_failures=None))\n"
              "print(sorted(r.counts.items()), r.results[-1].error)\n")
    run = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("[('failed', 4)] ")
    assert "worker processes could not start" in run.stdout or "the worker pool broke" in run.stdout


def test_downgrade_to_base_and_back(sqlite_config, tmp_path):
    settings = settings_for(sqlite_config())
    api.upgrade(settings)
    plan = api.plan_downgrade(settings, "globex", "base")
    assert plan.target is None and plan.undo == tuple(reversed(DEMO_REVISIONS))
    result = api.downgrade(settings, plan).results[0]
    assert (result.status, result.to_revision, result.applied) == (Status.DOWNGRADED, "base", plan.undo)
    assert tables(tmp_path / "db" / "globex.db") == {"alembic_version", "tenants_history"}
    assert api.upgrade(settings, selection=Selection(tenants=("globex",))).results[0].applied == tuple(DEMO_REVISIONS)


def test_history_has_one_row_per_applied_revision_in_its_transaction(sqlite_config, tmp_path, monkeypatch):
    monkeypatch.setenv("GITHUB_ACTOR", "octocat")
    monkeypatch.setenv("GITHUB_SHA", "0123456789abcdef0123456789abcdef01234567")
    ini = failing_project(tmp_path / "proj")
    settings = settings_for(sqlite_config(["ok1", "bad1"], alembic=ini))
    report = api.upgrade(settings, options=api.RunOptions(concurrency=1, max_failures=None))
    ok = api.tenant_history(settings, "ok1")
    assert [(r["operation"], r["from_revision"], r["to_revision"], r["outcome"]) for r in ok] == [
        ("upgrade", "base", "r1", "applied"), ("upgrade", "r1", "r2", "applied")]
    assert {(r["run_id"], r["actor"], r["git_commit"], r["tool_version"]) for r in ok} == {
        (report.run_id, "octocat", "0123456789abcdef0123456789abcdef01234567", report.tool_version)}
    assert all(r["started_at"] <= r["finished_at"] for r in ok)
    bad = api.tenant_history(settings, "bad1")
    # r2 rolled back with its row; the failure is recorded after, in its own transaction.
    assert [(r["from_revision"], r["to_revision"], r["outcome"]) for r in bad] == [
        ("base", "r1", "applied"), ("r1", "r2", "failed")]
    assert bad[1]["error"].startswith("OperationalError: no such table: no_such_table")


def test_history_cli(cli, sqlite_config, monkeypatch):
    monkeypatch.setenv("GITHUB_ACTOR", "octocat")
    config = str(sqlite_config())
    assert cli("--config", config, "-e", "test", "history", "-t", "acme").out.strip() == "acme: no history yet"
    assert cli("--config", config, "-e", "test", "upgrade", "-t", "acme").code == 0
    assert cli("--config", config, "-e", "test", "downgrade", "-t", "acme", "0003", "--yes").code == 0
    run = cli("--config", config, "-e", "test", "history", "-t", "acme")
    assert run.code == 0
    shown = [" ".join(ln.split()[2:6]) for ln in run.out.splitlines()]
    assert shown == ["upgrade applied base ->", "upgrade applied 0001_users ->", "upgrade applied 0002_invoices ->",
                     "upgrade applied 0003_invoice_status ->", "downgrade applied 0004_invoice_user_index ->"]
    assert all("by octocat" in ln for ln in run.out.splitlines())
    data = json.loads(cli("--config", config, "-e", "test", "history", "-t", "acme", "--json").out)
    assert data["history"][-1]["to_revision"] == "0003_invoice_status"


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
