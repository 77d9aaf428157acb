"""What every fan-out strategy shares: its result (:class:`FanOut`), the failure policy, and two helpers."""

from __future__ import annotations

import signal
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from tenants.engine.unit import Job
from tenants.model import Status, Tenant, TenantResult

OnResult = Callable[[TenantResult], None]


@dataclass(frozen=True)
class FanOut:
    """What a strategy returns: the results in tenant order, and how the run adapted to the database."""

    results: list[TenantResult]
    throttled: int = 0
    concurrency_changes: tuple[tuple[float, int], ...] = ()
    pressure_wait: float = 0.0  # seconds starts were held back by the pressure probe
    pressure_errors: tuple[tuple[str, int], ...] = ()  # reads of the pool's load that failed: (line, times)


@dataclass(frozen=True)
class FailurePolicy:
    """Stop starting new tenants once ``max_failures`` tenants failed; None keeps going through every tenant."""

    max_failures: int | None = 1

    def stop(self, failures: int) -> bool:
        return self.max_failures is not None and failures >= self.max_failures


class Strategy(Protocol):
    concurrency: int

    def run(self, tenants: list[Tenant], job: Job, policy: FailurePolicy, on_result: OnResult) -> FanOut:
        ...


# What the failure policy counts: a tenant that timed out did not get where it was going either, nor did one
# whose schema has drifted from its revision (check_schema): both need a person before the fleet goes on.
FAILURES = frozenset({Status.FAILED, Status.TIMED_OUT, Status.DRIFTED})


def signal_name(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def interrupted_already() -> int | None:
    """The signal that interrupted this command already, as the CLI's handler (``tenants.cli.Interrupts``, which
    lists what it ``received``) saw it: a later wave of an interrupted run starts nothing."""
    received = getattr(signal.getsignal(signal.SIGTERM), "received", None)
    return received[0] if received else None


def skipped(tenant: Tenant, why: str = "the failure policy stopped the run") -> TenantResult:
    return TenantResult(tenant.name, Status.SKIPPED, error=f"not started: {why}")


def merge(earlier: TenantResult | None, later: TenantResult, done: Status | None = None) -> TenantResult:
    """One result for a tenant that ran more than once (handed back throttled, then run again). A tenant that an
    earlier run of it moved (``applied``) and the later one found at the target is ``done`` (the operation's
    status: ``upgraded``, ...), not ``up-to-date``: this run moved it."""
    if earlier is None:
        return later
    moved = done is not None and later.status is Status.UP_TO_DATE and bool(earlier.applied)
    return replace(
        later,
        status=done if moved else later.status,
        from_revision=earlier.from_revision if earlier.from_revision is not None else later.from_revision,
        to_revision=later.to_revision if later.to_revision is not None else earlier.to_revision,
        applied=earlier.applied + later.applied,
        attempts=earlier.attempts + later.attempts,
        duration=earlier.duration + later.duration,
        # A tenant that ended well carries no error, whatever an earlier (throttled) attempt of it said.
        error=later.error if later.error is not None or later.ok else earlier.error,
    )
