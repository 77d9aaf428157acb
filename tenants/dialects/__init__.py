"""Database dialects: everything that differs between SQLite, PostgreSQL and SQL Server (see :mod:`.base`).

The registry is here rather than in :mod:`.base` so that the base class imports no concrete dialect (each
dialect module imports the base; nothing imports back). Adding a dialect is one module and one entry in
:data:`DIALECTS`; no other module compares dialect names.
"""

from __future__ import annotations

from types import MappingProxyType

from sqlalchemy.engine import URL, make_url

from tenants.dialects.base import AnyDriver, Dialect, LockNotAcquired, Sessions, TransientLockError
from tenants.dialects.mssql import MSSQL
from tenants.dialects.postgresql import PostgreSQL
from tenants.dialects.sqlite import SQLite

# Every dialect the tool knows, by SQLAlchemy backend name, in name order (the order `tenants sql --dialect`
# lists them in).
DIALECTS = MappingProxyType({dialect.name: dialect for dialect in sorted(
    (MSSQL(), PostgreSQL(), SQLite()), key=lambda d: d.name)})
_OTHER = Dialect()  # any other backend: no lock, the inspector, SQL-standard SQLSTATEs
_ANY_DRIVER = AnyDriver(DIALECTS.values())  # an error no dialect's driver raised


def dialect_for(name_or_url: str | URL) -> Dialect:
    """The dialect of a backend name (``"postgresql"``) or of a URL (``postgresql+psycopg://...``)."""
    if isinstance(name_or_url, URL) or "://" in name_or_url:
        name = make_url(name_or_url).get_backend_name()
    else:
        name = name_or_url.partition("+")[0]
    return DIALECTS.get(name, _OTHER)


def dialect_of_error(err: BaseException) -> Dialect:
    """The dialect whose driver raised ``err`` (a driver's exception, not SQLAlchemy's wrapper); for any other
    error, a classification that knows every dialect's SQLSTATEs and messages."""
    return next((d for d in DIALECTS.values() if d.owns_error(err)), _ANY_DRIVER)


def placeholder_urls() -> dict[str, str]:
    """``tenants sql --dialect NAME``: a URL per dialect that only picks the dialect (nothing connects)."""
    return {name: d.placeholder_url for name, d in DIALECTS.items() if d.placeholder_url is not None}


def setup_worker(*, check_client: bool) -> None:
    """Prepare a worker process of the fan-out before its first tenant (every dialect's own setup)."""
    for dialect in DIALECTS.values():
        dialect.setup_worker(check_client=check_client)


__all__ = [
    "DIALECTS", "Dialect", "LockNotAcquired", "Sessions", "TransientLockError", "dialect_for", "dialect_of_error",
    "placeholder_urls", "setup_worker",
]
