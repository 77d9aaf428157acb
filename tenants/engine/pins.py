"""Pins: keep one tenant out of fleet upgrades (a customer-specific incident) until it is released.

The pin lives in the tenant database itself (a one-row table, ``tenants_pin``), so every runner, every shard
and every CI job sees it without sharing anything else. A pinned tenant that needs work is reported
``pinned`` with its reason by ``upgrade`` (checked under the tenant's lock, so the no-op path of tenants at
head stays one query), and ``status``, ``plan`` and ``verify`` show it. ``downgrade`` and ``stamp`` still act
on it: they name one tenant on purpose.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

TABLE = "tenants_pin"


@functools.lru_cache(maxsize=8)  # one Table per name: its statements compile once per process
def pin_table(name: str = TABLE) -> sa.Table:
    return sa.Table(
        name, sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("reason", sa.String(1000), nullable=False),
        sa.Column("pinned_by", sa.String(200), nullable=True),
        sa.Column("pinned_at", sa.DateTime, nullable=False),
    )


@dataclass(frozen=True)
class Pin:
    reason: str
    pinned_by: str | None
    pinned_at: datetime

    def describe(self) -> str:
        return f"pinned by {self.pinned_by or '?'} on {self.pinned_at:%Y-%m-%d %H:%M} UTC: {self.reason}"

    @classmethod
    def of_row(cls, row: tuple | None) -> Pin | None:
        """The pin of a row (reason, pinned_by, pinned_at) as :func:`tenants.db.read_state` reads it; None for
        none. SQLite hands the time back as text."""
        if row is None:
            return None
        reason, pinned_by, pinned_at = row
        if isinstance(pinned_at, str):
            pinned_at = datetime.fromisoformat(pinned_at)
        return cls(reason, pinned_by, pinned_at)


def read_pin(conn: sa.Connection, name: str = TABLE) -> Pin | None:
    """The tenant's pin, with one query; None when there is none (or no pin table yet). Ends the
    transaction the query opened, like :func:`tenants.db.read_version`."""
    table = pin_table(name)
    try:
        row = conn.execute(sa.select(table.c.reason, table.c.pinned_by, table.c.pinned_at)).first()
    except DBAPIError as err:
        conn.rollback()
        from tenants.db import is_missing_table

        if is_missing_table(err):
            return None
        raise
    conn.rollback()
    return Pin(*row) if row else None


def set_pin(engine: sa.Engine, reason: str, actor: str | None, name: str = TABLE) -> None:
    table = pin_table(name)
    with engine.begin() as conn:
        table.create(conn, checkfirst=True)
        conn.execute(table.delete())
        conn.execute(table.insert().values(id=1, reason=reason, pinned_by=actor,
                                           pinned_at=datetime.now(UTC).replace(tzinfo=None)))


def clear_pin(engine: sa.Engine, name: str = TABLE) -> bool:
    """Remove the pin; True if there was one."""
    table = pin_table(name)
    with engine.begin() as conn:
        if not sa.inspect(conn).has_table(name):
            return False
        return conn.execute(table.delete()).rowcount > 0
