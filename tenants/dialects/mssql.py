"""SQL Server / Azure SQL: error classification, the app lock, Entra tokens, auth rules, idempotent T-SQL.

Every tenant gets an engine of its own (pyodbc's connection string would need rewriting per tenant); with
``auth = "azure-ad"`` the engines share one Entra token cache (see :class:`tenants.db.Connector`).

pyodbc reports an error as ``(sqlstate, message)``; the native SQL Server error numbers are only in the
message text, one ``(NNNN)`` before each ``(SQLxxx)`` call name, e.g.::

    [42000] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]Resource ID : 1. The request limit for the
    elastic pool is 210 and has been reached. (10928) (SQLExecDirectW)

Several diagnostics can be chained in one message; every number found counts. This module never imports
pyodbc (the demo fleet and PostgreSQL need no ODBC library): it recognises pyodbc's exceptions by module.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from tenants.dialects import catalog_mssql
from tenants.dialects.base import (
    DEFAULT_SESSIONS,
    Connect,
    Dialect,
    Fail,
    LockNotAcquired,
    Sessions,
    TenantState,
    TransientLockError,
)
from tenants.errors import ConfigError
from tenants.snapshot import Snapshot

if TYPE_CHECKING:  # pragma: no cover
    from tenants.dialects.entra import TokenCache

# Azure SQL's transient errors (Microsoft's "Troubleshoot transient connection errors" list and the error
# numbers its client libraries retry): reconfiguration and failover, busy
# service, resource and worker limits of the database or elastic pool, transport faults, deadlock; and 1222,
# "lock request time out period exceeded": a DDL statement gave up waiting behind someone's lock after
# `ddl_lock_timeout` (SET LOCK_TIMEOUT), its revision rolled back, and a later attempt may find the table free.
TRANSIENT_NUMBERS = frozenset({
    40613, 40501, 40197, 49918, 49919, 49920, 4060, 4221, 10928, 10929, 10936, 10053, 10054, 10060, 233, 64,
    1205, 1222,
})
# The subset that means "the pool is saturated": the fan-out backs off (fewer tenants at once), not just
# this tenant.
THROTTLING_NUMBERS = frozenset({10928, 10929, 10936, 40501, 49918})
# A failed login: whatever else is in the chain (4060 "cannot open database" comes with it when the user is
# missing from the database), retrying will not create the user.
LOGIN_FAILED = 18456
# Connection-level ODBC states: communication link failure, unable to connect, timeout expired.
TRANSIENT_SQLSTATES = frozenset({"08S01", "08001", "HYT00"})
# Permission denied: 229 (on an object), 262 (in the database), 297 (the user may not do this), 300 (a
# permission such as VIEW SERVER STATE was denied; reading sys.dm_elastic_pool_resource_stats without it).
# A failure (retrying does not grant it) that says what to grant.
PERMISSION_DENIED_NUMBERS = frozenset({229, 262, 297, 300})

_NUMBER = re.compile(r"\((\d+)\)\s*\(SQL\w+\)")


class Kind(str, Enum):
    THROTTLED = "throttled"  # transient, and the pool wants less load
    TRANSIENT = "transient"  # retry on a fresh connection
    FAILURE = "failure"  # a real failure: do not retry


@dataclass(frozen=True)
class Diagnosis:
    sqlstate: str | None
    numbers: tuple[int, ...]

    @property
    def kind(self) -> Kind:
        if LOGIN_FAILED in self.numbers:
            return Kind.FAILURE
        if THROTTLING_NUMBERS.intersection(self.numbers):
            return Kind.THROTTLED
        if TRANSIENT_NUMBERS.intersection(self.numbers) or self.sqlstate in TRANSIENT_SQLSTATES:
            return Kind.TRANSIENT
        return Kind.FAILURE

    @property
    def permission_denied(self) -> int | None:
        """The first permission-denied error number in the chain (300 before 297, as the server sends them)."""
        return next((n for n in self.numbers if n in PERMISSION_DENIED_NUMBERS), None)


def is_pyodbc_error(err: BaseException) -> bool:
    return type(err).__module__ == "pyodbc"


def permission_denied(err: BaseException) -> int | None:
    """The permission-denied error number of a pyodbc error, raised as is or wrapped by SQLAlchemy (its
    ``orig``); None for any other error."""
    orig = getattr(err, "orig", None) or err
    return diagnose(orig).permission_denied if is_pyodbc_error(orig) else None


def diagnose(err: BaseException) -> Diagnosis:
    """SQLSTATE and native error numbers of a pyodbc error (or of any error whose text carries them)."""
    args = getattr(err, "args", ())
    sqlstate = args[0] if len(args) >= 2 and isinstance(args[0], str) else None
    message = args[1] if len(args) >= 2 and isinstance(args[1], str) else str(err)
    return Diagnosis(sqlstate, tuple(int(n) for n in _NUMBER.findall(message)))


# --- the per-tenant lock ----------------------------------------------------------------------------------
# An application lock owned by the session (so it dies with the connection if the process does), scoped to
# the tenant database, taken on its own autocommit connection. The server waits up to @LockTimeout ms.
# sp_getapplock returns 0 (granted), 1 (granted after waiting), -1 (timeout), -2 (cancelled), -3 (deadlock
# victim), -999 (parameter or call error). NOCOUNT keeps the DECLARE/EXEC row counts out of the way of
# the one result set pyodbc should see, and is switched back off before it: this is the migration connection,
# and Alembic checks the row count of its version-table UPDATE.
LOCK_RESOURCE = "tenants-migrate"
GET_APPLOCK = (
    "SET NOCOUNT ON; DECLARE @rc int; "
    f"EXEC @rc = sp_getapplock @Resource = N'{LOCK_RESOURCE}', @LockMode = 'Exclusive', "
    "@LockOwner = 'Session', @LockTimeout = :timeout_ms; SET NOCOUNT OFF; SELECT @rc AS rc;"
)
# Who holds it (needs VIEW DATABASE STATE; best effort): the session and the program name it connected with
# (a run of this tool says ``tenants <run id>``, ODBC's APP keyword).
LOCK_HOLDER_SQL = (
    "SELECT TOP (1) s.session_id, s.program_name, s.login_time FROM sys.dm_tran_locks AS l "
    "JOIN sys.dm_exec_sessions AS s ON s.session_id = l.request_session_id "
    "WHERE l.resource_type = N'APPLICATION' AND l.resource_database_id = DB_ID() AND l.request_status = N'GRANT' "
    f"AND l.resource_description LIKE N'%{LOCK_RESOURCE}%' AND l.request_session_id <> @@SPID"
)
RELEASE_APPLOCK = f"EXEC sp_releaseapplock @Resource = N'{LOCK_RESOURCE}', @LockOwner = 'Session';"


# --- each connection's settings --------------------------------------------------------------------------

def session_setup(lock_timeout: float, statement_timeout: float) -> Callable[..., None]:
    """A ``connect`` listener for :class:`tenants.dialects.Sessions` on SQL Server.

    ``SET LOCK_TIMEOUT`` (milliseconds; the server's default, -1, waits forever) bounds how long a DDL statement
    waits for a table lock: error 1222 then, transient. pyodbc's query timeout (the connection's ``timeout``
    attribute, seconds) bounds every statement from the client side: off for migrations by default, set for
    the tool's own reads. Silent connections need nothing here: ODBC Driver 18 sends TCP keepalives by default
    (``KeepAlive=30``, ``KeepAliveInterval=1``). SQL Server has no idle-in-transaction timeout; Azure SQL's
    gateway closes sessions idle for about 30 minutes.
    """

    def setup(dbapi_connection, _record) -> None:
        if statement_timeout > 0:
            dbapi_connection.timeout = max(1, round(statement_timeout))
        if lock_timeout > 0:
            cursor = dbapi_connection.cursor()
            try:
                cursor.execute(f"SET LOCK_TIMEOUT {round(lock_timeout * 1000)}")
            finally:
                cursor.close()

    return setup


# --- offline T-SQL that is safe to run twice ----------------------------------------------------------------

def idempotent_script(sql: str, version_table: str = "alembic_version") -> str:
    """Make Alembic's own bookkeeping in an offline T-SQL script safe to run twice, and fail-stop.

    The schema steps are guarded by :mod:`tenants.guards`; Alembic's version table is not: run twice, its
    ``CREATE TABLE`` fails and its ``INSERT`` adds a second row. Here the CREATE is wrapped in an
    ``OBJECT_ID`` check and the INSERT in ``IF NOT EXISTS`` (the UPDATEs and DELETEs already match nothing
    the second time). ``SET XACT_ABORT ON`` first: a failing statement then rolls its transaction back and
    ends it, instead of letting the following batches record a revision that did not apply (run the script
    with ``sqlcmd -b`` so it also stops there).
    """
    table = re.escape(version_table)
    create = re.compile(rf"^CREATE TABLE {table} \((?:.|\n)*?\n\);", re.MULTILINE)
    insert = re.compile(rf"^INSERT INTO {table} \(version_num\) OUTPUT inserted\.version_num VALUES (\('[^']*'\));",
                        re.MULTILINE)
    sql = create.sub(lambda m: f"IF OBJECT_ID(N'{version_table}', N'U') IS NULL\nBEGIN\n{m.group(0)}\nEND;", sql)
    sql = insert.sub(lambda m: (f"IF NOT EXISTS (SELECT 1 FROM {version_table})\nBEGIN\n"
                                f"INSERT INTO {version_table} (version_num) VALUES {m.group(1)};\nEND;"), sql)
    return "SET XACT_ABORT ON;\n\nGO\n\n" + sql


# --- the dialect --------------------------------------------------------------------------------------------

# Every user table of the database (every schema): see Dialect.tables.
TABLES_SQL = (
    "SELECT CASE WHEN s.name = SCHEMA_NAME() THEN o.name ELSE s.name + '.' + o.name END "
    "FROM sys.objects AS o JOIN sys.schemas AS s ON s.schema_id = o.schema_id "
    "WHERE o.type IN ('U', 'V') AND o.is_ms_shipped = 0"
)

# The reference database (issue 12, `reference_database`): the tool may not create databases on an Azure SQL
# server (a new database lands outside the elastic pool, and is billed), so it builds the expected schemas in
# a database the operator set aside. It carries a database-level extended property, REFERENCE_MARK, set on
# first use: a database with objects and without it is refused, never emptied (a tenant named by mistake).
REFERENCE_MARK = "tenants_reference"
REFERENCE_MARK_SQL = "SELECT COUNT(*) FROM sys.extended_properties WHERE class = 0 AND name = N'tenants_reference'"
SET_REFERENCE_MARK = (
    "IF NOT EXISTS (SELECT 1 FROM sys.extended_properties WHERE class = 0 AND name = N'tenants_reference') "
    "EXEC sys.sp_addextendedproperty @name = N'tenants_reference', "
    "@value = N'scratch database of tenants: its default schema is emptied on every use'"
)
# Empty the default schema: every foreign key, then every view, then every table (user objects only). Other
# schemas, and anything but tables and views (procedures, types, sequences), are left alone.
CLEAR_SCHEMA = """
DECLARE @sql nvarchar(max) = N'';
SELECT @sql = @sql + N'ALTER TABLE ' + QUOTENAME(SCHEMA_NAME()) + N'.' + QUOTENAME(t.name)
    + N' DROP CONSTRAINT ' + QUOTENAME(f.name) + N'; '
