"""The pressure probe: before starting a tenant, wait while the elastic pool is busier than a limit.

AIMD (see :mod:`tenants.engine.fanout`) reacts once the pool has refused work; this reacts before. Every tenant
database of a pool can read the pool's live load from ``sys.dm_elastic_pool_resource_stats`` (one row per
15 seconds, about 40 minutes of history), given VIEW SERVER STATE (``##MS_ServerStateReader##``). The
fan-out asks a :class:`PressureGate` before it starts each tenant; the gate reads its :class:`PressureSource`
at most every ``interval`` seconds and stays shut while any figure (CPU, data IO, log write, workers) is
above ``limit`` percent.

One gate serves a whole run, every wave of it (:meth:`tenants.api.PreparedRun.run` makes it and closes it
at the end), and the real source, :class:`ElasticPoolPressure`, reads on one connection for the whole run.
The source is an interface so tests can drive the gate with made-up readings.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from tenants.db import Connector, describe_error, is_throttling, permission_denied

# The newest row of the pool's resource stats, readable from any database in the pool.
POOL_STATS_SQL = (
    "SELECT TOP 1 avg_cpu_percent, avg_data_io_percent, avg_log_write_percent, max_worker_percent "
    "FROM sys.dm_elastic_pool_resource_stats ORDER BY end_time DESC"
)
METRICS = ("cpu", "data_io", "log_write", "workers")

# What the run says, once, when the deploy identity may not read the pool's load (tenants.dialects.mssql classifies).
DENIED = ("cannot read sys.dm_elastic_pool_resource_stats: the deploy identity lacks VIEW SERVER STATE "
          "(SQL Server error {number}; add its login to ##MS_ServerStateReader##, see docs/github-actions.md); "
          "the run goes on without the pressure probe")
OPENED = "cannot read the pool's load, so starts went ahead: {error}"
REFUSED = "the pool refused the probe's read (throttled), so starts waited: {error}"
MORE = "other errors reading the pool's load (not listed)"
DISTINCT = 20  # error lines a gate keeps apart; more are counted under MORE


class PressureSource(Protocol):
    def read(self) -> dict[str, float]:
        """The pool's current load: metric name -> percent of its limit."""
        ...


@dataclass
class PressureGate:
    """Lets a tenant start while every metric of the last reading is at or below ``limit`` percent.

    One reading admits many starts only while the pool is far from the limit (at most half of it); closer,
    it admits one start per reading, so a stale reading (the DMV itself is 15 s behind) cannot let a burst
    of tenants in at 79 %.

    A read that fails because the pool is throttling keeps the gate shut. A read refused for lack of
    permission turns the probe off for the rest of the run (it would be refused every time): the gate says
    so once, to ``on_warning`` and in ``errors``, and lets every start in from then on. Any other failed
    read opens the gate, since the probe is a courtesy on top of AIMD. Every failure is counted in
    ``errors`` (each line once, with how many times), which the fan-out takes into the report after each
    wave (:meth:`take_errors`).
    """

    source: PressureSource
    limit: float
    interval: float = 5.0
    clock: Callable[[], float] = time.monotonic
    on_warning: Callable[[str], None] | None = None  # told once, when the probe turns itself off
    reading: dict[str, float] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # failed reads not yet taken: line -> times
    off: str | None = None  # why the probe is off for the rest of the run
    _read_at: float | None = None
    _admitted: int = 0  # starts admitted on the current reading
    _shut: bool = False  # the last read was refused by a saturated pool

    def _refresh(self) -> None:
        now = self.clock()
        if self.off is not None or (self._read_at is not None and now - self._read_at < self.interval):
            return
        self._read_at, self._admitted, self._shut = now, 0, False
        try:
            self.reading = dict(self.source.read())
        except Exception as err:  # noqa: BLE001 - a probe that cannot read must not stop the rollout
            self.reading = {}
            number = permission_denied(err)
            if number is not None:
                self._turn_off(DENIED.format(number=number))
                return
            self._shut = is_throttling(err)
            self._count((REFUSED if self._shut else OPENED).format(error=describe_error(err)))

    def _count(self, line: str) -> None:
        if line not in self.errors and len(self.errors) >= DISTINCT:
            line = MORE
        self.errors[line] = self.errors.get(line, 0) + 1

    def _turn_off(self, why: str) -> None:
        self.off = why
        self._count(why)
        if self.on_warning is not None:
            self.on_warning(why)
        self.close()  # no more reads: let the login go now

    def is_open(self) -> bool:
        """Would a tenant be let in now? (Reads the source when the last reading is older than interval.)"""
        self._refresh()
        if self.off is not None:
            return True
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

    def take_errors(self) -> tuple[tuple[str, int], ...]:
        """The failed reads since the last take, (line, times) each, for a report; the count starts again."""
        taken, self.errors = tuple(self.errors.items()), {}
        return taken

    def close(self) -> None:
        """The run is over: let the source close its connection (if it has one)."""
        close = getattr(self.source, "close", None)
        if close is not None:
            close()


@dataclass
class ElasticPoolPressure:
    """Reads ``sys.dm_elastic_pool_resource_stats`` through one tenant database of the pool.

    On one engine and one connection, kept from the first reading until :meth:`close`: a reading comes every
    few seconds, and a login for each (with Entra, a token on each) would cost the pool more than the reading
    tells. The connection is in autocommit, so no transaction stays open between readings. A read that fails
    drops the connection (the failure may be the connection's): the next read logs in again.
    """

    url: str
    connector: Connector  # this source's own: close() disposes of it
    sql: str = POOL_STATS_SQL
    _engines: contextlib.ExitStack | None = field(default=None, init=False, repr=False)
    _engine: Engine | None = field(default=None, init=False, repr=False)
    _conn: Connection | None = field(default=None, init=False, repr=False)

    def read(self) -> dict[str, float]:
        try:
            row = self._connection().execute(text(self.sql)).first()
        except Exception:
            self._drop()
            raise
        if row is None:  # a pool with no stats yet (new): nothing says it is busy
            return {}
        return {name: float(value or 0.0) for name, value in zip(METRICS, row, strict=True)}

    def _connection(self) -> Connection:
        if self._engine is None:
            self._engines = contextlib.ExitStack()
            self._engine = self._engines.enter_context(self.connector.engine(self.url, must_exist=True))
        if self._conn is None:
            self._conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        return self._conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # it may be broken already: that may be why it is dropped
                conn.invalidate()
            with contextlib.suppress(Exception):
                conn.close()

    def close(self) -> None:
        """Close the connection and dispose of the engine; a later read would log in again."""
        self._drop()
        engines, self._engines, self._engine = self._engines, None, None
        if engines is not None:
            engines.close()
        self.connector.dispose()
