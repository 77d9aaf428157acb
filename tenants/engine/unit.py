"""The unit of work: one operation on one tenant. It never raises; it returns a :class:`TenantResult`.

Per attempt:

1. connect (a fresh connection per attempt: after a transient error Microsoft and PostgreSQL alike say to
   retry on a new connection);
2. read the recorded revision with one query. A tenant already at the target stops here: the no-op path
   costs one connection and one query, never a run of env.py. A revision missing from the graph (an
   out-of-band change) is reported ``unknown-revision`` and never touched. (Worker processes skip this
   read: the parent has just done it, see :func:`precheck`, or, where the lock travels with the read in one
   round trip, step 3's read under the lock is the first; see :mod:`tenants.engine.fanout`);
3. take the tenant's lock on the migration connection itself (:func:`tenants.db.tenant_lock`, which says why)
   and read the revision again under it: another run may have moved the tenant meanwhile, and the version
   table is the truth;
4. run env.py, handing it the migration connection (or the engine, or only the URL: the environment's
   ``env_py``, see :mod:`tenants.engine.revisions`); env.py gives every revision its own transaction, so a failure
   rolls back only the revision in progress and a retry resumes at the revision where it stopped. Alembic
   reports the heads it read and the steps it will run; a disagreement with step 3 (env.py using another
   version table) stops the tenant before anything runs;
5. read where the tenant ended up (on a new connection if the old one broke). After a failure that is what
   the report shows; after success it must be the target, or the tenant fails: an env.py that migrated
   another database or version table returns without error. The audit trail gets a row for every step the
   read shows and env.py's ``on_version_apply`` did not see (:mod:`tenants.engine.history`).

Transient errors (connection refused or dropped, server shutting down, too many connections, deadlock,
lock timeout) are retried with exponential backoff and jitter; anything else, including an error in a
migration's SQL, fails the tenant at once.

In results, a revision of ``"base"`` means none recorded (a new database); ``None`` means unknown (never
read, or unreadable after a failure).
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from tenants.db import (
    Connector,
    LockNotAcquired,
    NoVersionTable,
    Sessions,
    TenantState,
    TransientLockError,
    autocommit,
    describe_error,
    is_throttling,
    is_transient,
    known_tables,
    locked_state,
    missing_file,
    read_state,
    read_version,
    schema_snapshot,
)
from tenants.engine.history import Recorder
from tenants.engine.pins import TABLE as PIN_TABLE
from tenants.engine.pins import Pin
from tenants.engine.revisions import MigrationConnection, Operation, Revisions
from tenants.model import Status, Tenant, TenantResult, revision_of
from tenants.snapshot import Snapshot, diff

_DONE = {"upgrade": Status.UPGRADED, "downgrade": Status.DOWNGRADED, "stamp": Status.STAMPED}


@dataclass(frozen=True)
class Job:
    """What to do to each tenant. Plain data: it is pickled to every worker process."""

    operation: Operation
    target: str | None  # a resolved revision id; None is base
    alembic_ini: str
    version_table: str = "alembic_version"
    retries: int = 3
    retry_backoff: float = 1.0
    retry_backoff_max: float = 30.0
    lock_timeout: float = 0.0
    must_exist: bool = False  # SQLite: fail (don't create) when the tenant's file is missing
    # The revision the plan was made from, which the operator saw when confirming (single-tenant downgrade): if
    # the tenant moved since, undoing "down to X" would undo more than was shown, so the tenant fails instead.
    # (Not the revision read under the lock: that one is ``current``, handed to Revisions.migrate.)
    planned_from: tuple[str, ...] | None = None
    auth: str | None = None  # SQL Server: azure-ad | sql | odbc (see tenants.config)
    cloud: str = "public"
    # The audit trail (tenants.engine.history): written when run_id is set.
    run_id: str | None = None
    actor: str | None = None
    git_commit: str | None = None
    tool_version: str = ""
    history_table: str = "tenants_history"
    # A database with tables but no version table holds a schema Alembic never recorded (an existing customer
    # database): "report" leaves it alone and reports it `unmanaged`; "upgrade" runs the graph from base on it
    # (for graphs whose first revision expects tables created outside Alembic). See tenants.config.
    unmanaged: str = "report"
    env_py: str = "connection"  # what env.py is handed (tenants.engine.revisions): connection | engine | url
    # Every connection's deadlines (DDL lock timeout, keepalives, ...): tenants.config's Environment.sessions.
    sessions: Sessions = field(default_factory=Sessions)
    # `tenants adopt` (a stamp): the fingerprint the tenant's schema had when it was matched to ``target``.
    # Under the lock the tenant must still have no version table and still that schema (one more query), or
    # it is not touched (``skipped``): someone may have changed it since the dry run. Its history row's
    # outcome is ``adopted``, with the fingerprint (tenants.engine.history).
    adopt: str | None = None
    # check_schema (issue 12): the expected schema of each position, keyed by its revision ("a"; several heads
    # "a,b", sorted), for an upgrade that checks each tenant's schema before migrating it. None: no check.
    expected: Mapping[str, Snapshot] | None = field(default=None, compare=False)

    def own_tables(self) -> tuple[str, ...]:
        return own_tables(self.version_table, self.history_table)

    @property
    def done(self) -> Status:
        """The status of a tenant this job moved: upgraded, downgraded or stamped."""
        return _DONE[self.operation]

    def recorder(self, table_exists: bool | None = None) -> Recorder | None:
        if self.run_id is None:
            return None
        recorder = Recorder(self.history_table, self.run_id, self.operation, self.actor, self.git_commit,
                            self.tool_version, table_exists=table_exists)
        if self.adopt is not None:
            recorder.outcome, recorder.note = "adopted", f"schema fingerprint {self.adopt}"
        return recorder

    def connector(self) -> Connector:
        """The connection factory of one process for this job (its own engines and token cache)."""
        return Connector(self.auth, self.cloud, sessions=self.sessions)

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Seconds before retry number ``attempt`` (1-based): exponential, capped, half fixed and half random
        ("equal jitter") so that tenants retrying together spread out but none retries at once."""
        cap = min(self.retry_backoff_max, self.retry_backoff * (2 ** (attempt - 1)))
        return rng.uniform(cap / 2, cap)


