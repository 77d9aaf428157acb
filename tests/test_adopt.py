"""Adopting an existing fleet (issue 12 item 5): `tenants adopt` matches each unmanaged tenant's schema to a
revision and stamps it there; `tenants baseline` writes a revision that creates a tenant's schema."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from helpers import ALEMBIC_INI, HEAD, ROOT, fleet_config, pg_dsn, settings_for, tables, version

from tenants import api
from tenants.db import schema_snapshot
from tenants.engine.adopt import AdoptState, match
from tenants.engine.expected import Expected
from tenants.engine.history import read_history
from tenants.errors import TenantNotFound, TenantUnreachable, UsageError
from tenants.model import Status
from tenants.selection import Selection
from tenants.snapshot import Column, Index, Snapshot, Table

OWN = ("alembic_version", "tenants_history", "tenants_pin")

# The demo graph's schema at 0002_invoices, by hand (as a fleet that predates the tool was built), per dialect.
KEY = {"sqlite": "INTEGER NOT NULL PRIMARY KEY", "postgresql": "SERIAL PRIMARY KEY"}
STAMP = {"sqlite": "DATETIME", "postgresql": "TIMESTAMP WITHOUT TIME ZONE"}
USERS = ("CREATE TABLE users (id {key}, email VARCHAR(320) NOT NULL, display_name VARCHAR(200), "
         "created_at {ts} DEFAULT CURRENT_TIMESTAMP NOT NULL)")
USERS_INDEX = "CREATE UNIQUE INDEX ux_users_email ON users (email)"
INVOICES = ("CREATE TABLE invoices (id {key}, user_id INTEGER NOT NULL, number VARCHAR(40) NOT NULL, "
            "amount_cents BIGINT NOT NULL, currency VARCHAR(3) DEFAULT 'EUR' NOT NULL, issued_at {ts} NOT NULL, "
            "paid_at {ts}, CONSTRAINT uq_invoices_number UNIQUE (number), CONSTRAINT fk_invoices_user_id_users "
            "FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE)")
HALF_0003 = "ALTER TABLE invoices ADD COLUMN status VARCHAR(20)"  # 0003 by hand, without its NOT NULL and default

# The fleet: acme is exactly 0002; globex is half-way to 0003; initech half-way to 0001 (no index).
FLEET = {"acme": [USERS, USERS_INDEX, INVOICES], "globex": [USERS, USERS_INDEX, INVOICES, HALF_0003],
         "initech": [USERS]}


def statements(name: str, dialect: str) -> list[str]:
    return [sql.format(key=KEY[dialect], ts=STAMP[dialect]) for sql in FLEET[name]]


def build_sqlite_fleet(db: Path) -> None:
    db.mkdir(parents=True, exist_ok=True)
    for name in FLEET:
        with sqlite3.connect(db / f"{name}.db") as conn:
            for sql in statements(name, "sqlite"):
                conn.execute(sql)


@pytest.fixture
def sqlite_fleet(tmp_path):
    """acme, globex, initech built by hand; hooli managed at head by the tool; fresh not created yet."""
    config = fleet_config(tmp_path / "tenants.toml", ["acme", "globex", "initech", "hooli", "fresh"],
                          extra=f'schema_cache = "{tmp_path / "cache"}"')
    build_sqlite_fleet(tmp_path / "db")
    settings = settings_for(config)
    api.upgrade(settings, selection=Selection(tenants=("hooli",)))
    return config


DRY_RUN = """\
acme     matched      0002_invoices (schema {acme})
globex   no match     closest 0002_invoices, 1 difference (schema {globex}):
           - extra column invoices.status
initech  no match     closest 0001_users, 1 difference (schema {initech}):
           - index ux_users_email missing on users
