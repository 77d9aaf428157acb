"""The audit trail in every tenant database: who moved this tenant from which revision to which, and when.

Each revision the tool applies (upgrade, downgrade or stamp) adds a row to a small table next to
``alembic_version`` (``tenants_history``), **in the same transaction as the revision itself**: Alembic calls
``on_version_apply`` inside the per-revision transaction, right after updating ``alembic_version``. So a
revision and its row commit or roll back together, and a run killed mid-revision leaves neither. A revision
that fails is recorded afterwards, in a transaction of its own (its own transaction rolled back), with
outcome ``failed`` and the error.

``tenants adopt`` (issue 12) stamps a hand-managed tenant at the revision its schema matches: its row's
outcome is ``adopted`` and its ``error`` column carries the note ``schema fingerprint <12 hex digits>`` (the
schema that was matched, read under the lock). The note goes in that column rather than a new one: every
tenant already has this table, and a new column would need an ALTER on each of them before a row could be
written, or a reader that copes with both shapes. ``error`` is free text that only failed rows used.

Rows carry: run id, operation, from and to revision, start and finish time (UTC), outcome, error, actor
(``$GITHUB_ACTOR``, else the local user), the git commit of the revisions (``$GITHUB_SHA``, else ``git
rev-parse HEAD`` in the Alembic project) and the tool's version.

Only env.py files that pass ``config.attributes["on_version_apply"]`` on to ``context.configure`` (ours does)
give Alembic the callback; a third-party env.py (Alembic's generic template, optuna's, jupyterhub's) does not.
The trail records what the tool did either way: when the tenant's version moved by more steps than the
callback saw, the missing rows are written after env.py returns (:meth:`Recorder.applied_afterwards`), in a
transaction of their own, outside the revisions' transactions (a process killed in between loses them), with
the same fields, all with the interval in which env.py ran as their start and finish.
"""

from __future__ import annotations

import functools
import getpass
import os
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from tenants.db import DEFER

DEFAULT_TABLE = "tenants_history"


