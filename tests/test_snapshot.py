"""Schema snapshots (issue 12): one catalog query per dialect, a canonical model, a fingerprint and a diff.

Real SQLite files and throwaway PostgreSQL databases built by the project's own revisions; each hand change
(made with Alembic's operations, so SQLite's are batch-mode table rebuilds, as a real revision's would be)
must give a different fingerprint and exactly one line of difference. SQL Server cannot run here: its query
is parsed by sqlglot and its conversion is checked against a recorded catalog answer.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
import sqlglot
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from helpers import PG_URL, ROOT, admin, fleet_config, settings_for
from sqlalchemy import event, text
from sqlalchemy.engine import make_url

from tenants import api
from tenants.db import make_engine, schema_snapshot
from tenants.dialects import Dialect
from tenants.dialects.catalog_mssql import SNAPSHOT_SQL as MSSQL_SQL
from tenants.dialects.catalog_mssql import snapshot_from_catalog as mssql_snapshot
from tenants.dialects.catalog_mssql import type_spelling
from tenants.dialects.catalog_postgresql import canonical_default
from tenants.engine.unit import own_tables
from tenants.model import Status
from tenants.snapshot import (
    Check,
    Column,
    ForeignKey,
    Index,
    Snapshot,
    Table,
    Unique,
    View,
    canonical_type,
    diff,
    distance,
)

EXCLUDE = own_tables("alembic_version", "tenants_history")
MSSQL_CATALOG = ROOT / "tests" / "data" / "mssql_catalog.json"


# --- building tenants ----------------------------------------------------------------------------------------

def sqlite_tenant(tmp_path: Path, name: str) -> str:
    """A SQLite tenant at head, built by the project's revisions through the API; its URL."""
    folder = tmp_path / name
    settings = settings_for(fleet_config(tmp_path / f"{name}.toml", [name], url=f"sqlite:///{folder}/{{tenant}}.db"))
    assert api.upgrade(settings).results[0].status is Status.UPGRADED
    return f"sqlite:///{folder}/{name}.db"


@pytest.fixture
def pg_tenant(pg_available):
    """Factory: a throwaway PostgreSQL database at head, built by the project's revisions; dropped after."""
    created: list[str] = []

    def make(tmp_path: Path) -> str:
        name = f"tt_snap_{uuid.uuid4().hex[:8]}"
        admin(f'CREATE DATABASE "{name}"')
        created.append(name)
        url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
        settings = settings_for(fleet_config(tmp_path / f"{name}.toml", [name], url=url.replace(name, "{tenant}")))
        assert api.upgrade(settings).results[0].status is Status.UPGRADED
        return url

    yield make
    for name in created:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def snapshot_of(url: str) -> Snapshot:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            snapshot = schema_snapshot(conn, EXCLUDE)
            assert not conn.in_transaction()  # it ended the transaction it opened
            return snapshot
    finally:
        engine.dispose()


