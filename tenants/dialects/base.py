"""What the tool needs to know about a database dialect, in one class: :class:`Dialect`.

Everything that differs between SQLite, PostgreSQL and SQL Server is a method or an attribute here, overridden
by that dialect's module (:mod:`~tenants.dialects.sqlite`, :mod:`~tenants.dialects.postgresql`,
:mod:`~tenants.dialects.mssql`); the rest of the package asks :func:`tenants.dialects.dialect_for` and never
compares dialect names. A dialect owns:

* its engine (:meth:`Dialect.make_engine`) and whether one engine serves every tenant of a server
  (:attr:`Dialect.shares_engine`, see :class:`tenants.db.Connector`), with each connection set up as the
  environment's :class:`Sessions` says (DDL lock timeout, keepalives, statement timeouts) where the database
  has the setting;
* the per-tenant lock (:meth:`Dialect.lock`). It lives with the dialect because each database offers a
  different primitive (advisory lock, application lock, none at all for a file), and what they share is the
  contract: held on a connection of its own, never the migration connection, released by the server or the
  kernel when the process dies;
* the catalog queries: the database's own tables (:attr:`Dialect.tables_sql`) and, for ``source = "server"``,
  the databases it holds (:meth:`Dialect.list_databases`);
* error classification: which errors are its driver's (:meth:`Dialect.owns_error`), their SQLSTATE, whether
  a retry may succeed, whether the server is throttling, whether a table is missing;
* offline SQL post-processing, worker-process setup, the placeholder URL of ``tenants sql --dialect``, and
  the configuration rules that only make sense for it (authentication, the Azure SQL pool).

This base class is also the dialect of any other SQLAlchemy backend (MySQL, ...): SQL-standard SQLSTATEs, the
inspector for the catalog, no lock (so the API refuses to migrate it; ``tenants sql`` still works).
Dialects are stateless: one instance each, shared by the whole process.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from sqlalchemy import create_engine
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from tenants.dialects.catalog import inspect_snapshot
from tenants.snapshot import Snapshot

if TYPE_CHECKING:  # pragma: no cover
    from tenants.dialects.entra import TokenCache


class LockNotAcquired(Exception):
    """Another run holds this tenant's lock (internal: the unit of work turns it into status ``locked``).

    ``holder`` says who, where the database can tell (its session, and the run id it carries as its
    application name); None when it cannot."""

    def __init__(self, holder: str | None = None) -> None:
        super().__init__(holder or "the tenant's lock is held")
        self.holder = holder


class TransientLockError(Exception):
    """Taking the lock failed in a way worth a retry (SQL Server: deadlock victim while waiting)."""


Connect = Callable[[URL], contextlib.AbstractContextManager[Engine]]  # an engine for a URL (scratch_database)
Fail = Callable[..., Exception]  # config's `fail(message, key)`: the error to raise, naming file and line


# Execution option of a statement the tool sends and reads nothing back from (its history row): a dialect that
# batches statements (Dialect.batch_statements) may send it with the next one that needs an answer.
DEFER = "tenants_defer"


@dataclass(frozen=True)
class Sessions:
    """How the tool's connections protect themselves and the customer's database (the environment keys of the
    same names, see :mod:`tenants.config`). Plain data: it travels to every worker process inside the job.

    Every wait gets a deadline: a DDL statement waits at most ``ddl_lock_timeout`` for a table lock (then it
    fails with a transient error, its revision rolls back and the tenant is retried, so a customer's queries
    never queue behind it for longer); a connection that goes silent is given up after about
    ``network_timeout`` (TCP keepalives and ``tcp_user_timeout``); a session left idle inside a transaction is
    ended by the server after ``idle_in_transaction_timeout``; each statement is cut after
    ``statement_timeout``. The last one is off for migrations (a long migration is legitimate) and set to
    ``read_timeout`` for the tool's own short reads (:meth:`reading`). Seconds; 0 turns one off. Each dialect
    applies what its database offers (:meth:`Dialect.make_engine`).
    """

    ddl_lock_timeout: float | None = None  # None: the dialect's default (Dialect.ddl_lock_timeout)
    network_timeout: float = 60.0
    idle_in_transaction_timeout: float = 300.0
    statement_timeout: float = 0.0
    read_timeout: float = 30.0
    # The name every session of a run carries (PostgreSQL's application_name, SQL Server's program_name):
    # ``tenants <run id>``, so an operator can see which run holds a tenant, and a retry can tell a stale
    # session of its own run from another run (see Dialect.lock). None: the driver's default.
    application_name: str | None = None
    # Whether a migration connection holds back the statements nobody reads an answer from (DDL, the history
    # row) and sends them with the next one that needs an answer: PostgreSQL over psycopg 3 only
    # (tenants.dialects.psycopg_batch). Off: every statement is its own round trip, as with plain Alembic.
    batch_statements: bool = True
    reads_only: bool = False  # the tool's own reads (prechecks, discovery, read-backs): see reading()

    def reading(self) -> Sessions:
        """The settings of a connection that only reads (prechecks, discovery): every statement has a deadline,
        and no statement needs a transaction (each read is one statement), so a dialect may run them all in
        autocommit from the login on (PostgreSQL)."""
        return replace(self, statement_timeout=self.read_timeout, reads_only=True)

    def lock_timeout(self, dialect: Dialect) -> float:
        return dialect.ddl_lock_timeout if self.ddl_lock_timeout is None else self.ddl_lock_timeout


DEFAULT_SESSIONS = Sessions()


@dataclass(frozen=True)
class TenantState:
    """What the tool reads of a tenant before touching it, in as few round trips as its dialect allows (one on
    PostgreSQL and SQL Server): :meth:`Dialect.read_state`.

    ``versions``: the version table's rows, sorted; None when there is no version table (a new or unmanaged
    database). ``tables``: with no version table, the database's own tables and views (every schema, those of
    the default schema bare, see :meth:`Dialect.tables`), unfiltered; () otherwise. ``pin``: the pin
    table's row (reason, pinned_by, pinned_at), None without one. ``history``: whether the history table
    exists; None when this dialect did not look (then whoever writes it checks first).
    """

    versions: tuple[str, ...] | None
    tables: tuple[str, ...] = ()
    pin: tuple | None = None
    history: bool | None = None


class Dialect:
    """A SQLAlchemy backend as the tool sees it; the defaults are those of a backend it has no module for."""

    name: ClassVar[str] = ""  # SQLAlchemy's backend name (URL.get_backend_name())
    placeholder_url: ClassVar[str | None] = None  # `tenants sql --dialect NAME`: picks the dialect, never connects
    can_lock: ClassVar[bool] = False  # has a per-tenant lock: the API migrates only such dialects
    shares_engine: ClassVar[bool] = False  # one engine per server, routed per tenant (tenants.db.Connector)
    lists_databases: ClassVar[bool] = False  # supports `source = "server"`
    azure_sql: ClassVar[bool] = False  # Azure SQL: azure-* sources, `auth`, Entra tokens, pressure_limit
    retry_backoff: ClassVar[tuple[float, float]] = (1.0, 30.0)  # defaults of retry_backoff, retry_backoff_max
    tables_sql: ClassVar[str | None] = None  # the database's own tables in one query; None: the inspector
    # Default of `ddl_lock_timeout` (seconds; 0: wait as long as the database lets a statement wait).
    ddl_lock_timeout: ClassVar[float] = 0.0
    # The expected schema of each revision (issue 12) is built on a scratch database only given the
    # environment's `reference_database` (SQL Server: the tool may not create databases there); without it,
    # consensus. Other dialects make their own scratch database and refuse the key.
    needs_reference_database: ClassVar[bool] = False

    # What the revision guards (tenants.guards) do on this dialect.
    rebuilds_to_drop_column: ClassVar[bool] = False  # drop a column in batch mode (a table rebuild)
    # Offline, the kinds of object whose own IF [NOT] EXISTS syntax makes a step idempotent; others render
    # plain DDL.
    if_exists_kinds: ClassVar[frozenset[str]] = frozenset()
    guards_in_tsql: ClassVar[bool] = False  # offline, each guarded step is wrapped in IF <condition> BEGIN..END
    # Online, one catalog query per question (table, column, index, foreign_key, unique) with :table, :schema
    # and :name; a question not here is answered by SQLAlchemy's inspector.
    exists_sql: ClassVar[dict[str, str]] = {}

    # Error classification, by SQLSTATE where the driver gives one, else by message. The defaults are the
    # SQL standard's (class 08: connection exception) and messages any driver's socket layer produces.
    sqlstate_attributes: ClassVar[tuple[str, ...]] = ("sqlstate",)  # the DB-API drivers' usual name
    transient_states: ClassVar[frozenset[str]] = frozenset()
    transient_text: ClassVar[tuple[str, ...]] = (
        "connection refused", "could not connect", "connection reset", "connection timed out", "timeout expired",
        "no route to host", "ssl syscall error", "connection is closed", "too many connections",
    )
    missing_table_states: ClassVar[frozenset[str]] = frozenset()
    missing_table_text: ClassVar[tuple[str, ...]] = ("doesn't exist",)  # MySQL's "Table 'x' doesn't exist"
    # Modules a worker process of this dialect imports on its first tenant (the driver, SQLAlchemy's dialect):
    # the forkserver imports them once instead (tenants.engine.forkserver.start_early, tenants.dialects.workers).
    worker_modules: ClassVar[tuple[str, ...]] = ()

    # --- engines -----------------------------------------------------------------------------------------

    def make_engine(self, url: URL, *, must_exist: bool = False, tokens: TokenCache | None = None,
                    sessions: Sessions = DEFAULT_SESSIONS) -> Engine:
        """An engine for one tenant database (``NullPool``: a connection is opened for the tenant and closed
        with it), its connections set up as ``sessions`` says where the dialect can. ``must_exist`` and
        ``tokens`` concern only the dialects that use them."""
        return create_engine(url, poolclass=NullPool)

    def route_connections(self, engine: Engine, database: Callable[[], str]) -> None:
        """Point each new connection of a shared engine at ``database()`` (only if :attr:`shares_engine`)."""
        raise NotImplementedError(f"{self.name or 'this'} dialect does not share engines")

    def batch_statements(self, engine: Engine) -> None:
        """Have ``engine``'s migration connections send the statements nobody reads an answer from together with
        the next one that needs an answer, where the dialect's driver can (PostgreSQL over psycopg 3). Called
        after :meth:`route_connections`; the default changes nothing."""

    def missing_file(self, url: URL) -> bool:
        """True when connecting would create the database (a file that does not exist)."""
        return False

    def with_base_dir(self, url: URL, base_dir: Path) -> URL:
        """``url`` with a database path relative to ``base_dir`` made absolute (file databases only)."""
        return url

    # --- the per-tenant lock -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self, conn: Connection, timeout: float, own: str | None = None) -> Iterator[None]:
        """Hold the tenant's exclusive migration lock on ``conn`` for the block (see
        :func:`tenants.db.tenant_lock`); ``own`` is this run's application name (:attr:`Sessions.application_name`).

        No lock here: the API refuses to migrate a dialect without one (:attr:`can_lock`); plain Alembic gets
        none either."""
        yield

    def lock_rides_with_read(self, url: str) -> bool:
        """Whether :meth:`locked_state` costs one round trip on ``url``'s driver, as a plain read does: then a
        worker's read under the lock costs what the parent's lock-free read costs, and the fan-out lets the
        workers read every tenant (each logged into once) instead of reading ahead in the parent
        (:class:`tenants.engine.fanout.ProcessStrategy`). Here the lock is a round trip of its own."""
        return False

    @contextlib.contextmanager
    def locked_state(self, conn: Connection, timeout: float, own: str | None, tables: tuple[str, str, str], *,
                     pin: bool = True) -> Iterator[TenantState]:
        """:meth:`lock`, then :meth:`read_state` of ``tables`` (version, pin, history) under it: the block gets the
        state. Here two round trips; a dialect that can send both at once overrides it (PostgreSQL)."""
        with self.lock(conn, timeout, own):
            try:
                state = self.read_state(conn, *tables, pin=pin)
            finally:
                conn.rollback()
            yield state

    # --- catalog -----------------------------------------------------------------------------------------

    def list_databases(self, template_url: str, query: Callable[[str], list[str]]) -> list[str]:
        """The names of the databases ``{tenant}`` can stand for in ``template_url`` (``source = "server"``).

        ``query(sql)`` runs one catalog query on the server's maintenance database (with the source's retries)
        and returns its first column; a dialect that lists files does not call it. Raises
        :class:`~tenants.errors.ConfigError` when the URL cannot be listed."""
        raise NotImplementedError(f"source 'server' cannot list {self.name or 'these'} databases")

    # --- the tenant's state, in one read ----------------------------------------------------------------

    # Whether the tool's own reads may run in autocommit (no BEGIN/ROLLBACK round trips around each): a driver
    # whose autocommit switch is client-side only (psycopg, psycopg2). See tenants.db.autocommit.
    autocommit_reads: ClassVar[bool] = False

    def read_state(self, conn: Connection, version_table: str, pin_table: str, history_table: str, *,
                   pin: bool = True) -> TenantState:
        """The version table's rows, the pin and whether the tool's tables exist (:class:`TenantState`).
        ``pin=False``: the caller does not need the pin (a dialect that reads it for free may still).

        Here, for a backend without a one-statement version: a query per question, a missing table being the
        error its SELECT raises (each read's transaction is ended by the caller, :func:`tenants.db.read_state`).
        Dialects override it with one statement that never fails on a missing table."""
        from sqlalchemy import text

        versions: tuple[str, ...] | None
        try:
            versions = tuple(sorted(conn.execute(text(f"SELECT version_num FROM {version_table}")).scalars()))
        except DBAPIError as err:
            conn.rollback()
            if not self.is_missing_table(dbapi_error(err)):
                raise
            versions = None
        conn.rollback()
        tables = () if versions is not None else tuple(self.tables(conn))
        if not pin:
            return TenantState(versions, tables)
        try:  # a tenant can be pinned before its first migration: read it with or without a version table
            row = conn.execute(text(f"SELECT reason, pinned_by, pinned_at FROM {pin_table}")).first()
        except DBAPIError as err:
            conn.rollback()
            if not self.is_missing_table(dbapi_error(err)):
                raise
            row = None
        return TenantState(versions, tables, tuple(row) if row else None, None)

    def tables(self, conn: Connection) -> list[str]:
        """The database's own tables and views, unfiltered: asked of a database without a version table, to tell
        a new one (nothing but the tool's own tables, :func:`tenants.engine.unit.foreign_tables`) from an
        unmanaged one (a schema Alembic never recorded). Every schema counts, since a customer's tables outside
        the default schema are just as much a schema Alembic never created; tables of the default schema come
        back bare, others as ``schema.table``, so the tool's own tables can be left out by name."""
        if self.tables_sql is None:  # the inspector: several round trips, but correct
            from sqlalchemy import inspect

            inspector = inspect(conn)
            return inspector.get_table_names() + inspector.get_view_names()
        from sqlalchemy import text

        return list(conn.execute(text(self.tables_sql)).scalars())

    # --- errors ------------------------------------------------------------------------------------------

    def owns_error(self, orig: BaseException) -> bool:
        """Whether ``orig`` (a driver's exception, not SQLAlchemy's wrapper) was raised by this dialect's
        drivers: it is then classified by this dialect alone."""
        return False

    def sqlstate(self, orig: BaseException) -> str | None:
        for attribute in self.sqlstate_attributes:
            value = getattr(orig, attribute, None)
            if isinstance(value, str) and value:
                return value
        return None

    def is_transient(self, err: BaseException, orig: BaseException) -> bool:
        """``err`` as raised (possibly SQLAlchemy's wrapper), ``orig`` the driver's error inside it."""
        sqlstate = self.sqlstate(orig)
        if sqlstate:
            return sqlstate.startswith("08") or sqlstate in self.transient_states
        if isinstance(err, DBAPIError) and err.connection_invalidated:
            return True
        return bool(_any_of(self.transient_text).search(str(orig)))

    def is_throttling(self, orig: BaseException) -> bool:
        return False

    def permission_denied(self, orig: BaseException) -> int | None:
        """The server's error number when ``orig`` says a permission is missing; None otherwise."""
        return None

    def is_missing_table(self, orig: BaseException) -> bool:
        if self.sqlstate(orig) in self.missing_table_states:
            return True
        message = str(orig).lower()
        return any(text in message for text in self.missing_table_text)

    # --- offline SQL, workers, configuration -------------------------------------------------------------

    def offline_script(self, sql: str, version_table: str) -> str:
        """The offline (``--sql``) script Alembic rendered, made fit to hand to this dialect's tools."""
        return sql

    def setup_worker(self, *, check_client: bool) -> None:
        """Prepare a worker process before its first tenant. ``check_client``: the run has a tenant timeout,
        so this process may be killed mid-statement."""

    def resolve_auth(self, auth: str | None, *, url: URL, raw_url: str | None, odbc_connect: str | None,
                     is_variable: Callable[[str], bool], fail: Fail) -> str | None:
        """The environment's ``auth`` after this dialect's rules (``fail(message, key)`` makes the error).

        ``url`` is the parsed URL, ``raw_url`` the one written in the file (before ``${VAR}``) when ``url``
        was given, ``is_variable`` tells a ``${VAR}`` reference. Only SQL Server has ``auth``."""
        if auth is not None:
            raise fail(f"auth is for SQL Server URLs; a {url.get_backend_name()} URL carries its credentials "
                       "itself", "auth")
        return None

    # --- schema snapshot (issue 12) ----------------------------------------------------------------------

    def snapshot(self, conn: Connection, exclude: Iterable[str] = ()) -> Snapshot:
        """The schema of the connection's database (its default schema), leaving out the tables ``exclude``
        names (case-insensitively): the version table and the tool's own tables. Use it through
        :func:`tenants.db.schema_snapshot`, which ends the transaction.

        SQLite, PostgreSQL and SQL Server read it with one catalog query (see
        :mod:`tenants.dialects.catalog`); any other backend through SQLAlchemy's inspector, here: several
        round trips per table, but correct wherever SQLAlchemy can reflect."""
        return inspect_snapshot(conn, exclude)

    def scratch_database(self, url: URL, *, connect: Connect, reference: str | None = None,
                         maintenance: str | None = None) -> contextlib.AbstractContextManager[URL] | None:
        """A context manager yielding the URL of an empty database of this dialect, to build the expected
        schema of each revision on (:mod:`tenants.engine.expected`), and cleaning it up on exit; None when
        this dialect has no scratch database to offer (then the expected schemas come from consensus).

        ``url`` is a URL of the environment (its server, driver, credentials); ``connect(url)`` is a context
        manager giving an engine for a URL (the tool's :class:`tenants.db.Connector`, Entra tokens included);
        ``reference`` the environment's ``reference_database``; ``maintenance`` its ``maintenance_database``.
        Each call is a fresh, empty database: the builder calls it again to reset (a branched graph)."""
        return None


class AnyDriver(Dialect):
    """The classification of an error no dialect owns (no driver, or a driver we have no module for): the
    union of every dialect's SQLSTATEs and messages, so that a wrapped or unknown error is never treated
    more harshly than its dialect would treat it."""

    def __init__(self, dialects: Iterable[Dialect]) -> None:
        every = [Dialect(), *dialects]
        self.sqlstate_attributes = tuple(dict.fromkeys(a for d in every for a in d.sqlstate_attributes))
        self.transient_states = frozenset().union(*(d.transient_states for d in every))
        self.transient_text = tuple(dict.fromkeys(t for d in every for t in d.transient_text))
        self.missing_table_states = frozenset().union(*(d.missing_table_states for d in every))
        self.missing_table_text = tuple(dict.fromkeys(t for d in every for t in d.missing_table_text))


@functools.cache
def _any_of(texts: tuple[str, ...]) -> re.Pattern[str]:
    """One case-insensitive regex matching any of ``texts`` (regex fragments), compiled once per tuple."""
    return re.compile("|".join(texts), re.IGNORECASE)


def dbapi_error(err: BaseException) -> BaseException:
    """The driver's own exception inside SQLAlchemy's wrapper (``err`` itself when it is not wrapped)."""
    return err.orig if isinstance(err, DBAPIError) else err

