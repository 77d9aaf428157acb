"""Rows for the reruns to work on, and what a table holds, compared.

A rerun that changes data (an ``INSERT`` that adds its row again, an ``UPDATE`` that doubles a price) shows only
on a table that has rows, so before each revision runs, every empty table gets a few (:func:`seed`), their
values generated from the column types of the snapshot: distinct per row (unique constraints hold), NULL in
the last row where a column allows it, the referenced rows' keys in a foreign key column, nothing in a column
with a default (a serial key, a ``server_default``). A table that refuses them (a check constraint the
generator cannot guess) stays empty and is named in the report's notes.

:func:`contents` reads each table once: its row count and a checksum of its rows (sorted, so row order does
not matter).
"""

from __future__ import annotations

import datetime
import hashlib
import uuid
from collections.abc import Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from tenants.db import describe_error
from tenants.snapshot import Column, Snapshot, Table

__all__ = ["SEED_ROWS", "changed_tables", "contents", "seed"]

SEED_ROWS = 3
_EPOCH = datetime.datetime(2026, 1, 1, 12, 0)


def seed(conn: Connection, snapshot: Snapshot, rows: int = SEED_ROWS) -> list[str]:
    """Insert ``rows`` rows into every empty table of ``snapshot``, referenced tables first; one line per
    table that could not be seeded."""
    notes = []
    for table in _referenced_first(snapshot.tables):
        try:
            if conn.execute(sa.select(sa.func.count()).select_from(sa.table(table.name))).scalar():
                conn.rollback()
                continue
            values = _rows(conn, table, rows)
            if values:
                columns = sa.table(table.name, *(sa.column(name) for name in values[0]))
                conn.execute(sa.insert(columns), values)
            conn.commit()
        except Exception as err:  # noqa: BLE001 - best effort: the table stays empty, the report says so
            conn.rollback()
            notes.append(f"could not seed table {table.name}: {describe_error(err)}")
    return notes


def contents(conn: Connection, snapshot: Snapshot) -> dict[str, tuple[int, str]]:
    """Each table's (row count, checksum of its sorted rows)."""
    found = {}
    try:
        for table in snapshot.tables:
            rows = conn.execute(sa.select(sa.text("*")).select_from(sa.table(table.name))).all()
            lines = sorted(repr(tuple(str(v) if v is not None else None for v in row)) for row in rows)
            found[table.name] = (len(rows), hashlib.sha256("\n".join(lines).encode()).hexdigest()[:12])
    finally:
        conn.rollback()
    return found


def changed_tables(before: Mapping[str, tuple[int, str]], after: Mapping[str, tuple[int, str]]) -> list[str]:
    """One line per table present on both sides whose rows differ."""
    lines = []
    for name in sorted(before.keys() & after.keys()):
        (n0, sum0), (n1, sum1) = before[name], after[name]
        if n0 != n1:
            lines.append(f"table {name}: {n0} rows before, {n1} after")
        elif sum0 != sum1:
            lines.append(f"table {name}: {n0} rows before and after, but their values changed")
    return lines


def _referenced_first(tables: tuple[Table, ...]) -> list[Table]:
    by_name = {t.name.lower(): t for t in tables}
    ordered: list[Table] = []
    seen: set[str] = set()

    def visit(table: Table) -> None:
        if table.name.lower() in seen:
            return
        seen.add(table.name.lower())
        for fk in table.foreign_keys:
            parent = by_name.get(fk.ref_table.lower())
            if parent is not None:
                visit(parent)
        ordered.append(table)

    for table in tables:
        visit(table)
    return ordered


def _rows(conn: Connection, table: Table, rows: int) -> list[dict]:
    keys = {}
    for fk in table.foreign_keys:
        if len(fk.columns) == 1:
            found = conn.execute(sa.select(sa.column(fk.ref_columns[0])).select_from(sa.table(fk.ref_table))
                                 .limit(rows)).scalars().all()
            keys[fk.columns[0]] = found
    generated = []
    for i in range(rows):
        row = {}
        for column in table.columns:
            if column.default is not None:
                continue  # a serial key, a server default: the database fills it in
            if column.name in keys:
                refs = keys[column.name]
                row[column.name] = refs[i % len(refs)] if refs else None
            elif column.nullable and i == rows - 1:
                row[column.name] = None
            else:
                row[column.name] = value(column, i)
        generated.append(row)
    return generated if generated and generated[0] else []


def value(column: Column, i: int) -> object:
    """A value of the column's type, distinct for each ``i``."""
    kind = column.type.upper().split("(")[0].strip()
    size = _size(column.type)
    makers = [
        (("UUID", "UNIQUEIDENTIFIER"), lambda: str(uuid.UUID(int=i + 1))),
        (("INT", "SERIAL"), lambda: i + 1),
        (("NUMERIC", "DECIMAL", "REAL", "DOUBLE", "FLOAT", "MONEY"), lambda: i + 1),
        (("BOOL", "BIT"), lambda: i % 2 == 0),
        (("TIMESTAMP", "DATETIME"), lambda: _EPOCH + datetime.timedelta(days=i)),
        (("DATE",), lambda: (_EPOCH + datetime.timedelta(days=i)).date()),
        (("TIME",), lambda: datetime.time(12, i % 60)),
        (("JSON",), lambda: f'{{"seed": {i}}}'),
        (("BYTEA", "BLOB", "BINARY"), lambda: bytes([i + 1])),
    ]
    for words, make in makers:
        if any(word in kind for word in words):
            return make()
    text = f"seed {i + 1}"
    if size is not None and size < len(text):
        return chr(ord("a") + i % 26) * size
    return text


def _size(spelling: str) -> int | None:
    if "(" not in spelling:
        return None
    first = spelling.split("(", 1)[1].split(")")[0].split(",")[0].strip()
    return int(first) if first.isdigit() else None
