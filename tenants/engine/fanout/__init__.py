"""Fan-out strategies: how the unit of work (:func:`tenants.engine.unit.run_tenant`) is applied to many tenants.

The strategy is separate from the unit of work. :class:`SerialStrategy` runs tenants one after another in
this process and is the reference; :class:`ProcessStrategy` must produce the same results, faster.

Where each part lives, in the order a reader may want them:

- ``base``: what every strategy returns (:class:`FanOut`), the :class:`FailurePolicy`, and how a run notes
  signals (:func:`noting_signals`) rather than let them raise wherever they land.
- ``serial``: :class:`SerialStrategy`.
- ``process``: :class:`ProcessStrategy`, its loop, and the worker process side; why processes (and not
  threads), why ``forkserver``, how a tenant timeout kills a worker and what the server then rolls back.
- ``scheduler``: the state of one process fan-out and one method per event (a precheck done, a tenant done,
  throttled, its worker died, it timed out, a signal); the failure policy, and signals: drain, grace, stop.
- ``slots``: the worker processes, one executor each (why), and which tenant each is on; the kill.
- ``orphans``: how the forkserver and the workers die with the parent, whatever kills it.
- ``aimd``: how many tenants may run at once while the pool throttles (pure).
"""

from __future__ import annotations

from tenants.engine.fanout.base import (
    FAILURES,
    FailurePolicy,
    FanOut,
    Noted,
    OnResult,
    Strategy,
    Whereabouts,
    noting_signals,
    signal_name,
)
from tenants.engine.fanout.process import ProcessStrategy
from tenants.engine.fanout.serial import SerialStrategy
from tenants.engine.forkserver import start_early
from tenants.engine.pressure import PressureGate
from tenants.engine.revisions import Revisions

__all__ = ["FAILURES", "FailurePolicy", "FanOut", "Noted", "OnResult", "ProcessStrategy", "SerialStrategy",
           "Strategy", "Whereabouts", "choose_strategy", "noting_signals", "signal_name", "start_early"]


def choose_strategy(concurrency: int, tenants: int, revisions: Revisions | None = None,
                    gate: PressureGate | None = None, tenant_timeout: float | None = None) -> Strategy:
    """Serial for one tenant or ``concurrency`` 1 (no process start-up); processes otherwise, and always with a
    ``tenant_timeout``: a tenant that overruns is stopped by killing its worker, and this process is no worker."""
    if concurrency <= 1 or tenants <= 1:
        if tenant_timeout is None:
            return SerialStrategy(revisions, gate=gate)
        concurrency = 1  # one worker process, there for the timeout's sake
    return ProcessStrategy(concurrency, revisions, gate, tenant_timeout)
