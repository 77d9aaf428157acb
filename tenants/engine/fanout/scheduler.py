"""The process fan-out's scheduler: the state of one run, and one method per event that changes it.

:class:`~tenants.engine.fanout.process.ProcessStrategy` owns the processes and threads; its loop asks the
scheduler to start what may start (:meth:`Scheduler.start`), waits (:meth:`Scheduler.wait`), and hands each
finished future back (:meth:`Scheduler.on_done`), which names the event: a precheck done, a tenant done,
throttled, its worker died, it timed out, the read after a timeout done. Ctrl-C is :meth:`Scheduler.on_interrupt`.

Failure policy: after ``max_failures`` failed (or timed-out) tenants no new tenant is started; tenants already
running are left to finish (a worker is never killed mid-DDL for the policy: the server would roll the
transaction back, but the report would then lie about where the tenant is). Tenants never started are
reported ``skipped``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace

from tenants.engine.fanout.aimd import Aimd
from tenants.engine.fanout.base import FAILURES, FailurePolicy, FanOut, OnResult, merge, skipped
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
_TIMED_OUT = ("timed out: still running {:g}s after it started (--tenant-timeout): its worker process was "
              "killed and the server rolls the revision in progress back (its connection died); rerun to resume")


class Scheduler:
    """One process fan-out over ``tenants``: which tenant is where, and what to do when something finishes.

    ``read(tenant)`` is the parent's precheck (None: it needs work), run in ``threads``; ``where(tenant)`` reads
    back the revision of a tenant whose worker was killed, also in ``threads``. ``slots`` runs tenants in
    worker processes. ``clock`` is ``time.monotonic`` (the workers' clocks use it too).
    """

    def __init__(self, tenants: list[Tenant], policy: FailurePolicy, on_result: OnResult, *, concurrency: int,
                 retries: int, slots: Slots, threads: Executor, read: Callable[[Tenant], TenantResult | None],
                 where: Callable[[Tenant], str | None], gate: PressureGate | None = None,
                 timeout: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.policy, self.on_result, self.concurrency, self.retries = policy, on_result, concurrency, retries
        self.slots, self.threads, self.read, self.where = slots, threads, read, where
        self.gate, self.timeout, self.clock = gate, timeout, clock
        self.order = {t.name: i for i, t in enumerate(tenants)}
        self.unchecked: deque[Tenant] = deque(tenants)  # not read yet
        self.ready: deque[Tenant] = deque()  # need a worker
        self.checks: dict[Future, Tenant] = {}  # reads in flight (threads)
        # Timed-out tenants whose revision is being read back (threads), with their result but for that.
        self.autopsies: dict[Future, TenantResult] = {}
        self.aimd = Aimd(min(concurrency, len(tenants)), started=clock())
        self.partial: dict[str, TenantResult] = {}  # results of throttled attempts, per tenant
        self.throttles: dict[str, int] = {}  # throttles while running alone, per tenant: they count as retries
        self.results: list[TenantResult] = []
        self.failures = self.streak = 0
        self.breaks = 0  # workers that died before starting a single tenant, in a row with no result in between
        self.prechecking, self.interrupted, self.held = True, False, False
        self.pressure_wait = 0.0

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
        while self.starting() and self.unchecked and len(self.checks) + len(self.slots) < self.aimd.limit:
            tenant = self.unchecked.popleft()
            self.checks[self.threads.submit(self.read, tenant)] = tenant

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
        due = self.slots.kill_overdue(self.clock(), self.timeout)
        paused = self.clock()
        pending = [*self.checks, *self.slots.in_flight, *self.autopsies]
        if pending:
            wake = self.gate.interval if self.held and self.gate is not None else None
            wake = due if wake is None else wake if due is None else min(wake, due)
            done, _ = wait(pending, timeout=wake, return_when=FIRST_COMPLETED)
        else:
            time.sleep(self.gate.interval if self.gate is not None else 0)
            done = set()
        if self.held:
            self.pressure_wait += self.clock() - paused
        return done

    # --- events ---------------------------------------------------------------------------------------------
    def on_interrupt(self) -> bool:
        """Ctrl-C. The first: start nothing new, let the tenants in flight finish (the timeout still applies),
        report; True. A second one: False, the caller lets it propagate (the executors still wait for their
        workers)."""
        if self.interrupted:
            return False
        self.interrupted = True
        return True

    def on_done(self, future: Future) -> None:
        """A future finished: dispatch on what it was."""
        if future in self.autopsies:
            self.on_timed_out_read(self.autopsies.pop(future), future.result())
        elif future in self.checks:
            self.on_precheck_done(self.checks.pop(future), future.result())
        else:
            self.on_tenant_done(self.slots.land(future), future)

    def on_precheck_done(self, tenant: Tenant, result: TenantResult | None) -> None:
        """The parent read a tenant's revision: done already, or on to a worker. Once ``2 × concurrency``
        tenants in a row needed work, stop reading (see ProcessStrategy)."""
        if result is None:
            self.ready.append(tenant)
            self.streak += 1
            self.prechecking = self.streak < 2 * self.concurrency
        else:
            self._finish(result)
            self.streak = 0

    def on_tenant_done(self, flight: Flight, future: Future) -> None:
        """A worker's future finished: a result (perhaps throttled), or its process died or was killed."""
        earlier = self.partial.pop(flight.tenant.name, None)
        try:
            result = merge(earlier, future.result())
        except BrokenProcessPool:
            if flight.slot.killed_after is not None:
                self.on_timed_out(flight, earlier)
            else:
                self.on_worker_died(flight, earlier)
            return
        except Exception as err:  # noqa: BLE001 - e.g. a result that failed to unpickle
            error = scrub(f"worker error: {type(err).__name__}: {err}", flight.tenant.all_secrets)
            self._finish(merge(earlier, TenantResult(flight.tenant.name, Status.FAILED, attempts=1, error=error)))
            return
        self.breaks = 0
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
        late = TenantResult(flight.tenant.name, Status.TIMED_OUT, attempts=1, duration=flight.slot.killed_after,
                            error=_TIMED_OUT.format(self.timeout))
        self.autopsies[self.threads.submit(self.where, flight.tenant)] = merge(earlier, late)

    def on_timed_out_read(self, result: TenantResult, revision: str | None) -> None:
        """The revision a timed-out tenant stopped at was read back (None: unreadable)."""
        self._finish(replace(result, to_revision=revision))

    # --- the end --------------------------------------------------------------------------------------------
    def outcome(self) -> FanOut:
        """Report the tenants never started, and the run: results in tenant order."""
        why = "interrupted (Ctrl-C)" if self.interrupted else "the failure policy stopped the run"
        for tenant in [*self.ready, *self.unchecked]:
            if self.breaks >= _MAX_BREAKS:
                left = TenantResult(tenant.name, Status.FAILED, error=_NO_WORKERS)
            else:
                left = skipped(tenant, why)
            self._finish(merge(self.partial.pop(tenant.name, None), left))
        self.results.sort(key=lambda r: self.order[r.tenant])
        aimd = self.aimd
        return FanOut(self.results, aimd.throttled, tuple(aimd.changes) if aimd.throttled else (), self.pressure_wait,
                      self.gate.take_errors() if self.gate is not None else ())

    def _finish(self, result: TenantResult) -> None:
        self.failures += result.status in FAILURES
        self.results.append(result)
        self.on_result(result)