class _Outcome(Exception):
    """Internal: ends an attempt early with a final result (up-to-date, locked, unknown revision)."""

    def __init__(self, status: Status, current: tuple[str, ...], error: str | None = None):
        self.status, self.current, self.error = status, current, error


def run_tenant(tenant: Tenant, job: Job, revisions: Revisions, connector: Connector, *,
               read_first: bool = True, hand_back_throttled: bool = False, sleep=time.sleep,
               on_change: Callable[[], None] | None = None) -> TenantResult:
    """Run ``job`` on ``tenant``; never raises (a bug in here is still reported as that tenant's failure).

    ``read_first=False`` skips the unlocked read (step 2) and goes straight to the lock: for a tenant already
    known, or all but known, to need work (the parent read it, see :mod:`tenants.engine.fanout`), that read is a
    wasted query, and where the lock travels with the read (:meth:`~tenants.dialects.Dialect.lock_rides_with_read`)
    it costs nothing. Elsewhere an up-to-date tenant then costs a lock query too, so the default keeps it. A
    tenant whose lock is held, with nothing to do, is still ``up-to-date``, as the unlocked read would say.

    ``hand_back_throttled``: on a throttling error (the elastic pool is saturated), wait one backoff and return
    ``throttled`` instead of retrying here: the fan-out then lowers its concurrency and runs the tenant again
    later (see :class:`tenants.engine.fanout.ProcessStrategy`). Retrying in place would keep the pressure on.

    What the result says is what this run did, across its attempts (issue 11): ``applied`` holds the
    revisions this run's attempts committed, and a tenant this run moved is ``upgraded`` (``downgraded``) even
    when the attempt that ended found nothing left to do. A failure is recorded once in the tenant's history,
    by the attempt that ends the tenant, never by a transient error that is retried.

    ``on_change`` is called when an attempt starts env.py, the first step that may change the tenant (a
    worker tells its parent so: a tenant killed before then changed nothing).
    """
    started = time.monotonic()
    rng = random.Random()
    attempts = 0
    progress = _Progress(on_change)  # kept across attempts: "before" is the first read, "after" the latest one
    while True:
        attempts += 1
        progress.migrating = False
        try:
            _attempt(tenant, job, revisions, connector, progress, read_first)
            status, error = _DONE[job.operation], None
        except _Outcome as outcome:
            status, error = outcome.status, outcome.error
        except Exception as err:  # noqa: BLE001 - the unit of work reports, it does not raise
            if hand_back_throttled and is_throttling(err):
                sleep(job.backoff(attempts, rng))
                status, error = Status.THROTTLED, describe_error(err, tenant.all_secrets)
                return _result(tenant, job, status, progress, attempts, time.monotonic() - started, error)
            if is_transient(err) and attempts <= job.retries:
                sleep(job.backoff(attempts, rng))
                continue
            status, error = Status.FAILED, describe_error(err, tenant.all_secrets)
        if status is Status.UP_TO_DATE and progress.applied:  # an earlier attempt of this run moved it
            status = _DONE[job.operation]
        if status is Status.FAILED and progress.migrating:
            _record_failure(tenant, job, connector, progress, error or "")
        return _result(tenant, job, status, progress, attempts, time.monotonic() - started, error)


