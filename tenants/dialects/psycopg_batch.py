"""PostgreSQL over psycopg 3: a migration's statements that return nothing travel with the next one that does.

Why (issue 13): to a pool in another region every round trip costs tens of milliseconds, and a revision is
mostly statements nobody reads an answer from: its DDL, the tool's history row, and the ``BEGIN`` the driver
sends before them. Sent one by one, as every driver does, a tenant cost about 30 round trips where ``psql -f``
of the same SQL costs 21. Here they are held back and sent, in order, in one message with the next statement
whose answer is needed (a multi-statement simple query: one round trip), or with the ``COMMIT``:

    BEGIN; CREATE TABLE ...; CREATE INDEX ...; UPDATE alembic_version ...   -- one round trip (Alembic reads
    INSERT INTO tenants_history ...; COMMIT                                  -- the UPDATE's row count), one more

What is held back (:func:`deferrable`): DDL (SQLAlchemy's DDL constructs, which Alembic's operations are, and
``op.execute`` text starting ``CREATE``/``ALTER``/``DROP``/``COMMENT``/``GRANT``/``REVOKE``/``DO``), and
statements the tool marks (its history row). Never: anything whose result or row count may be read (SELECT,
DML, RETURNING), anything outside a transaction (``autocommit_block()`` for ``CREATE INDEX CONCURRENTLY``
runs as before, statement by statement), anything after a ``SAVEPOINT`` in the transaction (code that catches
a statement's error to go on, behind a savepoint, must see it at that statement).

What changes for a migration: when the error of a held-back statement is raised. The transaction fails and
rolls back as before, at the next statement that needs an answer (or the commit) instead of at the DDL itself;
the error is the database's own, with a note naming the statements sent with it. And a statement sent with
held-back ones has its parameters bound by the client (psycopg's ``ClientCursor``, as psycopg2 always does)
rather than by the server. No statement runs that would not have, none runs in another order or another
transaction.

How: the connection runs in the driver's autocommit and the transaction is this class's (the ``BEGIN`` is
queued like any held-back statement); :attr:`Connection.autocommit` is what SQLAlchemy and Alembic set and
read, with the DB-API's meaning. Only the tool's migration connections use this class (never its reads), and
only with psycopg 3 (its connection can be subclassed; a psycopg2 URL migrates statement by statement); an
env.py that opens its own engine (``env_py = engine|url``) gets plain psycopg. ``batch_statements = false``
turns it off (:class:`tenants.dialects.Sessions`).
"""

from __future__ import annotations

import re
from typing import Any

import psycopg
import psycopg.sql
from psycopg import IsolationLevel
from psycopg.pq import TransactionStatus
from sqlalchemy import event
from sqlalchemy.engine import Engine

from tenants.dialects.base import DEFER

_DDL = re.compile(r"\s*(?:--[^\n]*\n\s*|/\*.*?\*/\s*)*(CREATE|ALTER|DROP|COMMENT|GRANT|REVOKE|DO)\b",
                  re.IGNORECASE | re.DOTALL)
_RETURNING = re.compile(r"\bRETURNING\b", re.IGNORECASE)
_SAVEPOINT = re.compile(r"\s*SAVEPOINT\b", re.IGNORECASE)


def deferrable(statement: str, context: Any) -> bool:
    """Whether nobody reads this statement's answer: DDL, or a statement the tool marked (:data:`DEFER`)."""
    if _RETURNING.search(statement):
        return False
    if getattr(context, "isddl", False):
        return True
    if context.execution_options.get(DEFER) and statement == getattr(context, "statement", None):
        return True  # the marked statement itself, not a default SQLAlchemy might run for it
    return bool(_DDL.match(statement))


def _tx_start(conn: psycopg.Connection) -> bytes:
    """The ``BEGIN`` psycopg would send for this connection's isolation level, read-only and deferrable."""
    parts = [b"BEGIN"]
    if conn.isolation_level is not None:
        parts += [b"ISOLATION LEVEL", IsolationLevel(conn.isolation_level).name.replace("_", " ").encode()]
    if conn.read_only is not None:
        parts.append(b"READ ONLY" if conn.read_only else b"READ WRITE")
    if conn.deferrable is not None:
        parts.append(b"DEFERRABLE" if conn.deferrable else b"NOT DEFERRABLE")
    return b" ".join(parts)


class Cursor(psycopg.Cursor):
    """Sends the connection's held-back statements ahead of its own, in one round trip."""

    def execute(self, query, params=None, **kw):
        conn: Connection = self.connection  # type: ignore[assignment]
        if isinstance(query, str) and _SAVEPOINT.match(query):
            conn._savepoint = True
        ahead = conn._take_ahead()
        if not ahead:
            return super().execute(query, params, **kw)
        with _noted(ahead):
            super().execute(_joined(conn, [*ahead, (query, params)]), prepare=False, binary=kw.get("binary"))
        while self.nextset():  # to this statement's answer, the last
            pass
        return self

    def executemany(self, query, params_seq, **kw):
        self.connection._flush()  # type: ignore[attr-defined]
        return super().executemany(query, params_seq, **kw)

    def copy(self, statement, params=None, **kw):
        self.connection._flush()  # type: ignore[attr-defined]
        return super().copy(statement, params, **kw)

    def stream(self, query, params=None, **kw):
        self.connection._flush()  # type: ignore[attr-defined]
        return super().stream(query, params, **kw)


