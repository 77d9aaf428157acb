"""Connections, version reads, per-tenant locks and error classification, per dialect.

Everything here works on one tenant's database and is used from inside a worker process. Each tenant gets
engines of its own (``NullPool``: a connection is opened for the tenant and closed with it), so nothing
database-related is ever shared between tenants or across the process boundary.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
import time
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from tenants import mssql
from tenants.secrets import scrub

if TYPE_CHECKING:  # pragma: no cover
    from tenants.sources.entra import TokenCache


class LockNotAcquired(Exception):
    """Another run holds this tenant's lock (internal: the unit of work turns it into status ``locked``)."""


class TransientLockError(Exception):
    """Taking the lock failed in a way worth a retry (SQL Server: deadlock victim while waiting)."""


class NoVersionTable(Exception):
    """The tenant database has no version table yet: it is ``new``."""


def make_engine(url: str, *, must_exist: bool = False, tokens: TokenCache | None = None) -> Engine:
    """An engine for one tenant database.

    SQLite: pysqlite's default transaction handling does not emit BEGIN before DDL, which would make every
    CREATE/ALTER autocommit and break "one transaction per revision". The two listeners below are
    SQLAlchemy's documented recipe: turn the driver's own handling off and emit BEGIN ourselves, so DDL is
    transactional and a revision that fails half-way rolls back completely. ``must_exist`` opens the file
    read-write without creating it, so a tenant whose file vanished fails instead of being recreated empty.

    SQL Server: pyodbc's login timeout at 30 s (Microsoft's advice for Azure SQL; the driver has no
    "Connection Timeout" keyword), and with ``tokens`` an Entra token for every new connection.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "mssql":
        engine = create_engine(parsed, poolclass=NullPool, connect_args={"timeout": 30})
        if tokens is not None:
            from tenants.sources.entra import install_token_hook

            install_token_hook(engine, tokens)
        return engine
    if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
        # Without it, a tenant behind a silent firewall holds a worker for the OS's TCP timeout (minutes).
        return create_engine(parsed, poolclass=NullPool, connect_args={"connect_timeout": 10})
    if parsed.get_backend_name() != "sqlite":
        return create_engine(parsed, poolclass=NullPool)
    if must_exist and parsed.database and parsed.database != ":memory:":
        parsed = parsed.set(database=f"file:{parsed.database}", query={**parsed.query, "mode": "rw", "uri": "true"})
    elif parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(parsed, poolclass=NullPool, connect_args={"timeout": 30})

    @event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_connection, _record):  # pragma: no cover - trivial
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(conn):  # pragma: no cover - trivial
        conn.exec_driver_sql("BEGIN")

    return engine


class Connector:
    """Engines for tenant databases, shared by every tenant of the same PostgreSQL server in one process.

    An engine costs more than its connection: building it, and on its first connection the dialect's
    ``initialize()`` (several round trips), and its compiled-statement cache starts empty, so every statement
    of every tenant would be compiled again. One engine per server (host, port, user, options) removes that:
    ``NullPool`` keeps no idle connection, and a ``do_connect`` listener (SQLAlchemy's documented hook for
    changing connection arguments) points each new connection at the database of the tenant being worked
    on, taken from a ``ContextVar`` (per thread, so the parent's precheck threads do not mix tenants).
    The shared engine's own ``url`` names no tenant; env.py gets the tenant's URL as ``sqlalchemy.url``.

    SQLite and SQL Server get an engine per tenant (a SQLite "server" is the file; pyodbc's connection
    string would need rewriting per tenant). With ``auth = "azure-ad"`` the SQL Server engines share one
    Entra :class:`~tenants.sources.entra.TokenCache`, made on first use: one token request per token lifetime per
    process, whatever the number of tenants and connections.
    One ``Connector`` per process (each worker makes its own); it is never shared across processes.
    """

    _SHARED = "__tenant__"  # the database name in a shared engine's URL: never connected to

    def __init__(self, auth: str | None = None, cloud: str = "public", credential=None) -> None:
        self._engines: dict[str, Engine] = {}
        self._database: ContextVar[str | None] = ContextVar("tenants_database", default=None)
        self._auth, self._cloud = auth, cloud
        self._credential = credential  # an azure-core TokenCredential; default: DefaultAzureCredential
        self._tokens: TokenCache | None = None
        self._lock = threading.Lock()

    def _token_cache(self) -> TokenCache | None:
        if self._auth != "azure-ad":
            return None
        with self._lock:  # the parent's precheck threads share this connector: one cache, one credential
            return self._make_token_cache()

    def _make_token_cache(self) -> TokenCache:
        if self._tokens is None:
            from tenants.sources.entra import TokenCache, credential_for, database_scope

            credential = self._credential or credential_for(self._cloud)
            self._tokens = TokenCache(credential, database_scope(self._cloud))
        return self._tokens

    @contextlib.contextmanager
    def engine(self, url: str, *, must_exist: bool = False) -> Iterator[Engine]:
        parsed = make_url(url)
        if parsed.get_backend_name() != "postgresql":
            tokens = self._token_cache() if parsed.get_backend_name() == "mssql" else None
            engine = make_engine(url, must_exist=must_exist, tokens=tokens)
            try:
                yield engine
            finally:
                engine.dispose()
            return
        key = parsed.set(database=self._SHARED).render_as_string(hide_password=False)
        engine = self._engines.get(key)
        if engine is None:
            engine = self._engines[key] = make_engine(key)
            event.listen(engine, "do_connect", self._choose_database)
        token = self._database.set(parsed.database)
        try:
            yield engine
        finally:
            self._database.reset(token)

    def _choose_database(self, _dialect, _record, _cargs, cparams) -> None:
        cparams["dbname"] = self._database.get() or self._SHARED

    def dispose(self) -> None:
        for engine in self._engines.values():
            engine.dispose()
        self._engines.clear()


def missing_file(url: str) -> bool:
    """True for a SQLite URL whose database file does not exist (opening it would create it)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return False
    return not Path(parsed.database.removeprefix("file:")).exists()


def read_version(conn: Connection, version_table: str) -> tuple[str, ...]:
    """The tenant's recorded heads, with one query; raises :class:`NoVersionTable` for a new database.

    This is the whole no-op path: an up-to-date tenant costs this query and nothing else (no env.py, no
    inspector round trips). The transaction the query opened is ended so the connection can be handed to
    Alembic outside a transaction (Alembic then gives each revision its own transaction).
    """
    try:
        rows = conn.execute(text(f"SELECT version_num FROM {version_table}")).scalars().all()
    except DBAPIError as err:
        conn.rollback()
        if _is_missing_table(err):
            raise NoVersionTable() from err
        raise
    conn.rollback()
    return tuple(sorted(rows))


# Tables a database can hold before any migration without being someone else's schema: nothing else. The
# query lists every user table of the database (every schema), since a customer's tables outside the default
# schema are just as much a schema Alembic never created. Tables of the default schema come back bare, others
# as ``schema.table``, so the tool's own tables (pin, history) can be left out by name.
_TABLES_SQL = {
    "sqlite": (
        "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
    ),
    "postgresql": (
        "SELECT CASE WHEN n.nspname = current_schema() THEN c.relname ELSE n.nspname || '.' || c.relname END "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND NOT c.relispartition "
        "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'"
    ),
    "mssql": (
        "SELECT CASE WHEN s.name = SCHEMA_NAME() THEN o.name ELSE s.name + '.' + o.name END "
        "FROM sys.objects AS o JOIN sys.schemas AS s ON s.schema_id = o.schema_id "
        "WHERE o.type IN ('U', 'V') AND o.is_ms_shipped = 0"
    ),
}


def schema_tables(conn: Connection, exclude: tuple[str, ...] = ()) -> list[str]:
    """The database's own tables and views, sorted, leaving out ``exclude`` (the tool's own tables): one
    query, asked only of a database without a version table, to tell a new database (nothing there) from an
    unmanaged one (a schema that Alembic never recorded). Ends the transaction it opened."""
    sql = _TABLES_SQL.get(conn.dialect.name)
    try:
        if sql is None:  # another dialect: SQLAlchemy's inspector, several round trips but correct
            from sqlalchemy import inspect

            inspector = inspect(conn)
            names = inspector.get_table_names() + inspector.get_view_names()
        else:
            names = list(conn.execute(text(sql)).scalars())
    finally:
        conn.rollback()
    skip = {name.lower() for name in exclude}
    return sorted(name for name in names if name.lower() not in skip)


# "No such table": PostgreSQL's undefined_table, ODBC's "base table or view not found" (SQL Server through
# pyodbc). SQLite's errors carry no SQLSTATE: the message says it.
_MISSING_TABLE_STATES = {"42P01", "42S02"}


def _is_missing_table(err: DBAPIError) -> bool:
    if sqlstate_of(err) in _MISSING_TABLE_STATES:
        return True
    message = str(err.orig).lower()
    return "no such table" in message or "invalid object name" in message or "doesn't exist" in message


# --- locks -------------------------------------------------------------------------------------------------

# One advisory-lock key for every tenant: PostgreSQL scopes advisory locks to the current database, so the
# same key in two tenant databases never collides, while two runs on the same tenant do.
PG_LOCK_KEY = int.from_bytes(b"tenants!", "big") & 0x7FFF_FFFF_FFFF_FFFF


_LOCKABLE = ("postgresql", "sqlite", "mssql")


def has_lock(dialect: str) -> bool:
    """Whether :func:`tenant_lock` can lock a tenant of this dialect."""
    return dialect in _LOCKABLE


@contextlib.contextmanager
def tenant_lock(engine: Engine, timeout: float) -> Iterator[None]:
    """Hold the tenant's exclusive migration lock for the duration of the block.

    The lock lives on its own connection, never on the one Alembic migrates with: a lock query on the
    migration connection would open a transaction there, and Alembic would then run every revision inside it
    and never commit (see REFERENCE.md). If this process dies, the lock dies with its session.
    Raises :class:`LockNotAcquired` when another run holds it for longer than ``timeout`` seconds.
    """
    backend = engine.url.get_backend_name()
    if backend == "postgresql":
        with _pg_lock(engine, timeout):
            yield
    elif backend == "sqlite":
        with _file_lock(engine, timeout):
            yield
    elif backend == "mssql":
        with _mssql_lock(engine, timeout):
            yield
    else:  # the API refuses to migrate other dialects (has_lock); plain alembic gets no lock there
        yield


@contextlib.contextmanager
def _pg_lock(engine: Engine, timeout: float) -> Iterator[None]:
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        deadline = time.monotonic() + timeout
        while not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": PG_LOCK_KEY}).scalar():
            if time.monotonic() >= deadline:
                raise LockNotAcquired()
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        try:
            yield
        finally:
            with contextlib.suppress(SQLAlchemyError):
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PG_LOCK_KEY})


