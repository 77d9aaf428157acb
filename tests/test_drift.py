"""`tenants drift` and `tenants verify --schema` (issue 12): every tenant's schema against the expected schema of
its recorded revision, on real SQLite files and real PostgreSQL databases changed by hand in different ways."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import psycopg
import pytest
import sqlalchemy as sa
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from helpers import HEAD, fleet_config, pg_dsn, settings_for

from tenants import api
from tenants.db import make_engine
from tenants.model import Verdict

# Each hand change and the one line of difference it must give.
CHANGES = {
    "index": (lambda op: op.drop_index("ix_invoices_user_id_issued_at", table_name="invoices"),
              ["index ix_invoices_user_id_issued_at missing on invoices"]),
    "column": (lambda op: op.add_column("users", sa.Column("legacy_flag", sa.Boolean)),
               ["extra column users.legacy_flag"]),
    "type": (lambda op: _widen(op), ["column invoices.status: VARCHAR(20) expected, VARCHAR(40) found"]),
    "table": (lambda op: op.drop_table("invoices"), ["table invoices missing"]),
    "extra": (lambda op: op.create_table("scratch", sa.Column("id", sa.Integer, primary_key=True)),
              ["extra table scratch"]),
}


def _widen(op: Operations) -> None:
    with op.batch_alter_table("invoices") as batch:  # SQLite: a table rebuild, as a real revision's would be
        batch.alter_column("status", type_=sa.String(40), existing_type=sa.String(20),
                           existing_nullable=False, existing_server_default="open")


def change(url: str, what: str) -> None:
    """Change one tenant by hand, the way someone with a SQL prompt (or a hotfix script) would."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            CHANGES[what][0](Operations(MigrationContext.configure(conn)))
    finally:
        engine.dispose()


def _check_fleet(report, changed: dict[str, str], total: int) -> None:
    """Exactly the changed tenants drifted, each with its one difference; the others are one matching group."""
    drifted = {t.tenant: list(t.differences) for t in report.drifted}
    assert drifted == {name: CHANGES[what][1] for name, what in changed.items()}
    groups = report.groups()
    assert groups[0].verdict is Verdict.MATCH and len(groups[0].tenants) == total - len(changed)
    assert groups[0].current == (HEAD,) and [g.verdict for g in groups[1:]] == [Verdict.DRIFTED] * len(changed)
    assert not report.ok and report.unknown == []


# --- SQLite --------------------------------------------------------------------------------------------------

@pytest.fixture
def sqlite_fleet(tmp_path):
    """Eight SQLite tenants at head, five of them changed by hand; (config, tenant -> change)."""
    names = [f"t{i}" for i in range(8)]
    config = fleet_config(tmp_path / "tenants.toml", names, url=f"sqlite:///{tmp_path}/db/{{tenant}}.db",
                          extra=f'schema_cache = "{tmp_path / "cache"}"')
    assert api.upgrade(settings_for(config), options=api.RunOptions(concurrency=2)).ok
    changed = dict(zip(["t1", "t3", "t4", "t6", "t7"], CHANGES, strict=True))
    for name, what in changed.items():
        change(f"sqlite:///{tmp_path}/db/{name}.db", what)
    return config, changed


def test_drift_on_sqlite_names_exactly_the_tenants_changed_by_hand(sqlite_fleet, scratch_calls):
    config, changed = sqlite_fleet
    report = api.drift(settings_for(config))
    assert report.reference == "scratch" and report.dialect == "sqlite" and report.revisions == 4
    _check_fleet(report, changed, 8)
    again = api.drift(settings_for(config))
    assert again.reference == "cache" and scratch_calls == ["sqlite"]  # the second run builds nothing
    assert again.tenants == report.tenants


