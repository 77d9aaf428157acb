"""Results are data: one :class:`TenantResult` per tenant, gathered into a :class:`RunReport`.

Rendering (tables, lines, JSON) lives in :mod:`tenants.render` as pure functions over these objects.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from enum import Enum


class Status(str, Enum):
    UPGRADED = "upgraded"
    DOWNGRADED = "downgraded"
    STAMPED = "stamped"
    UP_TO_DATE = "up-to-date"
    FAILED = "failed"
    # Still running when the run's tenant timeout (--tenant-timeout) ran out: its worker process was killed and
    # the server rolled the revision in progress back, so the tenant is at its last completed revision. Not
    # good (exit 1), and a failure for the failure policy (--max-failures): see tenants.fanout.
    TIMED_OUT = "timed-out"
    LOCKED = "locked"
    SKIPPED = "skipped"
    UNKNOWN_REVISION = "unknown-revision"
    # Never final: a worker hit a throttling error (the elastic pool is saturated) and hands the tenant back
    # to the fan-out, which lowers its concurrency and runs the tenant again later.
    THROTTLED = "throttled"
    PINNED = "pinned"  # needs work, but a pin keeps it out of fleet upgrades (tenants.pins)
    # Tables but no version table: a schema Alembic never recorded (an existing customer database). Never
    # touched by an upgrade, not good (exit 1) until a person adopts it with `tenants stamp`.
    UNMANAGED = "unmanaged"

    def __str__(self) -> str:
        return self.value


# A run is good when every tenant ended in one of these.
GOOD = frozenset({Status.UPGRADED, Status.DOWNGRADED, Status.STAMPED, Status.UP_TO_DATE, Status.PINNED})


@dataclass(frozen=True)
class TenantResult:
    """What happened to one tenant. Plain data: it crosses back from the worker process."""

    tenant: str
    status: Status
    from_revision: str | None = None  # "base": no revision recorded (a new database); None: unknown
    to_revision: str | None = None  # where the tenant is now (a failed one: where it stopped); None: unknown
    applied: tuple[str, ...] = ()  # revisions applied (upgrade) or undone (downgrade), in order
    attempts: int = 0
    duration: float = 0.0  # seconds
    error: str | None = None  # password-free

    @property
    def ok(self) -> bool:
        return self.status in GOOD

    def to_dict(self) -> dict:
        return {
            "tenant": self.tenant,
            "status": self.status.value,
            "from": self.from_revision,
            "to": self.to_revision,
            "applied": list(self.applied),
            "attempts": self.attempts,
            "duration": round(self.duration, 4),
            "error": self.error,
        }


@dataclass(frozen=True)
class RunReport:
    """One run of one operation over the selected tenants, in selection order."""

    run_id: str
    environment: str
    operation: str  # upgrade | downgrade | stamp
    target: str  # resolved revision id, or "base"
    head: str | None
    concurrency: int
    started_at: str  # ISO 8601, UTC
    finished_at: str
    duration: float
    results: tuple[TenantResult, ...] = ()
    tool_version: str = ""
    throttled: int = 0  # throttling errors the fan-out backed off from
    concurrency_changes: tuple[tuple[float, int], ...] = ()  # (seconds into the run, tenants at once)
    pressure_wait: float = 0.0  # seconds tenant starts were held back by the pressure probe
    pressure_errors: tuple[str, ...] = ()  # failed reads of the pool's load (the probe then let starts in)
    skipped_databases: tuple[tuple[str, str], ...] = ()  # seen by discovery, not tenants: (name, why)
    waves: tuple[dict, ...] = ()  # per wave: name, tenants, summary, failures, budget, ran, ok

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def counts(self) -> dict[str, int]:
        counts = Counter(r.status.value for r in self.results)
        return {s.value: counts[s.value] for s in Status if counts[s.value]}

    @property
    def failed(self) -> tuple[TenantResult, ...]:
        return tuple(r for r in self.results if not r.ok)

    def to_dict(self) -> dict:
        return {
            "schema_version": 1,
            "tool_version": self.tool_version,
            "run_id": self.run_id,
            "environment": self.environment,
            "operation": self.operation,
            "target": self.target,
            "head": self.head,
            "concurrency": self.concurrency,
            "throttled": self.throttled,
            "concurrency_changes": [{"at": round(at, 3), "concurrency": n} for at, n in self.concurrency_changes],
            "pressure_wait": round(self.pressure_wait, 3),
            "pressure_errors": list(self.pressure_errors),
            "skipped_databases": [{"database": name, "reason": why} for name, why in self.skipped_databases],
            "waves": list(self.waves),
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration": round(self.duration, 4),
            "ok": self.ok,
            "summary": self.counts,
            "tenants": [r.to_dict() for r in self.results],
        }


class State(str, Enum):
    AT_HEAD = "at-head"
    BEHIND = "behind"
    NEW = "new"
    UNMANAGED = "unmanaged"  # tables but no version table: see Status.UNMANAGED
    UNKNOWN_REVISION = "unknown-revision"
    UNREACHABLE = "unreachable"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class TenantStatus:
    tenant: str
    state: State
    current: tuple[str, ...] = ()
    behind: int | None = None  # revisions to apply to reach head; None when unknown
    error: str | None = None
    pin: str | None = None  # the pin's description, when the tenant is pinned

    def to_dict(self) -> dict:
        return {
            "tenant": self.tenant,
            "state": self.state.value,
            "current": (None if self.state in (State.UNREACHABLE, State.UNMANAGED)
                        else ",".join(self.current) or "base"),
            "behind": self.behind,
            "error": self.error,
            "pin": self.pin,
        }


@dataclass(frozen=True)
class StatusReport:
    environment: str
    head: str
    tenants: tuple[TenantStatus, ...] = field(default_factory=tuple)
    # Tenant databases discovery found but could not read (Azure: not Online), (name, why): their revision is
    # unknown, so `verify` lists them as not verified and fails (unless --allow-offline).
    offline: tuple[tuple[str, str], ...] = ()

    @property
    def ok(self) -> bool:
        return all(t.state is State.AT_HEAD for t in self.tenants)

    @property
    def ok_but_pinned(self) -> bool:
        """Every tenant at head, or pinned (deliberately held back)."""
        return all(t.state is State.AT_HEAD or t.pin is not None for t in self.tenants)

    def to_dict(self) -> dict:
        counts = Counter(t.state.value for t in self.tenants)
        return {
            "environment": self.environment,
            "head": self.head,
            "ok": self.ok,
            "summary": {s.value: counts[s.value] for s in State if counts[s.value]},
            "tenants": [t.to_dict() for t in self.tenants],
            "offline": [{"tenant": name, "reason": why} for name, why in self.offline],
        }
