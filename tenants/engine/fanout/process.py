"""The process strategy: tenants in worker processes, at most ``concurrency`` at once.

:class:`~tenants.engine.fanout.serial.SerialStrategy` is the reference; :class:`ProcessStrategy` must produce
the same results, faster.

Why processes and not threads: Alembic's ``alembic.context`` and ``alembic.op`` are module-global proxies
installed by ``EnvironmentContext.__enter__``; two migrations in two threads of one process corrupt each
other. So each migration runs in its own worker process, one tenant at a time per worker. Each worker loads
the revision graph once (in its initializer), not once per tenant.

Workers are started with the ``forkserver`` method: a clean server process (modules preloaded) forks them, so
they inherit neither the parent's threads (rich's live display, the executor's own threads) nor its open
connections, and starting one costs a fork, not a fresh interpreter.

Why each worker is an executor of its own (a *slot*), with a *clock* the parent reads: see
:mod:`tenants.engine.fanout.slots`.

The failure policy, AIMD and signals (Ctrl-C, SIGTERM: drain, then stop) are the scheduler's
(:mod:`tenants.engine.fanout.scheduler`); this loop installs the handler that notes them, for the run's
duration (from its first instruction: a signal while it sets itself up is acted on before anything starts).
Workers and the forkserver ignore SIGINT and SIGTERM (a terminal, or a CI runner, signals the whole
process group): the parent decides, and stops a worker with SIGKILL.

No process of a run outlives it, whatever kills the parent (SIGKILL included): see
:mod:`tenants.engine.fanout.orphans`.

Per-tenant timeout (``tenant_timeout``, the CLI's ``--tenant-timeout``): a tenant still running that many
seconds after its worker started it (connecting, waiting for its lock, retries and its revisions all count;
its wait in line does not) is stopped by SIGKILL of its worker process and reported ``timed-out``, a failure.
The parent's read of its revision (the precheck) is held to the same timeout: one still going then is given
up and the tenant reported ``timed-out`` with nothing changed (:meth:`Scheduler.give_up_late_reads`). Either
way it counts toward the failure policy like ``failed`` (by default the run then starts no new tenant; those
in flight finish) and makes the run's exit code 1. The timeout is enforced
while draining after Ctrl-C too. Only a worker process can be killed, so a run with a timeout always uses
:class:`ProcessStrategy` (see :func:`tenants.engine.fanout.choose_strategy`), with one worker when the concurrency is 1.

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

import logging
import multiprocessing
import multiprocessing.forkserver
import os
import queue
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from tenants.db import Connector, NoVersionTable, missing_file, read_version
from tenants.dialects import dialect_for, setup_worker
from tenants.engine.fanout.base import Whereabouts, noting_signals, skipped
from tenants.engine.fanout.orphans import die_with_parent
from tenants.engine.fanout.scheduler import Scheduler, drain_grace
from tenants.engine.fanout.slots import CHANGING, CLOCK_SIZE, PID, STARTED, STOP, Slot, Slots
from tenants.engine.forkserver import forkserver_context, start_forkserver
from tenants.engine.history import applied_by_run
from tenants.engine.pressure import PressureGate
from tenants.engine.revisions import Revisions
from tenants.engine.unit import Job, precheck, run_tenant
from tenants.model import Status, Tenant, TenantResult
from tenants.secrets import scrub

# --- worker process side -----------------------------------------------------------------------------------
# Per-process state of a worker, set once by its initializer. This is the only module-level mutable state in
# the package, and it exists only inside worker processes: it is what "load the revision graph once per
# worker" means. The clock is the worker's slot's (see tenants.engine.fanout.slots).
_worker: tuple[Job, Revisions, Connector, Any] | str | None = None  # or why the worker could not start

# The clock's layout (PID, STARTED) is in tenants.engine.fanout.slots, which reads it.


def _init_worker(job: Job, clock: Any, check_client: bool = False, log_ceiling: int = logging.NOTSET) -> None:
    global _worker
    # Ctrl-C in a terminal signals the whole process group, and a CI runner may SIGTERM it too. Workers ignore
    # both so the tenant in progress finishes its revision; the parent decides (stop starting new tenants,
    # drain, stop them with SIGKILL, report). And a worker dies with its forkserver, which dies with the parent.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent()
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
    clock[PID] = os.getpid()
    if clock[STOP]:  # the run was interrupted before this worker got to its tenant: the parent reports it
        return skipped(tenant, "interrupted")
    clock[CHANGING] = 0.0
    clock[STARTED] = time.monotonic()  # the tenant timeout counts from here
    try:
        # Straight to the lock, whose round trip reads the revision too (tenants.db.locked_state): a tenant
        # reaches a worker because the parent found it needs work, or does not read ahead (see ProcessStrategy).
        # A throttled tenant comes back to the parent, which lowers the concurrency (AIMD, see
        # tenants.engine.fanout.aimd). CHANGING tells the parent, should it kill this process, whether env.py ran.
        return run_tenant(tenant, job, revisions, connector, read_first=False, hand_back_throttled=True,
                          on_change=partial(clock.__setitem__, CHANGING, 1.0))
    finally:
        clock[STARTED] = 0.0  # before the result leaves: a worker done with its tenant is never killed for it


def _where(tenant: Tenant, job: Job, connector: Connector) -> Whereabouts:
    """Where a tenant stands, read after its worker was killed: its revision (``base``: none; None if
    unreadable), and what this run had committed there (its history rows, when the audit trail is on).

    Its revision in progress is rolled back, or being rolled back: a read sees only what was committed.
    """
    try:
        if not job.must_exist and missing_file(tenant.url):
            return Whereabouts("base")  # killed before it created its file: reading must not create it either
        with connector.engine(tenant.url, must_exist=job.must_exist, reads=True) as engine, engine.connect() as conn:
            try:
                heads = read_version(conn, job.version_table)
            except NoVersionTable:
                return Whereabouts("base")
            steps = applied_by_run(conn, job.run_id, job.history_table) if job.run_id else []
    except Exception:  # noqa: BLE001 - unknown is an honest answer
        return Whereabouts(None)
    mine = [step for step in steps if step[0] == job.operation]
    applied = tuple(to if job.operation == "upgrade" else source for _, source, to in mine
                    if job.operation != "stamp")
    return Whereabouts(",".join(heads) or "base", applied, mine[0][1] if mine else None)


@dataclass
class ProcessStrategy:
    """At most ``concurrency`` tenants at once, each in a worker process.

    Who reads a tenant's revision first depends on what the tenant's lock costs (issue 13: one login per
    tenant). The workers read it themselves, under the tenant's lock (:func:`tenants.db.locked_state`).
    Where the lock travels with that read, one round trip for both (PostgreSQL over psycopg 3,
    :meth:`~tenants.dialects.Dialect.lock_rides_with_read`), a tenant already at the target costs a worker
    what a read costs anywhere, one login and one round trip: every tenant goes straight to a worker, and
    each is logged into exactly once, whether it needs work or not.

    Elsewhere (SQL Server, where the applock is a round trip of its own; SQLite; psycopg2) the parent reads
    tenants' revisions first, from ``concurrency`` threads (:func:`precheck`: one connection and one lock-free
    query each, no Alembic context, so threads are safe). Tenants already at the target are done right there:
    a fleet at head starts no worker process. Tenants with work to do stream to the worker processes as they
    are found, so the workers start while the parent is still reading. Once a tenant needs work, the workers
    are needed anyway: the parent stops reading and hands the rest straight to the workers. Each read in the
    parent costs a login of its own (a TLS handshake and an Entra token on Azure SQL), which a tenant that
    goes to a worker pays twice: so only the first tenant with work is read twice per run (1 + 1/N logins
    per tenant; 1.16 over 40 new tenants at concurrency 4 before issue 13).

    Protecting a shared pool (AIMD, as TCP does, :mod:`tenants.engine.fanout.aimd`): a tenant that hits a
    throttling error (Azure SQL's worker or request limit of the elastic pool) comes back ``throttled``; the
    parent halves the number of tenants it runs at once (the parent's own revision reads included) and queues
    the tenant again. Throttles from tenants started before that cut do not cut again (they report the old
    load). After as many successes in a row as the current limit, the limit grows back by one, up to
    ``concurrency``. A tenant throttled more than ``retries`` times while running alone (limit 1) fails.

    ``tenant_timeout`` (seconds): a tenant that runs longer in its worker is killed with it and reported
    ``timed-out``; see the module docstring. Each run of a throttled tenant is timed on its own.
    """

    concurrency: int = 4
    revisions: Revisions | None = None  # the parent's loaded graph, for the precheck
    gate: PressureGate | None = None  # asked before each tenant starts: is the pool calm enough?
    tenant_timeout: float | None = None  # None: no limit
    # Seconds the tenants in flight may finish in after the first signal (None: no limit), per signal.
    drain: Callable[[int], float | None] = field(default=drain_grace, repr=False)

    def run(self, tenants, job, policy, on_result):
        # Signals are noted from the first instruction (see base.noting_signals): one that lands while the run
        # sets itself up, or came before it (an earlier wave, the parent's set-up), is taken when the scheduler
        # is ready, before it starts anything.
        with noting_signals() as noted:
            context = forkserver_context()
            revisions = self.revisions or Revisions(job.alembic_ini, job.version_table)
            connector = job.connector()
            threads = DaemonThreads()  # the parent's reads: prechecks, and after a timeout or a stop
            slots = Slots(partial(_spawn, context, job, self.tenant_timeout is not None), _work)
            # The parent reads ahead only where a worker's read would cost a round trip more (see above).
            workers_read = bool(tenants) and dialect_for(tenants[0].url).lock_rides_with_read(tenants[0].url)
            run = Scheduler(tenants, policy, on_result, concurrency=self.concurrency, retries=job.retries,
                            slots=slots, threads=threads,
                            read=partial(precheck, job=job, revisions=revisions, connector=connector),
                            where=partial(_where, job=job, connector=connector), gate=self.gate,
                            timeout=self.tenant_timeout, drain=self.drain, done=job.done, precheck=not workers_read)
            run.signals = noted.received  # the handler appends to it from now on: the scheduler acts on them
            run.take_signals()
            try:
                start_forkserver()
                while run.start():
                    for future in run.wait():
                        run.on_done(future)
            finally:
                slots.shutdown()
                threads.shutdown()
                connector.dispose()
        return run.outcome()


class DaemonThreads(Executor):
    """The parent's reads, in daemon threads: a read stuck in a dead connection is given up (a stopped run, see
    the scheduler) without anything waiting for it, at shutdown or at the interpreter's exit (a
    ``ThreadPoolExecutor`` joins its threads there). The scheduler bounds how many run at once.

    Threads are reused: a read goes to an idle thread, and a new thread starts only when none is idle (a stuck
    read keeps its thread; the next read gets another). One thread per read cost a thread start each, about
    3 ms per tenant of the no-op pass on a busy 2-core machine (profiled: 0.14 s of 0.23 s for 40 tenants).
    :meth:`shutdown` lets the idle threads end; a stuck one ends with its read, or with the process."""

    _STOP = object()

    def __init__(self) -> None:
        self._tasks: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._threads = 0

    def submit(self, fn, /, *args, **kwargs) -> Future:
        future: Future = Future()
        with self._lock:
            start = self._idle == 0
            if start:
                self._threads += 1
            else:
                self._idle -= 1
        self._tasks.put((future, fn, args, kwargs))
        if start:
            threading.Thread(target=self._work, name="tenants-read", daemon=True).start()
        return future

    def _work(self) -> None:
        while True:
            task = self._tasks.get()
            if task is self._STOP:
                return
            future, fn, args, kwargs = task
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args, **kwargs))
                except BaseException as err:  # noqa: BLE001 - handed to whoever waits for it
                    future.set_exception(err)
            with self._lock:
                self._idle += 1

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Let every thread end once it is idle; never waits (a stuck read must not hold the run's end)."""
        with self._lock:
            threads, self._threads = self._threads, 0
        for _ in range(threads):
            self._tasks.put(self._STOP)


def _spawn(context: multiprocessing.context.BaseContext, job: Job, check_client: bool) -> Slot:
    """A new slot: a worker process in an executor of its own, and its clock."""
    clock = context.RawArray("d", CLOCK_SIZE)
    return Slot(ProcessPoolExecutor(1, mp_context=context, initializer=_init_worker,
                                    initargs=(job, clock, check_client, logging.root.manager.disable)), clock)