def test_drift_cli_text_json_markdown_and_junit(sqlite_fleet, cli, tmp_path):
    config, changed = sqlite_fleet
    run = cli("-c", str(config), "-e", "test", "drift", "--junit", str(tmp_path / "drift.xml"))
    assert run.code == 1, run.err
    lines = run.out.splitlines()
    assert lines[0] == "expected schemas: built on a scratch sqlite database, 4 revisions"
    assert lines[1].startswith(f"match    3 tenants  at {HEAD}  fingerprint ")
    assert "drifted  t1  at " + HEAD in run.out
    assert "           - index ix_invoices_user_id_issued_at missing on invoices" in lines
    assert "           - column invoices.status: VARCHAR(20) expected, VARCHAR(40) found" in lines
    assert lines[-1] == "3/8 tenants match the expected schema of their revision; 5 drifted"
    suite = ET.parse(tmp_path / "drift.xml").getroot().find("testsuite")
    assert suite.get("tests") == "8" and suite.get("failures") == "5"
    failed = {case.get("name"): case.find("failure").text for case in suite if case.find("failure") is not None}
    assert failed["t7"] == "extra table scratch" and set(failed) == set(changed)

    data = json.loads(cli("-c", str(config), "-e", "test", "drift", "--format", "json").out)
    assert data["reference"]["source"] == "cache" and data["ok"] is False
    assert data["summary"] == {"match": 3, "drifted": 5}
    assert data["groups"][0] == {"verdict": "match", "revision": HEAD, "fingerprint": data["groups"][0]["fingerprint"],
                                 "differences": [], "reason": None, "count": 3, "tenants": ["t0", "t2", "t5"]}
    markdown = cli("-c", str(config), "-e", "test", "drift", "-f", "markdown").out
    assert markdown.startswith("### Schema drift: `test`\n") and "extra column users.legacy\\_flag" in markdown


def test_drift_exits_0_when_every_tenant_matches_and_new_tenants_are_fine(tmp_path, cli):
    config = fleet_config(tmp_path / "tenants.toml", ["a", "b", "fresh"], url=f"sqlite:///{tmp_path}/db/{{tenant}}.db",
                          extra=f'schema_cache = "{tmp_path / "cache"}"')
    assert api.upgrade(settings_for(config), selection=api.Selection(tenants=("a", "b"))).ok
    run = cli("-c", str(config), "-e", "test", "drift")
    assert run.code == 0, run.out + run.err
    assert run.out.splitlines()[1:] == [
        run.out.splitlines()[1],  # the matching group (its fingerprint varies with nothing here but the graph)
        "new      fresh  no revision recorded, no tables",
        "2/3 tenants match the expected schema of their revision; 1 new",
    ]
    assert run.out.splitlines()[1].startswith(f"match    2 tenants  at {HEAD}  fingerprint ")


def test_unmanaged_and_unknown_revision_tenants_are_unknown(tmp_path):
    config = fleet_config(tmp_path / "tenants.toml", ["ok", "hand", "odd"], url=f"sqlite:///{tmp_path}/db/{{tenant}}.db",
                          extra=f'schema_cache = "{tmp_path / "cache"}"')
    settings = settings_for(config)
    assert api.upgrade(settings, selection=api.Selection(tenants=("ok", "odd"))).ok
    engine = make_engine(f"sqlite:///{tmp_path}/db/hand.db")
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE customers (id INTEGER PRIMARY KEY)")
    with make_engine(f"sqlite:///{tmp_path}/db/odd.db").begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'ffff'")
    report = api.drift(settings)
    reasons = {t.tenant: t.reason for t in report.unknown}
    assert set(reasons) == {"hand", "odd"} and not report.ok
    assert reasons["hand"].startswith("unmanaged: 1 table(s) or view(s) but no alembic_version table")
    assert reasons["odd"] == "unknown revision: ffff is not in the revision graph"


def test_verify_schema_fails_a_drifted_tenant_at_head(sqlite_fleet, cli, tmp_path):
    config, _ = sqlite_fleet
    plain = cli("-c", str(config), "-e", "test", "verify")
    assert plain.code == 0, plain.out  # every version table reads head: the bookkeeping is green
    run = cli("-c", str(config), "-e", "test", "verify", "--schema", "--junit", str(tmp_path / "v.xml"))
    assert run.code == 1
    lines = run.out.splitlines()
    assert lines[0] == f"8/8 tenants at head {HEAD}"
    assert lines[-1] == "3/8 tenants match the expected schema of their revision; 5 drifted"
    assert "           - table invoices missing" in lines and not any(line.startswith("match") for line in lines)
    suite = ET.parse(tmp_path / "v.xml").getroot().find("testsuite")
    assert suite.get("failures") == "5"
    assert api.verify(settings_for(config), schema=True).ok is False


