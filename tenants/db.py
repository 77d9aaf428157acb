"""Connections, version reads, per-tenant locks and error classification, whatever the dialect.

This is the dialect-neutral front of :mod:`tenants.dialects`: each function here asks the dialect of its URL,
connection or error (:func:`~tenants.dialects.dialect_for`, :func:`~tenants.dialects.dialect_of_error`) and
keeps the part every dialect shares, so callers never name a dialect.

Everything here works on one tenant's database and is used from inside a worker process. Each tenant gets
engines of its own (``NullPool``: a connection is opened for the tenant and closed with it), so nothing
database-related is ever shared between tenants or across the process boundary.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING

from sqlalchemy import event, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError

from tenants.dialects import LockNotAcquired, Sessions, TransientLockError, dialect_for, dialect_of_error
from tenants.dialects.base import DEFAULT_SESSIONS, DEFER, TenantState, dbapi_error
from tenants.secrets import scrub
from tenants.snapshot import Snapshot

if TYPE_CHECKING:  # pragma: no cover
    from tenants.dialects.entra import TokenCache

__all__ = [
    "DEFER", "Connector", "LockNotAcquired", "NoVersionTable", "Sessions", "TenantState", "TransientLockError",
    "autocommit", "describe_error", "has_lock", "is_missing_table", "is_throttling", "is_transient", "known_tables",
    "locked_state", "make_engine", "missing_file", "permission_denied", "read_state", "read_version",
    "schema_snapshot", "sqlstate_of", "tenant_lock",
]


class NoVersionTable(Exception):
    """The tenant database has no version table yet: it is ``new``."""


def make_engine(url: str, *, must_exist: bool = False, tokens: TokenCache | None = None,
                sessions: Sessions = DEFAULT_SESSIONS) -> Engine:
    """An engine for one tenant database, made by its dialect (:meth:`tenants.dialects.Dialect.make_engine`).

    SQLite: transactional DDL and ``must_exist`` (see :mod:`tenants.dialects.sqlite`); PostgreSQL: a connect
    timeout, keepalives and the session settings of ``sessions``; SQL Server: a login timeout, the lock and
    query timeouts and, with ``tokens``, an Entra token for every new connection.
    """
    parsed = make_url(url)
    return dialect_for(parsed).make_engine(parsed, must_exist=must_exist, tokens=tokens, sessions=sessions)


class Connector:
    """Engines for tenant databases, shared by every tenant of the same PostgreSQL server in one process.

    An engine costs more than its connection: building it, and on its first connection the dialect's
    ``initialize()`` (several round trips), and its compiled-statement cache starts empty, so every statement
    of every tenant would be compiled again. One engine per server (host, port, user, options) removes that:
    ``NullPool`` keeps no idle connection, and a ``do_connect`` listener (SQLAlchemy's documented hook for
    changing connection arguments, installed by :meth:`~tenants.dialects.Dialect.route_connections` of a
    dialect whose ``shares_engine`` is set) points each new connection at the database of the tenant being
    worked on, taken from a ``ContextVar`` (per thread, so the parent's precheck threads do not mix tenants).
    The shared engine's own ``url`` names no tenant; env.py gets the tenant's URL as ``sqlalchemy.url``.

    SQLite and SQL Server get an engine per tenant (a SQLite "server" is the file; pyodbc's connection
    string would need rewriting per tenant). With ``auth = "azure-ad"`` the SQL Server engines share one
    Entra :class:`~tenants.dialects.entra.TokenCache`, made on first use: one token request per token lifetime per
    process, whatever the number of tenants and connections.
    One ``Connector`` per process (each worker makes its own); it is never shared across processes.

    Every connection is set up as ``sessions`` says (:class:`~tenants.dialects.Sessions`: DDL lock timeout,
    keepalives, idle-in-transaction timeout). ``engine(url, reads=True)`` is for the tool's own short reads
    (the parent's prechecks): its connections also get a statement timeout, so one stalled tenant cannot hold
    a precheck thread forever; a migration's statements get none unless the environment asks for one.
    """

    _SHARED = "__tenant__"  # the database name in a shared engine's URL: never connected to

    def __init__(self, auth: str | None = None, cloud: str = "public", credential=None,
                 sessions: Sessions = DEFAULT_SESSIONS) -> None:
        self._engines: dict[tuple[str, bool], Engine] = {}
        self._sessions = sessions
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
            from tenants.dialects.entra import TokenCache, credential_for, database_scope

            credential = self._credential or credential_for(self._cloud)
            self._tokens = TokenCache(credential, database_scope(self._cloud))
        return self._tokens

    @contextlib.contextmanager
    def engine(self, url: str, *, must_exist: bool = False, reads: bool = False) -> Iterator[Engine]:
        parsed = make_url(url)
        dialect = dialect_for(parsed)
        sessions = self._sessions.reading() if reads else self._sessions
        if not dialect.shares_engine:
            tokens = self._token_cache() if dialect.azure_sql else None
            engine = dialect.make_engine(parsed, must_exist=must_exist, tokens=tokens, sessions=sessions)
            try:
                yield engine
            finally:
                engine.dispose()
            return
        key = parsed.set(database=self._SHARED).render_as_string(hide_password=False)
        engine = self._engines.get((key, reads))
        if engine is None:
            engine = self._engines[key, reads] = dialect.make_engine(make_url(key), sessions=sessions)
            dialect.route_connections(engine, lambda: self._database.get() or self._SHARED)
            if not reads and sessions.batch_statements:  # a migration's DDL with its next statement (issue 13)
                dialect.batch_statements(engine)
        token = self._database.set(parsed.database)
        try:
            yield engine
        finally:
            self._database.reset(token)

    def dispose(self) -> None:
        for engine in self._engines.values():
            engine.dispose()
        self._engines.clear()


def missing_file(url: str) -> bool:
    """True for a SQLite URL whose database file does not exist (opening it would create it)."""
    parsed = make_url(url)
    return dialect_for(parsed).missing_file(parsed)


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
        if is_missing_table(err):
            raise NoVersionTable() from err
        raise
    conn.rollback()
    return tuple(sorted(rows))


def read_state(conn: Connection, version_table: str, pin_table: str, history_table: str, *,
               pin: bool = True) -> TenantState:
    """The tenant's recorded heads, its pin and which of the tool's tables exist, in one statement where the
    dialect can (PostgreSQL, SQL Server), never a failing SELECT (:meth:`tenants.dialects.Dialect.read_state`).
    This is the whole no-op path. Ends the transaction it opened (none in :func:`autocommit`)."""
    try:
        return dialect_for(conn.dialect.name).read_state(conn, version_table, pin_table, history_table, pin=pin)
    finally:
        conn.rollback()


def autocommit(conn: Connection, on: bool = True) -> None:
    """Switch the tool's own reads on ``conn`` to autocommit (``on``), or back to transactions before the
    connection is handed to Alembic (``on=False``), where the dialect's driver does it on the client
    (:attr:`tenants.dialects.Dialect.autocommit_reads`: psycopg, psycopg2); elsewhere nothing changes.

    A read outside autocommit costs three round trips on psycopg (BEGIN, the query, ROLLBACK); in autocommit
    one. But Alembic must get the connection back in transactions: with ``transaction_per_migration`` it
    begins one per revision, and under SQLAlchemy's AUTOCOMMIT isolation ``begin()`` begins nothing on the
    database, so a failing revision would leave its first statements committed. SQLAlchemy's own way is used
    (``isolation_level`` of the connection's execution options, which the pool would reset anyway); it
    needs no transaction in progress, so a transaction the connection's SQLAlchemy side autobegan is ended
    first (no round trip in autocommit: the driver has nothing to roll back).
    """
    if not dialect_for(conn.dialect.name).autocommit_reads:
        return
    if conn.in_transaction():
        conn.rollback()
    conn.execution_options(isolation_level="AUTOCOMMIT" if on else conn.default_isolation_level)


# Answers to "does this table exist?" that the tool already has for a connection (from :func:`read_state`,
# under the tenant's lock), given to SQLAlchemy's ``has_table`` for it: see :func:`known_tables`.
_KNOWN = "tenants.known_tables"


def known_tables(conn: Connection, answers: dict[str, bool | None]) -> None:
    """Let ``has_table`` questions about these tables (default schema) on ``conn`` be answered from ``answers``
    (None: not known) instead of the catalog, until the first statement on ``conn`` that is not a SELECT (DDL
    may change the answer: from then on the catalog is asked again). Alembic asks twice per run whether its
    version table exists (``get_current_heads`` and ``_ensure_version_table``), each a round trip, about a
    table whose existence was read a moment ago under the lock, in the same statement as its rows.
    ``known_tables(conn, {})`` forgets them."""
    conn.info[_KNOWN] = {name.lower(): there for name, there in answers.items() if there is not None}
    dialect = conn.engine.dialect
    if "has_table" in vars(dialect):  # answered already for this engine (engines are shared per server)
        return
    asked = dialect.has_table

    def answer(connection, table_name: str, schema: str | None) -> bool | None:
        known = getattr(connection, "info", {}).get(_KNOWN) if schema is None else None
        there = known.get(table_name.lower()) if known else None
        if there is False and not connection.in_transaction():
            # Alembic's first question, outside a transaction, is what begins (SQLAlchemy's autobegin) the
            # transaction its version table is then created in, with the first revision, which commits or
            # rolls back with it. Answered without a statement, that transaction is begun here as the statement
            # would have (else the table would be created and committed on its own). On a batching connection
            # the BEGIN itself waits for the next statement (tenants.dialects.psycopg_batch).
            connection.begin()
        return there

    def has_table(connection, table_name, schema=None, **kw):
        there = answer(connection, table_name, schema)
        return asked(connection, table_name, schema=schema, **kw) if there is None else there

    dialect.has_table = has_table
    asked_many = getattr(dialect, "has_multi_table", None)  # SQLAlchemy 2.1: Table.create(checkfirst=True) asks this
    if asked_many is not None:
        def has_multi_table(connection, table_names, schema=None, **kw):
            answers = {(schema, name): answer(connection, name, schema) for name in table_names}
            unknown = [name for (_, name), there in answers.items() if there is None]
            if unknown:
                answers.update(asked_many(connection, unknown, schema=schema, **kw))
            return answers.items()

        dialect.has_multi_table = has_multi_table
    event.listen(conn.engine, "before_cursor_execute", _forget_known_tables)


def _forget_known_tables(conn, _cursor, statement, _parameters, _context, _executemany) -> None:
    if conn.info.get(_KNOWN) and not statement.lstrip()[:6].upper().startswith(("SELECT", "WITH")):
        conn.info.pop(_KNOWN, None)


def schema_snapshot(conn: Connection, exclude: tuple[str, ...] = ()) -> Snapshot:
    """The schema of the tenant's database as plain data (:class:`tenants.snapshot.Snapshot`): its default
    schema's tables (columns, keys, indexes, constraints) and views, leaving out ``exclude`` (the version
    table and the tool's own tables, :func:`tenants.engine.unit.own_tables`; compared case-insensitively).

    One round trip on SQLite, PostgreSQL and SQL Server: each dialect has one catalog query that returns the
    whole schema as one JSON document (:meth:`tenants.dialects.Dialect.snapshot`), because a snapshot is
    taken of every tenant of a fleet and the inspector's query-per-table-per-kind would cost hundreds of round
    trips each. Ends the transaction it opened, like :func:`read_state`."""
    try:
        return dialect_for(conn.dialect.name).snapshot(conn, exclude)
    finally:
        conn.rollback()


# --- locks -------------------------------------------------------------------------------------------------

def has_lock(dialect: str) -> bool:
    """Whether :func:`tenant_lock` can lock a tenant of this dialect."""
    return dialect_for(dialect).can_lock


def tenant_lock(conn: Connection, timeout: float, own: str | None = None
                ) -> contextlib.AbstractContextManager[None]:
    """Take the tenant's exclusive migration lock on ``conn``, for the block and until ``conn`` closes.

    The lock is not released at the end of the block: closing the connection releases it (the session ends),
    and every caller closes it right after the block, so an explicit unlock would only cost a round trip per
    tenant (issue 13). A caller that keeps the connection open after the block must not rely on it being free.

    The lock lives on the connection the tenant is migrated with (issue 11), as a session-level lock
    (PostgreSQL's advisory lock, SQL Server's session-owned app lock; a SQLite file lock is per process). So
    losing the lock means losing that connection: the revision in progress fails and rolls back with it,
    and no run can go on migrating a tenant whose lock another run has taken meanwhile. (On a connection of
    its own, the lock's session could die unnoticed, a terminated backend or a NAT that forgot the flow, while
    the migration went on, and a second run entered the tenant.) The lock query's transaction is ended
    before the block, so Alembic still gets a connection with no transaction open and gives each revision
    its own (its ``begin_transaction`` defers to an open transaction and would commit nothing itself).
    If this process dies, the lock dies with its session.

    ``own`` is this run's application name: a session of the same run still holding the lock (an earlier
    attempt whose connection the client lost) is ended rather than waited for, where the database allows.
    Raises :class:`LockNotAcquired` (with who holds it, where the database tells) when another run holds it
    for longer than ``timeout`` seconds. Each dialect has its own primitive (:meth:`tenants.dialects.Dialect.lock`);
    a dialect without one yields no lock (the API refuses to migrate it, see :func:`has_lock`).
    """
    return dialect_for(conn.dialect.name).lock(conn, timeout, own)


def locked_state(conn: Connection, timeout: float, own: str | None, version_table: str, pin_table: str,
                 history_table: str, *, pin: bool = True) -> contextlib.AbstractContextManager[TenantState]:
    """:func:`tenant_lock`, then :func:`read_state` under it, for the block: the block gets the state. One round
    trip where the dialect can send both statements at once (PostgreSQL over psycopg 3, issue 13), two
    elsewhere (:meth:`tenants.dialects.Dialect.locked_state`)."""
    return dialect_for(conn.dialect.name).locked_state(conn, timeout, own, (version_table, pin_table, history_table),
                                                       pin=pin)


# --- error classification ----------------------------------------------------------------------------------
# Each error is classified by the dialect whose driver raised it (tenants.dialects.dialect_of_error).

def sqlstate_of(err: BaseException) -> str | None:
    """The SQLSTATE a database error carries, whichever driver raised it; None when it has none.

    Each driver names it differently: psycopg 3 ``sqlstate``, psycopg2 ``pgcode``, pyodbc the first of its
    ``(sqlstate, message)`` args. SQLAlchemy wraps each in a :class:`~sqlalchemy.exc.DBAPIError` whose ``orig``
    is the driver's error. Connection failures usually carry none (the server never answered); pysqlite's
    errors never do. Read a SQLSTATE through this function only: reading one driver's attribute is how
    psycopg2 tenants came to be reported unreachable instead of new (issue 9).
    """
    orig = dbapi_error(err)
    return dialect_of_error(orig).sqlstate(orig)


def is_transient(err: BaseException) -> bool:
    """True if retrying the tenant on a fresh connection may succeed; False for a real failure.

    A failing migration (an error in its SQL) is never transient: retrying would fail the same way. A
    database that does not exist (3D000) is not transient either: it was dropped or never created.
    """
    orig = dbapi_error(err)
    if isinstance(orig, TransientLockError):
        return True
    return dialect_of_error(orig).is_transient(err, orig)


def is_throttling(err: BaseException) -> bool:
    """True when the database says it is saturated (Azure SQL 10928, 10929, 10936, 40501, 49918): the fan-out
    should run fewer tenants at once, not only retry this one."""
    orig = dbapi_error(err)
    return dialect_of_error(orig).is_throttling(orig)


def permission_denied(err: BaseException) -> int | None:
    """The server's permission-denied error number (SQL Server: 229, 262, 297, 300) of an error raised as is or
    wrapped by SQLAlchemy (its ``orig``); None for any other error."""
    orig = getattr(err, "orig", None) or err
    return dialect_of_error(orig).permission_denied(orig)


def is_missing_table(err: DBAPIError) -> bool:
    """True when ``err`` says the table queried does not exist (PostgreSQL's undefined_table, ODBC's "base table
    or view not found", SQLite's "no such table")."""
    orig = dbapi_error(err)
    return dialect_of_error(orig).is_missing_table(orig)


def describe_error(err: BaseException, secrets: tuple[str, ...] = ()) -> str:
    """One password-free line describing ``err`` for the report.

    SQLAlchemy's message carries the driver's text, the failing SQL and a link; the report keeps the driver's
    first line (plus the SQL statement when there is one, truncated) and scrubs every secret we know of.
    """
    orig = dbapi_error(err)
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
