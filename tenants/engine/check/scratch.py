"""The checks that run a revision on a database: the stairway and the reruns, on a scratch database of one
dialect (:meth:`tenants.dialects.Dialect.scratch_database`: SQLite a temporary file, PostgreSQL a database
created and dropped), through the tool's own migration path (:meth:`Revisions.migrate`, so env.py runs as in
production, one transaction per revision).

For each revision R (parent P), on a database at P with rows in every table (:mod:`.data`):

1. upgrade to R; schema ``after`` and the tables' contents;
2. **idempotency, upgrade**: stamp P (the schema stays at R), upgrade again: it must succeed and change
   neither the schema nor the data; stamp R;
3. downgrade to P: the schema must be ``before`` again (**stairway**);
4. **idempotency, downgrade**: stamp R (the schema stays at P), downgrade again: it must succeed and change
   neither schema nor data; stamp P;
5. upgrade to R again: the schema must be ``after`` again (**stairway**).

The database then stays at R for the next revision. A revision whose upgrade fails stops the walk on that
dialect (the next ones would start from the wrong schema); a revision whose parent is not where the database
is (a sibling branch, a revision not selected in between) first gets a database at its parent, upgrading
where it can, a fresh one otherwise. A merge revision (several parents) is left to the static checks. A
revision whose ``no-downgrade`` finding is acknowledged runs steps 1 and 2 only.

A failure points at the line of the revision file that raised (its traceback), else at the function's
``def`` line; a difference lists the schema diff lines (:func:`tenants.snapshot.diff`) or the tables whose rows
changed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy.engine import URL

from tenants.db import Connector, describe_error, schema_snapshot
from tenants.dialects import Dialect
from tenants.engine.check.data import changed_tables, contents, seed
from tenants.engine.check.report import ERROR, IDEMPOTENCY, STAIRWAY, Finding, column
from tenants.engine.check.source import RevisionSource
from tenants.engine.revisions import EnvPy, MigrationConnection, Revisions
from tenants.snapshot import Snapshot, diff

__all__ = ["Scratch", "Step", "check_on"]


@dataclass(frozen=True)
class Step:
    """One revision to check: its parent (None: base), its file, and whether its downgrade is checked."""

    revision: str
    parents: tuple[str, ...]
    source: RevisionSource
    downgrade: bool = True

    @property
    def parent(self) -> str | None:
        return self.parents[0] if self.parents else None


@dataclass(frozen=True)
class Scratch:
    """Where one dialect's scratch databases come from: the dialect, a URL of its server, the connector."""

    dialect: Dialect
    url: URL
    connector: Connector
    maintenance: str | None = None
    reference: str | None = None

    def database(self) -> contextlib.AbstractContextManager[URL] | None:
        return self.dialect.scratch_database(
            self.url, connect=lambda u: self.connector.engine(u.render_as_string(hide_password=False)),
            reference=self.reference, maintenance=self.maintenance)


class _Database:
    """One open scratch database: its migration connection, and where it is in the graph."""

    def __init__(self, conn: MigrationConnection, url: str, revisions: Revisions, env_py: EnvPy,
                 own: tuple[str, ...]) -> None:
        self.conn, self.url, self.revisions, self.env_py, self.own = conn, url, revisions, env_py, own
        self.position: str | None = None
        self.notes: list[str] = []

    def migrate(self, operation, target: str | None) -> Exception | None:
        """Run env.py; the error it raised (its revision rolled back), or None."""
        try:
            self.revisions.migrate(self.conn, self.url, operation, target, env_py=self.env_py)
        except Exception as err:  # noqa: BLE001 - a failing revision is a finding, not a crash
            with contextlib.suppress(Exception):
                self.conn.rollback()
            return err
        return None

    def snapshot(self) -> Snapshot:
        return schema_snapshot(self.conn, self.own)

    def contents(self) -> dict[str, tuple[int, str]]:
        return contents(self.conn, self.snapshot())

    def seed(self) -> None:
        self.notes += seed(self.conn, self.snapshot())