class LockLost(TransientLockError):
    """The session holding the tenant's lock ended while env.py ran (env.py migrated on a connection of its own,
    or its connection broke after the last commit): another run may have entered. Transient: the next
    attempt takes the lock again and reads where the tenant is."""


class _Progress:
    """What is known of the tenant across attempts: first read, latest read, and what this run applied."""

    def __init__(self, on_change: Callable[[], None] | None = None) -> None:
        self.on_change = on_change
        self.before: tuple[str, ...] | None = None
        self.after: tuple[str, ...] | None = None
        self.applied: list[str] = []  # revisions this run's attempts committed (applied, or undone), in order
        # An attempt that failed with the tenant's position unreadable: where it started, and the revisions it
        # was running. The next read under the lock settles which of them committed.
        self.unsure: tuple[tuple[str, ...], frozenset[str]] | None = None
        self.migrating = False  # the attempt in progress got as far as running env.py

    def start_migrating(self) -> None:
        """The attempt runs env.py now: the first step that may change the tenant (``on_change`` says so)."""
        self.migrating = True
        if self.on_change is not None:
            self.on_change()

    def saw(self, current: tuple[str, ...]) -> None:
        if self.before is None:
            self.before = current
        self.after = current

    def saw_or_lost(self, current: tuple[str, ...] | None) -> None:
        """A read after env.py ran; None (unreadable) makes the tenant's revision unknown."""
        if current is None:
            self.after = None
        else:
            self.saw(current)

    def add(self, revs) -> None:
        self.applied.extend(rev for rev in revs if rev not in self.applied)

    def settle(self, current: tuple[str, ...], job: Job, revisions: Revisions) -> None:
        """Under the lock, after an attempt whose outcome was unknown (its commit acknowledgement lost, say):
        the revisions it was running that the version table now shows are counted as this run's. Another run
        could have applied them only by taking the lock in the moment between that attempt's session ending
        and this read, and then it would have run the very same revisions."""
        if self.unsure is not None:
            start, running = self.unsure
            self.add(rev for rev in _moved(revisions, job, start, current) if rev in running)
            self.unsure = None


def _moved(revisions: Revisions, job: Job, before: tuple[str, ...] | None, after: tuple[str, ...] | None
           ) -> list[str]:
    """The revisions applied (upgrade) or undone (downgrade) between two reads of the version table."""
    if job.operation == "stamp" or before is None or after is None or before == after:
        return []
    try:
        steps = revisions.steps_between(job.operation, before, after)
    except Exception:  # noqa: BLE001 - an unknown revision: nothing can be said
        return []
    return [to if job.operation == "upgrade" else source for source, to in steps]