FROM sys.foreign_keys AS f JOIN sys.tables AS t ON t.object_id = f.parent_object_id
WHERE t.schema_id = SCHEMA_ID() AND t.is_ms_shipped = 0;
SELECT @sql = @sql + N'DROP VIEW ' + QUOTENAME(SCHEMA_NAME()) + N'.' + QUOTENAME(v.name) + N'; '
FROM sys.views AS v WHERE v.schema_id = SCHEMA_ID() AND v.is_ms_shipped = 0;
SELECT @sql = @sql + N'DROP TABLE ' + QUOTENAME(SCHEMA_NAME()) + N'.' + QUOTENAME(t.name) + N'; '
FROM sys.tables AS t WHERE t.schema_id = SCHEMA_ID() AND t.is_ms_shipped = 0;
EXEC sys.sp_executesql @sql;
"""


def _nstring(value: str) -> str:
    return "N'" + value.replace("'", "''") + "'"


def state_sql(version_table: str, pin_table: str, history_table: str) -> str:
    """The tenant's state in one batch (tenants.dialects.base.TenantState), never a failing SELECT: OBJECT_ID
    says whether each table exists, and the version and pin tables are read by dynamic SQL chosen on that (a
    statement naming a missing table is never compiled), into variables the last SELECT returns as one row.
    The database's own tables come along only without a version table. Table names are the environment's,
    written into the SQL as the old ``SELECT version_num FROM <table>`` did."""
    version, pin, history = _nstring(version_table), _nstring(pin_table), _nstring(history_table)
    read_versions = _nstring(
        f"SELECT @v = STRING_AGG(CAST(version_num AS NVARCHAR(MAX)), NCHAR(10)) FROM {version_table}")
    read_pin = _nstring(f"SELECT TOP (1) @r = reason, @b = pinned_by, @a = pinned_at, @p = 1 FROM {pin_table}")
    return (
        "SET NOCOUNT ON;\n"
        "DECLARE @versions NVARCHAR(MAX), @tables NVARCHAR(MAX), @pinned BIT = 0, @reason NVARCHAR(1000), "
        "@pinned_by NVARCHAR(200), @pinned_at DATETIME2;\n"
        f"DECLARE @read_versions NVARCHAR(MAX) = CASE WHEN OBJECT_ID({version}, N'U') IS NULL THEN N'SET @v = NULL' "
        f"ELSE {read_versions} END;\n"
        "EXEC sys.sp_executesql @read_versions, N'@v NVARCHAR(MAX) OUTPUT', @v = @versions OUTPUT;\n"
        f"DECLARE @read_pin NVARCHAR(MAX) = CASE WHEN OBJECT_ID({pin}, N'U') IS NULL THEN N'SET @p = 0' "
        f"ELSE {read_pin} END;\n"
        "EXEC sys.sp_executesql @read_pin, N'@r NVARCHAR(1000) OUTPUT, @b NVARCHAR(200) OUTPUT, "
        "@a DATETIME2 OUTPUT, @p BIT OUTPUT', @r = @reason OUTPUT, @b = @pinned_by OUTPUT, @a = @pinned_at OUTPUT, "
        "@p = @pinned OUTPUT;\n"
        "SELECT @tables = STRING_AGG(CAST(t.name AS NVARCHAR(MAX)), NCHAR(10)) "
        f"FROM ({TABLES_SQL}) AS t(name) WHERE OBJECT_ID({version}, N'U') IS NULL;\n"
        f"SELECT CASE WHEN OBJECT_ID({version}, N'U') IS NULL THEN 0 ELSE 1 END AS has_version, "
        "@versions AS versions, @pinned AS pinned, @reason AS reason, @pinned_by AS pinned_by, "
        f"@pinned_at AS pinned_at, CASE WHEN OBJECT_ID({history}, N'U') IS NULL THEN 0 ELSE 1 END AS history, "
        "@tables AS tables;"
    )


def state_of(row) -> TenantState:
    """The last SELECT of :func:`state_sql` as a :class:`TenantState`."""
    versions = tuple(sorted(row.versions.split("\n"))) if row.versions else ()
    return TenantState(
        versions if row.has_version else None,
        tuple(row.tables.split("\n")) if row.tables and not row.has_version else (),
        (row.reason, row.pinned_by, row.pinned_at) if row.pinned else None,
        bool(row.history))


class MSSQL(Dialect):
    name = "mssql"
    guards_in_tsql = True  # T-SQL has no IF NOT EXISTS for most DDL: the guard is an IF around the batch
    placeholder_url = "mssql+pyodbc://@server/tenant?driver=ODBC+Driver+18+for+SQL+Server"
    can_lock = True
    azure_sql = True
    retry_backoff = (5.0, 60.0)  # Microsoft's guidance for Azure SQL: about 5 s first, backing off to 60 s
    tables_sql = TABLES_SQL
    missing_table_states = frozenset({"42S02"})  # ODBC's "base table or view not found"
    missing_table_text = (*Dialect.missing_table_text, "invalid object name")

    ddl_lock_timeout = 30.0
    needs_reference_database = True

    def make_engine(self, url: URL, *, must_exist: bool = False, tokens: TokenCache | None = None,
                    sessions: Sessions = DEFAULT_SESSIONS) -> Engine:
        """pyodbc's login timeout at 30 s (Microsoft's advice for Azure SQL; the driver has no "Connection
        Timeout" keyword), each connection set up by :func:`session_setup`, and with ``tokens`` an Entra token
        for every new connection."""
        engine = create_engine(url, poolclass=NullPool, connect_args=self.connect_args(url, sessions))
        event.listen(engine, "connect", session_setup(sessions.lock_timeout(self), sessions.statement_timeout))
        if tokens is not None:
            from tenants.dialects.entra import install_token_hook

            install_token_hook(engine, tokens)
        return engine

    def connect_args(self, url: URL, sessions: Sessions) -> dict[str, object]:
        """pyodbc's keyword arguments: its login timeout, and ODBC's APP keyword (pyodbc adds keyword arguments
        it does not know to the connection string), which sets the session's program_name to the run's
        application name, unless the URL names its own."""
        args: dict[str, object] = {"timeout": 30}
        if sessions.application_name and "app" not in {key.lower() for key in url.query}:
            args["APP"] = sessions.application_name
        return args

    def read_state(self, conn: Connection, version_table: str, pin_table: str, history_table: str, *,
                   pin: bool = True) -> TenantState:
        """One batch, one round trip (:func:`state_sql`), plus the rollback the caller ends it with."""
        return state_of(conn.execute(text(state_sql(version_table, pin_table, history_table))).one())

    @contextlib.contextmanager
    def lock(self, conn: Connection, timeout: float, own: str | None = None) -> Iterator[None]:
        # sp_getapplock with a Session owner on the migration connection itself (see GET_APPLOCK above, and
        # tenants.db.tenant_lock for why there): a session-owned lock outlives the transaction the call ran in,
        # which the rollback below ends so that Alembic gets a connection with none.
        try:
            rc = conn.execute(text(GET_APPLOCK), {"timeout_ms": int(timeout * 1000)}).scalar()
            if rc == -1 and own is not None and self._end_stale_session(conn, own):
                rc = conn.execute(text(GET_APPLOCK), {"timeout_ms": 5000}).scalar()
            if rc == -1:  # timed out: another run holds it
                raise LockNotAcquired(self._holder(conn))
            if rc == -3:  # chosen as deadlock victim while waiting: worth a retry
                raise TransientLockError("sp_getapplock: chosen as deadlock victim (-3)")
            if rc is None or rc < 0:  # -2 cancelled, -999 parameter or call error
                raise RuntimeError(f"sp_getapplock failed with {rc}")
        finally:
            with contextlib.suppress(SQLAlchemyError):
                conn.rollback()
        # No sp_releaseapplock at the end: a Session-owned lock ends with the session, which the unit of work
        # closes right after the block (see the PostgreSQL lock): one round trip less per tenant (issue 13).
        # RELEASE_APPLOCK stays for an operator who must free a lock by hand.
        yield

    @staticmethod
    def _holder_row(conn: Connection):
        """The session holding the tenant's app lock, or None (not visible: needs VIEW DATABASE STATE)."""
        try:
            return conn.execute(text(LOCK_HOLDER_SQL)).first()
        except SQLAlchemyError:
            conn.rollback()
            return None

    def _holder(self, conn: Connection) -> str | None:
        row = self._holder_row(conn)
        if row is None:
            return None
        who = f"session {row.session_id}"
        return f"{row.program_name}, {who}" if row.program_name else who

    def _end_stale_session(self, conn: Connection, own: str) -> bool:
        """End a session of this very run that still holds the lock (an earlier attempt whose connection the
        client lost and the server has not noticed): KILL, where the login may (Azure SQL Database: the server
        admin; ``ALTER ANY CONNECTION`` elsewhere). True when it was ended."""
        row = self._holder_row(conn)
        if row is None or row.program_name != own:
            return False
        try:
            conn.execute(text(f"KILL {int(row.session_id)}"))  # KILL takes no parameter; an int is safe
        except SQLAlchemyError:
            conn.rollback()
            return False
        return True

    def owns_error(self, orig: BaseException) -> bool:
        return is_pyodbc_error(orig)

    def sqlstate(self, orig: BaseException) -> str | None:
        return diagnose(orig).sqlstate

    def is_transient(self, err: BaseException, orig: BaseException) -> bool:
        return diagnose(orig).kind is not Kind.FAILURE

    def is_throttling(self, orig: BaseException) -> bool:
        return diagnose(orig).kind is Kind.THROTTLED

    def permission_denied(self, orig: BaseException) -> int | None:
        return diagnose(orig).permission_denied

    def offline_script(self, sql: str, version_table: str) -> str:
        return idempotent_script(sql, version_table)

    def resolve_auth(self, auth: str | None, *, url: URL, raw_url: str | None, odbc_connect: str | None,
                     is_variable: Callable[[str], bool], fail: Fail) -> str | None:
        """azure-ad (the default without ``odbc_connect``): an Entra token per connection, so the URL names no
        other login; sql: user and password in the URL, the password from a variable; odbc: ``odbc_connect``.
        """
        auth = auth or ("odbc" if odbc_connect is not None else "azure-ad")
        if (auth == "odbc") != (odbc_connect is not None):
            raise fail("auth 'odbc' goes with 'odbc_connect' (and 'odbc_connect' with auth 'odbc')", "auth")
        if auth == "azure-ad" and (url.username or url.password):
            raise fail("auth 'azure-ad' connects with an Entra token: the url must carry no user or password "
                       "(use auth = \"sql\" for SQL logins)", "url")
        if auth == "azure-ad":
            from tenants.dialects.entra import check_no_credentials

            try:  # UID/PWD/Authentication/Trusted_Connection in the query: the driver would refuse the token
                check_no_credentials(url)
            except ConfigError as err:
                raise fail(f"auth 'azure-ad': {err}", "url") from None
        raw_password = make_url(raw_url.replace("{tenant}", "tenant")).password if raw_url is not None else None
        if auth == "sql" and not (url.username and url.password):
            raise fail("auth 'sql' needs user and password in the url, from environment variables "
                       "(mssql+pyodbc://${SQL_USER}:${SQL_PASSWORD}@...)", "url")
        if auth == "sql" and not (raw_password and is_variable(raw_password)):
            raise fail("auth 'sql': the password must come from an environment variable (${SQL_PASSWORD}), "
                       "not be written in the file", "url")
        return auth

    # --- schema snapshot (issue 12) ----------------------------------------------------------------------

    def snapshot(self, conn: Connection, exclude: Iterable[str] = ()) -> Snapshot:
        """One query over ``sys.*`` for ``SCHEMA_ID()``, one JSON document by nested FOR JSON PATH
        (see :mod:`tenants.dialects.catalog_mssql`)."""
        return catalog_mssql.read_snapshot(conn, exclude)

    # --- scratch database (issue 12) ---------------------------------------------------------------------

    def scratch_database(self, url: URL, *, connect: Connect, reference: str | None = None,
                         maintenance: str | None = None) -> contextlib.AbstractContextManager[URL] | None:
        """The environment's ``reference_database`` (``url`` points at it), emptied: every foreign key, view
        and table of its default schema is dropped on entry and again on exit, and the database is marked
        (:data:`REFERENCE_MARK`) on first use. A database holding any table or view that is not marked is
        refused with a ConfigError, untouched. None without ``reference_database``: consensus."""
        if reference is None:
            return None
        return self._reference(url, connect, reference)

    @contextlib.contextmanager
    def _reference(self, url: URL, connect: Connect, reference: str) -> Iterator[URL]:
        with connect(url) as engine:
            with engine.begin() as conn:
                marked = conn.execute(text(REFERENCE_MARK_SQL)).scalar()
                objects = list(conn.execute(text(TABLES_SQL)).scalars())
                if objects and not marked:
                    raise ConfigError(
                        f"reference_database {reference!r} holds {len(objects)} table(s) or view(s) "
                        f"({', '.join(sorted(objects)[:3])}...) and was not set aside for tenants: it would be "
                        "emptied; name an empty database")
                conn.execute(text(SET_REFERENCE_MARK))
                conn.execute(text(CLEAR_SCHEMA))
            try:
                yield url
            finally:
                with engine.begin() as conn:
                    conn.execute(text(CLEAR_SCHEMA))