@functools.lru_cache(maxsize=8)  # one Table per name: its statements compile once per process
def history_table(name: str = DEFAULT_TABLE) -> sa.Table:
    return sa.Table(
        name, sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("operation", sa.String(16), nullable=False),
        sa.Column("from_revision", sa.String(200), nullable=False),
        sa.Column("to_revision", sa.String(200), nullable=False),
        sa.Column("started_at", sa.DateTime, nullable=False),
        sa.Column("finished_at", sa.DateTime, nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("error", sa.String(1000), nullable=True),
        sa.Column("actor", sa.String(200), nullable=True),
        sa.Column("git_commit", sa.String(64), nullable=True),
        sa.Column("tool_version", sa.String(32), nullable=True),
    )


def actor() -> str:
    return os.environ.get("GITHUB_ACTOR") or _user()


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in a container is not worth failing for
        return "unknown"


def git_commit(project_dir: Path) -> str | None:
    """The commit the revisions come from: $GITHUB_SHA in Actions, else the project's git HEAD, else None."""
    if os.environ.get("GITHUB_SHA"):
        return os.environ["GITHUB_SHA"]
    try:
        done = subprocess.run(["git", "-C", str(project_dir), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None if done.returncode == 0 else None


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)  # naive UTC: portable across the three dialects


@dataclass
class Recorder:
    """Writes the rows of one tenant's run (one instance per tenant and attempt)."""

    table_name: str
    run_id: str
    operation: str
    actor: str | None
    git_commit: str | None
    tool_version: str
    started: datetime = field(default_factory=_now)
    outcome: str = "applied"  # of the rows of revisions that moved: "adopted" for `tenants adopt`
    note: str | None = None  # their error column (`tenants adopt`: the schema fingerprint); None for none
    # Whether the table exists, when the caller read it (tenants.db.read_state, under the lock): then it is
    # not asked again (a round trip), and created without a check when missing. None: ask.
    table_exists: bool | None = None
    _ready: bool = False
    recorded: list[tuple[str, str]] = field(default_factory=list)  # (from, to) of each row the callback wrote

    def on_version_apply(self, ctx: Any, step: Any, heads: Any, run_args: Any) -> None:
        """Alembic's callback, inside the revision's transaction: the row commits with the revision."""
        connection = ctx.connection
        table = history_table(self.table_name)
        if not self._ready:
            if not self.table_exists:
                table.create(connection, checkfirst=self.table_exists is None)
            self._ready = True
        finished = _now()
        moved = (",".join(sorted(step.source_revision_ids)) or "base",
                 ",".join(sorted(step.destination_revision_ids)) or "base")
        # Nothing is read back from the row: where the driver batches, it travels with the COMMIT (issue 13).
        row = self._row(table, *moved, finished, self.outcome, self.note)
        connection.execute(row.execution_options(**{DEFER: True}))
        self.recorded.append(moved)
        self.started = finished  # the next revision starts where this one ended

    def applied_afterwards(self, engine: sa.Engine, steps: list[tuple[str, str]]) -> None:
        """Rows for the ``steps`` (from, to) that the tenant's version table shows applied but that
        ``on_version_apply`` never saw (an env.py that does not pass the callback on), in a transaction of
        their own. When the callback saw as many steps as there are, nothing is written."""
        if len(self.recorded) >= len(steps):
            return
        missing = [step for step in steps if step not in self.recorded]
        table = history_table(self.table_name)
        finished = _now()
        with engine.begin() as connection:
            table.create(connection, checkfirst=True)
            for from_revision, to_revision in missing:
                connection.execute(self._row(table, from_revision, to_revision, finished, self.outcome, self.note))
        self.recorded += missing
        self.started = finished

    def _row(self, table: sa.Table, from_revision: str, to_revision: str, finished: datetime, outcome: str,
             error: str | None):
        # inline(): no RETURNING of the new row's id (nor a sequence read before it): nobody reads it, and a
        # statement with no answer to read can travel with the COMMIT (tenants.dialects.psycopg_batch).
        return table.insert().inline().values(
            run_id=self.run_id, operation=self.operation, from_revision=from_revision, to_revision=to_revision,
            started_at=self.started, finished_at=finished, outcome=outcome, error=error, actor=self.actor,
            git_commit=self.git_commit, tool_version=self.tool_version,
        )

    def failed(self, engine: sa.Engine, from_revision: str, to_revision: str, error: str) -> None:
        """Record a failed revision in a transaction of its own (best effort: never masks the failure)."""
        table = history_table(self.table_name)
        try:
            with engine.begin() as connection:
                table.create(connection, checkfirst=True)
                connection.execute(self._row(table, from_revision, to_revision, _now(), "failed", error[:1000]))
        except Exception:  # noqa: BLE001 - the tenant's own error is what the report must show
            pass


def read_history(connection: sa.Connection, table_name: str = DEFAULT_TABLE, limit: int = 200) -> list[dict]:
    """The newest ``limit`` rows, oldest first; [] when the tenant has no history table yet."""
    if not sa.inspect(connection).has_table(table_name):
        return []
    table = history_table(table_name)
    rows = connection.execute(sa.select(table).order_by(table.c.id.desc()).limit(limit)).mappings().all()
    return [dict(row) for row in reversed(rows)]


def applied_by_run(connection: sa.Connection, run_id: str, table_name: str = DEFAULT_TABLE
                   ) -> list[tuple[str, str, str]]:
    """(operation, from, to) of each step ``run_id`` committed on this tenant, in order: what a run that lost
    track of a tenant (its worker killed after a signal or for the timeout) really did there. Each ``applied``
    row committed with its revision (``on_version_apply``), so the rows are exactly the revisions that stayed.
    One query, in a transaction that is ended; [] when the tenant has no history table (or env.py does not pass
    the callback on: then nothing can be said)."""
    table = history_table(table_name)
    try:
        rows = connection.execute(
            sa.select(table.c.operation, table.c.from_revision, table.c.to_revision)
            .where(table.c.run_id == run_id, table.c.outcome == "applied").order_by(table.c.id)).all()
    except sa.exc.DBAPIError:
        return []  # no history table yet
    finally:
        connection.rollback()
    return [tuple(row) for row in rows]