def _attempt(tenant: Tenant, job: Job, revisions: Revisions, connector: Connector, progress: _Progress,
             read_first: bool) -> None:
    # A MigrationConnection is engine.connect()'s Connection that env.py may also call connect() on.
    with connector.engine(tenant.url, must_exist=job.must_exist) as engine, MigrationConnection(engine) as conn:
        autocommit(conn)  # the tool's own reads: one round trip each (tenants.db.autocommit); env.py gets it back
        if read_first:
            progress.saw(_position(_read(conn, job)))
            _check(progress.after, job, revisions, tenant.name)
        try:
            # The lock lives on the migration connection itself: see tenants.db.tenant_lock.
            # The truth, read once nobody else can move it: the version, the pin and which of the tool's tables
            # exist, in one statement, sent with the lock's where the driver can (tenants.db.locked_state).
            with locked_state(conn, job.lock_timeout, job.sessions.application_name, job.version_table, PIN_TABLE,
                              job.history_table, pin=job.operation == "upgrade") as state:
                _judge(state, job)
                current = _position(state)
                progress.saw(current)
                progress.settle(current, job, revisions)
                _check(current, job, revisions, tenant.name)
                if job.adopt is not None:
                    _check_adopt(conn, current, job)
                if job.operation == "upgrade" and state.pin is not None:  # only tenants with work get here
                    raise _Outcome(Status.PINNED, current, Pin.of_row(state.pin).describe())
                if job.expected is not None:  # check_schema: before env.py, so no guard papers over drift
                    _check_schema(conn, job, current)
                _migrate(tenant, job, revisions, connector, engine, conn, state, progress)
        except LockNotAcquired as err:
            if not read_first:  # report where the tenant is, not "unknown"
                progress.saw(_read_raw(conn, job))
                # Nothing to do there is up-to-date, lock or not: what a lock-free first read says (the parent's
                # precheck, the serial strategy), whoever holds the lock (a second run going over the fleet).
                _check(progress.after, job, revisions, tenant.name)
            held = f"held by another run ({err.holder})" if err.holder else "held by another run"
            raise _Outcome(Status.LOCKED, progress.after or (), f"{held}: its lock is taken") from None


def _migrate(tenant: Tenant, job: Job, revisions: Revisions, connector: Connector, engine: Engine, conn,
             state: TenantState, progress: _Progress) -> None:
    """Run env.py under the lock, then read the version table to see what it did (see the module docstring).

    The connection goes to env.py out of autocommit and with no transaction open, so that Alembic gives each
    revision a transaction of its own (:func:`tenants.db.autocommit`). Whether the version and history tables
    exist was read with the version, under the lock: Alembic's and the recorder's own checks are answered from
    that (:func:`tenants.db.known_tables`) until the first DDL."""
    current = _position(state)
    recorder = job.recorder(state.history)
    progress.start_migrating()
    autocommit(conn, False)
    known_tables(conn, {job.version_table: state.versions is not None, job.history_table: state.history})
    try:
        applied = revisions.migrate(conn, tenant.url, job.operation, job.target, current=current,
                                    on_version_apply=recorder.on_version_apply if recorder else None,
                                    env_py=job.env_py)
    except BaseException:
        after, _ = _read_after(tenant, job, connector, conn)
        progress.saw_or_lost(after)
        if after is None:
            progress.unsure = (current, frozenset(_moved(revisions, job, current, (job.target,) if job.target
                                                         else ())))
        else:
            with contextlib.suppress(Exception):  # best effort: never masks the failure
                _took(job, revisions, recorder, engine, progress, current, after)
        raise
    # Only the tenant's own version table says where it is: an env.py that migrated another database
    # (its own settings URL) or another version table returns as happily as one that did the work.
    after, locked = _read_after(tenant, job, connector, conn)
    progress.saw_or_lost(after)
    if after is not None:
        _took(job, revisions, recorder, engine, progress, current, after, stamped=applied)
    if not locked:
        raise LockLost("the session holding the tenant's lock ended while env.py ran")
    if not _reached(after, job, applied):
        raise _Outcome(Status.FAILED, after or (), _missed(current, after, job))


