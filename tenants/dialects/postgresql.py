"""PostgreSQL: many tenant databases on one server, reached through psycopg (3) or psycopg2.

Engines are shared per server (see :class:`tenants.db.Connector` for why): :meth:`PostgreSQL.route_connections`
points each new connection at the tenant being worked on. The lock is an advisory lock, scoped by the server
to the current database. Worker processes of a run with a tenant timeout ask the server to watch for a
vanished client (:meth:`PostgreSQL.setup_worker`).
"""

from __future__ import annotations

import contextlib
import re
import secrets
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool, Pool

from tenants.dialects import catalog_postgresql
from tenants.dialects.base import DEFAULT_SESSIONS, Connect, Dialect, LockNotAcquired, Sessions, TenantState
from tenants.snapshot import Snapshot

if TYPE_CHECKING:  # pragma: no cover
    from tenants.dialects.entra import TokenCache

# One advisory-lock key for every tenant: PostgreSQL scopes advisory locks to the current database, so the
# same key in two tenant databases never collides, while two runs on the same tenant do.
LOCK_KEY = int.from_bytes(b"tenants!", "big") & 0x7FFF_FFFF_FFFF_FFFF

# Every user table of the database (every schema): see Dialect.tables.
TABLES_SQL = (
    "SELECT CASE WHEN n.nspname = current_schema() THEN c.relname ELSE n.nspname || '.' || c.relname END "
    "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND NOT c.relispartition "
    "AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_%'"
)
# Who holds a tenant's lock: its session (pid, start) and the application name it carries (a run of this tool
# says ``tenants <run id>``). pg_locks shows a bigint advisory key as classid (high half) and objid (low half).
# Another role's session shows a pid only, without the pg_read_all_stats privilege.
LOCK_HOLDER_SQL = (
    "SELECT a.pid, a.application_name, a.backend_start FROM pg_catalog.pg_locks l "
    "LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
    "AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database()) "
    "AND ((l.classid::bigint << 32) | l.objid::bigint) = :k AND l.pid <> pg_backend_pid() LIMIT 1"
)
SCRATCH_PREFIX = "tenants_scratch_"  # the throwaway databases the expected schemas are built on (issue 12)
DATABASES_SQL = "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate"

# 53300's message, for a connection refused before a SQLSTATE could be read (libpq's startup failure).
_THROTTLE_TEXT = re.compile("too many clients|remaining connection slots are reserved|too many connections for",
                            re.IGNORECASE)
_DRIVERS = ("psycopg", "psycopg2", "pg8000", "asyncpg")  # modules whose errors are PostgreSQL's
_LIBPQ = ("psycopg", "psycopg2")  # drivers that take libpq's connection parameters (keepalives, options)


# PostgreSQL: one catalog query per question. SQLAlchemy's inspector answers the same, but reflecting a
# table's indexes there costs several queries and much Python per call, and guards run for every tenant of
# every revision (measured: ~25% of a fleet upgrade's client time). Other dialects use the inspector.
_REL = ("FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
           "WHERE c.relname = :table AND n.nspname = COALESCE(:schema, current_schema())")
EXISTS_SQL = {
    "table": f"SELECT EXISTS (SELECT 1 {_REL} AND c.relkind IN ('r', 'p', 'v', 'm', 'f'))",
    "column": f"SELECT EXISTS (SELECT 1 {_REL} AND EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a "
              "WHERE a.attrelid = c.oid AND a.attname = :name AND a.attnum > 0 AND NOT a.attisdropped))",
    "index": f"SELECT EXISTS (SELECT 1 {_REL} AND EXISTS (SELECT 1 FROM pg_catalog.pg_index x "
             "JOIN pg_catalog.pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = c.oid AND i.relname = :name))",
    "foreign_key": f"SELECT EXISTS (SELECT 1 {_REL} AND EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k "
                   "WHERE k.conrelid = c.oid AND k.contype = 'f' AND k.conname = :name))",
    "unique": f"SELECT EXISTS (SELECT 1 {_REL} AND EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k "
              "WHERE k.conrelid = c.oid AND k.contype = 'u' AND k.conname = :name))",
}


