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
    """Lets a tenant start while every metric of the last reading is at or below ``limit`` percent.

    One reading admits many starts only while the pool is far from the limit (at most half of it); closer,
    it admits one start per reading, so a stale reading (the DMV itself is 15 s behind) cannot let a burst
    of tenants in at 79 %. A read that fails because the pool is throttling keeps the gate shut; any other
    failed read (no VIEW DATABASE STATE, say) opens it, since the probe is a courtesy on top of AIMD, and is
    recorded in ``errors`` for the report.
    """

    source: PressureSource
    limit: float
    interval: float = 5.0
    clock: Callable[[], float] = time.monotonic
    reading: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    _read_at: float | None = None
    _admitted: int = 0  # starts admitted on the current reading
    _shut: bool = False  # the last read was refused by a saturated pool

    def _refresh(self) -> None:
        now = self.clock()
        if self._read_at is not None and now - self._read_at < self.interval:
            return
        self._read_at, self._admitted, self._shut = now, 0, False
        try:
            self.reading = dict(self.source.read())
        except Exception as err:  # noqa: BLE001 - a probe that cannot read must not stop the rollout
            from tenants.db import describe_error, is_throttling

            self.reading, self._shut = {}, is_throttling(err)
            if len(self.errors) < 20:
                self.errors.append(describe_error(err))

    def is_open(self) -> bool:
        """Would a tenant be let in now? (Reads the source when the last reading is older than interval.)"""
        self._refresh()
        if self._shut or not all(value <= self.limit for value in self.reading.values()):
            return False
        calm = all(value <= self.limit / 2 for value in self.reading.values())
        return calm or self._admitted == 0

    def admit(self) -> bool:
        """Take a start if the gate is open."""
        if self.is_open():
            self._admitted += 1
            return True
        return False

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
        return {name: float(value or 0.0) for name, value in zip(METRICS, row, strict=True)}
