"""The pressure probe: before starting a tenant, wait while the elastic pool is busier than a limit.

AIMD (see :mod:`tenants.fanout`) reacts once the pool has refused work; this reacts before. Every tenant
database of a pool can read the pool's live load from ``sys.dm_elastic_pool_resource_stats`` (one row per
15 seconds, about 40 minutes of history). The fan-out asks a :class:`PressureGate` before it starts each
tenant; the gate reads its :class:`PressureSource` at most every ``interval`` seconds and stays shut while
any figure (CPU, data IO, log write, workers) is above ``limit`` percent.

The source is an interface so tests can drive the gate with made-up readings; the real one is
:class:`ElasticPoolPressure`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import text

from tenants.db import Connector

# The newest row of the pool's resource stats, readable from any database in the pool.
POOL_STATS_SQL = (
    "SELECT TOP 1 avg_cpu_percent, avg_data_io_percent, avg_log_write_percent, max_worker_percent "
    "FROM sys.dm_elastic_pool_resource_stats ORDER BY end_time DESC"
)
METRICS = ("cpu", "data_io", "log_write", "workers")


class PressureSource(Protocol):
    def read(self) -> dict[str, float]:
        """The pool's current load: metric name -> percent of its limit."""
        ...


@dataclass
class PressureGate:
    """Open while every metric of the last reading is at or below ``limit`` percent."""

    source: PressureSource
    limit: float
    interval: float = 5.0
    clock: Callable[[], float] = time.monotonic
    reading: dict[str, float] = field(default_factory=dict)
    error: str | None = None  # the last failed read, if any (the gate then stays open: see is_open)
    _read_at: float | None = None

    def is_open(self) -> bool:
        now = self.clock()
        if self._read_at is None or now - self._read_at >= self.interval:
            self._read_at = now
            try:
                self.reading, self.error = dict(self.source.read()), None
            except Exception as err:  # noqa: BLE001 - a probe that cannot read must not stop the rollout
                # Failing open: the probe is a courtesy to the pool; AIMD still backs off if it is saturated.
                self.reading, self.error = {}, f"{type(err).__name__}: {err}"
        return all(value <= self.limit for value in self.reading.values())

    def busiest(self) -> str:
        if not self.reading:
            return "no reading"
        name = max(self.reading, key=self.reading.__getitem__)
        return f"{name} {self.reading[name]:.0f}%"


@dataclass
class ElasticPoolPressure:
    """Reads ``sys.dm_elastic_pool_resource_stats`` through one tenant database of the pool."""

    url: str
    connector: Connector

    def read(self) -> dict[str, float]:
        with self.connector.engine(self.url, must_exist=True) as engine, engine.connect() as conn:
            row = conn.execute(text(POOL_STATS_SQL)).first()
        if row is None:  # a pool with no stats yet (new): nothing says it is busy
            return {}
        return {name: float(value or 0.0) for name, value in zip(METRICS, row)}