def change(url: str, alter) -> None:
    """Apply ``alter(op)`` with Alembic's operations (SQLite: batch mode, a table rebuild) and commit."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            alter(Operations(MigrationContext.configure(conn)))
    finally:
        engine.dispose()


def _batch(table: str, column: str, **changes):
    def alter(op):
        with op.batch_alter_table(table) as batch:
            batch.alter_column(column, **changes)
    return alter


# Each hand change and the one line of difference it must give (expected: the schema built by the revisions).
CHANGES = {
    "index dropped": (lambda op: op.drop_index("ix_invoices_user_id_issued_at", table_name="invoices"),
                      "index ix_invoices_user_id_issued_at missing on invoices"),
    "column added": (lambda op: op.add_column("users", sa.Column("legacy_flag", sa.Boolean)),
                     "extra column users.legacy_flag"),
    "type widened": (_batch("invoices", "status", type_=sa.String(40), existing_type=sa.String(20)),
                     "column invoices.status: VARCHAR(20) expected, VARCHAR(40) found"),
    "table dropped": (lambda op: op.drop_table("invoices"), "table invoices missing"),
    "extra table": (lambda op: op.create_table("scratch", sa.Column("id", sa.Integer, primary_key=True)),
                    "extra table scratch"),
    "nullability": (_batch("users", "display_name", nullable=False, existing_type=sa.String(200)),
                    "column users.display_name: nullable expected, NOT NULL found"),
    "default": (_batch("invoices", "currency", server_default="USD", existing_type=sa.String(3)),
                "column invoices.currency: default 'EUR' expected, default 'USD' found"),
}


# --- the demo schema, read back --------------------------------------------------------------------------------

def demo_schema(*, timestamp: str, id_default) -> Snapshot:
    """The demo graph's schema at head, as a dialect that spells DateTime ``timestamp`` reads it."""
    return Snapshot(tables=(
        Table("users", (
            Column("id", "INTEGER", False, id_default("users")),
            Column("email", "VARCHAR(320)", False),
            Column("display_name", "VARCHAR(200)", True),
            Column("created_at", timestamp, False, "CURRENT_TIMESTAMP"),
        ), primary_key=("id",), indexes=(Index("ux_users_email", ("email",), unique=True),)),
        Table("invoices", (
            Column("id", "INTEGER", False, id_default("invoices")),
            Column("user_id", "INTEGER", False),
            Column("number", "VARCHAR(40)", False),
            Column("amount_cents", "BIGINT", False),
            Column("currency", "VARCHAR(3)", False, "'EUR'"),
            Column("issued_at", timestamp, False),
            Column("paid_at", timestamp, True),
            Column("status", "VARCHAR(20)", False, "'open'"),
        ), primary_key=("id",),
            uniques=(Unique("uq_invoices_number", ("number",)),),
            foreign_keys=(ForeignKey("fk_invoices_user_id_users", ("user_id",), "users", ("id",), "CASCADE"),),
            indexes=(Index("ix_invoices_user_id_issued_at", ("user_id", "issued_at")),)),
    ))


SQLITE_DEMO = demo_schema(timestamp="DATETIME", id_default=lambda table: None)
PG_DEMO = demo_schema(timestamp="TIMESTAMP", id_default=lambda table: f"nextval('{table}_id_seq'::regclass)")


def test_sqlite_snapshot_of_the_demo_schema(tmp_path):
    snapshot = snapshot_of(sqlite_tenant(tmp_path, "acme"))
    assert snapshot == SQLITE_DEMO
    assert snapshot.dialect == "sqlite"
    # The version table and the tool's own tables are left out.
    assert [t.name for t in snapshot.tables] == ["invoices", "users"]


@pytest.mark.postgres
def test_postgresql_snapshot_of_the_demo_schema(pg_tenant, tmp_path):
    snapshot = snapshot_of(pg_tenant(tmp_path))
    assert snapshot == PG_DEMO
    assert snapshot.dialect == "postgresql"


def test_the_same_revisions_give_the_same_fingerprint_in_two_sqlite_databases(tmp_path):
    one, two = snapshot_of(sqlite_tenant(tmp_path, "one")), snapshot_of(sqlite_tenant(tmp_path, "two"))
    assert one.fingerprint == two.fingerprint == SQLITE_DEMO.fingerprint
    assert diff(one, two) == [] and distance(one, two) == 0


@pytest.mark.postgres
def test_the_same_revisions_give_the_same_fingerprint_in_two_postgresql_databases(pg_tenant, tmp_path):
    one, two = snapshot_of(pg_tenant(tmp_path)), snapshot_of(pg_tenant(tmp_path))
    assert one.fingerprint == two.fingerprint == PG_DEMO.fingerprint
    assert diff(one, two) == []


@pytest.mark.parametrize("case", list(CHANGES))
def test_each_hand_change_on_sqlite_gives_its_one_line(tmp_path, case):
    alter, line = CHANGES[case]
    url = sqlite_tenant(tmp_path, "acme")
    before = snapshot_of(url)
    change(url, alter)
    after = snapshot_of(url)
    assert after.fingerprint != before.fingerprint
    assert diff(before, after) == [line]
    assert distance(before, after) == 1


@pytest.mark.postgres
@pytest.mark.parametrize("case", list(CHANGES))
def test_each_hand_change_on_postgresql_gives_its_one_line(pg_tenant, tmp_path, case):
    alter, line = CHANGES[case]
    url = pg_tenant(tmp_path)
    before = snapshot_of(url)
    change(url, alter)
    after = snapshot_of(url)
    assert after.fingerprint != before.fingerprint
    assert diff(before, after) == [line]