class Connection(psycopg.Connection):
    """A psycopg connection that holds back statements with no answer (see the module docstring)."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self._pending: list[tuple[Any, Any]] = []  # (query, params) held back, in order; BEGIN first if queued
        self._in_tx = True  # the DB-API's autocommit off (the driver's is on: see the module docstring)
        self._begin_queued = False
        self._savepoint = False  # a SAVEPOINT in this transaction: nothing more is held back until it ends

    @classmethod
    def connect(cls, *args, **kw):  # type: ignore[override]
        kw.update(autocommit=True, cursor_factory=Cursor)
        return super().connect(*args, **kw)

    # --- the DB-API's autocommit, as SQLAlchemy sets it (AUTOCOMMIT isolation, autocommit_block) -----------
    @property
    def autocommit(self) -> bool:  # type: ignore[override]
        return not self._in_tx

    @autocommit.setter
    def autocommit(self, value: bool) -> None:
        self.set_autocommit(value)

    def set_autocommit(self, value: bool) -> None:  # type: ignore[override]
        if self._pending or self.pgconn.transaction_status != TransactionStatus.IDLE:
            raise psycopg.ProgrammingError("can't change 'autocommit' now: connection in a transaction")
        self._in_tx = not value

    # --- holding back ------------------------------------------------------------------------------------
    def defer(self, query, params) -> bool:
        """Hold ``query`` back until the next statement that needs an answer, or the commit; False (and
        nothing done) where that is not safe: outside a transaction, or after a SAVEPOINT in it."""
        if not self._in_tx or self._savepoint or self.closed:
            return False
        self._queue_begin()
        self._pending.append((query, params))
        return True

    def _queue_begin(self) -> None:
        if self._in_tx and not self._begin_queued and self.pgconn.transaction_status == TransactionStatus.IDLE:
            self._pending.insert(0, (_tx_start(self), None))
            self._begin_queued = True

    def _take_ahead(self) -> list[tuple[Any, Any]]:
        """What must reach the server before the next statement: the transaction's BEGIN if it is not open yet
        (in the DB-API a statement outside autocommit begins one), and the held-back statements."""
        self._queue_begin()
        ahead, self._pending, self._begin_queued = self._pending, [], False
        return ahead

    def _flush(self) -> None:
        ahead = self._take_ahead()
        if ahead:
            with _noted(ahead):
                psycopg.Cursor(self).execute(_joined(self, ahead), prepare=False)

    def _end(self) -> None:
        self._pending, self._begin_queued, self._savepoint = [], False, False

    def commit(self) -> None:
        # Held-back statements go with the COMMIT, in one round trip; a transaction that never sent anything
        # (only its BEGIN is queued) has nothing to commit.
        pending = self._pending[1:] if self._begin_queued else self._pending
        if pending:
            ahead = [*self._take_ahead(), (b"COMMIT", None)]
            self._end()
            with _noted(ahead):
                psycopg.Cursor(self).execute(_joined(self, ahead), prepare=False)
            return
        self._end()
        super().commit()  # the driver sends COMMIT if the server is in a transaction

    def rollback(self) -> None:
        self._end()  # what was held back never ran: nothing of it to undo
        super().rollback()

    def close(self) -> None:
        self._end()
        super().close()

    def cursor(self, *args, **kw):
        if args or kw.get("name"):  # a server-side cursor declares itself at once: what came before goes first
            self._flush()
        return super().cursor(*args, **kw)


def _joined(conn: psycopg.Connection, statements: list[tuple[Any, Any]]) -> str:
    """The statements as one simple-query message: each rendered with its parameters bound client-side
    (psycopg's ``ClientCursor.mogrify``, as psycopg2 always binds). One message, one round trip, and the server
    answers it with one ReadyForQuery: its idle-in-transaction timeout is armed afterwards as after any
    statement. (psycopg's pipeline mode would also take one round trip, but it ends with a Flush message after
    the Sync, which disarms that timeout until the next statement: a client gone silent then would hold its
    transaction, and its locks, for ever.)"""
    render = psycopg.ClientCursor(conn)
    parts = []
    for query, params in statements:
        if params is not None:
            query = render.mogrify(query, params)
        elif isinstance(query, psycopg.sql.Composable):
            query = query.as_string(conn)
        elif isinstance(query, bytes):
            query = query.decode()
        parts.append(query.strip().rstrip(";"))
    return ";\n".join(parts)


class _noted:
    """Adds a note naming the held-back statements to an error raised while they are sent."""

    def __init__(self, ahead: list[tuple[Any, Any]]) -> None:
        self.ahead = ahead

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, err, tb) -> None:
        if isinstance(err, psycopg.Error):
            shown = "; ".join(" ".join((q.decode() if isinstance(q, bytes) else str(q)).split())[:120]
                              for q, _ in self.ahead)
            err.add_note(f"raised by this statement or one sent ahead of it (issue 13): {shown[:600]}")


def batch_statements(engine: Engine) -> None:
    """Make ``engine``'s new connections hold back statements with no answer (its driver must be psycopg 3).
    Registered after any other ``do_connect`` listener of the engine (the one that picks the tenant's
    database), whose changes to the connection arguments it then uses."""

    def connect(_dialect, _record, cargs, cparams):
        return Connection.connect(*cargs, **cparams)

    def hold_back(cursor, statement, parameters, context) -> bool:
        conn = cursor.connection
        return isinstance(conn, Connection) and deferrable(statement, context) and conn.defer(statement, parameters)

    def hold_back_no_params(cursor, statement, context) -> bool:
        return hold_back(cursor, statement, None, context)

    event.listen(engine, "do_connect", connect)
    event.listen(engine, "do_execute", hold_back)
    event.listen(engine, "do_execute_no_params", hold_back_no_params)