def _took(job: Job, revisions: Revisions, recorder: Recorder | None, engine: Engine, progress: _Progress,
          current: tuple[str, ...], after: tuple[str, ...], stamped: list[str] | tuple[str, ...] = ()) -> None:
    """What the read after env.py shows this attempt did, from ``current`` to ``after``: the revisions this run
    applied (a stamp applies none: ``stamped``, what Alembic ran, is reported), and history rows for the steps
    ``on_version_apply`` did not see (an env.py that does not pass the callback on)."""
    progress.add(stamped if job.operation == "stamp" else _moved(revisions, job, current, after))
    if recorder is not None:
        recorder.applied_afterwards(engine, revisions.steps_between(job.operation, current, after))


def _check_adopt(conn, current: tuple[str, ...], job: Job) -> None:
    """`tenants adopt`, under the lock: the tenant is still unmanaged and its schema still the one matched."""
    if current:
        raise _Outcome(Status.SKIPPED, current, f"it records {','.join(current)} now (adopted or stamped since "
                       "it was matched); not touched")
    found = schema_snapshot(conn, job.own_tables()).fingerprint
    if found != job.adopt:
        raise _Outcome(Status.SKIPPED, current, f"its schema changed since it was matched (fingerprint {found}, "
                       f"not {job.adopt}); not touched: run `tenants adopt` again to see where it is")


def _check_schema(conn, job: Job, current: tuple[str, ...]) -> None:
    """check_schema (issue 12): under the lock, before env.py, the tenant's schema against the expected schema
    of its recorded position; a difference ends the attempt ``drifted``, with nothing touched.

    One catalog query (:func:`tenants.db.schema_snapshot`), paid only by a tenant with work: the no-op path never
    gets here. A tenant at base is not checked: a new database has nothing to compare, and one with tables but no
    version table is either stopped earlier (``unmanaged``) or deliberately run from base (unmanaged =
    "upgrade"). A position without an expected schema (a consensus tie, heads never built) is not checked
    either: there is no truth to hold the tenant to.
    """
    expected = job.expected.get(position_key(current)) if job.expected is not None and current else None
    if expected is None:
        return
    differences = diff(expected, schema_snapshot(conn, job.own_tables()))
    if differences:
        raise _Outcome(Status.DRIFTED, current, drifted_reason(current, differences))


def position_key(current: tuple[str, ...]) -> str:
    """How :attr:`Job.expected` names a position: its revision, or its heads sorted and joined by commas."""
    return ",".join(sorted(current))


def drifted_reason(current: tuple[str, ...], differences: list[str], shown: int = 3) -> str:
    """Why a tenant is ``drifted``, in one line: the first differences and the way out."""
    more = f" (and {len(differences) - shown} more)" if len(differences) > shown else ""
    return (f"schema differs from the expected schema of its recorded revision {revision_of(current)}: "
            f"{'; '.join(differences[:shown])}{more}; not touched: repair the schema (`tenants plan --schema` "
            "lists every difference), or set check_schema = false to upgrade it anyway")


def _record_failure(tenant: Tenant, job: Job, connector: Connector, progress: _Progress, error: str) -> None:
    """The history row of a failure that ends the tenant (one per tenant and run, whatever the retries), in a
    transaction of its own on a new connection; best effort, and only where the tenant's position is known."""
    recorder = job.recorder()
    if recorder is None or progress.after is None:
        return
    with contextlib.suppress(Exception):
        with connector.engine(tenant.url, must_exist=True) as engine:
            recorder.failed(engine, revision_of(progress.after), job.target or "base", error)


def _read(conn, job: Job, *, pin: bool = False) -> TenantState:
    """The recorded revision (and the pin, the tool's tables); stops an upgrade of an unmanaged database
    (tables, no version table) here. One statement on PostgreSQL and SQL Server, whatever the database holds
    (:func:`tenants.db.read_state`): the no-op path stays one query.
    """
    return _judge(read_state(conn, job.version_table, PIN_TABLE, job.history_table, pin=pin), job)


def _judge(state: TenantState, job: Job) -> TenantState:
    """Stops an upgrade of an unmanaged database (tables, no version table) here."""
    if state.versions is None and job.operation == "upgrade" and job.unmanaged == "report":
        tables = foreign_tables(state, job.own_tables())
        if tables:
            raise _Outcome(Status.UNMANAGED, (), unmanaged_reason(tables, job.version_table))
    return state


