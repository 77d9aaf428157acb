"""The expected schema of each revision (issue 12, tenants.engine.expected): built on a scratch database of the
environment's dialect, cached by graph, or voted by the fleet (consensus)."""

from __future__ import annotations

import contextlib
import textwrap
from pathlib import Path

import psycopg
import pytest
from helpers import DEMO_REVISIONS, PG_URL, ROOT, fleet_config, make_project, pg_dsn, settings_for
from sqlalchemy.engine import make_url

from tenants import api
from tenants.dialects.postgresql import PostgreSQL
from tenants.engine.expected import consensus, expected_schemas
from tenants.errors import ExpectedSchemaError
from tenants.snapshot import Column, Snapshot, Table


def _settings(tmp_path: Path, extra: str = "", alembic: Path = ROOT / "alembic.ini", url: str | None = None):
    cache = f'schema_cache = "{tmp_path / "cache"}"\n'
    return settings_for(fleet_config(tmp_path / "tenants.toml", ["acme"], alembic=alembic, extra=cache + extra,
                                     url=url or f"sqlite:///{tmp_path}/db/{{tenant}}.db"))


def test_sqlite_expected_schemas_are_built_once_then_read_from_the_cache(tmp_path, scratch_calls):
    settings = _settings(tmp_path)
    revisions = api.load_revisions(settings)
    built = expected_schemas(settings, revisions)
    assert built.source == "scratch" and built.dialect == "sqlite"
    assert list(built.by_revision) == DEMO_REVISIONS
    assert built.base == Snapshot() and built.at(()) == built.base
    assert [t.name for t in built.at(("0001_users",)).tables] == ["users"]
    head = built.at((DEMO_REVISIONS[-1],))
    assert "ix_invoices_user_id_issued_at" in [i.name for i in head.table("invoices").indexes]
    assert built.at(("nope",)) is None and built.at(("0001_users", "0002_invoices")) is None
    assert scratch_calls == ["sqlite"]  # one scratch database for a linear graph
    assert list((tmp_path / "cache").glob("expected-sqlite-*.json"))

    again = expected_schemas(settings, revisions)
    assert again.source == "cache" and scratch_calls == ["sqlite"]  # no scratch database the second time
    assert again.by_revision == built.by_revision and again.base == built.base
    assert [s.fingerprint for s in again.by_revision.values()] == [s.fingerprint for s in built.by_revision.values()]


def test_a_changed_revision_file_is_a_new_cache_entry(tmp_path, scratch_calls):
    alembic = make_project(tmp_path / "proj", {
        "r1": "op.create_table('one', sa.Column('id', sa.Integer, primary_key=True))",
    }, env_py=(ROOT / "alembic" / "env.py").read_text())
    settings = _settings(tmp_path, alembic=alembic)
    assert expected_schemas(settings, api.load_revisions(settings)).source == "scratch"
    version = next((tmp_path / "proj" / "migrations" / "versions").glob("*r1.py"))
    version.write_text(version.read_text().replace("'one'", "'uno'"))
    rebuilt = expected_schemas(settings, api.load_revisions(settings))
    assert rebuilt.source == "scratch" and [t.name for t in rebuilt.at(("r1",)).tables] == ["uno"]
    assert len(scratch_calls) == 2 and len(list((tmp_path / "cache").glob("*.json"))) == 2


def test_a_branched_graph_resets_the_scratch_database_for_a_sibling_branch(tmp_path, scratch_calls):
    """root -> a and root -> b (two heads): b's schema must not hold a's table, so b gets a fresh database."""
    project = make_project(tmp_path / "proj", {
        "root": "op.create_table('root', sa.Column('id', sa.Integer, primary_key=True))",
        "a": "op.create_table('ta', sa.Column('id', sa.Integer, primary_key=True))",
        "b": "op.create_table('tb', sa.Column('id', sa.Integer, primary_key=True))",
    }, env_py=(ROOT / "alembic" / "env.py").read_text())
    version_b = next((tmp_path / "proj" / "migrations" / "versions").glob("*_b.py"))
    version_b.write_text(version_b.read_text().replace("down_revision = 'a'", "down_revision = 'root'"))
    settings = _settings(tmp_path, alembic=project)
    expected = expected_schemas(settings, api.load_revisions(settings))
    tables = {rev: [t.name for t in s.tables] for rev, s in expected.by_revision.items()}
    assert tables == {"root": ["root"], "a": ["root", "ta"], "b": ["root", "tb"]}
    assert [t.name for t in expected.at(("b", "a")).tables] == ["root", "ta", "tb"]  # both heads: built
    assert len(scratch_calls) == 3  # root+a, then b on a fresh one, then both heads


