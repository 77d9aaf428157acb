"""What the dialects' schema snapshots share: small SQL-text helpers, and the inspector fallback of a backend
with no catalog query of its own (:meth:`tenants.dialects.Dialect.snapshot`).

Each dialect reads its snapshot (:class:`tenants.snapshot.Snapshot`) with ONE catalog query that returns the
whole schema as one JSON document (``catalog_sqlite``, ``catalog_postgresql``, ``catalog_mssql``). Why one: a
snapshot is taken of every tenant of a fleet, and SQLAlchemy's inspector costs a round trip per table per
kind of object (columns, indexes, foreign keys, ...): a few hundred round trips per tenant on a real schema,
over a WAN to Azure, times thousands of tenants. One query is one round trip whatever the schema's size, and
the server builds the document from its catalog in one consistent read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from tenants.snapshot import (
    STANDARD_TYPES,
    Check,
    Column,
    ForeignKey,
    Index,
    Snapshot,
    Table,
    Unique,
    View,
    canonical_sql,
    canonical_type,
)


def strip_parens(text: str | None) -> str | None:
    """``text`` without the parentheses wrapping all of it, however many pairs: SQL Server prints a default
    ``'EUR'`` as ``('EUR')`` and ``0`` as ``((0))``; ``(a) + (b)`` is left as it is."""
    if text is None:
        return None
    text = text.strip()
    while text.startswith("(") and _closing(text, 0) == len(text) - 1:
        text = text[1:-1].strip()
    return text


def _closing(text: str, start: int) -> int:
    """The index of the parenthesis closing the one at ``start`` (quotes respected); -1 if it never closes."""
    depth, quote = 0, ""
    for i in range(start, len(text)):
        ch = text[i]
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"`[":
            quote = "]" if ch == "[" else ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i
    return -1


def split_top_level(text: str) -> list[str]:
    """``text`` split at the commas outside parentheses and quotes (the items of a CREATE TABLE body)."""
    items, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"`[":
            quote = "]" if ch == "[" else ch
        elif ch in "()":
            depth += 1 if ch == "(" else -1
        elif ch == "," and depth == 0:
            items.append(text[start:i].strip())
            start = i + 1
    items.append(text[start:].strip())
    return [item for item in items if item]


def parenthesised(text: str, start: int) -> str | None:
    """The text inside the parentheses opening at or after ``start``; None when there are none."""
    opening = text.find("(", start)
    if opening < 0:
        return None
    closing = _closing(text, opening)
    return text[opening + 1:closing].strip() if closing > 0 else None


def unquote(name: str) -> str:
    """An identifier without its quotes ("x", [x], `x`)."""
    name = name.strip()
    if len(name) >= 2 and name[0] + name[-1] in ('""', "[]", "``"):
        return name[1:-1]
    return name


def excluded(exclude: Iterable[str]) -> list[str]:
    """The excluded table names, lower case: every catalog query compares them case-insensitively (like
    :meth:`tenants.dialects.Dialect.tables`)."""
    return sorted({name.lower() for name in exclude})


# --- the fallback: SQLAlchemy's inspector ------------------------------------------------------------------

def inspect_snapshot(conn: Connection, exclude: Iterable[str], aliases: Mapping[str, str] = STANDARD_TYPES
                     ) -> Snapshot:
    """The snapshot of a backend the tool has no catalog query for, through SQLAlchemy's inspector: several
    round trips per table, but correct wherever SQLAlchemy can reflect."""
    inspector = inspect(conn)
    skip = set(excluded(exclude))
    tables = [_inspect_table(inspector, conn, name, aliases)
              for name in inspector.get_table_names() if name.lower() not in skip]
    views = [View(name, canonical_sql(inspector.get_view_definition(name)) or "")
             for name in inspector.get_view_names() if name.lower() not in skip]
    return Snapshot(tuple(tables), tuple(views), dialect=conn.dialect.name)


def _inspect_table(inspector, conn: Connection, name: str, aliases: Mapping[str, str]) -> Table:
    columns = tuple(
        Column(c["name"], canonical_type(_type_text(c["type"], conn), aliases), bool(c["nullable"]),
               canonical_sql(c.get("default")))
        for c in inspector.get_columns(name))
    fks = tuple(
        ForeignKey(f.get("name"), tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]),
                   (f.get("options", {}).get("ondelete") or "NO ACTION").upper(),
                   (f.get("options", {}).get("onupdate") or "NO ACTION").upper())
        for f in inspector.get_foreign_keys(name))
    indexes = tuple(Index(i["name"], tuple(c or "(expression)" for c in i["column_names"]), bool(i["unique"]))
                    for i in inspector.get_indexes(name) if not i.get("duplicates_constraint"))
    try:
        checks = tuple(Check(c.get("name"), canonical_sql(c["sqltext"]) or "")
                       for c in inspector.get_check_constraints(name))
    except NotImplementedError:
        checks = ()
    return Table(
        name, columns, tuple(inspector.get_pk_constraint(name).get("constrained_columns") or ()),
        tuple(Unique(u.get("name"), tuple(u["column_names"])) for u in inspector.get_unique_constraints(name)),
        fks, indexes, checks,
    )


def _type_text(type_, conn: Connection) -> str:
    try:
        return str(type_.compile(dialect=conn.dialect))
    except Exception:  # a type the dialect cannot render (NullType): its Python name is all we know
        return type(type_).__name__.upper()
