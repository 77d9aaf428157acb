"""What every fan-out strategy shares: its result (:class:`FanOut`), the failure policy, and two helpers."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Protocol

from tenants.engine.unit import Job
from tenants.model import Status, Tenant, TenantResult

OnResult = Callable[[TenantResult], None]
HALT_POLL = 0.5  # seconds: after a second signal, how often a serial migration's clean-up is interrupted again


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


class Noted:
    """A handler of SIGINT and SIGTERM that notes them; ``raising``: each signal also raises KeyboardInterrupt
    (its text names the signal, Ctrl-C's is empty), as Ctrl-C does by default, unless the command was
    interrupted before this handler was installed.

    Each, not only the first: a serial migration interrupted by the first signal unwinds through its
    connections' clean-up (the tenant lock's release, a rollback, psycopg's cancel request), which waits for the
    server; on a connection that went silent (black-holed) such a wait never ends (issue 11: "repeated Ctrl-C
    ends the process promptly"). The second signal stops the migration's clean-up altogether, as it kills a
    worker process in a process run: from then on every :data:`HALT_POLL` seconds (SIGALRM) until the block is
    left, another KeyboardInterrupt ends whatever the clean-up waits for. Every KeyboardInterrupt lands inside
    the migration's ``with`` block.

    ``received`` is every signal of the command so far: those the handler it replaced had noted (the CLI's,
    ``tenants.cli.Interrupts``, or an outer one of these), then its own. Each is passed on to that handler's
    ``note``, so the outermost one (the CLI's: it chooses the exit code) hears of every signal.
    """

    def __init__(self, previous: object = None, raising: bool = False) -> None:
        self.previous = previous
        self.received: list[int] = list(getattr(previous, "received", ()))
        self.raising = raising and not self.received
        self.raised = 0
        self.halting = False  # SIGALRM raises every HALT_POLL seconds (the second signal)

    def __call__(self, signum: int, frame: object) -> None:
        self.note(signum)
        if self.raising:
            self.raised += 1
            if self.raised >= 2 and not self.halting and hasattr(signal, "setitimer"):
                self.halting = True
                signal.signal(signal.SIGALRM, self._halt)
                signal.setitimer(signal.ITIMER_REAL, HALT_POLL, HALT_POLL)
            raise KeyboardInterrupt(_text(signum))

    def _halt(self, signum: int, frame: object) -> None:
        if self.raising and self.received:
            raise KeyboardInterrupt(_text(self.received[0]))

    def note(self, signum: int) -> None:
        self.received.append(signum)
        told = getattr(self.previous, "note", None)
        if told is not None:
            told(signum)

    @property
    def first(self) -> int | None:
        """The first signal of the command, if one came."""
        return self.received[0] if self.received else None


@contextlib.contextmanager
def noting_signals(raising: bool = False) -> Iterator[Noted]:
    """SIGINT and SIGTERM handled by a :class:`Noted` meanwhile, then the previous handlers again.

    Why a run notes signals rather than let them raise wherever they land (issue 11): a KeyboardInterrupt
    between two waves, or while a fan-out sets itself up, used to end the command at once, silently, with the
    report cut short and no summary, JUnit or notification. Noted, a signal ends the run where it is safe: the
    fan-out starts nothing more and reports the tenants it did not start ``skipped``. Only the migration of a
    serial run is let be interrupted (``raising``): it runs in this process, and its revision in progress
    rolls back (tenants.engine.fanout.serial).

    Only the main thread can install handlers: elsewhere the process keeps its own, and the handler yielded
    notes nothing (a Ctrl-C raises KeyboardInterrupt in the main thread, which is not this one). A signal that
    was ignored (``nohup``) stays ignored."""
    previous = signal.getsignal(signal.SIGTERM)
    noted = Noted(previous, raising)
    if threading.current_thread() is not threading.main_thread():
        yield noted
        return
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig, old in saved.items():
        if old is not signal.SIG_IGN:
            signal.signal(sig, noted)
    try:
        yield noted
    finally:
        noted.raising = False  # from now on, a signal only lands outside the block
        if noted.halting:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
        for sig, old in saved.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


def _text(signum: int) -> str:
    """A KeyboardInterrupt's text: the signal's name (Ctrl-C's is empty, as Python's own)."""
    return "" if signum == signal.SIGINT else signal.Signals(signum).name


def skipped(tenant: Tenant, why: str = "the failure policy stopped the run") -> TenantResult:
    return TenantResult(tenant.name, Status.SKIPPED, error=f"not started: {why}")


@dataclass(frozen=True)
class Whereabouts:
    """Where a tenant whose worker was killed (after a signal, or for the timeout) stands, read back by the
    parent: ``revision`` as the version table reads (``base``: none; None: unreadable), and what this run had
    committed there, ``applied`` in order, from its history rows (the killed worker's own account never comes
    back; see :func:`tenants.engine.history.applied_by_run`), with ``start``, the revision it found the tenant
    at, when a row says so."""

    revision: str | None
    applied: tuple[str, ...] = ()
    start: str | None = None

    def apply_to(self, result: TenantResult) -> TenantResult:
        known = result.applied + tuple(rev for rev in self.applied if rev not in result.applied)
        start = result.from_revision if result.from_revision is not None else self.start
        return replace(result, to_revision=self.revision, applied=known, from_revision=start)


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
