"""Fan-out strategies: how the unit of work (:func:`tenants.unit.run_tenant`) is applied to many tenants.

The strategy is separate from the unit of work. :class:`SerialStrategy` runs tenants one after another in
this process and is the reference; :class:`ProcessStrategy` must produce the same results, faster.

Why processes and not threads: Alembic's ``alembic.context`` and ``alembic.op`` are module-global proxies
installed by ``EnvironmentContext.__enter__``; two migrations in two threads of one process corrupt each
other. So each migration runs in its own worker process, one tenant at a time per worker. Each worker loads
the revision graph once (in its initializer), not once per tenant.

Workers are started with the ``forkserver`` method: a clean server process (modules preloaded) forks them, so
they inherit neither the parent's threads (rich's live display, the executor's own threads) nor its open
connections, and starting one costs a fork, not a fresh interpreter.

Failure policy: after ``max_failures`` failed tenants no new tenant is started; tenants already running are
left to finish (a worker is never killed mid-DDL: the server would roll the transaction back, but the report
would then lie about where the tenant is). Tenants never started are reported ``skipped``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import sys
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
import time
from dataclasses import dataclass, replace
from typing import Protocol

from tenants.db import Connector, scrub
from tenants.discovery import Tenant
from tenants.pressure import PressureGate
from tenants.report import Status, TenantResult
from tenants.revisions import Revisions
from tenants.unit import Job, precheck, run_tenant

OnResult = Callable[[TenantResult], None]


@dataclass(frozen=True)
class FanOut:
    """What a strategy returns: the results in tenant order, and how the run adapted to the database."""

    results: list[TenantResult]
    throttled: int = 0
    concurrency_changes: tuple[tuple[float, int], ...] = ()
    pressure_wait: float = 0.0  # seconds starts were held back by the pressure probe
    pressure_errors: tuple[str, ...] = ()  # reads of the pool's load that failed


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


# Worker pools that break this many times in a row, with no tenant finished in between, cannot start at all
# (e.g. the main module cannot be imported again in a worker: a script read from stdin).
_MAX_BREAKS = 3
_NO_WORKERS = ("worker processes could not start (their pool broke 3 times in a row); nothing was run for "
               "this tenant. From a script, guard it with `if __name__ == \"__main__\":`; or use concurrency 1")
_INTERRUPTED = "interrupted (Ctrl-C) while migrating: its revision in progress rolled back; rerun to resume"


def _skipped(tenant: Tenant, why: str = "the failure policy stopped the run") -> TenantResult:
    return TenantResult(tenant.name, Status.SKIPPED, error=f"not started: {why}")


@dataclass
class SerialStrategy:
    """One tenant after another, in this process: the reference the parallel strategy is tested against."""

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
                    failures += result.status is Status.FAILED
                results.append(result)
                on_result(result)
        finally:
            connector.dispose()
        return FanOut(results, pressure_wait=waited,
                      pressure_errors=tuple(self.gate.errors) if self.gate is not None else ())


# --- worker process side -----------------------------------------------------------------------------------
# Per-process state of a worker, set once by its initializer. This is the only module-level mutable state in
# the package, and it exists only inside worker processes: it is what "load the revision graph once per
# worker" means.
_worker: tuple[Job, Revisions, Connector] | str | None = None  # or why the worker could not start


def _init_worker(job: Job) -> None:
    global _worker
    # Ctrl-C in a terminal signals the whole process group. Workers ignore it so the tenant in progress
    # finishes its revision; the parent decides (stop starting new tenants, drain, report).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.getLogger("azure").setLevel(logging.ERROR)  # as in the CLI: our one-line errors say it
    try:
        _worker = (job, Revisions(job.alembic_ini, job.version_table), job.connector())
    except Exception as err:  # noqa: BLE001 - an initializer that raises breaks the pool with no reason given
        _worker = f"worker could not load the Alembic project: {type(err).__name__}: {err}"


def _work(tenant: Tenant) -> TenantResult:
    assert _worker is not None, "worker used before its initializer ran"
    if isinstance(_worker, str):
        return TenantResult(tenant.name, Status.FAILED, attempts=1, error=scrub(_worker, tenant.all_secrets))
    job, revisions, connector = _worker
    # Tenants reach a worker because the parent found they need work, or stopped reading after a streak
    # of such tenants: go straight to the lock (the revision is read again under it anyway). A throttled
    # tenant comes back to the parent, which lowers the concurrency (AIMD, see ProcessStrategy).
    return run_tenant(tenant, job, revisions, connector, read_first=False, hand_back_throttled=True)


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
    """

    concurrency: int = 4
    revisions: Revisions | None = None  # the parent's loaded graph, for the precheck
    gate: PressureGate | None = None  # asked before each tenant starts: is the pool calm enough?

    def run(self, tenants, job, policy, on_result):
        context = multiprocessing.get_context("forkserver")
        # The forkserver imports these once and forks every worker from itself. "__main__" included: a
        # worker would otherwise re-run the main script (the console script imports the CLI: typer, rich).
        # (Only a main module that is a file: one read from stdin cannot be imported again, anywhere.)
        main_file = getattr(sys.modules["__main__"], "__file__", None)
        real_main = bool(main_file) and os.path.isfile(main_file)
        context.set_forkserver_preload(["__main__", "tenants.fanout"] if real_main else ["tenants.fanout"])
        revisions = self.revisions or Revisions(job.alembic_ini, job.version_table)
        connector = job.connector()
        order = {t.name: i for i, t in enumerate(tenants)}
        unchecked: deque[Tenant] = deque(tenants)  # not read yet
        ready: deque[Tenant] = deque()  # need a worker
        checks: dict[Future, Tenant] = {}  # reads in flight (threads)
        # tenants in flight, with their pool and the AIMD cut count at their start
        in_flight: dict[Future, tuple[Tenant, ProcessPoolExecutor, int, int]] = {}
        results: list[TenantResult] = []
        failures = streak = 0
        prechecking, interrupted = True, False
        pool: ProcessPoolExecutor | None = None
        workers = min(self.concurrency, len(tenants))
        # AIMD state: the current limit, the number of cuts so far (a tenant remembers the cut count at its
        # start), successes since the last change, and per-tenant partial results of throttled attempts.
        limit, cuts, successes, throttled = workers, 0, 0, 0
        clock_start = time.monotonic()
        changes: list[tuple[float, int]] = [(0.0, limit)]
        partial: dict[str, TenantResult] = {}
        throttles: dict[str, int] = {}
        breaks = 0  # pools broken in a row without a single result in between
        pressure_wait = 0.0

        def finish(result: TenantResult) -> None:
            nonlocal failures
            failures += result.status is Status.FAILED
            results.append(result)
            on_result(result)

        def starting() -> bool:
            return not interrupted and not policy.stop(failures) and breaks < _MAX_BREAKS

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
                # Submit no more than `workers` at a time: the executor's own queue would start tenants the
                # failure policy may want to skip.
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
                    if pool is None:
                        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                                   initargs=(job,))
                    tenant = ready.popleft()
                    try:
                        in_flight[pool.submit(_work, tenant)] = (tenant, pool, cuts, limit)
                    except (BrokenProcessPool, OSError, EOFError):  # broke before this tenant started: back in line
                        ready.appendleft(tenant)
                        pool.shutdown(wait=False, cancel_futures=True)
                        pool, breaks = None, breaks + 1
                        if breaks >= _MAX_BREAKS:
                            break
                if not checks and not in_flight and not held:
                    break
                try:
                    paused = time.monotonic()
                    if checks or in_flight:
                        # Held back: wake up at the next probe reading even if nothing finishes.
                        timeout = self.gate.interval if held and self.gate is not None else None
                        done, _ = wait([*checks, *in_flight], timeout=timeout, return_when=FIRST_COMPLETED)
                    else:
                        time.sleep(self.gate.interval if self.gate is not None else 0)
                        done = set()
                    if held:
                        pressure_wait += time.monotonic() - paused
                except KeyboardInterrupt:
                    # First Ctrl-C: start nothing new, let the tenants in flight finish, report.
                    # A second one propagates (the pool still waits for in-flight workers on exit).
                    if interrupted:
                        raise
                    interrupted = True
                    continue
                for future in done:
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
                    tenant, its_pool, its_cuts, its_limit = in_flight.pop(future)
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
                        # A worker died (killed, out of memory): the whole pool is broken. Its tenants in
                        # flight are reported failed; the rest continue on a new pool.
                        finish(_merge(earlier, TenantResult(tenant.name, Status.FAILED, attempts=1, error=_POOL_BROKE)))
                        if its_pool is pool:  # not a newer pool made after an earlier casualty
                            pool.shutdown(wait=False, cancel_futures=True)
                            pool, breaks = None, breaks + 1
                    except Exception as err:  # noqa: BLE001 - e.g. a result that failed to unpickle
                        error = scrub(f"worker error: {type(err).__name__}: {err}", tenant.all_secrets)
                        finish(_merge(earlier, TenantResult(tenant.name, Status.FAILED, attempts=1, error=error)))
        finally:
            threads.shutdown(wait=True, cancel_futures=True)
            if pool is not None:
                pool.shutdown(wait=True)
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
                      tuple(self.gate.errors) if self.gate is not None else ())


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
                    gate: PressureGate | None = None) -> Strategy:
    """Serial for one tenant or ``concurrency`` 1 (no process start-up); processes otherwise."""
    if concurrency <= 1 or tenants <= 1:
        return SerialStrategy(revisions, gate=gate)
    return ProcessStrategy(concurrency, revisions, gate)


def _wait_for(gate: PressureGate) -> float:
    """Block until the gate admits a start; the seconds waited."""
    started = time.monotonic()
    while not gate.admit():
        time.sleep(gate.interval)
    return time.monotonic() - started