hooli    skipped      managed already: it records 0004_invoice_user_index
fresh    skipped      new: no tables (`tenants upgrade` creates its schema)
adopt (test, expected schemas: {source}): 1 matched, 2 no match, 2 skipped; dry run, nothing changed: \
`tenants adopt --yes` stamps the 1 matched tenant
not adopted (never touched): globex, initech
"""


def sqlite_fingerprints(db: Path) -> dict[str, str]:
    out = {}
    for name in FLEET:
        engine = sa.create_engine(f"sqlite:///{db / name}.db")
        with engine.connect() as conn:
            out[name] = schema_snapshot(conn, OWN).fingerprint
        engine.dispose()
    return out


def test_adopt_dry_run_matches_and_changes_nothing(sqlite_fleet, tmp_path):
    report = api.adopt(settings_for(sqlite_fleet))
    rows = {row.tenant: row for row in report.rows}
    assert rows["acme"].state is AdoptState.MATCHED and rows["acme"].revision == "0002_invoices"
    assert rows["globex"].state is AdoptState.NO_MATCH and rows["globex"].closest == "0002_invoices"
    assert rows["globex"].differences == ("extra column invoices.status",)
    assert rows["initech"].closest == "0001_users"
    assert rows["initech"].differences == ("index ux_users_email missing on users",)
    assert rows["hooli"].state is AdoptState.SKIPPED and rows["fresh"].state is AdoptState.SKIPPED
    assert not report.ok and not report.applied and report.source == "scratch"
    for name in FLEET:
        assert "alembic_version" not in tables(tmp_path / "db" / f"{name}.db")
    assert not (tmp_path / "db" / "fresh.db").exists()


def test_cli_adopt_dry_run_then_yes_then_upgrade(cli, sqlite_fleet, tmp_path):
    db = tmp_path / "db"
    prints = sqlite_fingerprints(db)
    dry = cli("-c", str(sqlite_fleet), "-e", "test", "adopt")
    assert (dry.code, dry.err) == (1, "")
    assert dry.out == DRY_RUN.format(source="scratch", **prints)
    again = cli("-c", str(sqlite_fleet), "-e", "test", "adopt")  # the expected schemas are cached now
    assert again.out == DRY_RUN.format(source="cache", **prints)

    done = cli("-c", str(sqlite_fleet), "-e", "test", "adopt", "--yes")
    assert done.code == 1
    assert done.out.splitlines()[0] == f"acme     adopted      0002_invoices (schema {prints['acme']})"
    assert done.out.splitlines()[-2:] == [
        "adopt (test, expected schemas: cache): 1 adopted, 2 no match, 2 skipped",
        "not adopted (never touched): globex, initech"]
    assert version(db / "acme.db") == "0002_invoices"
    assert version(db / "globex.db") is None and version(db / "initech.db") is None
    assert tables(db / "globex.db") == {"users", "invoices"} and tables(db / "initech.db") == {"users"}
    engine = sa.create_engine(f"sqlite:///{db / 'acme.db'}")
    with engine.connect() as conn:
        [row] = read_history(conn)
    engine.dispose()
    assert (row["operation"], row["outcome"], row["from_revision"], row["to_revision"], row["error"]) == (
        "stamp", "adopted", "base", "0002_invoices", f"schema fingerprint {prints['acme']}")

    up = api.upgrade(settings_for(sqlite_fleet), selection=Selection(tenants=("acme",)))
    assert up.results[0].status is Status.UPGRADED
    assert up.results[0].applied == ("0003_invoice_status", "0004_invoice_user_index")
    assert version(db / "acme.db") == HEAD


def test_adopt_json(cli, sqlite_fleet):
    run = cli("-c", str(sqlite_fleet), "-e", "test", "adopt", "--format", "json", "-t", "acme", "-t", "globex")
    assert run.code == 1
    data = json.loads(run.out)
    assert (data["ok"], data["applied"], data["summary"]) == (False, False, {"matched": 1, "no match": 1})
    assert [(t["tenant"], t["state"], t["revision"], t["closest"]) for t in data["tenants"]] == [
        ("acme", "matched", "0002_invoices", None), ("globex", "no match", None, "0002_invoices")]


def test_adopt_exit_0_when_every_unmanaged_tenant_matches(cli, sqlite_fleet):
    run = cli("-c", str(sqlite_fleet), "-e", "test", "adopt", "-t", "acme", "-t", "hooli")
    assert run.code == 0


def test_a_tenant_changed_since_the_dry_run_is_not_touched(sqlite_fleet, tmp_path):
    settings = settings_for(sqlite_fleet)
    plan = api.prepare_adopt(settings, Selection(tenants=("acme",)))
    assert plan.rows[0].state is AdoptState.MATCHED
    with sqlite3.connect(tmp_path / "db" / "acme.db") as conn:
        conn.execute("ALTER TABLE users ADD COLUMN legacy_flag INTEGER")
    [row] = plan.run().rows
    assert row.state is AdoptState.CHANGED
    assert "its schema changed since it was matched" in row.why and "not touched" in row.why
    assert version(tmp_path / "db" / "acme.db") is None
    assert "tenants_history" not in tables(tmp_path / "db" / "acme.db")


def test_bad_input_is_one_line_exit_2(cli, sqlite_fleet):
    run = cli("-c", str(sqlite_fleet), "-e", "test", "adopt", "-t", "nope")
    assert run.code == 2 and run.err.count("\n") == 1 and "nope" in run.err
    run = cli("-c", str(sqlite_fleet), "-e", "test", "adopt", "--format", "xml")
    assert (run.code, run.err) == (2, "tenants: error: --format xml: use text or json\n")


# --- matching, on snapshots alone ----------------------------------------------------------------------------

def _snap(*tables: Table) -> Snapshot:
    return Snapshot(tables)


def test_match_takes_the_earliest_of_revisions_with_one_schema_and_the_latest_closest():
    one = _snap(Table("t", (Column("id", "INTEGER"),)))
    two = _snap(Table("t", (Column("id", "INTEGER"), Column("x", "TEXT"))))
    three = _snap(Table("t", (Column("id", "INTEGER"), Column("x", "TEXT")), indexes=(Index("ix", ("x",)),)))
    expected = Expected({"r1": one, "r2": two, "r2b": two, "r3": three}, "scratch", Snapshot())
    order = ["r1", "r2", "r2b", "r3"]
    found = match(two, expected.by_revision, order)
    assert (found.revision, found.same_schema) == ("r2", ("r2b",))
    between = _snap(Table("t", (Column("id", "INTEGER"), Column("x", "INTEGER"))))
    found = match(between, expected.by_revision, order)
    assert found.revision is None and found.closest == "r2b"
    assert found.differences == ("column t.x: TEXT expected, INTEGER found",)


# --- baseline --------------------------------------------------------------------------------------------------

def empty_project(root: Path) -> Path:
    """An Alembic project with our env.py and template and no revisions: a graph that does not exist yet."""
    (root / "alembic" / "versions").mkdir(parents=True)
    for name in ("env.py", "script.py.mako"):
        (root / "alembic" / name).write_text((ROOT / "alembic" / name).read_text())
    ini = root / "alembic.ini"
    ini.write_text(ALEMBIC_INI.read_text())
    return ini


EXTRA = [  # more than the demo schema: a check, a partial index, a view, a composite key
    "CREATE TABLE notes (user_id INTEGER NOT NULL REFERENCES users (id), n INTEGER NOT NULL, "
    "body TEXT, CONSTRAINT ck_notes_n CHECK (n > 0), PRIMARY KEY (user_id, n))",
    "CREATE INDEX ix_notes_body ON notes (body) WHERE body IS NOT NULL",
    "CREATE VIEW user_emails AS SELECT id, email FROM users",
]


def test_baseline_on_sqlite_recreates_the_tenant_schema_and_is_idempotent(cli, tmp_path):
    db = tmp_path / "db"
    db.mkdir()
    with sqlite3.connect(db / "legacy.db") as conn:
        for sql in statements("acme", "sqlite") + EXTRA:
            conn.execute(sql)
    ini = empty_project(tmp_path / "project")
    config = fleet_config(tmp_path / "tenants.toml", ["legacy", "new"], alembic=ini)
    run = cli("-c", str(config), "-e", "test", "baseline", "--from-tenant", "legacy", "-m", "baseline")
    assert run.code == 0, run.err
    [path] = (tmp_path / "project" / "alembic" / "versions").glob("*.py")
    assert run.out == f"wrote {path}: review it, commit it, then `tenants adopt` matches the fleet to it\n"
    text = path.read_text()
    assert "down_revision: Union[str, Sequence[str], None] = None" in text
    assert "guards.create_table(" in text and "sa.String(320)" in text

    settings = settings_for(config)
    api.upgrade(settings, selection=Selection(tenants=("new",)))
    source, built = (sqlite_fingerprints_of(db / f"{n}.db") for n in ("legacy", "new"))
    assert built == source
    api.stamp(settings, "base", Selection(tenants=("new",)))  # run it again on the schema it made
    assert api.upgrade(settings, selection=Selection(tenants=("new",))).results[0].status is Status.UPGRADED
    assert sqlite_fingerprints_of(db / "new.db") == source
    adopted = api.adopt(settings, Selection(tenants=("legacy",)), yes=True)
    assert adopted.rows[0].state is AdoptState.ADOPTED


def sqlite_fingerprints_of(path: Path) -> str:
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        found = schema_snapshot(conn, OWN).fingerprint
    engine.dispose()
    return found


def test_baseline_bad_input(cli, sqlite_fleet, tmp_path):
    config = str(sqlite_fleet)
    run = cli("-c", config, "-e", "test", "baseline", "--from-tenant", "acme")
    assert run.code == 2 and run.err.count("\n") == 1 and "'--message'" in run.err
    run = cli("-c", config, "-e", "test", "baseline", "--from-tenant", "nope", "-m", "baseline")
    assert run.code == 2 and run.err.count("\n") == 1 and "nope" in run.err
    run = cli("-c", config, "-e", "test", "baseline", "--from-tenant", "acme", "-m", " ")
    assert (run.code, run.err) == (2, 'tenants: error: baseline needs -m "...": the revision\'s message '
                                      '(e.g. -m "baseline")\n')
    with pytest.raises(UsageError, match="has no tables: nothing to baseline"):
        api.baseline(settings_for(sqlite_fleet), "fresh", "baseline")
    with pytest.raises(TenantNotFound):
        api.baseline(settings_for(sqlite_fleet), "nope", "baseline")


def test_baseline_of_an_unreachable_tenant_is_one_line_exit_1(cli, tmp_path):
    """Unreachable is a runtime failure, not bad input: exit 1, as for every command (TenantUnreachable)."""
    config = fleet_config(tmp_path / "tenants.toml", ["gone"])
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "gone.db").write_text("not a database")
    run = cli("-c", str(config), "-e", "test", "baseline", "--from-tenant", "gone", "-m", "baseline")
    assert run.code == 1 and run.err.count("\n") == 1
    assert run.err.startswith("tenants: error: tenant 'gone': cannot read its schema:")
    with pytest.raises(TenantUnreachable):
        api.baseline(settings_for(config), "gone", "baseline")


# --- PostgreSQL --------------------------------------------------------------------------------------------------

def pg_fingerprint(name: str) -> str:
    engine = sa.create_engine(pg_dsn(name).replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as conn:
        found = schema_snapshot(conn, OWN).fingerprint
    engine.dispose()
    return found


def pg_build(name: str, sqls: list[str]) -> None:
    with psycopg.connect(pg_dsn(name), autocommit=True) as conn:
        for sql in sqls:
            conn.execute(sql)


@pytest.mark.postgres
def test_adopt_on_postgresql(pg_fleet, tmp_path, cli):
    fleet = pg_fleet(4, extra=f'schema_cache = "{tmp_path / "cache"}"')
    acme, globex, initech, managed = fleet.names
    for name, kind in ((acme, "acme"), (globex, "globex"), (initech, "initech")):
        pg_build(name, statements(kind, "postgresql"))
    settings = settings_for(fleet.config, "pg")
    api.upgrade(settings, selection=Selection(tenants=(managed,)))
    dry = cli("-c", str(fleet.config), "-e", "pg", "adopt")
    assert dry.code == 1
    assert dry.out.splitlines()[0] == f"{acme}  matched      0002_invoices (schema {pg_fingerprint(acme)})"
    assert f"{globex}  no match     closest 0002_invoices, 1 difference" in dry.out
    assert "- extra column invoices.status" in dry.out and "- index ux_users_email missing on users" in dry.out
    assert f"{managed}  skipped      managed already: it records {HEAD}" in dry.out

    done = cli("-c", str(fleet.config), "-e", "pg", "adopt", "--yes")
    assert done.code == 1 and "1 adopted, 2 no match, 1 skipped" in done.out
    assert fleet.version(acme) == "0002_invoices"
    assert fleet.version(globex) is None and fleet.version(initech) is None
    [row] = fleet.query(acme, "SELECT outcome, error FROM tenants_history")
    assert row == ("adopted", f"schema fingerprint {pg_fingerprint(acme)}")
    up = api.upgrade(settings, selection=Selection(tenants=(acme,)))
    assert up.results[0].applied == ("0003_invoice_status", "0004_invoice_user_index")
    assert fleet.version(acme) == HEAD


@pytest.mark.postgres
def test_baseline_on_postgresql_recreates_the_tenant_schema_and_is_idempotent(pg_fleet, tmp_path, cli):
    ini = empty_project(tmp_path / "project")
    fleet = pg_fleet(2, alembic=ini)
    legacy, new = fleet.names
    pg_build(legacy, statements("acme", "postgresql") + EXTRA)
    run = cli("-c", str(fleet.config), "-e", "pg", "baseline", "--from-tenant", legacy, "-m", "baseline")
    assert run.code == 0, run.err
    settings = settings_for(fleet.config, "pg")
    assert api.upgrade(settings, selection=Selection(tenants=(new,))).results[0].status is Status.UPGRADED
    assert pg_fingerprint(new) == pg_fingerprint(legacy)
    api.stamp(settings, "base", Selection(tenants=(new,)))
    assert api.upgrade(settings, selection=Selection(tenants=(new,))).results[0].status is Status.UPGRADED
    assert pg_fingerprint(new) == pg_fingerprint(legacy)
    assert api.adopt(settings, Selection(tenants=(legacy,)), yes=True).rows[0].state is AdoptState.ADOPTED