def _position(state: TenantState) -> tuple[str, ...]:
    """The tenant's position: its version rows, () for none (no version table: a new database)."""
    return state.versions or ()


def own_tables(version_table: str, history_table: str) -> tuple[str, ...]:
    """Tables the tool itself may have created in a tenant: they do not make a database unmanaged."""
    return (version_table, history_table, PIN_TABLE)


def foreign_tables(state: TenantState, own: tuple[str, ...]) -> list[str]:
    """The tables and views of a database without a version table that are not the tool's own, sorted: any
    makes it `unmanaged` (a schema Alembic never recorded)."""
    skip = {name.lower() for name in own}
    return sorted(name for name in state.tables if name.lower() not in skip)


def unmanaged_reason(tables: list[str], version_table: str) -> str:
    """Why a database is `unmanaged`, and the way out, in one line."""
    shown = ", ".join(tables[:5]) + (f" and {len(tables) - 5} more" if len(tables) > 5 else "")
    other = next((t for t in tables if t.lower().endswith("alembic_version")), None)
    hint = f" (it has {other}: is the environment's version_table right?)" if other else ""
    return (f"{len(tables)} table(s) ({shown}) but no {version_table} table{hint}: a schema Alembic never recorded; "
            "not touched. Adopt it with `tenants adopt` (finds the revision its schema matches, and stamps it with "
            "--yes), or set unmanaged = \"upgrade\" in the environment to run the graph from base on it")


def version_rows_problem(current: tuple[str, ...], revisions: Revisions, version_table: str, tenant: str
                         ) -> str | None:
    """Why the rows of a version table are not a position Alembic accepts, in one line; None when they are.

    Several rows are a position only as the heads of separate branches (Alembic's own rule: it refuses an
    upgrade from rows that overlap). A row that is below another row (``head`` and an old revision, after a
    hand edit or a restore) or the same row twice is no position at all: every revision looks applied, so
    without this check the no-op path would read the tenant as at the target (issue 11). Such a tenant is
    reported ``unknown-revision``, as one whose revision is not in the graph is: its place in the graph is
    unknown, and it is not touched. Rows on parallel branches below a merge stay a valid position (the
    upgrade applies the merge). ``current`` must be in the graph (:meth:`Revisions.is_known`).
    """
    if len(current) < 2:
        return None
    below = [(rev, other) for rev in current for other in current
             if rev != other and rev in revisions.ancestors(other)]
    if not below and len(set(current)) == len(current):
        return None
    why = (f"{below[0][0]} is below {below[0][1]}" if below
           else f"{next(rev for rev in current if current.count(rev) > 1)} is there twice")
    return (f"version table {version_table} has {len(current)} rows ({', '.join(current)}) and {why}, which "
            f"Alembic refuses; not touched: keep the one row the schema matches, e.g. "
            f"`alembic -x tenant={tenant} stamp --purge REVISION`")


def _read_raw(conn, job: Job) -> tuple[str, ...]:
    """The version rows, whatever exists (one statement, never a failing one)."""
    return _position(read_state(conn, job.version_table, PIN_TABLE, job.history_table, pin=False))


def _read_rows(conn, job: Job) -> tuple[str, ...]:
    """The version rows alone, after env.py: the cheapest read of them (the version table is there after any
    run of Alembic; a missing one, say env.py used another name, reads as no rows, base)."""
    try:
        return read_version(conn, job.version_table)
    except NoVersionTable:
        return ()


def _read_after(tenant: Tenant, job: Job, connector: Connector, conn) -> tuple[tuple[str, ...] | None, bool]:
    """Where the tenant is now, and whether the migration connection (the lock's) is still alive. After a
    failure that connection may be unusable: then a new one reads, with the read deadline; None when the
    tenant cannot be read (unknown is an honest answer)."""
    try:
        if conn.invalidated:
            raise RuntimeError("connection invalidated")
        conn.rollback()
        known_tables(conn, {})
        autocommit(conn)  # the read: one round trip, no BEGIN/ROLLBACK
        return _read_rows(conn, job), True
    except Exception:  # noqa: BLE001
        try:
            with connector.engine(tenant.url, must_exist=True, reads=True) as engine, engine.connect() as fresh:
                autocommit(fresh)
                return _read_rows(fresh, job), False
        except Exception:  # noqa: BLE001 - unknown is an honest answer
            return None, False


