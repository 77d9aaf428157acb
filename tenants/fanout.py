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

import multiprocessing
import signal
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Protocol

from tenants.db import Connector
from tenants.discovery import Tenant
from tenants.report import Status, TenantResult
from tenants.revisions import Revisions
from tenants.unit import Job, precheck, run_tenant

OnResult = Callable[[TenantResult], None]


@dataclass(frozen=True)
class FailurePolicy:
    """Stop starting new tenants once ``max_failures`` tenants failed; None keeps going through every tenant."""

    max_failures: int | None = 1

    def stop(self, failures: int) -> bool:
        return self.max_failures is not None and failures >= self.max_failures


class Strategy(Protocol):
    concurrency: int

    def run(self, tenants: list[Tenant], job: Job, policy: FailurePolicy, on_result: OnResult) -> list[TenantResult]:
        ...


def _skipped(tenant: Tenant, why: str = "the failure policy stopped the run") -> TenantResult:
    return TenantResult(tenant.name, Status.SKIPPED, error=f"not started: {why}")


@dataclass
class SerialStrategy:
    """One tenant after another, in this process: the reference the parallel strategy is tested against."""

    revisions: Revisions | None = None  # the parent's already-loaded graph, if it has one
    concurrency: int = 1

    def run(self, tenants, job, policy, on_result):
        revisions = self.revisions or Revisions(job.alembic_ini, job.version_table)
        connector = Connector()
        results, failures = [], 0
        try:
            for tenant in tenants:
                if policy.stop(failures):
                    result = _skipped(tenant)
                else:
                    result = run_tenant(tenant, job, revisions, connector)
                    failures += result.status is Status.FAILED
                results.append(result)
                on_result(result)
        finally:
            connector.dispose()
        return results


# --- worker process side -----------------------------------------------------------------------------------
# Per-process state of a worker, set once by its initializer. This is the only module-level mutable state in
# the package, and it exists only inside worker processes: it is what "load the revision graph once per
# worker" means.
_worker: tuple[Job, Revisions, Connector] | None = None


def _init_worker(job: Job) -> None:
    global _worker
    # Ctrl-C in a terminal signals the whole process group. Workers ignore it so the tenant in progress
    # finishes its revision; the parent decides (stop starting new tenants, drain, report).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker = (job, Revisions(job.alembic_ini, job.version_table), Connector())


def _work(tenant: Tenant) -> TenantResult:
    assert _worker is not None, "worker used before its initializer ran"
    job, revisions, connector = _worker
    return run_tenant(tenant, job, revisions, connector)


@dataclass
class ProcessStrategy:
    """At most ``concurrency`` tenants at once, each in a worker process.

    First the parent reads every tenant's revision from ``concurrency`` threads (:func:`precheck`: one
    connection and one query each, no Alembic context, so threads are safe); only tenants with work to do
    go to worker processes. A fleet already at head never starts a process.
    """

    concurrency: int = 4
    revisions: Revisions | None = None  # the parent's loaded graph, for the precheck

    def run(self, tenants, job, policy, on_result):
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["tenants.fanout"])
        order = {t.name: i for i, t in enumerate(tenants)}
        results: list[TenantResult] = []
        queue: deque[Tenant] = deque()
        failures = 0

        def finish(result: TenantResult) -> None:
            nonlocal failures
            failures += result.status is Status.FAILED
            results.append(result)
            on_result(result)

        revisions = self.revisions or Revisions(job.alembic_ini, job.version_table)
        connector = Connector()
        try:
            with ThreadPoolExecutor(self.concurrency) as threads:
                checked = threads.map(lambda t: precheck(t, job, revisions, connector), tenants)
                for tenant, done in zip(tenants, checked):
                    if done is None:
                        queue.append(tenant)
                    else:
                        finish(done)
        finally:
            connector.dispose()

        interrupted = False
        while queue and not policy.stop(failures) and not interrupted:
            # A worker that dies (killed, out of memory) breaks the whole pool; its in-flight tenants are
            # reported failed and the rest continue on a new pool.
            workers = min(self.concurrency, len(queue))
            with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                     initargs=(job,)) as pool:
                in_flight: dict[Future, Tenant] = {}
                broken = False
                # Submit no more than `workers` at a time: the executor's own queue would start tenants the
                # failure policy may want to skip.
                def starting() -> bool:
                    return bool(queue) and not broken and not interrupted and not policy.stop(failures)

                while starting() or in_flight:
                    while starting() and len(in_flight) < workers:
                        tenant = queue.popleft()
                        in_flight[pool.submit(_work, tenant)] = tenant
                    try:
                        done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
                    except KeyboardInterrupt:
                        # First Ctrl-C: start nothing new, let the tenants in flight finish, report.
                        # A second one propagates (the pool still waits for in-flight workers on exit).
                        if interrupted:
                            raise
                        interrupted = True
                        continue
                    for future in done:
                        tenant = in_flight.pop(future)
                        try:
                            finish(future.result())
                        except BrokenProcessPool:
                            broken = True
                            finish(TenantResult(tenant.name, Status.FAILED, attempts=1,
                                                error="worker process died while migrating this tenant"))
                        except Exception as err:  # noqa: BLE001 - e.g. a result that failed to unpickle
                            finish(TenantResult(tenant.name, Status.FAILED, attempts=1,
                                                error=f"worker error: {type(err).__name__}: {err}"))
        for tenant in queue:
            finish(_skipped(tenant, "interrupted (Ctrl-C)" if interrupted else "the failure policy stopped the run"))
        results.sort(key=lambda r: order[r.tenant])
        return results


def choose_strategy(concurrency: int, tenants: int, revisions: Revisions | None = None) -> Strategy:
    """Serial for one tenant or ``concurrency`` 1 (no process start-up); processes otherwise."""
    if concurrency <= 1 or tenants <= 1:
        return SerialStrategy(revisions)
    return ProcessStrategy(concurrency, revisions)