@contextlib.contextmanager
def _mssql_lock(engine: Engine, timeout: float) -> Iterator[None]:
    # sp_getapplock with a Session owner on its own autocommit connection; see tenants.mssql.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        rc = conn.execute(text(mssql.GET_APPLOCK), {"timeout_ms": int(timeout * 1000)}).scalar()
        if rc == -1:  # timed out: another run holds it
            raise LockNotAcquired()
        if rc == -3:  # chosen as deadlock victim while waiting: worth a retry
            raise TransientLockError("sp_getapplock: chosen as deadlock victim (-3)")
        if rc is None or rc < 0:  # -2 cancelled, -999 parameter or call error
            raise RuntimeError(f"sp_getapplock failed with {rc}")
        try:
            yield
        finally:
            with contextlib.suppress(SQLAlchemyError):
                conn.execute(text(mssql.RELEASE_APPLOCK))


@contextlib.contextmanager
def _file_lock(engine: Engine, timeout: float) -> Iterator[None]:
    # SQLite has no named session locks; its own write lock is per transaction, and we commit per revision.
    # An OS advisory lock (flock) on a sidecar file spans the whole run on the tenant and, like a session lock,
    # is released by the kernel if the process dies. SQLite files are only reachable on this host, so a
    # host-local lock is enough.
    database = engine.url.database or ""
    if database.startswith("file:"):
        database = database[len("file:"):]
    if not database or database == ":memory:":
        yield
        return
    path = f"{database}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise LockNotAcquired() from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# --- error classification ----------------------------------------------------------------------------------