@contextlib.contextmanager
def _open(scratch: Scratch, revisions: Revisions, env_py: EnvPy, own: tuple[str, ...]) -> Iterator[_Database]:
    database = scratch.database()
    if database is None:
        raise LookupError(f"the {scratch.dialect.name} dialect offers no scratch database here")
    with database as url:
        text_url = url.render_as_string(hide_password=False)
        with scratch.connector.engine(text_url) as engine, MigrationConnection(engine) as conn:
            yield _Database(conn, text_url, revisions, env_py, own)


def check_on(scratch: Scratch, steps: list[Step], revisions: Revisions, env_py: EnvPy, own: tuple[str, ...]
             ) -> tuple[list[Finding], dict[tuple[str, str], str], list[str]]:
    """The stairway and idempotency findings of ``steps`` on one dialect; the cells skipped, and notes.

    Raises whatever creating the first scratch database raised (the server is unreachable, no right to
    create a database): the caller reports the dialect as not checked."""
    walk = _Walk(scratch, revisions, env_py, own)
    try:
        for i, step in enumerate(steps):
            if not walk.run(step):
                for later in steps[i + 1:]:
                    walk.skip(later, f"{step.revision} failed on {walk.dialect}")
                break
    finally:
        walk.close()
    return walk.findings, walk.skipped, walk.notes


class _Walk:
    def __init__(self, scratch: Scratch, revisions: Revisions, env_py: EnvPy, own: tuple[str, ...]) -> None:
        self.scratch, self.revisions, self.env_py, self.own = scratch, revisions, env_py, own
        self.dialect = scratch.dialect.name
        self.findings: list[Finding] = []
        self.skipped: dict[tuple[str, str], str] = {}
        self.notes: list[str] = []
        self._stack: contextlib.ExitStack | None = None
        self.db: _Database | None = None
        self.stopped: str | None = None

    def close(self) -> None:
        if self.db is not None:
            self.notes += [f"{self.dialect}: {note}" for note in dict.fromkeys(self.db.notes)]
        if self._stack is not None:
            self._stack.close()
        self._stack, self.db = None, None

    def _fresh(self) -> _Database:
        self.close()
        self._stack = contextlib.ExitStack()
        self.db = self._stack.enter_context(_open(self.scratch, self.revisions, self.env_py, self.own))
        return self.db

    def skip(self, step: Step, why: str, checks: tuple[str, ...] = (STAIRWAY, IDEMPOTENCY)) -> None:
        for check in checks:
            self.skipped[step.revision, column(check, self.dialect)] = why

    def finding(self, step: Step, check: str, rule: str, message: str, fix: str, line: int,
                details: tuple[str, ...] = ()) -> None:
        found = Finding(step.revision, check, rule, ERROR, message, fix, step.source.shown, line, self.dialect,
                        details)
        reason, _ = step.source.acknowledgment(rule, line)
        self.findings.append(found.acknowledged(reason) if reason else found)

    def run(self, step: Step) -> bool:
        """Check one revision; False stops the walk (the database is not where the next revision starts)."""
        if len(step.parents) > 1:
            self.skip(step, "a merge revision: checked statically only")
            return True
        db = self._at(step.parent)
        if db is None:
            self.skip(step, f"its parent {step.parent} could not be applied")
            return True
        return _Revision(self, db, step).check()

    def _at(self, parent: str | None) -> _Database | None:
        """A database at ``parent``, with rows in every table."""
        db = self.db
        reachable = db is not None and (db.position == parent or (
            parent is not None and (db.position is None or db.position in self.revisions.ancestors(parent))))
        if not reachable:
            db = self._fresh()
        if db.position != parent:
            db.seed()
            if db.migrate("upgrade", parent) is not None:
                return None
            db.position = parent
        db.seed()
        return db


