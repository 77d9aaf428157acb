"""Protecting a shared pool: how many tenants may run at once, as TCP does it (additive increase,
multiplicative decrease).

A tenant that hits a throttling error (Azure SQL's worker or request limit of the elastic pool) comes back
``throttled``; the limit halves. Throttles from tenants started before that cut do not cut again: they report
the old load (each tenant remembers the :attr:`Aimd.epoch` it started in). After as many successes as the
current limit, the limit grows back by one, up to the ceiling (the run's concurrency).

Pure: no clock of its own, no processes. Callers pass ``now`` (any clock's reading; ``changes`` counts
seconds from ``started``).
"""

from __future__ import annotations


class Aimd:
    """The concurrency limit of one run, between ``floor`` and ``ceiling``, and how it changed."""

    def __init__(self, ceiling: int, floor: int = 1, started: float = 0.0) -> None:
        self.ceiling, self.floor, self.started = ceiling, floor, started
        self.limit = ceiling
        self.epoch = 0  # cuts so far: a throttle cuts only if none happened since its tenant started
        self.throttled = 0  # throttles seen, whether they cut or not
        self._successes = 0  # since the last change
        self.changes: list[tuple[float, int]] = [(0.0, ceiling)]  # (seconds since started, limit from then)

    def on_throttle(self, now: float, epoch: int | None = None) -> bool:
        """A tenant started in ``epoch`` (default: the current one) was throttled; whether the limit was cut."""
        self.throttled += 1
        if (self.epoch if epoch is None else epoch) != self.epoch or self.limit <= self.floor:
            return False
        self.epoch += 1
        self._change(now, max(self.floor, self.limit // 2))
        return True

    def on_success(self, now: float) -> bool:
        """A tenant succeeded; whether the limit grew."""
        self._successes += 1
        if self._successes < self.limit or self.limit >= self.ceiling:
            return False
        self._change(now, self.limit + 1)
        return True

    def _change(self, now: float, limit: int) -> None:
        self.limit, self._successes = limit, 0
        self.changes.append((now - self.started, limit))