def test_a_revision_that_fails_on_the_scratch_database_is_one_error(tmp_path):
    project = make_project(tmp_path / "proj", {"r1": "op.execute('SELECT * FROM no_such_table')"},
                           env_py=(ROOT / "alembic" / "env.py").read_text())
    settings = _settings(tmp_path, alembic=project)
    with pytest.raises(ExpectedSchemaError, match=r"cannot build the expected schemas on a scratch sqlite "
                                                  r"database: .*no_such_table.*expected_schema = \"consensus\""):
        expected_schemas(settings, api.load_revisions(settings))


def _table(name: str, *columns: str) -> Snapshot:
    return Snapshot((Table(name, tuple(Column(c, "INTEGER") for c in columns)),))


def test_consensus_takes_the_largest_group_and_reports_a_tie():
    usual, odd = _table("users", "id"), _table("users", "id", "legacy")
    voted = consensus([(("r1",), usual), (("r1",), usual), (("r1",), odd),
                       (("r2",), usual), (("r2",), odd)], "postgresql")
    assert voted.source == "consensus" and voted.base == Snapshot()
    assert voted.at(("r1",)) == usual
    assert voted.consensus["r1"].agreeing == 2 and voted.consensus["r1"].total == 3
    assert voted.at(("r2",)) is None  # a tie: no winner
    assert voted.ties["r2"].tied == tuple(sorted([usual.fingerprint, odd.fingerprint]))


def test_expected_schema_consensus_in_the_environment_builds_nothing(tmp_path, scratch_calls):
    settings = _settings(tmp_path, extra='expected_schema = "consensus"')
    expected = expected_schemas(settings, api.load_revisions(settings),
                                consensus_from=[(("0001_users",), _table("users", "id"))])
    assert expected.source == "consensus" and scratch_calls == []
    assert expected.at(("0001_users",)) == _table("users", "id") and expected.at(("0002_invoices",)) is None


def test_sql_server_without_a_reference_database_is_consensus(tmp_path):
    path = tmp_path / "mssql.toml"
    path.write_text(textwrap.dedent(f"""\
        [environments.test]
        odbc_connect = "Driver=FreeTDS;Server=h;Database={{tenant}};UID=u;PWD=p"
        tenants = ["acme"]
        alembic = "{ROOT / 'alembic.ini'}"
        """))
    settings = settings_for(path)
    expected = expected_schemas(settings, api.load_revisions(settings), consensus_from=[])
    assert expected.source == "consensus" and expected.by_revision == {}


@pytest.mark.postgres
def test_the_postgresql_scratch_database_is_made_and_dropped(pg_available, tmp_path, monkeypatch):
    made: list[str] = []
    original = PostgreSQL.scratch_database

    @contextlib.contextmanager
    def recorded(manager):
        with manager as url:
            made.append(url.database)
            yield url

    monkeypatch.setattr(PostgreSQL, "scratch_database",
                        lambda self, url, **kwargs: recorded(original(self, url, **kwargs)))
    url = make_url(PG_URL).set(database="{tenant}").render_as_string(hide_password=False)
    settings = _settings(tmp_path, url=url.replace("%7Btenant%7D", "{tenant}"))
    built = expected_schemas(settings, api.load_revisions(settings))
    assert built.source == "scratch" and built.dialect == "postgresql"
    assert list(built.by_revision) == DEMO_REVISIONS
    assert len(made) == 1 and made[0].startswith("tenants_scratch_")
    with psycopg.connect(pg_dsn(), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (made[0],)).fetchone()[0] == 0