@pytest.mark.parametrize(("line", "message"), [
    ('expected_schema = "vote"', 'expected_schema must be "build" (run the revisions on a scratch database) or '
                                 '"consensus" (the largest group of tenants at each revision), not \'vote\''),
    ('reference_database = "ref"', "reference_database is for SQL Server"),
    ('schema_cache = " "', "'schema_cache' is empty"),
    ("schema_cache = 3", "schema_cache must be a str, not int"),
])
def test_bad_drift_keys_exit_2_naming_the_file_and_key(tmp_path, cli, line, message):
    config = fleet_config(tmp_path / "tenants.toml", ["a"], extra=line)
    run = cli("-c", str(config), "-e", "test", "drift")
    assert run.code == 2 and run.out == ""
    assert run.err.startswith(f"tenants: error: {config}:6: environments.test: ") and message in run.err


def test_drift_bad_format_exits_2(tmp_path, cli):
    config = fleet_config(tmp_path / "tenants.toml", ["a"])
    run = cli("-c", str(config), "-e", "test", "drift", "--format", "xml")
    assert (run.code, run.err) == (2, "tenants: error: --format xml: use text, markdown or json\n")


# --- PostgreSQL ----------------------------------------------------------------------------------------------

@pytest.mark.postgres
def test_drift_on_postgresql_names_exactly_the_tenants_changed_by_hand(pg_fleet, tmp_path, scratch_calls, cli):
    fleet = pg_fleet(12, extra=f'schema_cache = "{tmp_path / "cache"}"')
    settings = settings_for(fleet.config, "pg")
    assert api.upgrade(settings, options=api.RunOptions(concurrency=4)).ok
    changed = dict(zip([fleet.names[i] for i in (2, 5, 6, 9, 11)], CHANGES, strict=True))
    for name, what in changed.items():
        change(fleet.url(name), what)
    report = api.drift(settings)
    assert report.reference == "scratch" and report.dialect == "postgresql"
    _check_fleet(report, changed, 12)
    run = cli("-c", str(fleet.config), "-e", "pg", "drift")
    assert run.code == 1 and scratch_calls == ["postgresql"]  # the CLI's run read the cache
    assert run.out.splitlines()[0] == "expected schemas: read from the cache (built on a scratch postgresql " \
                                      "database), 4 revisions"
    with psycopg.connect(pg_dsn(), autocommit=True) as conn:  # the scratch database was dropped
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname LIKE %s",
                            (f"%{fleet.prefix}%",)).fetchone()[0] == 12


@pytest.mark.postgres
def test_consensus_on_postgresql_takes_the_usual_schema_and_says_so(pg_fleet, scratch_calls, cli):
    fleet = pg_fleet(5, extra='expected_schema = "consensus"')
    settings = settings_for(fleet.config, "pg")
    assert api.upgrade(settings, options=api.RunOptions(concurrency=4)).ok
    change(fleet.url(fleet.names[3]), "column")
    report = api.drift(settings)
    assert scratch_calls == [] and report.reference == "consensus"
    assert [t.tenant for t in report.drifted] == [fleet.names[3]]
    assert report.consensus == ((HEAD, 4, 5, ()),)
    run = cli("-c", str(fleet.config), "-e", "pg", "drift")
    assert run.out.splitlines()[:2] == [
        "expected schemas: consensus of the fleet (the largest group of tenants recorded at each revision), "
        "1 revision",
        f"  {HEAD}: 4 of 5 tenants agree",
    ]
    # Two against two (and one alone): a tie has no winner, and says so; no tenant at that revision gets a verdict.
    change(fleet.url(fleet.names[4]), "column")
    change(fleet.url(fleet.names[0]), "index")
    tied = api.drift(settings)
    assert [t.verdict for t in tied.tenants] == [Verdict.UNKNOWN] * 5 and tied.consensus[0][1:3] == (2, 5)
    assert tied.unknown[0].reason.startswith(f"no expected schema at {HEAD}: consensus tie between 2 schemas of "
                                             "2 tenant(s) each")