# The tenant's state in one statement that never fails (tenants.dialects.base.TenantState): to_regclass says
# whether each table exists, and table_to_xml (strict: NULL for a table that is not there, so it is never
# opened) returns the rows of the version and pin tables. A SELECT of a missing table would fail instead, and a
# subquery of one cannot even be planned. The database's own tables come along only when there is no version
# table (the CASE's subquery is an init plan, run only when asked for).
STATE_SQL = (
    "SELECT table_to_xml(to_regclass(:version_table), false, false, '')::text AS versions, "
    "table_to_xml(to_regclass(:pin_table), false, false, '')::text AS pin, "
    "to_regclass(:history_table) IS NOT NULL AS history, "
    f"CASE WHEN to_regclass(:version_table) IS NULL THEN ARRAY({TABLES_SQL}) END AS tables"
)


# The lock's and the state's statements for psycopg itself (its placeholders), sent in one pipeline.
_LOCK_PSYCOPG = "SELECT pg_try_advisory_lock(%s)"
_STATE_PSYCOPG = re.sub(r"(?<!:):(\w+)", r"%(\1)s", STATE_SQL.replace("%", "%%"))


def _state_params(version_table: str, pin_table: str, history_table: str) -> dict[str, str]:
    return {"version_table": version_table, "pin_table": pin_table, "history_table": history_table}


def _state_of(row) -> TenantState:
    """The tenant's state from :data:`STATE_SQL`'s row (its columns by name)."""
    versions = _xml_rows(row.versions)
    pins = _xml_rows(row.pin)
    found = None
    if pins:
        first = pins[0]
        at = first.get("pinned_at")
        found = (first.get("reason", ""), first.get("pinned_by"), datetime.fromisoformat(at) if at else None)
    return TenantState(
        None if versions is None else tuple(sorted(r.get("version_num", "") for r in versions)),
        tuple(row.tables or ()), found, bool(row.history))


