"""The dialect layer on its own: the registry, error routing, and the one ODBC connection-string tokenizer
(the cases of the two parsers it replaced: tenants.mssql's password regex and tenants.dialects.entra's
tokenizer)."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from tenants.db import has_lock, is_missing_table, is_transient, permission_denied, sqlstate_of
from tenants.dialects import DIALECTS, Dialect, dialect_for, dialect_of_error, placeholder_urls
from tenants.dialects.mssql import MSSQL
from tenants.dialects.odbc import attributes, mask_odbc, odbc_secrets, odbc_value, without
from tenants.dialects.postgresql import PostgreSQL
from tenants.dialects.sqlite import SQLite

# --- the registry ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name_or_url", "expected"), [
    ("sqlite", SQLite), ("postgresql", PostgreSQL), ("mssql", MSSQL),
    ("postgresql+psycopg2", PostgreSQL), ("mssql+pyodbc", MSSQL),
    ("sqlite:///.tenants/acme.db", SQLite), ("postgresql+psycopg://u:p@h:5432/t1", PostgreSQL),
    ("mssql+pyodbc://@srv.database.windows.net:1433/t1?driver=ODBC+Driver+18+for+SQL+Server", MSSQL),
    (make_url("postgresql://h/t1"), PostgreSQL),
])
def test_dialect_for_a_name_or_a_url(name_or_url, expected):
    assert type(dialect_for(name_or_url)) is expected


def test_dialect_for_another_backend_is_the_lockless_base():
    other = dialect_for("mysql+pymysql://u@h/t1")
    assert type(other) is Dialect and not other.can_lock and not has_lock("mysql")
    assert other.tables_sql is None  # the inspector
    assert other.offline_script("SELECT 1;", "alembic_version") == "SELECT 1;"
    with pytest.raises(Exception, match="auth is for SQL Server URLs; a mysql URL"):
        other.resolve_auth("sql", url=make_url("mysql://h/t"), raw_url=None, odbc_connect=None,
                           is_variable=bool, fail=lambda message, key=None: ValueError(message))


def test_registry_lists_every_dialect_in_name_order_with_a_placeholder_url_of_its_own():
    assert list(DIALECTS) == ["mssql", "postgresql", "sqlite"]
    urls = placeholder_urls()
    assert list(urls) == list(DIALECTS)
    assert all(dialect_for(url) is DIALECTS[name] for name, url in urls.items())
    assert all(has_lock(name) for name in DIALECTS)


def test_what_each_dialect_declares():
    sqlite, postgres, mssql = DIALECTS["sqlite"], DIALECTS["postgresql"], DIALECTS["mssql"]
    assert [d.shares_engine for d in (sqlite, postgres, mssql)] == [False, True, False]
    assert [d.lists_databases for d in (sqlite, postgres, mssql)] == [True, True, False]
    assert [d.azure_sql for d in (sqlite, postgres, mssql)] == [False, False, True]
    assert [d.retry_backoff for d in (sqlite, postgres, mssql)] == [(1.0, 30.0), (1.0, 30.0), (5.0, 60.0)]


@pytest.mark.parametrize(("url", "rides"), [
    # The lock and the read in one pipeline, given a libpq with pipeline mode (14 and newer).
    ("postgresql+psycopg://u@h/{tenant}", psycopg.Pipeline.is_supported()),
    ("postgresql+psycopg2://u@h/{tenant}", False),
    # No driver named: SQLAlchemy's default, psycopg from SQLAlchemy 2.1 on (psycopg2 before).
    ("postgresql://u@h/{tenant}",
     make_url("postgresql://").get_driver_name() == "psycopg" and psycopg.Pipeline.is_supported()),
    ("mssql+pyodbc://u@h/{tenant}?driver=FreeTDS", False),  # sp_getapplock: a round trip of its own
    ("sqlite:///db/{tenant}.db", False),
])
def test_where_the_lock_rides_with_the_read_the_workers_read_every_tenant(url, rides):
    assert dialect_for(url).lock_rides_with_read(url) is rides


def test_only_sql_server_post_processes_offline_sql():
    sql = "CREATE TABLE alembic_version (\n    version_num VARCHAR(32) NOT NULL\n);\n"
    assert DIALECTS["postgresql"].offline_script(sql, "alembic_version") == sql
    assert DIALECTS["sqlite"].offline_script(sql, "alembic_version") == sql
    script = DIALECTS["mssql"].offline_script(sql, "alembic_version")
    assert script.startswith("SET XACT_ABORT ON;") and "IF OBJECT_ID(N'alembic_version', N'U') IS NULL" in script


def test_sqlite_resolves_relative_files_against_the_base_dir(tmp_path):
    sqlite = DIALECTS["sqlite"]
    assert sqlite.with_base_dir(make_url("sqlite:///t/acme.db"), tmp_path).database == str(tmp_path / "t/acme.db")
    assert sqlite.with_base_dir(make_url("sqlite:////abs/acme.db"), tmp_path).database == "/abs/acme.db"
    assert sqlite.with_base_dir(make_url("sqlite://"), tmp_path).database is None
    assert DIALECTS["postgresql"].with_base_dir(make_url("postgresql://h/t"), tmp_path).database == "t"
    assert sqlite.missing_file(make_url(f"sqlite:///{tmp_path}/nope.db"))
    assert not sqlite.missing_file(make_url("sqlite://"))


# --- errors go to the dialect whose driver raised them -----------------------------------------------------


class _PyodbcError(Exception):
    pass


_PyodbcError.__module__ = "pyodbc"  # what the real pyodbc's errors say; this module never imports pyodbc


class _Psycopg2Error(Exception):
    pgcode = "42P01"


_Psycopg2Error.__module__ = "psycopg2.errors"


def test_each_driver_error_goes_to_its_dialect():
    assert type(dialect_of_error(_PyodbcError("08S01", "link failure"))) is MSSQL
    assert type(dialect_of_error(sqlite3.OperationalError("database is locked"))) is SQLite
    assert type(dialect_of_error(_Psycopg2Error("relation does not exist"))) is PostgreSQL
    assert type(dialect_of_error(RuntimeError("x"))) not in (MSSQL, SQLite, PostgreSQL)


def test_classification_through_the_dispatchers():
    wrapped = OperationalError("SELECT 1", {}, sqlite3.OperationalError("database is locked"))
    assert is_transient(wrapped) and sqlstate_of(wrapped) is None
    assert not is_transient(sqlite3.OperationalError("near \"SELEC\": syntax error"))
    assert sqlstate_of(_Psycopg2Error()) == "42P01" and is_missing_table(_Psycopg2Error())
    throttled = _PyodbcError("42000", "The request limit for the elastic pool is 210 and has been reached. (10928) "
                                      "(SQLExecDirectW)")
    assert is_transient(throttled) and sqlstate_of(throttled) == "42000"
    denied = _PyodbcError("42000", "VIEW SERVER STATE permission was denied (300) (SQLExecDirectW)")
    assert permission_denied(denied) == 300 and not is_transient(denied)


def test_an_error_no_dialect_owns_is_classified_by_every_dialect_s_rules():
    # No driver (or an unknown one): today's behaviour, the union of every dialect's states and messages.
    for message in ("database is locked", "terminating connection due to administrator command",
                    "connection refused", "the database system is starting up"):
        assert is_transient(RuntimeError(message)), message
    assert not is_transient(RuntimeError("syntax error at or near \"SELEC\""))
    unknown = RuntimeError("undefined table")
    unknown.sqlstate = "42P01"
    assert sqlstate_of(unknown) == "42P01" and is_missing_table(unknown)
    assert is_missing_table(RuntimeError("Invalid object name 'alembic_version'."))
    assert is_missing_table(RuntimeError("no such table: alembic_version"))
    assert permission_denied(RuntimeError("VIEW SERVER STATE permission was denied (300) (SQLExecDirectW)")) is None


def test_no_dialect_name_is_compared_outside_the_dialects():
    """Adding a dialect touches tenants/dialects/ only (issue 10), the revision guards included."""
    package = Path(__file__).resolve().parent.parent / "tenants"
    compare = re.compile(r"""(==|!=|\bin\b|startswith\()\s*\(?["'](mssql|sqlite|postgresql)["']""")
    found = [f"{path.relative_to(package)}:{n}" for path in sorted(package.rglob("*.py"))
             if "dialects" not in path.parts
             for n, line in enumerate(path.read_text().splitlines(), 1) if compare.search(line)]
    assert found == []


# --- ODBC connection strings -------------------------------------------------------------------------------


def _pairs(conn_str):
    return [(a.key, None if a.value_start is None else conn_str[a.value_start:a.end]) for a in attributes(conn_str)]


@pytest.mark.parametrize(("conn_str", "pairs"), [
    ("Driver={ODBC Driver 18 for SQL Server};Server=tcp:h,1433;Database=t1",
     [("Driver", "{ODBC Driver 18 for SQL Server}"), ("Server", "tcp:h,1433"), ("Database", "t1")]),
    ("Driver={FreeTDS};Database={db;UID=not-a-keyword}",
     [("Driver", "{FreeTDS}"), ("Database", "{db;UID=not-a-keyword}")]),
    ("PWD={a b+c;d}}e};Encrypt=yes", [("PWD", "{a b+c;d}}e}"), ("Encrypt", "yes")]),
    ("DSN=fleet;", [("DSN", "fleet")]),
    (";;x", [("", None), ("", None), ("x", None)]),
    ("  Uid =  u ; Pwd= p", [("Uid", "u "), ("Pwd", "p")]),
    ("PWD={never closed;UID=x", [("PWD", "{never closed;UID=x")]),  # an unterminated brace runs to the end
])
def test_attributes_split_on_semicolons_outside_braces(conn_str, pairs):
    assert _pairs(conn_str) == pairs


@pytest.mark.parametrize(("conn_str", "secrets", "masked"), [
    ("Driver=x;Server=h;Database=t1;UID=u;PWD=p@w;Encrypt=yes", ("p@w",),
     "Driver=x;Server=h;Database=t1;UID=u;PWD=***;Encrypt=yes"),
    ("Driver=FreeTDS;Server=h;Database=t1;UID=u;PWD={a b+c;d}}e}", ("{a b+c;d}}e}", "a b+c;d}e"),
     "Driver=FreeTDS;Server=h;Database=t1;UID=u;PWD=***"),
    ("password = s3cret ;UID=u", ("s3cret",), "password = ***;UID=u"),
    ("pWd=one;Password={two}", ("one", "{two}", "two"), "pWd=***;Password=***"),
    ("PWD=;UID=u", (), "PWD=***;UID=u"),
    # A keyword inside another attribute's braced value is text: the old regex took "y}" for a password.
    ("Database={x;PWD=y};UID=u", (), "Database={x;PWD=y};UID=u"),
    # An unterminated brace: everything after it may be the password, so all of it is masked.
    ("UID=u;PWD={s3c;ret;Encrypt=yes", ("{s3c;ret;Encrypt=yes",), "UID=u;PWD=***"),
])
def test_passwords_are_found_and_masked_by_the_tokenizer(conn_str, secrets, masked):
    assert odbc_secrets(conn_str) == secrets
    assert mask_odbc(conn_str) == masked


def test_without_drops_a_keyword_case_insensitively():
    assert without("Driver={x};Trusted_Connection=Yes;Database={a;trusted_connection=b}", "trusted_connection") \
        == "Driver={x};Database={a;trusted_connection=b}"
    assert without("Driver=x;TRUSTED_CONNECTION=yes", "Trusted_Connection") == "Driver=x"


@pytest.mark.parametrize("name", ["acme", "odd;name", "a=b", "{braced}", "close}}twice", "spa ce"])
def test_odbc_value_round_trips_through_the_tokenizer(name):
    conn_str = f"Server=h;Database={odbc_value(name)};Encrypt=yes"
    database = [a for a in attributes(conn_str) if a.key == "Database"][0]
    value = conn_str[database.value_start:database.end]
    assert (database.braced if value.startswith("{") else value) == name
    assert [a.key for a in attributes(conn_str)] == ["Server", "Database", "Encrypt"]