# PostgreSQL SQLSTATEs worth a retry on a fresh connection: connection exceptions (class 08), the server
# shutting down or starting up (57P01-57P03), too many connections (53300), deadlock (40P01), serialization
# failure (40001) and lock timeout (55P03).
_PG_TRANSIENT_STATES = {"57P01", "57P02", "57P03", "53300", "40P01", "40001", "55P03"}
_TRANSIENT_TEXT = re.compile(
    r"connection refused|could not connect|server closed the connection|connection reset|"
    r"terminating connection|connection timed out|timeout expired|no route to host|"
    r"the database system is (starting up|shutting down)|database is locked|ssl syscall error|"
    r"consuming input failed|connection is closed|too many clients|remaining connection slots|"
    r"too many connections|not yet accepting connections|in recovery mode",
    re.IGNORECASE,
)


def sqlstate_of(err: BaseException) -> str | None:
    """The SQLSTATE a database error carries, whichever driver raised it; None when it has none.

    Each driver names it differently: psycopg 3 ``sqlstate``, psycopg2 ``pgcode``, pyodbc the first of its
    ``(sqlstate, message)`` args. SQLAlchemy wraps each in a :class:`~sqlalchemy.exc.DBAPIError` whose ``orig``
    is the driver's error. Connection failures usually carry none (the server never answered); pysqlite's
    errors never do. Read a SQLSTATE through this function only: reading one driver's attribute is how
    psycopg2 tenants came to be reported unreachable instead of new (issue 9).
    """
    orig = err.orig if isinstance(err, DBAPIError) else err
    if mssql.is_pyodbc_error(orig):
        return mssql.diagnose(orig).sqlstate
    for attribute in ("sqlstate", "pgcode"):  # psycopg 3 (and asyncpg), psycopg2
        value = getattr(orig, attribute, None)
        if isinstance(value, str) and value:
            return value
    return None


