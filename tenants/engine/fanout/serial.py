"""The serial strategy: one tenant after another, in this process."""

from __future__ import annotations

import time
from dataclasses import dataclass

from tenants.engine.fanout.base import FAILURES, FanOut, noting_signals, signal_name, skipped
from tenants.engine.pressure import PressureGate
from tenants.engine.revisions import Revisions
from tenants.engine.unit import run_tenant
from tenants.model import Status, TenantResult

_INTERRUPTED = "interrupted ({}) while migrating: its revision in progress rolled back; rerun to resume"


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
        interrupted, waited, why = False, 0.0, "Ctrl-C"
        # Signals are noted between tenants (a later tenant is then skipped, and so is every tenant of a wave after
        # an interrupted one); only the migration itself, and the wait for the pressure gate, are interrupted by
        # one (see base.noting_signals).
        try:
            with noting_signals() as noted:
                for tenant in tenants:
                    if not interrupted and noted.first is not None:
                        interrupted, why = True, signal_name(noted.first)
                    if not interrupted and self.gate is not None and not policy.stop(failures):
                        try:
                            with noting_signals(raising=True):
                                waited += _wait_for(self.gate)
                        except KeyboardInterrupt as err:
                            interrupted, why = True, _signal(err)
                    if interrupted:
                        result = skipped(tenant, f"interrupted ({why})")
                    elif policy.stop(failures):
                        result = skipped(tenant)
                    else:
                        try:
                            with noting_signals(raising=True):
                                result = run_tenant(tenant, job, revisions, connector)
                        except KeyboardInterrupt as err:
                            # In this process Ctrl-C (or SIGTERM) lands in the migration itself: its connection
                            # closes and the server rolls the revision in progress back. Report it, start
                            # nothing else.
                            interrupted, why = True, signal_name(noted.first) if noted.first else _signal(err)
                            result = TenantResult(tenant.name, Status.FAILED, attempts=1,
                                                  error=_INTERRUPTED.format(why))
                        failures += result.status in FAILURES
                    results.append(result)
                    on_result(result)
        finally:
            connector.dispose()
        return FanOut(results, pressure_wait=waited,
                      pressure_errors=self.gate.take_errors() if self.gate is not None else ())


def _signal(interrupt: KeyboardInterrupt) -> str:
    """Which signal it was: base.Noted raises KeyboardInterrupt("SIGTERM") for SIGTERM; Ctrl-C's has no text."""
    return str(interrupt) or "Ctrl-C"


def _wait_for(gate: PressureGate) -> float:
    """Block until the gate admits a start; the seconds waited."""
    started = time.monotonic()
    while not gate.admit():
        time.sleep(gate.interval)
    return time.monotonic() - started
