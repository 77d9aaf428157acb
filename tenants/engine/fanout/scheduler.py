"""The process fan-out's scheduler: the state of one run, and one method per event that changes it.

:class:`~tenants.engine.fanout.process.ProcessStrategy` owns the processes and threads; its loop asks the
scheduler to start what may start (:meth:`Scheduler.start`), waits (:meth:`Scheduler.wait`), and hands each
finished future back (:meth:`Scheduler.on_done`), which names the event: a precheck done, a tenant done,
throttled, its worker died, it timed out, the read after a timeout done. A signal is :meth:`Scheduler.on_interrupt`;
a precheck still going at the tenant timeout, :meth:`Scheduler.on_precheck_late`.

Signals (Ctrl-C's SIGINT, and SIGTERM: what a cancelled CI job or ``kill`` sends). The handler only notes the
signal (:meth:`Scheduler.on_signal`); the loop acts on it when it wakes (it wakes at least every
``SIGNAL_POLL`` seconds). Nothing is ever interrupted mid-step: an exception raised by a handler inside an
executor's ``submit`` or ``shutdown`` leaves it holding a lock or joining forever (pressing Ctrl-C three or four
times used to deadlock the exit, issue 11). The first signal: start nothing new, tell workers still coming up
not to start their tenant, and let the tenants in flight finish for a grace period (:func:`drain_grace`). A
second signal, or the end of the grace: stop them (:meth:`Scheduler.on_halt`), by SIGKILL of their workers:
the server rolls each one's revision in progress back; where each stopped is read back within
``READ_BACK`` seconds, else reported unknown. A third signal changes nothing.

Failure policy: after ``max_failures`` failed (or timed-out) tenants no new tenant is started; tenants already
running are left to finish (a worker is never killed mid-DDL for the policy: the server would roll the
transaction back, but the report would then lie about where the tenant is). Tenants never started are
reported ``skipped``.
"""

from __future__ import annotations

import os
import signal
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace

from tenants.engine.fanout.aimd import Aimd
from tenants.engine.fanout.base import (
    FAILURES,
    FailurePolicy,
    FanOut,
    OnResult,
    Whereabouts,
    merge,
    signal_name,
    skipped,
)
from tenants.engine.fanout.slots import Flight, Slot, Slots
from tenants.engine.pressure import PressureGate
from tenants.model import Status, Tenant, TenantResult
from tenants.secrets import scrub

_POOL_BROKE = ("the worker pool broke (a worker process died: killed? out of memory? or could not start): this "
               "tenant did not finish; a revision in progress rolled back; rerun to resume")

# Worker processes that die this many times in a row before starting a single tenant, with no tenant finished
# in between, cannot start at all (e.g. the main module cannot be imported again in a worker: a script read
# from stdin).
_MAX_BREAKS = 3
_NO_WORKERS = ("worker processes could not start (3 died in a row before starting a tenant); nothing was run for "
               "this tenant. From a script, guard it with `if __name__ == \"__main__\":`; or use concurrency 1")
_STOPPED = ("interrupted ({}) while migrating: its worker process was killed and the server rolls the revision in "
            "progress back (its connection died); rerun to resume")
_STOPPED_UNCHANGED = ("interrupted ({}) before env.py ran on it (connecting, waiting for its lock, reading): its "
                      "worker process was killed; nothing was changed; rerun to resume")
SIGNAL_POLL = 0.2  # seconds: how soon the loop acts on a signal
# Seconds after which a read of the parent no longer holds the others back (see Scheduler.read_window): a tenant
# that cannot be reached waits out its connect timeout (10 s), and the slow start must not make the fleet wait
# with it. A read takes tens of milliseconds, a few hundred with a far-away pool's TLS and Entra token.
SLOW_READ = 1.0
READ_BACK = 2.0  # seconds: how long the reads of where stopped tenants are may take before they are unknown
# Grace for the tenants in flight after the first signal, in GitHub Actions: a cancelled job gets SIGINT, then
# SIGTERM about 7.5 s later, then SIGKILL: stop them, read them back and write the reports before that.
ACTIONS_GRACE = 4.0
TERM_GRACE = 20.0  # elsewhere, after SIGTERM (under Kubernetes' default 30 s before its SIGKILL)


def _changed(flight: Flight, earlier: TenantResult | None) -> bool:
    """Whether a killed worker's tenant may have been changed by this run: its env.py had started (the slot's
    CHANGING), or an earlier run of it (handed back throttled) had applied revisions already."""
    return flight.slot.changing() or bool(earlier is not None and earlier.applied)


