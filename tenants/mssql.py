"""SQL Server / Azure SQL specifics that need no driver to import: error classification and the app lock.

pyodbc reports an error as ``(sqlstate, message)``; the native SQL Server error numbers are only in the
message text, one ``(NNNN)`` before each ``(SQLxxx)`` call name, e.g.::

    [42000] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]Resource ID : 1. The request limit for the
    elastic pool is 210 and has been reached. (10928) (SQLExecDirectW)

Several diagnostics can be chained in one message; every number found counts. This module never imports
pyodbc (the demo fleet and PostgreSQL need no ODBC library): it recognises pyodbc's exceptions by module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

# Azure SQL's transient errors (Microsoft's list; see REFERENCE.md): reconfiguration and failover, busy
# service, resource and worker limits of the database or elastic pool, transport faults, deadlock.
TRANSIENT_NUMBERS = frozenset({
    40613, 40501, 40197, 49918, 49919, 49920, 4060, 4221, 10928, 10929, 10936, 10053, 10054, 10060, 233, 64,
    1205,
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
# the one result set pyodbc should see.
LOCK_RESOURCE = "tenants-migrate"
GET_APPLOCK = (
    "SET NOCOUNT ON; DECLARE @rc int; "
    f"EXEC @rc = sp_getapplock @Resource = N'{LOCK_RESOURCE}', @LockMode = 'Exclusive', "
    "@LockOwner = 'Session', @LockTimeout = :timeout_ms; SELECT @rc AS rc;"
)
RELEASE_APPLOCK = f"EXEC sp_releaseapplock @Resource = N'{LOCK_RESOURCE}', @LockOwner = 'Session';"


# --- ODBC connection strings --------------------------------------------------------------------------------
# KEY=value; pairs, where a value in braces may hold ';' and '=' ('}}' is an escaped '}').
_ODBC_SECRET = re.compile(r"(?i)(^|;)(\s*(?:pwd|password)\s*=\s*)(\{(?:[^}]|\}\})*\}|[^;]*)")


def odbc_secrets(conn_str: str) -> tuple[str, ...]:
    """The password values of an ODBC connection string (with and without their braces)."""
    found: list[str] = []
    for match in _ODBC_SECRET.finditer(conn_str):
        value = match.group(3).strip()
        if value:
            found.append(value)
            if value.startswith("{") and value.endswith("}"):
                found.append(value[1:-1].replace("}}", "}"))
    return tuple(found)


def mask_odbc(conn_str: str) -> str:
    """The connection string with every password value replaced by ``***``."""
    return _ODBC_SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}***", conn_str)


def odbc_value(value: str) -> str:
    """``value`` as an ODBC attribute value: braced (with ``}`` doubled) when it holds ``; { } =``."""
    if any(c in value for c in ";{}="):
        return "{" + value.replace("}", "}}") + "}"
    return value


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
