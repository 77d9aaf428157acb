"""Fan-out strategies: how the unit of work (:func:`tenants.engine.unit.run_tenant`) is applied to many tenants.

The strategy is separate from the unit of work. :class:`SerialStrategy` runs tenants one after another in
this process and is the reference; :class:`ProcessStrategy` must produce the same results, faster.

Why processes and not threads: Alembic's ``alembic.context`` and ``alembic.op`` are module-global proxies
installed by ``EnvironmentContext.__enter__``; two migrations in two threads of one process corrupt each
other. So each migration runs in its own worker process, one tenant at a time per worker. Each worker loads
the revision graph once (in its initializer), not once per tenant.

Workers are started with the ``forkserver`` method: a clean server process (modules preloaded) forks them, so
they inherit neither the parent's threads (rich's live display, the executor's own threads) nor its open
connections, and starting one costs a fork, not a fresh interpreter.

Why each worker is an executor of its own (a *slot*: a ``ProcessPoolExecutor`` of one process), not one pool
of ``concurrency`` processes: a pool does not say which process runs which tenant, and one process that dies
breaks the whole pool, failing every tenant in flight in it. A worker that has to be killed (the tenant
timeout below), or that dies of itself (the kernel's OOM killer), would take its siblings down with it. With
one executor per worker, only that slot breaks; the other tenants in flight never notice, and the slot gets a
new process for the next tenant. Each slot has a *clock*, two doubles of shared memory the worker writes as
it starts and ends a tenant (its pid, and when it started; no lock: a worker killed mid-write must not leave
one held), so the parent knows which process to kill and since when the tenant has run.

Failure policy: after ``max_failures`` failed (or timed-out) tenants no new tenant is started; tenants already
running are left to finish (a worker is never killed mid-DDL for the policy: the server would roll the
transaction back, but the report would then lie about where the tenant is). Tenants never started are
reported ``skipped``.

Per-tenant timeout (``tenant_timeout``, the CLI's ``--tenant-timeout``): a tenant still running that many
seconds after its worker started it (connecting, waiting for its lock, retries and its revisions all count;
its wait in line and the parent's read of its revision do not) is stopped by SIGKILL of its worker process
and reported ``timed-out``, a failure: it counts toward the failure policy like ``failed`` (by default the run
then starts no new tenant; those in flight finish) and makes the run's exit code 1. The timeout is enforced
while draining after Ctrl-C too. Only a worker process can be killed, so a run with a timeout always uses
:class:`ProcessStrategy` (see :func:`choose_strategy`), with one worker when the concurrency is 1.

What happens to the timed-out tenant's transaction: the killed process's connections close, and the server
rolls back the transaction of the revision in progress (env.py gives every revision its own); revisions
already committed stay. So the tenant stays at its last completed revision, which the parent then reads back
into the report (``to``), and a rerun resumes there. *When* the server rolls back depends on when it notices
the connection is gone. SQLite: at once (the file locks die with the process; the next opener rolls the
journal back). PostgreSQL: a backend waiting for its client notices at once, but one executing a statement
notices only when the statement ends; so in a run with a timeout, the workers set
``client_connection_check_interval`` (PostgreSQL 14+) to 1 s on their connections, and the server looks for a
vanished client during long statements too and rolls back within a second or so. Before PostgreSQL 14, and on
SQL Server, the statement in progress may run to its end, holding its locks, before the server finds the
client gone and rolls back; the tenant's migration lock is freed at once (it lives on an idle connection of
its own), so a rerun started meanwhile blocks on those locks until the old statement ends, then runs.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from typing import Any, Protocol

from tenants.db import Connector, NoVersionTable, missing_file, read_version
from tenants.dialects import setup_worker
from tenants.engine.pressure import PressureGate
from tenants.engine.revisions import Revisions
from tenants.engine.unit import Job, precheck, run_tenant
from tenants.model import Status, Tenant, TenantResult
from tenants.secrets import scrub

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


_POOL_BROKE = ("the worker pool broke (a worker process died: killed? out of memory? or could not start): this "
               "tenant did not finish; a revision in progress rolled back; rerun to resume")


# Worker processes that die this many times in a row before starting a single tenant, with no tenant finished
# in between, cannot start at all (e.g. the main module cannot be imported again in a worker: a script read
# from stdin).
_MAX_BREAKS = 3
_NO_WORKERS = ("worker processes could not start (3 died in a row before starting a tenant); nothing was run for "
               "this tenant. From a script, guard it with `if __name__ == \"__main__\":`; or use concurrency 1")
_INTERRUPTED = "interrupted (Ctrl-C) while migrating: its revision in progress rolled back; rerun to resume"
_TIMED_OUT = ("timed out: still running {:g}s after it started (--tenant-timeout): its worker process was "
              "killed and the server rolls the revision in progress back (its connection died); rerun to resume")

# What the failure policy counts: a tenant that timed out did not get where it was going either.
_FAILURES = frozenset({Status.FAILED, Status.TIMED_OUT})


def _skipped(tenant: Tenant, why: str = "the failure policy stopped the run") -> TenantResult:
    return TenantResult(tenant.name, Status.SKIPPED, error=f"not started: {why}")


@dataclass
class SerialStrategy:
    """One tenant after another, in this process: the reference the parallel strategy is tested against.

    It has no tenant timeout: a tenant cannot be killed without killing this process. A run with a timeout
    uses :class:`ProcessStrategy` instead, with one worker for concurrency 1 (:func:`choose_strategy`).
    """

    revisions: Revisions | None = None  # the parent's already-loaded graph, if it has one
    concurrency: int = 1
    gate: PressureGate | None = None  # wait while the pool is too busy before each tenant

    def run(self, tenants, job, policy, on_result):
        revisions = self.revisions or Revisions(job.alembic_ini, job.version_table)
        connector = job.connector()
        results, failures = [], 0
        interrupted, waited = False, 0.0
        try:
            for tenant in tenants:
                if not interrupted and self.gate is not None and not policy.stop(failures):
                    try:
                        waited += _wait_for(self.gate)
                    except KeyboardInterrupt:
                        interrupted = True
                if interrupted:
                    result = _skipped(tenant, "interrupted (Ctrl-C)")
                elif policy.stop(failures):
                    result = _skipped(tenant)
                else:
                    try:
                        result = run_tenant(tenant, job, revisions, connector)
                    except KeyboardInterrupt:
                        # In this process Ctrl-C lands in the migration itself: its connection closes and
                        # the server rolls the revision in progress back. Report it, start nothing else.
                        interrupted = True
                        result = TenantResult(tenant.name, Status.FAILED, attempts=1, error=_INTERRUPTED)
                    failures += result.status in _FAILURES
                results.append(result)
                on_result(result)
        finally:
            connector.dispose()
        return FanOut(results, pressure_wait=waited,
                      pressure_errors=self.gate.take_errors() if self.gate is not None else ())


# --- worker process side -----------------------------------------------------------------------------------
# Per-process state of a worker, set once by its initializer. This is the only module-level mutable state in
# the package, and it exists only inside worker processes: it is what "load the revision graph once per
# worker" means. The clock is the worker's slot's (see the module docstring).
_worker: tuple[Job, Revisions, Connector, Any] | str | None = None  # or why the worker could not start

# A slot's clock: a multiprocessing RawArray("d", 2). The worker writes [pid, time.monotonic() when it started
# its tenant, 0.0 when it is done with it]; the parent reads it. (CLOCK_MONOTONIC is one clock for every
# process of the machine, so the two sides compare readings.)
_PID, _STARTED = 0, 1
_POLL = 0.1  # a tenant submitted whose worker has not started it yet (a new process): look again this soon


def _init_worker(job: Job, clock: Any, check_client: bool = False, log_ceiling: int = logging.NOTSET) -> None:
    global _worker
    # Ctrl-C in a terminal signals the whole process group. Workers ignore it so the tenant in progress
    # finishes its revision; the parent decides (stop starting new tenants, drain, report).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.getLogger("azure").setLevel(logging.ERROR)  # as in the CLI: our one-line errors say it
    # The parent's logging.disable() ceiling (the CLI's: INFO without -v), which env.py's fileConfig does not
    # lift: see tenants.cli._quiet_logs.
    logging.disable(log_ceiling)
    # check_client: a run with a tenant timeout, this process may be killed mid-statement (PostgreSQL then has
    # the server watch for a vanished client: tenants.dialects.postgresql.check_client_while_busy).
    setup_worker(check_client=check_client)
    try:
        _worker = (job, Revisions(job.alembic_ini, job.version_table), job.connector(), clock)
    except Exception as err:  # noqa: BLE001 - an initializer that raises breaks the pool with no reason given
        _worker = f"worker could not load the Alembic project: {type(err).__name__}: {err}"


def _work(tenant: Tenant) -> TenantResult:
    assert _worker is not None, "worker used before its initializer ran"
    if isinstance(_worker, str):
        return TenantResult(tenant.name, Status.FAILED, attempts=1, error=scrub(_worker, tenant.all_secrets))
    job, revisions, connector, clock = _worker
    clock[_PID] = os.getpid()
    clock[_STARTED] = time.monotonic()  # the tenant timeout counts from here
    try:
        # Tenants reach a worker because the parent found they need work, or stopped reading after a streak
        # of such tenants: go straight to the lock (the revision is read again under it anyway). A throttled
        # tenant comes back to the parent, which lowers the concurrency (AIMD, see ProcessStrategy).
        return run_tenant(tenant, job, revisions, connector, read_first=False, hand_back_throttled=True)
    finally:
        clock[_STARTED] = 0.0  # before the result leaves: a worker done with its tenant is never killed for it


@dataclass(eq=False)
class _Slot:
    """One worker process in an executor of its own, and its clock (see the module docstring)."""

    pool: ProcessPoolExecutor
    clock: Any
    killed_after: float | None = None  # set when the parent killed it: seconds its tenant had run

    def started(self) -> float | None:
        """When the worker started the tenant it is on (time.monotonic()), or None."""
        return self.clock[_STARTED] or None

    def kill(self, ran: float) -> bool:
        """SIGKILL its process; False when its pid is not readable yet (then try again later)."""
        pid = int(self.clock[_PID])
        if pid <= 1:  # never kill(0): that is this whole process group
            return False
        self.killed_after = ran
        with contextlib.suppress(ProcessLookupError):  # it died of itself meanwhile
            os.kill(pid, signal.SIGKILL)
        return True

    def ever_started(self) -> bool:
        """Whether its process got as far as starting a tenant (a pid is written then, never cleared)."""
        return bool(self.clock[_PID])


def _where(tenant: Tenant, job: Job, connector: Connector) -> str | None:
    """The revision a tenant is at now (``base``: none), read after its worker was killed; None if unreadable.

    Its revision in progress is rolled back, or being rolled back: a read sees only what was committed.
    """
    try:
        if not job.must_exist and missing_file(tenant.url):
            return "base"  # killed before it created its file: reading must not create it either
        with connector.engine(tenant.url, must_exist=job.must_exist) as engine, engine.connect() as conn:
            try:
                heads = read_version(conn, job.version_table)
            except NoVersionTable:
                heads = ()
        return ",".join(heads) or "base"
    except Exception:  # noqa: BLE001 - unknown is an honest answer
        return None


@dataclass
class ProcessStrategy:
    """At most ``concurrency`` tenants at once, each in a worker process.

    The parent first reads tenants' revisions itself, from ``concurrency`` threads (:func:`precheck`: one
    connection and one query each, no Alembic context, so threads are safe). Tenants already at the target
    are done right there: a fleet at head never starts a worker process. Tenants with work to do stream to
    the worker processes as they are found, so the workers start while the parent is still reading.

    Once ``2 × concurrency`` tenants in a row needed work, the fleet is evidently being upgraded: the parent
    stops reading and hands the rest straight to the workers, which read the revision themselves. Each read
    in the parent costs a connection of its own (a few ms of server CPU each on PostgreSQL), which a tenant
    that goes to a worker anyway would pay twice.

    Protecting a shared pool (AIMD, as TCP does): a tenant that hits a throttling error (Azure SQL's worker
    or request limit of the elastic pool) comes back ``throttled``; the parent halves the number of tenants
    it runs at once (the parent's own revision reads included) and queues the tenant again. Throttles from
    tenants started before that cut do not cut again (they report the old load). After as many successes in
    a row as the current limit, the limit grows back by one, up to ``concurrency``. A tenant throttled more
    than ``retries`` times while running alone (limit 1) fails.

    ``tenant_timeout`` (seconds): a tenant that runs longer in its worker is killed with it and reported
    ``timed-out``; see the module docstring. Each run of a throttled tenant is timed on its own.
    """

    concurrency: int = 4
    revisions: Revisions | None = None  # the parent's loaded graph, for the precheck
    gate: PressureGate | None = None  # asked before each tenant starts: is the pool calm enough?
    tenant_timeout: float | None = None  # None: no limit

    def run(self, tenants, job, policy, on_result):
        context = multiprocessing.get_context("forkserver")
        # The forkserver imports these once and forks every worker from itself. "__main__" included: a
        # worker would otherwise re-run the main script (the console script imports the CLI: typer, rich).
        # (Only a main module that is a file: one read from stdin cannot be imported again, anywhere.)
        main_file = getattr(sys.modules["__main__"], "__file__", None)
        real_main = bool(main_file) and os.path.isfile(main_file)
        preload = ["tenants.engine.fanout"]
        context.set_forkserver_preload(["__main__", *preload] if real_main else preload)
        revisions = self.revisions or Revisions(job.alembic_ini, job.version_table)
        connector = job.connector()
        timeout = self.tenant_timeout
        order = {t.name: i for i, t in enumerate(tenants)}
        unchecked: deque[Tenant] = deque(tenants)  # not read yet
        ready: deque[Tenant] = deque()  # need a worker
        checks: dict[Future, Tenant] = {}  # reads in flight (threads)
        # tenants in flight, with their worker slot and the AIMD cut count and limit at their start
        in_flight: dict[Future, tuple[Tenant, _Slot, int, int]] = {}
        slots: list[_Slot] = []  # every live worker slot; those without a tenant are also in `idle`
        idle: list[_Slot] = []
        # Timed-out tenants whose revision is being read back (threads), with their result but for that.
        autopsies: dict[Future, TenantResult] = {}
        results: list[TenantResult] = []
        failures = streak = 0
        prechecking, interrupted = True, False
        workers = min(self.concurrency, len(tenants))
        # AIMD state: the current limit, the number of cuts so far (a tenant remembers the cut count at its
        # start), successes since the last change, and per-tenant partial results of throttled attempts.
        limit, cuts, successes, throttled = workers, 0, 0, 0
        clock_start = time.monotonic()
        changes: list[tuple[float, int]] = [(0.0, limit)]
        partial: dict[str, TenantResult] = {}
        throttles: dict[str, int] = {}
        breaks = 0  # workers that died before starting a single tenant, in a row with no result in between
        pressure_wait = 0.0

        def finish(result: TenantResult) -> None:
            nonlocal failures
            failures += result.status in _FAILURES
            results.append(result)
            on_result(result)

        def starting() -> bool:
            # A tenant killed for the timeout counts as failed from the kill on, before its result is in.
            timed_out = len(autopsies) + sum(s.killed_after is not None for _, s, _, _ in in_flight.values())
            return not interrupted and not policy.stop(failures + timed_out) and breaks < _MAX_BREAKS

        def slot_for_next() -> _Slot:
            if idle:
                return idle.pop()
            clock = context.RawArray("d", 2)
            slot = _Slot(ProcessPoolExecutor(1, mp_context=context, initializer=_init_worker,
                                             initargs=(job, clock, timeout is not None,
                                                       logging.root.manager.disable)), clock)
            slots.append(slot)
            return slot

        def discard(slot: _Slot) -> None:
            slots.remove(slot)
            slot.pool.shutdown(wait=False, cancel_futures=True)

        def kill_overdue() -> float | None:
            """Kill the worker of each tenant past the timeout; the seconds until the next one is due."""
            if timeout is None:
                return None
            now, due = time.monotonic(), None
            for slot in (s for _, s, _, _ in in_flight.values() if s.killed_after is None):
                started = slot.started()
                left = _POLL if started is None else started + timeout - now
                if left <= 0:
                    if slot.kill(now - started):
                        continue  # its future breaks: reported below, when it does
                    left = _POLL  # its pid is not visible here yet
                due = left if due is None else min(due, left)
            return due

        threads = ThreadPoolExecutor(self.concurrency)
        try:
            while True:
                if not prechecking:
                    ready.extend(unchecked)
                    unchecked.clear()
                # Reads and migrations together stay within `concurrency` tenants at a time.
                while starting() and unchecked and len(checks) + len(in_flight) < limit:
                    tenant = unchecked.popleft()
                    checks[threads.submit(precheck, tenant, job, revisions, connector)] = tenant
                # Submit one tenant per free worker, never more: a tenant waiting in an executor's queue would
                # start when the failure policy may want it skipped.
                held = False  # the pressure probe says wait
                while starting() and ready and len(in_flight) < limit:
                    try:
                        admitted = self.gate is None or self.gate.admit()  # may read the pool: a login
                    except KeyboardInterrupt:
                        interrupted = True
                        break
                    if not admitted:
                        held = True
                        break
                    slot = slot_for_next()
                    tenant = ready.popleft()
                    try:
                        in_flight[slot.pool.submit(_work, tenant)] = (tenant, slot, cuts, limit)
                    except (BrokenProcessPool, OSError, EOFError):  # broke before this tenant started: back in line
                        ready.appendleft(tenant)
                        discard(slot)
                        breaks += not slot.ever_started()
                        if breaks >= _MAX_BREAKS:
                            break
                if not checks and not in_flight and not autopsies and not held:
                    break
                try:
                    due = kill_overdue()
                    paused = time.monotonic()
                    if checks or in_flight or autopsies:
                        # Held back: wake up at the next probe reading even if nothing finishes; and at the
                        # next tenant timeout.
                        wake = self.gate.interval if held and self.gate is not None else None
                        wake = due if wake is None else wake if due is None else min(wake, due)
                        done, _ = wait([*checks, *in_flight, *autopsies], timeout=wake, return_when=FIRST_COMPLETED)
                    else:
                        time.sleep(self.gate.interval if self.gate is not None else 0)
                        done = set()
                    if held:
                        pressure_wait += time.monotonic() - paused
                except KeyboardInterrupt:
                    # First Ctrl-C: start nothing new, let the tenants in flight finish (the timeout still
                    # applies), report. A second one propagates (the executors still wait for their workers).
                    if interrupted:
                        raise
                    interrupted = True
                    continue
                for future in done:
                    if future in autopsies:
                        finish(replace(autopsies.pop(future), to_revision=future.result()))
                        continue
                    if future in checks:
                        tenant, result = checks.pop(future), future.result()
                        if result is None:
                            ready.append(tenant)
                            streak += 1
                            prechecking = streak < 2 * self.concurrency
                        else:
                            finish(result)
                            streak = 0
                        continue
                    tenant, slot, its_cuts, its_limit = in_flight.pop(future)
                    if slot.killed_after is not None or isinstance(future.exception(), BrokenProcessPool):
                        discard(slot)  # its process is dead (or dying): the next tenant gets a new one
                    else:
                        idle.append(slot)
                    earlier = partial.pop(tenant.name, None)
                    try:
                        result = _merge(earlier, future.result())
                        breaks = 0
                        if result.status is Status.THROTTLED:
                            throttled += 1
                            if its_limit == 1:  # throttled while running alone: that one counts as a retry
                                throttles[tenant.name] = throttles.get(tenant.name, 0) + 1
                            if its_cuts == cuts and limit > 1:
                                limit, cuts, successes = max(1, limit // 2), cuts + 1, 0
                                changes.append((time.monotonic() - clock_start, limit))
                            if throttles.get(tenant.name, 0) > job.retries:
                                finish(replace(result, status=Status.FAILED))
                            else:
                                partial[tenant.name] = result
                                ready.append(tenant)
                            continue
                        finish(result)
                        if result.ok:
                            successes += 1
                            if successes >= limit and limit < workers:
                                limit, successes = limit + 1, 0
                                changes.append((time.monotonic() - clock_start, limit))
                    except BrokenProcessPool:
                        if slot.killed_after is not None:
                            # Killed for the timeout. Where did it stop? Read it (a connection: in a thread).
                            late = TenantResult(tenant.name, Status.TIMED_OUT, attempts=1,
                                                duration=slot.killed_after, error=_TIMED_OUT.format(timeout))
                            autopsies[threads.submit(_where, tenant, job, connector)] = _merge(earlier, late)
                            continue
                        # Its worker died (killed, out of memory): only this tenant was in that process; the
                        # others go on, and the slot gets a new process.
                        finish(_merge(earlier, TenantResult(tenant.name, Status.FAILED, attempts=1, error=_POOL_BROKE)))
                        breaks += not slot.ever_started()  # could a worker start at all?
                    except Exception as err:  # noqa: BLE001 - e.g. a result that failed to unpickle
                        error = scrub(f"worker error: {type(err).__name__}: {err}", tenant.all_secrets)
                        finish(_merge(earlier, TenantResult(tenant.name, Status.FAILED, attempts=1, error=error)))
        finally:
            threads.shutdown(wait=True, cancel_futures=True)
            for slot in slots:
                slot.pool.shutdown(wait=True)
            connector.dispose()
        why = "interrupted (Ctrl-C)" if interrupted else "the failure policy stopped the run"
        for tenant in [*ready, *unchecked]:
            if breaks >= _MAX_BREAKS:
                left = TenantResult(tenant.name, Status.FAILED, error=_NO_WORKERS)
            else:
                left = _skipped(tenant, why)
            finish(_merge(partial.pop(tenant.name, None), left))
        results.sort(key=lambda r: order[r.tenant])
        return FanOut(results, throttled, tuple(changes) if throttled else (), pressure_wait,
                      self.gate.take_errors() if self.gate is not None else ())


def _merge(earlier: TenantResult | None, later: TenantResult) -> TenantResult:
    """One result for a tenant that ran more than once (handed back throttled, then run again)."""
    if earlier is None:
        return later
    return replace(
        later,
        from_revision=earlier.from_revision if earlier.from_revision is not None else later.from_revision,
        to_revision=later.to_revision if later.to_revision is not None else earlier.to_revision,
        applied=earlier.applied + later.applied,
        attempts=earlier.attempts + later.attempts,
        duration=earlier.duration + later.duration,
        error=later.error if later.error is not None else earlier.error,
    )


def choose_strategy(concurrency: int, tenants: int, revisions: Revisions | None = None,
                    gate: PressureGate | None = None, tenant_timeout: float | None = None) -> Strategy:
    """Serial for one tenant or ``concurrency`` 1 (no process start-up); processes otherwise, and always with a
    ``tenant_timeout``: a tenant that overruns is stopped by killing its worker, and this process is no worker."""
    if concurrency <= 1 or tenants <= 1:
        if tenant_timeout is None:
            return SerialStrategy(revisions, gate=gate)
        concurrency = 1  # one worker process, there for the timeout's sake
    return ProcessStrategy(concurrency, revisions, gate, tenant_timeout)


def _wait_for(gate: PressureGate) -> float:
    """Block until the gate admits a start; the seconds waited."""
    started = time.monotonic()
    while not gate.admit():
        time.sleep(gate.interval)
    return time.monotonic() - started