def test_the_reverse_diff_says_missing_for_extra(tmp_path):
    url = sqlite_tenant(tmp_path, "acme")
    before = snapshot_of(url)
    change(url, lambda op: op.add_column("users", sa.Column("legacy_flag", sa.Boolean)))
    change(url, CHANGES["index dropped"][0])
    after = snapshot_of(url)
    # Tables in name order: invoices before users.
    assert diff(before, after) == ["index ix_invoices_user_id_issued_at missing on invoices",
                                   "extra column users.legacy_flag"]
    assert diff(after, before) == ["extra index ix_invoices_user_id_issued_at on invoices",
                                   "column users.legacy_flag missing"]


def test_sqlite_reads_checks_names_partial_and_descending_indexes_from_the_create_statements(tmp_path):
    url = f"sqlite:///{tmp_path}/raw.db"
    engine = make_engine(url)
    with engine.begin() as conn:
        for sql in (
            "CREATE TABLE accounts (id INTEGER PRIMARY KEY, code VARCHAR(10) NOT NULL CHECK (length(code) > 0),"
            " region TEXT, parent_id INTEGER, CONSTRAINT uq_accounts_code UNIQUE (code), UNIQUE (region, code),"
            " CONSTRAINT fk_accounts_parent FOREIGN KEY (parent_id) REFERENCES accounts ON DELETE SET NULL,"
            " CONSTRAINT ck_accounts_region CHECK (region IN ('eu', 'us')))",
            "CREATE INDEX ix_accounts_live ON accounts (region, code DESC) WHERE parent_id IS NULL",
            "CREATE VIEW roots AS SELECT id FROM accounts WHERE parent_id IS NULL",
            "CREATE TABLE tenants_pin (tenant TEXT)",
        ):
            conn.execute(text(sql))
    engine.dispose()
    assert snapshot_of(url) == Snapshot(
        tables=(Table(
            "accounts",
            (Column("id", "INTEGER"), Column("code", "VARCHAR(10)", False), Column("region", "TEXT"),
             Column("parent_id", "INTEGER")),
            primary_key=("id",),
            uniques=(Unique("uq_accounts_code", ("code",)), Unique(None, ("region", "code"))),
            # The referenced column comes from the parent's primary key (the statement names none).
            foreign_keys=(ForeignKey("fk_accounts_parent", ("parent_id",), "accounts", ("id",), "SET NULL"),),
            indexes=(Index("ix_accounts_live", ("region", "code DESC"), where="parent_id IS NULL"),),
            checks=(Check(None, "length(code) > 0"), Check("ck_accounts_region", "region IN ('eu', 'us')")),
        ),),
        views=(View("roots", "CREATE VIEW roots AS SELECT id FROM accounts WHERE parent_id IS NULL"),),
    )


def test_sqlite_and_postgresql_snapshots_of_the_same_revisions_differ_only_where_the_dialects_do():
    """Spelled out once, without a server: the two expected schemas above differ only in DateTime's name and
    PostgreSQL's serial defaults. (The expected schema of a tenant is always read from its own dialect.)"""
    assert diff(SQLITE_DEMO, PG_DEMO) == [
        "column invoices.id: no default expected, default nextval('invoices_id_seq'::regclass) found",
        "column invoices.issued_at: DATETIME expected, TIMESTAMP found",
        "column invoices.paid_at: DATETIME expected, TIMESTAMP found",
        "column users.created_at: DATETIME expected, TIMESTAMP found",
        "column users.id: no default expected, default nextval('users_id_seq'::regclass) found",
    ]


@pytest.mark.postgres
def test_sqlite_and_postgresql_built_by_the_same_revisions_are_comparable(pg_tenant, tmp_path):
    lite, pg = snapshot_of(sqlite_tenant(tmp_path, "acme")), snapshot_of(pg_tenant(tmp_path))
    assert diff(lite, pg) == diff(SQLITE_DEMO, PG_DEMO)
    # Everything that is not a type name or a serial default is the same: names, keys, indexes, constraints.
    for a, b in zip(lite.tables, pg.tables, strict=True):
        assert (a.name, a.primary_key, a.uniques, a.foreign_keys, a.indexes) == \
            (b.name, b.primary_key, b.uniques, b.foreign_keys, b.indexes)
        assert [c.name for c in a.columns] == [c.name for c in b.columns]


@pytest.mark.postgres
def test_postgresql_snapshot_is_one_statement(pg_tenant, tmp_path):
    engine = make_engine(pg_tenant(tmp_path))
    statements: list[str] = []
    try:
        with engine.connect() as conn:
            event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
            schema_snapshot(conn, EXCLUDE)
    finally:
        engine.dispose()
    assert len(statements) == 1 and "json_build_object" in statements[0]


