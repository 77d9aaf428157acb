"""tenants.guards, which revision files import: they answer from the live schema, and make the demo revisions
safe to run again over a schema that is already there (SQLite; test_engine_postgres.py has PostgreSQL's)."""

from __future__ import annotations

import json
import sqlite3

from helpers import DEMO_REVISIONS, GUARD_ANSWERS, guard_probe_project, settings_for

from tenants import api
from tenants.model import Status


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
        assert conn.execute("SELECT status FROM invoices").fetchall() == [("paid",)]


def test_guards_answer_from_the_live_schema(sqlite_config, tmp_path):
    settings = settings_for(sqlite_config(["g"]))
    api.upgrade(settings)
    answers = tmp_path / "answers.json"
    ini = guard_probe_project(tmp_path / "probe", answers)
    probe = settings_for(sqlite_config(["g"], alembic=ini,
                                       extra='version_table = "probe_version"\nunmanaged = "upgrade"'))
    assert api.upgrade(probe).ok
    assert json.loads(answers.read_text()) == GUARD_ANSWERS