def drain_grace(signum: int, environ: Mapping[str, str] = os.environ) -> float | None:
    """Seconds the tenants in flight may take to finish after the first signal; None: as long as they need.

    ``TENANTS_DRAIN_GRACE`` (seconds; ``none``: no limit) decides. Otherwise: in GitHub Actions
    (``GITHUB_ACTIONS=true``) :data:`ACTIONS_GRACE` for any signal; elsewhere :data:`TERM_GRACE` after SIGTERM,
    and no limit after Ctrl-C (a person at the terminal presses it again to stop them).
    """
    configured = environ.get("TENANTS_DRAIN_GRACE", "").strip().lower()
    if configured:
        if configured in ("none", "inf", "infinite"):
            return None
        try:
            return max(0.0, float(configured))
        except ValueError:
            pass  # a typo must not cost the drain: the default applies
    if environ.get("GITHUB_ACTIONS") == "true":
        return ACTIONS_GRACE
    return TERM_GRACE if signum == signal.SIGTERM else None


_READ_TIMED_OUT = ("timed out: reading its revision (before any change) took {:g}s (--tenant-timeout); nothing was "
                  "changed; rerun to resume")
_TIMED_OUT = ("timed out: still running {:g}s after it started (--tenant-timeout): its worker process was "
              "killed and the server rolls the revision in progress back (its connection died); rerun to resume")
_TIMED_OUT_UNCHANGED = ("timed out: {:g}s after it started (--tenant-timeout) env.py had not run on it yet "
                        "(connecting, waiting for its lock, reading): its worker process was killed; nothing was "
                        "changed; rerun to resume")