def _check(current: tuple[str, ...], job: Job, revisions: Revisions, tenant: str) -> None:
    """Stop the attempt early when there is nothing (safe) to do."""
    if job.planned_from is not None and current != job.planned_from:
        raise _Outcome(
            Status.FAILED, current,
            f"the tenant moved from {revision_of(job.planned_from)} to {revision_of(current)} since the plan was "
            "shown; nothing done: run the command again to see the new plan",
        )
    if not revisions.is_known(current):
        raise _Outcome(
            Status.UNKNOWN_REVISION, current,
            f"recorded revision {','.join(current)} is not in the revision graph (changed out of band?); "
            "not touched",
        )
    rows = version_rows_problem(current, revisions, job.version_table, tenant)
    if rows is not None:  # "nothing pending" from such rows would mean nothing: never read it as at the target
        raise _Outcome(Status.UNKNOWN_REVISION, current, rows)
    if job.operation == "upgrade" and not revisions.pending_upgrade(current, job.target):
        raise _Outcome(Status.UP_TO_DATE, current)
    if job.operation == "downgrade" and not revisions.pending_downgrade(current, job.target):
        raise _Outcome(Status.UP_TO_DATE, current)
    if job.operation == "stamp" and current == ((job.target,) if job.target else ()):
        raise _Outcome(Status.UP_TO_DATE, current)


def _reached(after: tuple[str, ...] | None, job: Job, ran: list[str]) -> bool:
    """Whether the version table read after env.py shows the job's target (and, after a downgrade, none of the
    revisions it undid)."""
    if job.target is None:
        return after == ()
    return after is not None and job.target in after and not (job.operation == "downgrade" and set(ran) & set(after))


def _missed(before: tuple[str, ...], after: tuple[str, ...] | None, job: Job) -> str:
    table, wanted = job.version_table, job.target or "base"
    if after is None:
        return f"env.py returned but the tenant's version table {table} could not be read to check it reads {wanted}"
    return (f"env.py returned but the tenant's version table {table} {'still ' if after == before else ''}reads "
            f"{revision_of(after)}, not {wanted}: env.py migrated another database (it must use the connection or URL "
            "tenants hands it) or uses another version_table")


def _result(tenant, job, status, progress: _Progress, attempts, duration, error) -> TenantResult:
    return TenantResult(
        tenant=tenant.name,
        status=status,
        from_revision=revision_of(progress.before),
        to_revision=revision_of(progress.after),
        applied=tuple(progress.applied),
        attempts=attempts,
        duration=duration,
        error=error,
    )


def precheck(tenant: Tenant, job: Job, revisions: Revisions, connector: Connector) -> TenantResult | None:
    """The no-op path, cheap enough to run in a thread of the parent: no worker process, no env.py.

    Returns the final result for a tenant with nothing to do (``up-to-date``) or that must not be touched
    (``unknown-revision``); None when the tenant needs the full unit of work, including when the read
    failed (the worker then connects again, retries transient errors and reports). Reads only, and uses no
    Alembic context, so threads are safe here. A SQLite tenant whose file does not exist yet is new: it is
    not opened here (that would create it).
    """
    started = time.monotonic()
    if not job.must_exist and missing_file(tenant.url):
        return None
    progress = _Progress()
    try:
        with connector.engine(tenant.url, must_exist=job.must_exist, reads=True) as engine, \
                engine.connect() as conn:
            autocommit(conn)
            progress.saw(_position(_read(conn, job)))
        _check(progress.after, job, revisions, tenant.name)
    except _Outcome as outcome:
        return _result(tenant, job, outcome.status, progress, 1, time.monotonic() - started, outcome.error)
    except Exception:  # noqa: BLE001 - the worker will report it properly
        return None
    return None
