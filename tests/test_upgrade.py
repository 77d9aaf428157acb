"""Upgrading a fleet at the library level, on real SQLite files: every tenant to head and again (a no-op),
to a revision between, a selection of tenants, bad input that touches nothing, a tenant at a revision the graph
does not know, any Alembic project's env.py, a fleet discovered from a folder, the README's first command."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest
from helpers import DEMO_REVISIONS, HEAD, ROOT, make_project, settings_for, tables, version

from tenants import api
from tenants.errors import MultipleHeads, RevisionError, TenantNotFound
from tenants.model import State, Status
from tenants.selection import Selection


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