class Scheduler:
    """One process fan-out over ``tenants``: which tenant is where, and what to do when something finishes.

    ``read(tenant)`` is the parent's precheck (None: it needs work), run in ``threads``; ``precheck=False``:
    none, every tenant goes to a worker, which reads it under its lock. ``where(tenant)`` reads back the
    revision of a tenant whose worker was killed, also in ``threads``. ``slots`` runs tenants in worker
    processes. ``clock`` is ``time.monotonic`` (the workers' clocks use it too).
    """

    def __init__(self, tenants: list[Tenant], policy: FailurePolicy, on_result: OnResult, *, concurrency: int,
                 retries: int, slots: Slots, threads: Executor, read: Callable[[Tenant], TenantResult | None],
                 where: Callable[[Tenant], Whereabouts], gate: PressureGate | None = None,
                 timeout: float | None = None, clock: Callable[[], float] = time.monotonic,
                 drain: Callable[[int], float | None] = drain_grace, done: Status | None = None,
                 precheck: bool = True) -> None:
        self.policy, self.on_result, self.concurrency, self.retries = policy, on_result, concurrency, retries
        self.slots, self.threads, self.read, self.where = slots, threads, read, where
        self.gate, self.timeout, self.clock = gate, timeout, clock
        self.done = done  # the operation's status for a tenant this run moved (upgraded, ...): see merge
        self.order = {t.name: i for i, t in enumerate(tenants)}
        self.unchecked: deque[Tenant] = deque(tenants)  # not read yet
        self.ready: deque[Tenant] = deque()  # need a worker
        self.checks: dict[Future, Tenant] = {}  # reads in flight (threads)
        self.checked_since: dict[Future, float] = {}  # when each read in flight started: the timeout covers it
        # Timed-out tenants whose revision is being read back (threads), with their result but for that.
        self.autopsies: dict[Future, TenantResult] = {}
        self.aimd = Aimd(min(concurrency, len(tenants)), started=clock())
        self.partial: dict[str, TenantResult] = {}  # results of throttled attempts, per tenant
        self.throttles: dict[str, int] = {}  # throttles while running alone, per tenant: they count as retries
        self.results: list[TenantResult] = []
        self.failures = 0
        # The parent's reads in flight at most (slow start, doubled by each tenant found done already, up to the
        # limit): a read of a tenant that needs work is a login the worker then repeats, and every read in
        # flight when the first such tenant is found is one. Starting with one read, a fleet being upgraded
        # pays one such login per run (issue 13: one login per tenant); a fleet at the target reaches full
        # speed after a couple of reads.
        self.read_window = 1
        self.breaks = 0  # workers that died before starting a single tenant, in a row with no result in between
        self.prechecking, self.interrupted, self.held = precheck, False, False
        self.pressure_wait = 0.0
        self.drain = drain
        self.signals: list[int] = []  # noted by the handler, in order; the loop acts on them
        self.handled = 0  # of self.signals
        self.why = "Ctrl-C"  # the first signal, for the report
        self.halted = False  # the tenants in flight were stopped
        self.grace_until: float | None = None  # when the tenants in flight are stopped (after the first signal)
        self.read_back_until: float | None = None  # when the reads of stopped tenants are given up

    # --- starting -------------------------------------------------------------------------------------------
    def starting(self) -> bool:
        """Whether new tenants may start."""
        # A tenant killed for the timeout counts as failed from the kill on, before its result is in.
        timed_out = len(self.autopsies) + self.slots.killed()
        return not self.interrupted and not self.policy.stop(self.failures + timed_out) and self.breaks < _MAX_BREAKS

    def start(self) -> bool:
        """Start the reads and tenants that may start now; False when the run is over (nothing to wait for)."""
        if not self.prechecking:
            self.ready.extend(self.unchecked)
            self.unchecked.clear()
        self._start_reads()
        self.held = self._start_tenants()
        return bool(self.checks or self.slots.in_flight or self.autopsies or self.held)

    def _start_reads(self) -> None:
        # Reads and migrations together stay within the limit.
        now = self.clock()
        slow = sum(1 for started in self.checked_since.values() if now - started >= SLOW_READ)
        window = min(self.concurrency, self.read_window + slow)  # a slow read does not hold the others back
        while self.starting() and self.unchecked and len(self.checks) < window \
                and len(self.checks) + len(self.slots) < self.aimd.limit:
            tenant = self.unchecked.popleft()
            future = self.threads.submit(self.read, tenant)
            self.checks[future], self.checked_since[future] = tenant, self.clock()

    def _start_tenants(self) -> bool:
        """Submit one tenant per free worker, never more: a tenant waiting in an executor's queue would start
        when the failure policy may want it skipped. True when the pressure probe says wait."""
        while self.starting() and self.ready and len(self.slots) < self.aimd.limit:
            try:
                admitted = self.gate is None or self.gate.admit()  # may read the pool: a login
            except KeyboardInterrupt:
                self.interrupted = True
                return False
            if not admitted:
                return True
            slot, tenant = self.slots.take(), self.ready.popleft()
            try:
                self.slots.submit(Flight(tenant, slot, self.aimd.epoch, self.aimd.limit))
            except (BrokenProcessPool, OSError, EOFError):
                self.on_pool_broke(tenant, slot)
        return False

    # --- waiting --------------------------------------------------------------------------------------------
    def wait(self) -> set[Future]:
        """Kill the tenants past their timeout, then wait until something finishes (or the next timeout is due,
        or, held back by the pressure probe, its next reading)."""
        self.take_signals()
        due = self.slots.kill_overdue(self.clock(), self.timeout)
        late_read = self.give_up_late_reads()
        paused = self.clock()
        pending = [*self.checks, *self.slots.in_flight, *self.autopsies]
        wake = min(w for w in (due, late_read, self._deadline(), SIGNAL_POLL,
                               self.gate.interval if self.held and self.gate is not None else None) if w is not None)
        if pending:
            done, _ = wait(pending, timeout=wake, return_when=FIRST_COMPLETED)
        else:
            time.sleep(wake if self.gate is not None else 0)
            done = set()
        if self.held:
            self.pressure_wait += self.clock() - paused
        self.take_signals()
        # A signal handled just now may have given some up (stopped: reported already).
        return {f for f in done if f in self.checks or f in self.autopsies or f in self.slots.in_flight}

    def give_up_late_reads(self) -> float | None:
        """The tenant timeout covers the parent's read of a tenant too (issue 11: everything done for that
        tenant): a read still going ``timeout`` seconds after it started is given up, and its tenant reported
        timed out (:meth:`on_precheck_late`); its thread is a daemon, left to its connection's own deadlines
        (``read_timeout``, ``network_timeout``). Returns the seconds until the next read is due, if one is."""
        if self.timeout is None:
            return None
        now, due = self.clock(), None
        for future in list(self.checks):
            if future.done():
                continue  # in time: handed back by this wait
            left = self.checked_since[future] + self.timeout - now
            if left <= 0:
                self.on_precheck_late(future, now - self.checked_since[future])
            else:
                due = left if due is None else min(due, left)
        return due

    def _deadline(self) -> float | None:
        """Seconds until the grace or the read-back deadline runs out, if one runs."""
        until = self.read_back_until if self.halted else self.grace_until
        return None if until is None else max(0.0, until - self.clock())

    # --- events ---------------------------------------------------------------------------------------------
    def on_signal(self, signum: int, frame: object = None) -> None:
        """What the signal handler does: note the signal (see the module docstring); :meth:`take_signals` acts.
        (ProcessStrategy shares its handler's list as :attr:`signals` instead: the signals of the whole command,
        those before this fan-out included.)"""
        self.signals.append(signum)

    def take_signals(self) -> None:
        """Act on the signals noted since last time, and on the deadlines they set."""
        while self.handled < len(self.signals):
            self.handled += 1
            self.on_interrupt(self.signals[self.handled - 1])
        if self.halted:
            if self.read_back_until is not None and self.clock() >= self.read_back_until:
                self.on_read_back_late()
        elif self.grace_until is not None and self.clock() >= self.grace_until:
            self.on_halt()

    def on_interrupt(self, signum: int = signal.SIGINT) -> None:
        """A signal. The first: start nothing new, let the tenants in flight finish within the grace (the timeout
        still applies), report. The second: stop them (:meth:`on_halt`). More: nothing more to do."""
        if not self.interrupted:
            self.interrupted, self.why = True, signal_name(signum)
            grace = self.drain(signum)
            self.grace_until = None if grace is None else self.clock() + grace
            self.slots.hold()  # a worker still coming up hands its tenant back skipped
        elif not self.halted:
            self.on_halt()

    def on_halt(self) -> None:
        """Stop the tenants in flight: kill their workers (each reported, with where it stopped, when its future
        breaks); a tenant whose worker never started it is skipped, and so is one whose read was in flight."""
        self.interrupted = self.halted = True
        now = self.clock()
        for flight in self.slots.halt(now):
            self._finish(merge(self.partial.pop(flight.tenant.name, None), self._skipped(flight.tenant)))
        self.unchecked.extendleft(reversed(self.checks.values()))  # reported skipped by outcome()
        self.checks.clear()  # their threads are daemons: nobody waits for them (see process.DaemonThreads)
        self.checked_since.clear()
        self.read_back_until = now + READ_BACK

    def on_read_back_late(self) -> None:
        """The reads of where stopped (or timed-out) tenants are took too long: they are at an unknown revision."""
        for result in self.autopsies.values():
            self._finish(replace(result, to_revision=None))
        self.autopsies.clear()

    def on_done(self, future: Future) -> None:
        """A future finished: dispatch on what it was."""
        if future in self.autopsies:
            self.on_timed_out_read(self.autopsies.pop(future), future.result())
        elif future in self.checks:
            del self.checked_since[future]
            self.on_precheck_done(self.checks.pop(future), future.result())
        else:
            self.on_tenant_done(self.slots.land(future), future)

    def on_precheck_done(self, tenant: Tenant, result: TenantResult | None) -> None:
        """The parent read a tenant's revision: done already, or on to a worker. Once a tenant needs work, stop
        reading: the workers read the rest themselves (see ProcessStrategy)."""
        if result is None:
            self.ready.append(tenant)
            self.prechecking = False
        else:
            self._finish(result)
            self.read_window = min(self.concurrency, self.read_window * 2)

    def on_precheck_late(self, future: Future, ran: float) -> None:
        """The parent's read of a tenant took the whole tenant timeout: the tenant is timed out. The read only
        reads, so nothing was changed; where the tenant is was not read, so it is not said."""
        tenant = self.checks.pop(future)
        del self.checked_since[future]
        self._finish(TenantResult(tenant.name, Status.TIMED_OUT, attempts=1, duration=ran,
                                  error=_READ_TIMED_OUT.format(self.timeout)))

    def on_tenant_done(self, flight: Flight, future: Future) -> None:
        """A worker's future finished: a result (perhaps throttled), or its process died or was killed."""
        earlier = self.partial.pop(flight.tenant.name, None)
        try:
            result = merge(earlier, future.result(), self.done)
        except BrokenProcessPool:
            if flight.slot.halted:
                self.on_stopped(flight, earlier)
            elif flight.slot.killed_after is not None:
                self.on_timed_out(flight, earlier)
            else:
                self.on_worker_died(flight, earlier)
            return
        except Exception as err:  # noqa: BLE001 - e.g. a result that failed to unpickle
            error = scrub(f"worker error: {type(err).__name__}: {err}", flight.tenant.all_secrets)
            self._finish(merge(earlier, TenantResult(flight.tenant.name, Status.FAILED, attempts=1, error=error)))
            return
        self.breaks = 0
        if result.status is Status.SKIPPED:  # its worker saw the run interrupted before starting it
            self._finish(merge(earlier, self._skipped(flight.tenant)))
            return
        if result.status is Status.THROTTLED:
            self.on_throttled(flight, result)
            return
        self._finish(result)
        if result.ok:
            self.aimd.on_success(self.clock())

    def on_throttled(self, flight: Flight, result: TenantResult) -> None:
        """Handed back throttled: lower the limit (AIMD) and queue the tenant again; a tenant throttled more than
        ``retries`` times while running alone fails."""
        name = flight.tenant.name
        if flight.limit == 1:  # throttled while running alone: that one counts as a retry
            self.throttles[name] = self.throttles.get(name, 0) + 1
        self.aimd.on_throttle(self.clock(), flight.epoch)
        if self.throttles.get(name, 0) > self.retries:
            self._finish(replace(result, status=Status.FAILED))
        else:
            self.partial[name] = result
            self.ready.append(flight.tenant)

    def on_worker_died(self, flight: Flight, earlier: TenantResult | None) -> None:
        """Its worker died (killed, out of memory): only this tenant was in that process; the others go on, and
        the slot gets a new process."""
        self._finish(merge(earlier, TenantResult(flight.tenant.name, Status.FAILED, attempts=1, error=_POOL_BROKE)))
        self.breaks += not flight.slot.ever_started()  # could a worker start at all?

    def on_pool_broke(self, tenant: Tenant, slot: Slot) -> None:
        """A slot's executor broke before this tenant started: back in line, and the slot gets a new process."""
        self.ready.appendleft(tenant)
        self.slots.discard(slot)
        self.breaks += not slot.ever_started()

    def on_timed_out(self, flight: Flight, earlier: TenantResult | None) -> None:
        """Killed for the timeout. Where did it stop? Read it (a connection: in a thread)."""
        why = _TIMED_OUT if _changed(flight, earlier) else _TIMED_OUT_UNCHANGED
        late = TenantResult(flight.tenant.name, Status.TIMED_OUT, attempts=1, duration=flight.slot.killed_after,
                            error=why.format(self.timeout))
        self.autopsies[self.threads.submit(self.where, flight.tenant)] = merge(earlier, late)

    def on_stopped(self, flight: Flight, earlier: TenantResult | None) -> None:
        """Killed because the run was stopped. Where did it stop? Read it, as after a timeout."""
        why = _STOPPED if _changed(flight, earlier) else _STOPPED_UNCHANGED
        stopped = TenantResult(flight.tenant.name, Status.FAILED, attempts=1, duration=flight.slot.killed_after or 0.0,
                               error=why.format(self.why))
        self.autopsies[self.threads.submit(self.where, flight.tenant)] = merge(earlier, stopped)

    def on_timed_out_read(self, result: TenantResult, where: Whereabouts) -> None:
        """Where a timed-out (or stopped) tenant stands was read back: its revision, and what this run had
        committed there, which its killed worker could not report."""
        self._finish(where.apply_to(result))

    # --- the end --------------------------------------------------------------------------------------------
    def outcome(self) -> FanOut:
        """Report the tenants never started, and the run: results in tenant order."""
        for tenant in [*self.ready, *self.unchecked]:
            if self.breaks >= _MAX_BREAKS:
                left = TenantResult(tenant.name, Status.FAILED, error=_NO_WORKERS)
            else:
                left = self._skipped(tenant)
            self._finish(merge(self.partial.pop(tenant.name, None), left))
        self.results.sort(key=lambda r: self.order[r.tenant])
        aimd = self.aimd
        return FanOut(self.results, aimd.throttled, tuple(aimd.changes) if aimd.throttled else (), self.pressure_wait,
                      self.gate.take_errors() if self.gate is not None else ())

    def _skipped(self, tenant: Tenant) -> TenantResult:
        why = f"interrupted ({self.why})" if self.interrupted else "the failure policy stopped the run"
        return skipped(tenant, why)

    def _finish(self, result: TenantResult) -> None:
        self.failures += result.status in FAILURES
        self.results.append(result)
        self.on_result(result)
