"""A tenant that does not end well, on real SQLite files: a failed revision rolls back with its transaction and
the tenant stays where it was; the failure policy (stop at the first, keep going, stop after N); a tenant whose
lock another run holds is locked, not failed."""

from __future__ import annotations

import fcntl
import os

from helpers import failing_project, settings_for, tables, version

from tenants import api
from tenants.engine.fanout import ProcessStrategy, SerialStrategy
from tenants.model import Status


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
