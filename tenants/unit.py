"""The unit of work: one operation on one tenant. It never raises; it returns a :class:`TenantResult`.

Per attempt:

1. connect (a fresh connection per attempt: after a transient error Microsoft and PostgreSQL alike say to
   retry on a new connection);
2. read the recorded revision with one query. A tenant already at the target stops here: the no-op path
   costs one connection and one query, never a run of env.py. A revision missing from the graph (an
   out-of-band change) is reported ``unknown-revision`` and never touched;
3. take the tenant's lock on its own connection (:func:`tenants.db.tenant_lock`) and read the revision again
   under it: another run may have moved the tenant meanwhile, and the version table is the truth;
4. run env.py on the migration connection; env.py gives every revision its own transaction, so a failure
   rolls back only the revision in progress and a retry resumes at the revision where it stopped;
5. read where the tenant ended up (on a new connection if the old one broke) to report what was applied.

Transient errors (connection refused or dropped, server shutting down, deadlock, lock timeout) are retried
with exponential backoff and full jitter; anything else, including an error in a migration's SQL, fails the
tenant at once.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from tenants.db import (
    Connector,
    LockNotAcquired,
    NoVersionTable,
    describe_error,
    is_transient,
    read_version,
    tenant_lock,
    url_secrets,
)
from tenants.discovery import Tenant
from tenants.report import Status, TenantResult
from tenants.revisions import Operation, Revisions

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

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based): full jitter over an exponential cap."""
        cap = min(self.retry_backoff_max, self.retry_backoff * (2 ** (attempt - 1)))
        return rng.uniform(cap / 2, cap)


class _Outcome(Exception):
    """Internal: ends an attempt early with a final result (up-to-date, locked, unknown revision)."""

    def __init__(self, status: Status, current: tuple[str, ...], error: str | None = None):
        self.status, self.current, self.error = status, current, error


def run_tenant(tenant: Tenant, job: Job, revisions: Revisions, connector: Connector, *,
               read_first: bool = True, sleep=time.sleep) -> TenantResult:
    """Run ``job`` on ``tenant``; never raises (a bug in here is still reported as that tenant's failure).

    ``read_first=False`` skips the unlocked read (step 2) and goes straight to the lock: for a tenant already
    known, or all but known, to need work (the parent read it, see :mod:`tenants.fanout`), that read is a
    wasted query. Without it an up-to-date tenant costs a lock connection too, so the default keeps it.
    """
    started = time.monotonic()
    rng = random.Random()
    secrets = url_secrets(tenant.url)
    attempts = 0
    first_seen: tuple[str, ...] | None = None
    while True:
        attempts += 1
        progress = _Progress()
        try:
            _attempt(tenant, job, revisions, connector, progress, read_first)
            status, error = _DONE[job.operation], None
        except _Outcome as outcome:
            status, error = outcome.status, outcome.error
            progress.after = outcome.current
        except Exception as err:  # noqa: BLE001 - the unit of work reports, it does not raise
            if is_transient(err) and attempts <= job.retries:
                first_seen = first_seen if first_seen is not None else progress.before
                sleep(job.backoff(attempts, rng))
                continue
            status, error = Status.FAILED, describe_error(err, secrets)
        before = first_seen if first_seen is not None else progress.before
        return _result(tenant, job, revisions, status, before, progress.after, attempts,
                       time.monotonic() - started, error)


class _Progress:
    before: tuple[str, ...] | None = None
    after: tuple[str, ...] | None = None