def test_sqlite_snapshot_is_one_statement(tmp_path):
    engine = make_engine(sqlite_tenant(tmp_path, "acme"))
    statements: list[str] = []
    try:
        with engine.connect() as conn:
            event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
            schema_snapshot(conn, EXCLUDE)
    finally:
        engine.dispose()
    # The engine's own BEGIN (transactional DDL on SQLite, see tenants.dialects.sqlite) and one query; SQLite is
    # in-process, so neither is a network round trip.
    assert len(statements) == 2 and statements[0] == "BEGIN" and "pragma_table_info" in statements[1]


@pytest.mark.postgres
def test_postgresql_reads_expressions_includes_checks_views_and_identity(pg_tenant, tmp_path):
    url = pg_tenant(tmp_path)
    engine = make_engine(url)
    with engine.begin() as conn:
        for sql in (
            "CREATE TABLE ledger (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, amount numeric(12, 2),"
            " flag bool DEFAULT false, kind int4 NOT NULL, CONSTRAINT ck_ledger_amount CHECK (amount >= 0))",
            "CREATE INDEX ix_ledger_kind ON ledger (kind DESC, lower(flag::text)) INCLUDE (amount) WHERE kind > 0",
            "CREATE VIEW positive AS SELECT id FROM ledger WHERE amount > 0",
        ):
            conn.execute(text(sql))
    engine.dispose()
    found = snapshot_of(url)
    assert found.table("ledger") == Table(
        "ledger",
        (Column("id", "BIGINT", False, "IDENTITY ALWAYS"), Column("amount", "NUMERIC(12,2)"),
         Column("flag", "BOOLEAN", True, "false"), Column("kind", "INTEGER", False)),
        primary_key=("id",),
        indexes=(Index("ix_ledger_kind", ("kind DESC", "lower(flag::text)"), where="kind > 0",
                       include=("amount",)),),
        checks=(Check("ck_ledger_amount", "amount >= 0::numeric"),),
    )
    assert found.views == (View("positive", "SELECT ledger.id FROM ledger WHERE ledger.amount > 0::numeric;"),)


def test_the_inspector_fallback_reads_the_same_sqlite_schema(tmp_path):
    """Another backend gets the base Dialect's inspector-based snapshot: on SQLite it agrees with the query."""
    engine = make_engine(sqlite_tenant(tmp_path, "acme"))
    try:
        with engine.connect() as conn:
            assert Dialect().snapshot(conn, EXCLUDE) == SQLITE_DEMO
    finally:
        engine.dispose()


# --- SQL Server: the query parses, the recorded answer converts ------------------------------------------------

def test_mssql_snapshot_query_is_one_tsql_statement():
    statements = sqlglot.parse(MSSQL_SQL, read="tsql")
    assert len(statements) == 1
    select = statements[0]
    # The outer FOR JSON is inside a subquery: one nvarchar(max) value, not rows of ~2,000 characters.
    assert select.args.get("for_") is None
    assert "SCHEMA_ID()" in MSSQL_SQL and "OPENJSON(:exclude)" in MSSQL_SQL


MSSQL_EXPECTED = Snapshot(
    tables=(
        Table("audit_log", (
            Column("id", "BIGINT", False, "IDENTITY"),
            Column("actor", "NVARCHAR(200)", False),
            Column("payload", "NVARCHAR(MAX)", True),
            Column("amount", "NUMERIC(12,2)", True, "0"),
            Column("at", "DATETIME2(7)", False, "sysutcdatetime()"),
            Column("deleted", "BIT", False, "0"),
        ), primary_key=("id",),
            indexes=(Index("ix_audit_log_actor_at", ("actor", "at DESC"), where="[deleted]=(0)", include=("amount",)),),
            checks=(Check(None, "[amount]>=(0)"), Check("ck_audit_log_actor", "len([actor])>(0)"))),
        Table("invoices", (
            Column("id", "INTEGER", False, "IDENTITY"),
            Column("user_id", "INTEGER", False),
            Column("number", "VARCHAR(40)", False),
            Column("amount_cents", "BIGINT", False),
            Column("currency", "VARCHAR(3)", False, "'EUR'"),
            Column("issued_at", "DATETIME", False),
            Column("paid_at", "DATETIME", True),
            Column("status", "VARCHAR(20)", False, "'open'"),
        ), primary_key=("id",),
            uniques=(Unique("uq_invoices_number", ("number",)),),
            foreign_keys=(ForeignKey("fk_invoices_user_id_users", ("user_id",), "users", ("id",), "CASCADE"),),
            indexes=(Index("ix_invoices_user_id_issued_at", ("user_id", "issued_at")),)),
        Table("users", (
            Column("id", "INTEGER", False, "IDENTITY"),
            Column("email", "VARCHAR(320)", False),
            Column("display_name", "VARCHAR(200)", True),
            Column("created_at", "DATETIME", False, "getdate()"),
        ), primary_key=("id",), indexes=(Index("ux_users_email", ("email",), unique=True),)),
    ),
    views=(View("open_invoices", "CREATE VIEW open_invoices AS SELECT id, user_id, amount_cents FROM invoices "
                                 "WHERE status = 'open'"),),
)