def _answer_from_login(dialect) -> None:
    """Spare SQLAlchemy's first connection of an engine three of its set-up round trips (issue 13): the server's
    version and ``standard_conforming_strings`` came with the login (the server reports both in its startup
    answer, psycopg keeps them in ``info``), so they are not asked again with a query each; the default schema
    and isolation level, which the server does not report, are asked with one query instead of two. Each
    engine does this once per process (engines are shared per server, :class:`tenants.db.Connector`)."""

    def server_version(connection):
        number = connection.connection.dbapi_connection.info.server_version  # e.g. 150013, 90624
        major = number // 10000
        return (major, number % 10000) if major >= 10 else (major, number // 100 % 100, number % 100)

    def backslash_escapes(connection):
        info = connection.connection.dbapi_connection.info
        dialect._backslash_escapes = info.parameter_status("standard_conforming_strings") == "off"

    def default_schema(connection):
        # The default schema and the default isolation level, asked one after the other by SQLAlchemy
        # (DefaultDialect.initialize): one query for both.
        schema, isolation = connection.exec_driver_sql(
            "SELECT current_schema(), current_setting('transaction_isolation')").one()
        answered["isolation"] = isolation.upper()
        return schema

    def default_isolation(dbapi_connection):
        return answered.pop("isolation", None) or asked_isolation(dbapi_connection)

    answered: dict[str, str] = {}
    asked_isolation = dialect.get_default_isolation_level
    dialect._get_server_version_info = server_version
    dialect._set_backslash_escapes = backslash_escapes
    dialect._get_default_schema_name = default_schema
    dialect.get_default_isolation_level = default_isolation


def _pipelines(raw) -> bool:
    """Whether ``raw`` (a DB-API connection) is psycopg 3's, in autocommit: statements can share a round trip."""
    psycopg = sys.modules.get("psycopg")  # loaded if raw is one of its connections
    return (psycopg is not None and isinstance(raw, psycopg.Connection) and raw.autocommit
            and psycopg.Pipeline.is_supported())


def _xml_rows(document: str | None) -> list[dict[str, str]] | None:
    """The rows of table_to_xml's document, each column (of those not NULL) by name; None for no table."""
    if document is None:
        return None
    from xml.etree import ElementTree

    return [{column.tag: column.text or "" for column in row} for row in ElementTree.fromstring(document)]


class PostgreSQL(Dialect):
    name = "postgresql"
    if_exists_kinds = frozenset({"table", "column", "index"})
    exists_sql = EXISTS_SQL
    placeholder_url = "postgresql+psycopg://server/tenant"
    can_lock = True
    shares_engine = True
    lists_databases = True
    tables_sql = TABLES_SQL
    sqlstate_attributes = ("sqlstate", "pgcode")  # psycopg 3 (and asyncpg), psycopg2
    # SQLSTATEs worth a retry on a fresh connection, besides connection exceptions (class 08): the server
    # shutting down or starting up (57P01-57P03), too many connections (53300), deadlock (40P01),
    # serialization failure (40001), lock timeout (55P03: a DDL statement gave up after `ddl_lock_timeout`
    # behind someone's table lock, and its revision rolled back) and a session ended for sitting idle in a
    # transaction (25P03, `idle_in_transaction_timeout`: the client went quiet). A statement timeout (57014)
    # is not retried: the same statement would run as long again. A database that does not exist (3D000) is
    # not transient: it was dropped or never created.
    transient_states = frozenset({"57P01", "57P02", "57P03", "53300", "40P01", "40001", "55P03", "25P03"})
    transient_text = (
        *Dialect.transient_text, "server closed the connection", "terminating connection",
        "the database system is (starting up|shutting down)", "consuming input failed", "too many clients",
        "remaining connection slots", "not yet accepting connections", "in recovery mode",
    )
    missing_table_states = frozenset({"42P01"})  # undefined_table

    ddl_lock_timeout = 30.0
    worker_modules = ("psycopg", "sqlalchemy.dialects.postgresql.psycopg", "tenants.dialects.psycopg_batch")
    autocommit_reads = True  # psycopg and psycopg2 switch autocommit on the client: no round trip

    def read_state(self, conn: Connection, version_table: str, pin_table: str, history_table: str, *,
                   pin: bool = True) -> TenantState:
        """One statement, one round trip, whatever exists (:data:`STATE_SQL`)."""
        return _state_of(conn.execute(text(STATE_SQL), _state_params(version_table, pin_table, history_table)).one())

    def lock_rides_with_read(self, url: str) -> bool:
        """psycopg 3 sends the lock and the read in one pipeline (:meth:`locked_state`), given a libpq with
        pipeline mode (14 and newer; psycopg's binary wheels carry one); psycopg2 cannot."""
        if make_url(url).get_driver_name() != "psycopg":
            return False
        import psycopg

        return psycopg.Pipeline.is_supported()

    @contextlib.contextmanager
    def locked_state(self, conn: Connection, timeout: float, own: str | None, tables: tuple[str, str, str], *,
                     pin: bool = True) -> Iterator[TenantState]:
        """The lock and the state in one round trip on psycopg 3 in autocommit (the unit of work's case): both
        statements go in one pipeline, the read after the lock's, so it runs under the lock if the lock was
        taken; if it was not, the read is dropped and :meth:`lock` waits as usual, then the state is read."""
        raw = conn.connection.dbapi_connection
        if _pipelines(raw):
            from psycopg.rows import namedtuple_row

            with raw.pipeline():
                lock = raw.cursor()
                lock.execute(_LOCK_PSYCOPG, (LOCK_KEY,))
                read = raw.cursor(row_factory=namedtuple_row)
                read.execute(_STATE_PSYCOPG, _state_params(*tables))
            if lock.fetchone()[0]:
                yield _state_of(read.fetchone())
                return
        with super().locked_state(conn, timeout, own, tables, pin=pin) as state:
            yield state

    def make_engine(self, url: URL, *, must_exist: bool = False, tokens: TokenCache | None = None,
                    sessions: Sessions = DEFAULT_SESSIONS) -> Engine:
        if url.get_driver_name() != "psycopg":
            return create_engine(url, poolclass=NullPool, connect_args=self.connect_args(url, sessions))
        # use_native_hstore=False: SQLAlchemy's HSTORE type then converts values itself (as with any driver
        # without an hstore adapter) instead of looking the type up on each engine's first connection: a
        # savepoint, a query and its release, three round trips to a far-away pool (issue 13).
        connect_args = self.connect_args(url, sessions)
        if sessions.reads_only:
            # In autocommit from the login on: SQLAlchemy's set-up of the engine's first connection then costs
            # one round trip (its one query, below), not three (BEGIN, the query, ROLLBACK); the reads switch
            # to autocommit anyway (tenants.db.autocommit).
            connect_args["autocommit"] = True
        engine = create_engine(url, poolclass=NullPool, connect_args=connect_args, use_native_hstore=False)
        _answer_from_login(engine.dialect)
        return engine

    def connect_args(self, url: URL, sessions: Sessions) -> dict[str, object]:
        """libpq's connection parameters for ``sessions``; a parameter the URL sets itself is left to it.

        * ``connect_timeout`` 10 s: without it, a tenant behind a silent firewall holds a worker for the OS's
          TCP timeout (minutes).
        * TCP keepalives and ``tcp_user_timeout``: a connection whose peer went silent (a black-holed packet,
          a NAT that forgot the flow) fails after about ``network_timeout`` instead of hanging forever, idle
          (keepalive probes: half of it idle, then 3 probes over the other half) or with data unacknowledged
          (``tcp_user_timeout``).
        * The session's settings in the startup packet (``options=-c name=value``): in force before the first
          statement, env.py's included, for no round trip; ``SET`` would cost one per connection. (Behind
          PgBouncer, add ``options`` to its ``ignore_startup_parameters``, or set these keys to 0.)
        """
        if url.get_driver_name() not in _LIBPQ and url.get_driver_name():
            return {}
        wanted: dict[str, object] = {"connect_timeout": 10}
        if sessions.application_name:
            wanted["application_name"] = sessions.application_name[:63]  # the server truncates at 63 bytes
        if sessions.network_timeout > 0:
            seconds = sessions.network_timeout
            wanted.update(keepalives=1, keepalives_idle=max(1, round(seconds / 2)),
                          keepalives_interval=max(1, round(seconds / 6)), keepalives_count=3,
                          tcp_user_timeout=round(seconds * 1000))
        args = {key: value for key, value in wanted.items() if key not in url.query}
        options = self.startup_options(url.query.get("options"), sessions)
        if options:
            args["options"] = options
        return args

    def startup_options(self, given: str | tuple[str, ...] | None, sessions: Sessions) -> str | None:
        """The URL's own ``options`` followed by ``-c name=value`` for each session setting it does not set."""
        given = " ".join(given) if isinstance(given, tuple) else (given or "")
        settings = {
            "lock_timeout": sessions.lock_timeout(self),
            "idle_in_transaction_session_timeout": sessions.idle_in_transaction_timeout,
            "statement_timeout": sessions.statement_timeout,
        }
        extra = [f"-c {name}={round(seconds * 1000)}" for name, seconds in settings.items()
                 if seconds > 0 and not re.search(rf"(?<![\w.]){name}\s*=", given)]
        return " ".join([given, *extra]).strip() or None

    def route_connections(self, engine: Engine, database: Callable[[], str]) -> None:
        # A ``do_connect`` listener: SQLAlchemy's documented hook for changing connection arguments.
        def _choose_database(_dialect, _record, _cargs, cparams) -> None:
            cparams["dbname"] = database()

        event.listen(engine, "do_connect", _choose_database)

    def batch_statements(self, engine: Engine) -> None:
        if engine.dialect.driver == "psycopg":  # psycopg 3's pipeline mode; psycopg2 has none
            from tenants.dialects import psycopg_batch

            psycopg_batch.batch_statements(engine)

    @contextlib.contextmanager
    def lock(self, conn: Connection, timeout: float, own: str | None = None) -> Iterator[None]:
        # A session-level advisory lock on the migration connection itself (see tenants.db.tenant_lock for
        # why there). Session-level advisory locks ignore transactions: the rollback below ends the
        # transaction the query opened, so Alembic gets a connection with none, and the lock stays.
        deadline = time.monotonic() + timeout
        stale_until: float | None = None
        try:
            while not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_KEY}).scalar():
                holder = conn.execute(text(LOCK_HOLDER_SQL), {"k": LOCK_KEY}).first()
                if own is not None and holder is not None and holder.application_name == own:
                    # A session of this very run: an earlier attempt on this tenant whose client side is gone
                    # (a dropped or black-holed connection) but which the server has not noticed yet. It
                    # would hold the lock until the server's keepalives give up; end it (the same role may
                    # signal its own backends), which rolls back whatever it was doing, and take the lock once
                    # it has exited (a few seconds at most, whatever the lock timeout).
                    stale_until = stale_until or time.monotonic() + 5.0
                    conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": holder.pid})
                    if time.monotonic() < stale_until:
                        time.sleep(0.05)
                        continue
                if time.monotonic() >= deadline:
                    raise LockNotAcquired(_describe_holder(holder))
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        finally:
            with contextlib.suppress(SQLAlchemyError):
                conn.rollback()
        # No unlock at the end: the session's end releases it. The unit of work closes the connection right after
        # the block (NullPool: it really closes), and plain alembic's env.py likewise, so an unlock would be one
        # more round trip per tenant to a far-away pool for nothing (issue 13).
        yield

    def list_databases(self, template_url: str, query: Callable[[str], list[str]]) -> list[str]:
        return query(DATABASES_SQL)

    def owns_error(self, orig: BaseException) -> bool:
        return type(orig).__module__.split(".")[0] in _DRIVERS

    def is_throttling(self, orig: BaseException) -> bool:
        """Too many connections (53300: ``max_connections`` or a role's or database's connection limit reached)
        says the server is saturated, as Azure SQL's resource errors do: the fan-out lowers its concurrency
        instead of retrying every tenant at full concurrency (issue 11). It stays transient for callers that
        only retry."""
        if self.sqlstate(orig) == "53300":
            return True
        return bool(_THROTTLE_TEXT.search(str(orig)))

    def setup_worker(self, *, check_client: bool) -> None:
        if check_client:
            event.listen(Pool, "connect", check_client_while_busy)

    # --- schema snapshot (issue 12) ----------------------------------------------------------------------

    def snapshot(self, conn: Connection, exclude: Iterable[str] = ()) -> Snapshot:
        """One query over pg_catalog for ``current_schema()``, one JSON document (see
        :mod:`tenants.dialects.catalog_postgresql`)."""
        return catalog_postgresql.read_snapshot(conn, exclude)

    # --- scratch database (issue 12) ---------------------------------------------------------------------

    def scratch_database(self, url: URL, *, connect: Connect, reference: str | None = None,
                         maintenance: str | None = None) -> contextlib.AbstractContextManager[URL] | None:
        """A throwaway database on the tenants' server: ``CREATE DATABASE tenants_scratch_<random>`` through the
        maintenance database (the role needs CREATEDB), dropped on exit ``WITH (FORCE)`` (PostgreSQL 13+),
        which ends any session env.py left on it."""
        return self._scratch(url, connect, maintenance or "postgres")

    @contextlib.contextmanager
    def _scratch(self, url: URL, connect: Connect, maintenance: str) -> Iterator[URL]:
        name = f"{SCRATCH_PREFIX}{secrets.token_hex(6)}"

        def admin(sql: str) -> None:
            with connect(url.set(database=maintenance)) as engine, \
                    engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text(sql))

        admin(f'CREATE DATABASE "{name}"')
        try:
            yield url.set(database=name)
        finally:
            admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _describe_holder(holder) -> str | None:
    if holder is None:  # released between the two queries, or not visible
        return None
    who = f"session {holder.pid}"
    if holder.application_name:
        who = f"{holder.application_name}, {who}"
    if holder.backend_start is not None:
        who += f", connected {holder.backend_start:%Y-%m-%d %H:%M:%S %Z}".rstrip()
    return who


def check_client_while_busy(dbapi_connection, _record) -> None:
    """PostgreSQL 14+: have the server look for a vanished client every second even while a statement runs,
    so that a worker killed for the tenant timeout has its transaction rolled back at once, not when the
    statement in progress ends (see :mod:`tenants.engine.fanout`). Other drivers, and older servers, are left
    alone.

    A listener on the ``Pool`` class reaches every connection the worker opens, whichever engine opened it.
    """
    # By class ancestry: the batching connection (tenants.dialects.psycopg_batch) is a psycopg connection too.
    if not any(cls.__module__.startswith(("psycopg", "pg8000")) for cls in type(dbapi_connection).__mro__):
        return
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("SET client_connection_check_interval = 1000")
        dbapi_connection.commit()  # a SET in a transaction that later rolls back would be undone with it
    except Exception:  # noqa: BLE001 - before PostgreSQL 14: unrecognized configuration parameter
        with contextlib.suppress(Exception):
            dbapi_connection.rollback()
    finally:
        with contextlib.suppress(Exception):
            cursor.close()