def _attempt(tenant: Tenant, job: Job, revisions: Revisions, connector: Connector, progress: _Progress,
             read_first: bool) -> None:
    with connector.engine(tenant.url, must_exist=job.must_exist) as engine, engine.connect() as conn:
        if read_first:
            current = _read(conn, job)
            progress.before = progress.after = current
            _check(current, job, revisions)
        try:
            with tenant_lock(engine, job.lock_timeout):  # raises LockNotAcquired on entry, nowhere else
                current = _read(conn, job)  # the truth, now that nobody else can move it
                progress.before = progress.after = current
                _check(current, job, revisions)
                try:
                    revisions.migrate(conn, tenant.url, job.operation, job.target)
                except BaseException:
                    progress.after = _read_after(engine, conn, job)
                    raise
                # Alembic checked every version update it made (one row each): the tenant is at target.
                progress.after = (job.target,) if job.target else ()
        except LockNotAcquired:
            if not read_first:  # report where the tenant is, not "base"
                progress.before = progress.after = _read(conn, job)
            raise _Outcome(Status.LOCKED, progress.after or (), "held by another run (its lock is taken)") from None


def _read(conn, job: Job) -> tuple[str, ...]:
    try:
        return read_version(conn, job.version_table)
    except NoVersionTable:
        return ()


def _read_after(engine: Engine, conn, job: Job) -> tuple[str, ...] | None:
    """Where the tenant is now; after a failure the migration connection may be unusable, so use a new one."""
    try:
        if conn.invalidated:
            raise RuntimeError("connection invalidated")
        conn.rollback()
        return _read(conn, job)
    except Exception:  # noqa: BLE001
        try:
            with engine.connect() as fresh:
                return _read(fresh, job)
        except Exception:  # noqa: BLE001 - unknown is an honest answer
            return None


def _check(current: tuple[str, ...], job: Job, revisions: Revisions) -> None:
    """Stop the attempt early when there is nothing (safe) to do."""
    if not revisions.is_known(current):
        raise _Outcome(
            Status.UNKNOWN_REVISION, current,
            f"recorded revision {','.join(current)} is not in the revision graph (changed out of band?); "
            "not touched",
        )
    if job.operation == "upgrade" and not revisions.pending_upgrade(current, job.target):
        raise _Outcome(Status.UP_TO_DATE, current)
    if job.operation == "downgrade" and not revisions.pending_downgrade(current, job.target):
        raise _Outcome(Status.UP_TO_DATE, current)
    if job.operation == "stamp" and current == ((job.target,) if job.target else ()):
        raise _Outcome(Status.UP_TO_DATE, current)


def _result(tenant, job, revisions, status, before, after, attempts, duration, error) -> TenantResult:
    before = before or ()
    applied: tuple[str, ...] = ()
    if after is not None and after != before and job.operation != "stamp":
        try:
            if job.operation == "upgrade":
                plan = revisions.pending_upgrade(before, job.target)
                done = set(revisions.pending_upgrade(before, after[0])) if after else set()
            else:
                plan = revisions.pending_downgrade(before, job.target)
                done = set(plan) - set(revisions.ancestors(after[0] if after else None))
            applied = tuple(rev for rev in plan if rev in done)
        except Exception:  # noqa: BLE001 - reporting must not fail the result
            applied = ()
    return TenantResult(
        tenant=tenant.name,
        status=status,
        from_revision=",".join(before) or None,
        to_revision=(",".join(after) or None) if after is not None else None,
        applied=applied,
        attempts=attempts,
        duration=duration,
        error=error,
    )


def precheck(tenant: Tenant, job: Job, revisions: Revisions, connector: Connector) -> TenantResult | None:
    """The no-op path, cheap enough to run in a thread of the parent: no worker process, no env.py.

    Returns the final result for a tenant with nothing to do (``up-to-date``) or that must not be touched
    (``unknown-revision``); None when the tenant needs the full unit of work, including when the read
    failed (the worker then connects again, retries transient errors and reports). Reads only, and uses no
    Alembic context, so threads are safe here.
    """
    started = time.monotonic()
    try:
        with connector.engine(tenant.url, must_exist=job.must_exist) as engine, engine.connect() as conn:
            current = _read(conn, job)
        _check(current, job, revisions)
    except _Outcome as outcome:
        return _result(tenant, job, revisions, outcome.status, outcome.current, outcome.current, 1,
                       time.monotonic() - started, outcome.error)
    except Exception:  # noqa: BLE001 - the worker will report it properly
        return None
    return None