def test_mssql_recorded_catalog_converts_to_the_model():
    snapshot = mssql_snapshot(MSSQL_CATALOG.read_text(encoding="utf-8"))
    assert snapshot == MSSQL_EXPECTED
    assert snapshot.dialect == "mssql"
    assert snapshot.fingerprint == MSSQL_EXPECTED.fingerprint == "e63c6d8d9e37"


def test_mssql_system_made_names_do_not_change_the_fingerprint():
    """Every database names its primary keys and unnamed checks anew (PK__users__3213E83F...): they are left out."""
    catalog = json.loads(MSSQL_CATALOG.read_text(encoding="utf-8"))
    for table in catalog["tables"]:
        for index in table["indexes"]:
            if index.get("is_system_named"):
                index["name"] = "PK__other__0123456789ABCDEF"
        for check in table.get("checks", ()):
            if check["is_system_named"]:
                check["name"] = "CK__other__amoun__0123ABCD"
    assert mssql_snapshot(catalog).fingerprint == MSSQL_EXPECTED.fingerprint


def test_mssql_empty_database_and_type_spellings():
    assert mssql_snapshot(None) == Snapshot() == mssql_snapshot("{}")
    assert [type_spelling(c) for c in (
        {"type_name": "nvarchar", "max_length": 40}, {"type_name": "varbinary", "max_length": -1},
        {"type_name": "decimal", "max_length": 9, "precision": 10, "scale": 2},
        {"type_name": "time", "max_length": 5, "scale": 3}, {"type_name": "float", "precision": 24},
        {"type_name": "float", "precision": 53}, {"type_name": "int", "max_length": 4},
    )] == ["nvarchar(20)", "varbinary(max)", "decimal(10,2)", "time(3)", "float(24)", "float", "int"]


# --- the model alone -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("spelling", "canonical"), [
    ("int", "INTEGER"), ("integer", "INTEGER"), ("int4", "INTEGER"), ("INT", "INTEGER"),
    ("varchar(20)", "VARCHAR(20)"), ("character varying(20)", "VARCHAR(20)"), ("VARCHAR (20)", "VARCHAR(20)"),
    ("bool", "BOOLEAN"), ("boolean", "BOOLEAN"), ("int8", "BIGINT"), ("numeric(10, 2)", "NUMERIC(10,2)"),
    ("decimal(10,2)", "NUMERIC(10,2)"), ("timestamp without time zone", "TIMESTAMP"),
    ("timestamp(3) without time zone", "TIMESTAMP(3)"), ("timestamp with time zone", "TIMESTAMPTZ"),
    ("integer[]", "INTEGER[]"), ("character(3)", "CHAR(3)"), ("double precision", "DOUBLE PRECISION"),
    ("", ""), ("text", "TEXT"),
])
def test_canonical_type(spelling, canonical):
    assert canonical_type(spelling) == canonical


def test_postgresql_default_loses_the_cast_on_a_literal_only():
    assert canonical_default("'EUR'::character varying") == "'EUR'"
    assert canonical_default("'it''s'::text") == "'it''s'"
    assert canonical_default("nextval('users_id_seq'::regclass)") == "nextval('users_id_seq'::regclass)"
    assert canonical_default(None) is None


