"""SQLite: the demo fleet and the tests' throwaway tenants, one database file per tenant.

A SQLite "server" is a file, so every tenant gets an engine of its own, its lock is a file lock beside the
database, and ``source = "server"`` lists the files of a folder rather than asking a server.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.pool import NullPool

from tenants.dialects import catalog_sqlite
from tenants.dialects.base import DEFAULT_SESSIONS, Connect, Dialect, LockNotAcquired, Sessions, TenantState
from tenants.errors import ConfigError
from tenants.snapshot import Snapshot

if TYPE_CHECKING:  # pragma: no cover
    from tenants.dialects.entra import TokenCache

TABLES_SQL = "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"

# Files SQLite (and our lock) keep next to a database: never tenants, even with a template without a suffix.
SIDECARS = (".lock", "-journal", "-wal", "-shm")


class SQLite(Dialect):
    name = "sqlite"
    # SQLite before 3.35 has no DROP COLUMN, and later ones refuse it for many columns (indexed, in a
    # constraint): batch mode rebuilds the table. (It has IF NOT EXISTS for tables and indexes but not
    # columns; offline it renders plain DDL.)
    rebuilds_to_drop_column = True
    placeholder_url = "sqlite:///tenant.db"
    can_lock = True
    lists_databases = True
    tables_sql = TABLES_SQL
    transient_text = (*Dialect.transient_text, "database is locked")
    missing_table_text = (*Dialect.missing_table_text, "no such table")  # pysqlite's errors carry no SQLSTATE

    def make_engine(self, url: URL, *, must_exist: bool = False, tokens: TokenCache | None = None,
                    sessions: Sessions = DEFAULT_SESSIONS) -> Engine:
        """pysqlite's default transaction handling does not emit BEGIN before DDL, which would make every
        CREATE/ALTER autocommit and break "one transaction per revision". The two listeners below are
        SQLAlchemy's documented recipe: turn the driver's own handling off and emit BEGIN ourselves, so DDL is
        transactional and a revision that fails half-way rolls back completely. ``must_exist`` opens the file
        read-write without creating it, so a tenant whose file vanished fails instead of being recreated empty.
        """
        if must_exist and url.database and url.database != ":memory:":
            url = url.set(database=f"file:{url.database}", query={**url.query, "mode": "rw", "uri": "true"})
        elif url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, poolclass=NullPool, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _no_driver_transactions(dbapi_connection, _record):  # pragma: no cover - trivial
            dbapi_connection.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin(conn):  # pragma: no cover - trivial
            conn.exec_driver_sql("BEGIN")

        return engine

    def missing_file(self, url: URL) -> bool:
        if not url.database or url.database == ":memory:":
            return False
        return not Path(url.database.removeprefix("file:")).exists()

    def with_base_dir(self, url: URL, base_dir: Path) -> URL:
        if url.database and url.database != ":memory:":
            path = Path(url.database)
            if not path.is_absolute():
                return url.set(database=str(base_dir / path))
        return url

    def read_state(self, conn: Connection, version_table: str, pin_table: str, history_table: str, *,
                   pin: bool = True) -> TenantState:
        """sqlite_master first (which of the tables exist, and the database's own tables), then a SELECT of
        each table that is there: never a failing SELECT. (A file: no round trips to save.)"""
        if any("." in name for name in (version_table, pin_table, history_table)):
            return super().read_state(conn, version_table, pin_table, history_table, pin=pin)
        tables = list(conn.execute(text(TABLES_SQL)).scalars())
        present = {name.lower() for name in tables}
        versioned = version_table.lower() in present
        versions = (tuple(sorted(conn.execute(text(f"SELECT version_num FROM {version_table}")).scalars()))
                    if versioned else None)
        # A tenant can be pinned before its first migration (a new database with only the pin table).
        row = (conn.execute(text(f"SELECT reason, pinned_by, pinned_at FROM {pin_table}")).first()
               if pin and pin_table.lower() in present else None)
        return TenantState(versions, () if versioned else tuple(tables), tuple(row) if row else None,
                           history_table.lower() in present)

    @contextlib.contextmanager
    def lock(self, conn: Connection, timeout: float, own: str | None = None) -> Iterator[None]:
        # SQLite has no named session locks; its own write lock is per transaction, and we commit per revision.
        # An OS advisory lock (flock) on a sidecar file spans the whole run on the tenant and, like a session
        # lock, is released by the kernel if the process dies. SQLite files are only reachable on this host, so
        # a host-local lock is enough, and there is no network session to lose: the process that holds the lock
        # is the one that holds the connection (the lock cannot outlive it, nor it the lock).
        database = conn.engine.url.database or ""
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

    def list_databases(self, template_url: str, query: Callable[[str], list[str]]) -> list[str]:
        """The files of the template's folder that fit its file name around ``{tenant}``."""
        template = Path(make_url(template_url).database or "")
        if "{tenant}" in str(template.parent):
            raise ConfigError("with source 'server', {tenant} must be in the SQLite file name, not in its folder")
        folder = template.parent
        prefix, _, suffix = template.name.partition("{tenant}")
        if not folder.is_dir():
            raise ConfigError(f"folder {folder} does not exist; create it or fix the url")
        names = []
        for path in folder.iterdir():
            file = path.name
            if path.is_file() and file.startswith(prefix) and file.endswith(suffix) and \
                    len(file) > len(prefix) + len(suffix) and not file.endswith(SIDECARS):
                names.append(file[len(prefix):len(file) - len(suffix)])
        return names

    def owns_error(self, orig: BaseException) -> bool:
        return type(orig).__module__ == "sqlite3"

    # --- schema snapshot (issue 12) ----------------------------------------------------------------------

    def snapshot(self, conn: Connection, exclude: Iterable[str] = ()) -> Snapshot:
        """One query over ``sqlite_master`` and the pragma functions, one JSON document; what SQLite
        cannot tell is read from the CREATE statements (see :mod:`tenants.dialects.catalog_sqlite`)."""
        return catalog_sqlite.read_snapshot(conn, exclude)

    # --- scratch database (issue 12) ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _scratch(self, url: URL) -> Iterator[URL]:
        folder = tempfile.mkdtemp(prefix="tenants_scratch_")
        try:
            yield url.set(database=str(Path(folder) / "scratch.db"))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def scratch_database(self, url: URL, *, connect: Connect, reference: str | None = None,
                         maintenance: str | None = None) -> contextlib.AbstractContextManager[URL] | None:
        """A new file in a temporary folder, removed (with its lock and journal files) on exit."""
        return self._scratch(url)