class _Revision:
    """The five steps of the module docstring for one revision on one database."""

    def __init__(self, walk: _Walk, db: _Database, step: Step) -> None:
        self.walk, self.db, self.step = walk, db, step
        self.source = step.source

    def fail(self, check: str, rule: str, what: str, err: Exception, function: str, fix: str) -> None:
        self.walk.finding(self.step, check, rule, f"{what}: {describe_error(err)}", fix,
                          self.source.raised_at(err, function))

    def check(self) -> bool:
        rev, parent, db = self.step.revision, self.step.parent, self.db
        before = db.snapshot()
        err = db.migrate("upgrade", rev)
        if err is not None:
            self.fail(STAIRWAY, "upgrade-fails", "the upgrade fails on a database at its parent with rows in every "
                      "table", err, "upgrade", "make it work on a tenant with data: a default for a NOT NULL "
                      "column, a backfill before a constraint")
            self.walk.skip(self.step, "the upgrade failed", (IDEMPOTENCY,))
            return False
        db.position = rev
        db.seed()  # the tables it created get rows too, for its rerun
        after = db.snapshot()
        self.rerun("upgrade", parent, rev, after)
        if not self.step.downgrade:
            self.walk.skip(self.step, "no downgrade (acknowledged)", (STAIRWAY,))
            return True
        return self.stairway(before, after)

    def rerun(self, operation: str, back: str | None, to: str | None, schema: Snapshot) -> None:
        """Step 2 or 4: the version set back (stamp), ``operation`` run again over the schema it already made."""
        db, function = self.db, operation
        data = db.contents()
        db.migrate("stamp", back)
        err = db.migrate(operation, to)
        if err is not None:
            self.fail(IDEMPOTENCY, f"rerun-{operation}", f"run again on a database that already has its change, "
                      f"the {operation} fails", err, function, _RERUN_FIX)
        else:
            changes = diff(schema, db.snapshot()) + changed_tables(data, db.contents())
            if changes:
                self.walk.finding(self.step, IDEMPOTENCY, f"rerun-{operation}",
                                  f"run again on a database that already has its change, the {operation} changes "
                                  f"it ({len(changes)} difference(s))", _RERUN_FIX,
                                  self._line(function, changes, sql=True), tuple(changes))
        db.migrate("stamp", to)

    def stairway(self, before: Snapshot, after: Snapshot) -> bool:
        rev, parent, db = self.step.revision, self.step.parent, self.db
        err = db.migrate("downgrade", parent)
        if err is not None:
            self.fail(STAIRWAY, "downgrade-fails", "the downgrade fails", err, "downgrade", _DOWN_FIX)
            self.walk.skip(self.step, "the downgrade failed", (IDEMPOTENCY,))
            return True  # the revision rolled back: the database is still at it
        db.position = parent
        down = db.snapshot()
        missed = diff(before, down)
        if missed:
            self.walk.finding(self.step, STAIRWAY, "downgrade-restores", "the downgrade does not restore the schema "
                              f"it started from ({len(missed)} difference(s))", _DOWN_FIX,
                              self.source.line_of("downgrade"), tuple(missed))
        self.rerun("downgrade", rev, parent, down)
        err = db.migrate("upgrade", rev)
        if err is not None:
            self.fail(STAIRWAY, "upgrade-again-fails", "after its downgrade, the upgrade fails", err, "upgrade",
                      _DOWN_FIX)
            return False
        db.position = rev
        again = diff(after, db.snapshot())
        if again:
            self.walk.finding(self.step, STAIRWAY, "upgrade-again-differs", "upgrade, downgrade, upgrade does not "
                              f"give the schema of the first upgrade ({len(again)} difference(s))", _DOWN_FIX,
                              self.source.line_of("upgrade"), tuple(again))
        return True

    def _line(self, function: str, changes: list[str], sql: bool = False) -> int:
        """The line of ``function`` that names the first object a difference is about."""
        for change in changes:
            for word in change.replace(":", " ").split():
                name = word.split(".")[-1]
                if word in _DIFF_WORDS:
                    continue
                line = self.source.find(function, name, sql)
                if name and line != self.source.line_of(function):
                    return line
        return self.source.line_of(function)


# The words of a schema diff line (tenants.snapshot.diff) and of changed_tables that name no object.
_DIFF_WORDS = frozenset("extra missing table column index view unique constraint foreign key primary of on rows "
                        "before after and but their values changed expected found".split())
_RERUN_FIX = ("a rerun (a retried tenant, a resumed deploy) must find nothing to do: write DDL with tenants.guards "
              "instead of op, and data changes that skip rows already changed (INSERT ... WHERE NOT EXISTS, "
              "UPDATE ... WHERE the row still needs it)")
_DOWN_FIX = ("downgrade() must undo exactly what upgrade() did, in reverse order (every table, column, index and "
             "constraint it created), with tenants.guards")