def test_order_does_not_matter_where_it_does_not_and_does_where_it_does():
    i1, i2 = Index("i1", ("a", "b")), Index("i2", ("b",))
    a = Table("t", (Column("a", "INTEGER"), Column("b", "TEXT")), indexes=(i1, i2))
    b = Table("t", (Column("b", "TEXT"), Column("a", "INTEGER")), indexes=(i2, i1))
    assert Snapshot((a, Table("u"))) == Snapshot((Table("u"), b))
    assert Snapshot((a,)).fingerprint == Snapshot((b,)).fingerprint
    swapped = Table("t", a.columns, indexes=(Index("i1", ("b", "a")), Index("i2", ("b",))))
    assert Snapshot((a,)).fingerprint != Snapshot((swapped,)).fingerprint
    assert diff(Snapshot((a,)), Snapshot((swapped,))) == ["index i1 on t: (a, b) expected, (b, a) found"]


def test_round_trip_through_json():
    for snapshot in (SQLITE_DEMO, PG_DEMO, MSSQL_EXPECTED):
        data = json.loads(json.dumps(snapshot.to_dict()))
        again = Snapshot.from_dict(data)
        assert again == snapshot and again.fingerprint == snapshot.fingerprint == data["fingerprint"]
    assert len(SQLITE_DEMO.fingerprint) == 12
    assert SQLITE_DEMO.fingerprint != PG_DEMO.fingerprint


def test_every_kind_of_difference_has_its_line_in_a_fixed_order():
    expected = Snapshot(
        tables=(
            Table("audit_log", (Column("id", "INTEGER"),)),
            Table("invoices", (Column("id", "INTEGER", False), Column("status", "VARCHAR(20)", False, "'open'")),
                  primary_key=("id",),
                  uniques=(Unique("uq_a", ("status",)),),
                  foreign_keys=(ForeignKey("fk_a", ("id",), "users", ("id",)),),
                  indexes=(Index("ix_a", ("status",)),),
                  checks=(Check("ck_a", "id > 0"),)),
        ),
        views=(View("v1", "SELECT 1"), View("v2", "SELECT 2")),
    )
    found = Snapshot(
        tables=(
            Table("invoices", (Column("id", "INTEGER", False), Column("status", "VARCHAR(40)", True, None),
                               Column("legacy", "BOOLEAN")),
                  primary_key=("id", "status"),
                  uniques=(Unique("uq_a", ("status", "id")),),
                  foreign_keys=(ForeignKey("fk_a", ("id",), "users", ("id",), "CASCADE"),),
                  indexes=(Index("ix_a", ("status",), unique=True), Index("ix_b", ("id",))),
                  checks=(Check("ck_a", "id >= 0"), Check(None, "status <> ''"))),
            Table("scratch"),
        ),
        views=(View("v1", "SELECT 10"), View("v3", "SELECT 3")),
    )
    assert diff(expected, found) == [
        "table audit_log missing",
        "extra column invoices.legacy",
        "column invoices.status: VARCHAR(20) expected, VARCHAR(40) found",
        "column invoices.status: NOT NULL expected, nullable found",
        "column invoices.status: default 'open' expected, no default found",
        "primary key of invoices: (id) expected, (id, status) found",
        "index ix_a on invoices: (status) expected, UNIQUE (status) found",
        "extra index ix_b on invoices",
        "unique constraint uq_a on invoices: (status) expected, (status, id) found",
        "foreign key fk_a on invoices: (id) -> users(id) expected, (id) -> users(id) ON DELETE CASCADE found",
        "check ck_a on invoices: id > 0 expected, id >= 0 found",
        "extra check status <> '' on invoices",
        "extra table scratch",
        "view v1: definition differs",
        "view v2 missing",
        "extra view v3",
    ]
    assert distance(expected, found) == 16
    assert expected.diff(found) == diff(expected, found)


@pytest.mark.postgres
@pytest.mark.psycopg2
def test_postgresql_snapshot_through_psycopg2_is_the_same(pg_tenant, tmp_path):
    """psycopg2 adapts the excluded names and parses the JSON document as psycopg does."""
    url = pg_tenant(tmp_path)
    assert snapshot_of(make_url(url).set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)) \
        == snapshot_of(url) == PG_DEMO


def test_excluded_tables_are_matched_without_regard_to_case(tmp_path):
    url = sqlite_tenant(tmp_path, "acme")
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            every = schema_snapshot(conn)
            upper = schema_snapshot(conn, tuple(name.upper() for name in (*EXCLUDE, "invoices")))
    finally:
        engine.dispose()
    assert [t.name for t in every.tables] == ["alembic_version", "invoices", "tenants_history", "users"]
    assert [t.name for t in upper.tables] == ["users"]
