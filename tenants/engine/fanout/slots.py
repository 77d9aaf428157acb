"""Worker slots: the worker processes of a run, and which tenant each one is on.

Why each worker is an executor of its own (a *slot*: a ``ProcessPoolExecutor`` of one process), not one pool
of ``concurrency`` processes: a pool does not say which process runs which tenant, and one process that dies
breaks the whole pool, failing every tenant in flight in it. A worker that has to be killed (the tenant
timeout, see :mod:`tenants.engine.fanout.process`), or that dies of itself (the kernel's OOM killer), would
take its siblings down with it. With one executor per worker, only that slot breaks; the other tenants in
flight never notice, and the slot gets a new process for the next tenant. Each slot has a *clock*, a few doubles
of shared memory the worker writes as it starts and ends a tenant (its pid, when it started, whether env.py has
run; no lock: a worker killed mid-write must not leave one held), so the parent knows which process to kill,
since when the tenant has run, and whether it may have changed it.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

from tenants.model import Tenant, TenantResult

# A slot's clock: a multiprocessing RawArray("d", 4). The worker writes [pid, time.monotonic() when it started
# its tenant, 0.0 when it is done with it]; the parent reads them. (CLOCK_MONOTONIC is one clock for every
# process of the machine, so the two sides compare readings.) The parent writes STOP (1.0) when the run was
# interrupted: a worker that has not started its tenant yet (a process still starting) hands it back skipped.
# The worker writes CHANGING: 1.0 from the moment it runs env.py on its tenant, 0.0 before (connecting, waiting
# for the lock, reading): a worker killed before that changed nothing, and its report says so.
PID, STARTED, STOP, CHANGING = 0, 1, 2, 3
CLOCK_SIZE = 4
POLL = 0.1  # a tenant submitted whose worker has not started it yet (a new process): look again this soon


@dataclass(eq=False)
class Slot:
    """One worker process in an executor of its own, and its clock."""

    pool: ProcessPoolExecutor
    clock: Any
    killed_after: float | None = None  # set when the parent killed it: seconds its tenant had run
    halted: bool = False  # killed because the run was stopped (a second signal, or the drain's grace ran out)

    def started(self) -> float | None:
        """When the worker started the tenant it is on (time.monotonic()), or None."""
        return self.clock[STARTED] or None

    def kill(self, ran: float) -> bool:
        """SIGKILL its process; False when its pid is not readable yet (then try again later)."""
        pid = int(self.clock[PID])
        if pid <= 1:  # never kill(0): that is this whole process group
            return False
        self.killed_after = ran
        with contextlib.suppress(ProcessLookupError):  # it died of itself meanwhile
            os.kill(pid, signal.SIGKILL)
        return True

    def hold(self) -> None:
        """Tell its worker not to start the tenant it was handed, if it has not yet (see STOP)."""
        self.clock[STOP] = 1.0

    def terminate(self) -> None:
        """SIGKILL its process, whose pid is not in the clock yet (it never started a tenant)."""
        # The executor's own table of its processes: the only place the pid of a process still starting is.
        processes = getattr(self.pool, "_processes", None) or {}
        for process in list(processes.values()):
            with contextlib.suppress(Exception):  # gone already
                process.kill()

    def changing(self) -> bool:
        """Whether its worker got as far as running env.py on the tenant it is on (see CHANGING)."""
        return bool(self.clock[CHANGING])

    def ever_started(self) -> bool:
        """Whether its process got as far as starting a tenant (a pid is written then, never cleared)."""
        return bool(self.clock[PID])


@dataclass(eq=False)
class Flight:
    """A tenant handed to a worker, with the AIMD epoch and limit at its start (see :mod:`.aimd`)."""

    tenant: Tenant
    slot: Slot
    epoch: int
    limit: int


class Slots:
    """The live slots of a run: the tenants in flight in them, and those idle for the next tenant.

    ``spawn`` makes a new slot (a new worker process); ``work`` is what a worker is given for each tenant.
    """

    def __init__(self, spawn: Callable[[], Slot], work: Callable[[Tenant], TenantResult]) -> None:
        self.spawn, self.work = spawn, work
        self.live: list[Slot] = []  # every live slot; those without a tenant are also in `idle`
        self.idle: list[Slot] = []
        self.in_flight: dict[Future, Flight] = {}

    def __len__(self) -> int:
        """Tenants in flight."""
        return len(self.in_flight)

    def take(self) -> Slot:
        """An idle slot, or a new one."""
        if self.idle:
            return self.idle.pop()
        slot = self.spawn()
        self.live.append(slot)
        return slot

    def submit(self, flight: Flight) -> None:
        """Hand the tenant to its slot's worker; raises what its executor raises when it broke before."""
        self.in_flight[flight.slot.pool.submit(self.work, flight.tenant)] = flight

    def land(self, future: Future) -> Flight:
        """The flight whose future is done; its slot idle again, or discarded when its process is dead (or
        dying): the next tenant gets a new one."""
        flight = self.in_flight.pop(future)
        if flight.slot.killed_after is not None or isinstance(future.exception(), BrokenProcessPool):
            self.discard(flight.slot)
        else:
            self.idle.append(flight.slot)
        return flight

    def discard(self, slot: Slot) -> None:
        self.live.remove(slot)
        slot.pool.shutdown(wait=False, cancel_futures=True)

    def killed(self) -> int:
        """Tenants in flight whose worker was killed for the timeout (their future has not broken yet)."""
        return sum(f.slot.killed_after is not None for f in self.in_flight.values())

    def kill_overdue(self, now: float, timeout: float | None) -> float | None:
        """Kill the worker of each tenant running longer than ``timeout``; the seconds until the next is due."""
        if timeout is None:
            return None
        due = None
        for slot in (f.slot for f in self.in_flight.values() if f.slot.killed_after is None):
            started = slot.started()
            left = POLL if started is None else started + timeout - now
            if left <= 0:
                if slot.kill(now - started):
                    continue  # its future breaks: reported when it does
                left = POLL  # its pid is not visible here yet
            due = left if due is None else min(due, left)
        return due

    def hold(self) -> None:
        """The run was interrupted: workers that have not started their tenant yet hand it back skipped."""
        for flight in self.in_flight.values():
            flight.slot.hold()

    def halt(self, now: float) -> list[Flight]:
        """Stop every tenant in flight at once: kill the workers of those running (their futures break, each
        reported when it does) and drop those whose worker never started them (returned: never started)."""
        unstarted = []
        for future, flight in list(self.in_flight.items()):
            slot = flight.slot
            if slot.killed_after is not None:
                continue  # killed already (the timeout): its future breaks
            started = slot.started()
            slot.halted = True
            if started is not None and slot.kill(now - started):
                continue
            # Never started (or its process is still coming up): nothing to roll back, nothing to read back.
            del self.in_flight[future]
            slot.terminate()
            self.discard(slot)
            unstarted.append(flight)
        return unstarted

    def shutdown(self) -> None:
        for slot in self.live:
            slot.pool.shutdown(wait=not slot.halted)