def is_transient(err: BaseException) -> bool:
    """True if retrying the tenant on a fresh connection may succeed; False for a real failure.

    A failing migration (an error in its SQL) is never transient: retrying would fail the same way. A
    database that does not exist (3D000) is not transient either: it was dropped or never created.
    """
    orig = err.orig if isinstance(err, DBAPIError) else err
    if isinstance(orig, TransientLockError):
        return True
    if mssql.is_pyodbc_error(orig):
        return mssql.diagnose(orig).kind is not mssql.Kind.FAILURE
    sqlstate = sqlstate_of(orig)
    if sqlstate:
        return sqlstate.startswith("08") or sqlstate in _PG_TRANSIENT_STATES
    if isinstance(err, DBAPIError) and err.connection_invalidated:
        return True
    return bool(_TRANSIENT_TEXT.search(str(orig)))


def is_throttling(err: BaseException) -> bool:
    """True when the database says it is saturated (Azure SQL 10928, 10929, 10936, 40501, 49918): the fan-out
    should run fewer tenants at once, not only retry this one."""
    orig = err.orig if isinstance(err, DBAPIError) else err
    return mssql.is_pyodbc_error(orig) and mssql.diagnose(orig).kind is mssql.Kind.THROTTLED


def describe_error(err: BaseException, secrets: tuple[str, ...] = ()) -> str:
    """One password-free line describing ``err`` for the report.

    SQLAlchemy's message carries the driver's text, the failing SQL and a link; the report keeps the driver's
    first line (plus the SQL statement when there is one, truncated) and scrubs every secret we know of.
    """
    orig = err.orig if isinstance(err, DBAPIError) else err
    lines = [ln.strip() for ln in str(orig).strip().splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    # psycopg puts the meaningful part ("database ... does not exist") after "connection ... failed:".
    if len(lines) > 1 and first.lower().endswith("failed:"):
        first = f"{first} {lines[1]}"
    message = f"{type(orig).__name__}: {first}" if first else type(orig).__name__
    statement = getattr(err, "statement", None)
    if isinstance(err, DBAPIError) and statement:
        sql = " ".join(statement.split())
        message += f" [SQL: {sql[:200]}{'...' if len(sql) > 200 else ''}]"
    return scrub(message, secrets)
