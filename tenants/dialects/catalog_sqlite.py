"""SQLite's schema snapshot: one query over ``sqlite_master`` and the pragma table-valued functions.

The query (:data:`SNAPSHOT_SQL`) returns one JSON document built by ``json_group_array``/``json_object``: every
table with its columns (``pragma_table_info``), indexes and their keys (``pragma_index_list``,
``pragma_index_xinfo``) and foreign keys (``pragma_foreign_key_list``), and every view, each with its
``CREATE`` statement from ``sqlite_master``. (Each nested array is wrapped in ``json()`` so that it is embedded
as JSON, not as a string: SQLite does not carry a JSON value's subtype out of a scalar subquery.)

What the pragmas cannot tell, and how it is read here instead:

* **Check constraints**: no pragma lists them. They are parsed from the table's ``CREATE TABLE`` text (the
  catalog keeps the statement as it was written, or as ``ALTER TABLE`` rewrote it), with their names when
  ``CONSTRAINT name`` precedes them.
* **Names of unique and foreign-key constraints**: SQLite does not keep them in its catalog (a unique
  constraint's index is called ``sqlite_autoindex_<table>_<n>``, a number that depends on the order of the
  table's items; a foreign key has only a number). Names are read from the ``CREATE TABLE`` text
  (``CONSTRAINT name UNIQUE (...)``, ``CONSTRAINT name FOREIGN KEY (...)``); an unnamed one is None and is
  compared by its columns.
* **Partial indexes**: ``pragma_index_list`` says an index is partial, not its predicate: the ``WHERE`` of
  the ``CREATE INDEX`` text is.
* **Defaults** come from ``pragma_table_info`` as written in the DDL (``'EUR'``, ``CURRENT_TIMESTAMP``): SQLite
  does not evaluate or normalise them.
* **Types** are whatever the DDL declared (SQLite only derives an affinity from them): ``VARCHAR(20)`` is kept
  (canonically spelt), although SQLite never enforces the length. ``INT`` and ``INTEGER`` are one canonical
  type, yet on SQLite only ``INTEGER PRIMARY KEY`` is an alias of the rowid.
* **Nullability of a primary key**: SQLite reports an ``INTEGER PRIMARY KEY`` column as nullable (its
  ``notnull`` flag is 0; the rowid cannot be NULL anyway). It is reported as the catalog says.
* **Collations** of columns, and ``WITHOUT ROWID``/``STRICT`` tables, are not in the model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping

from sqlalchemy import text
from sqlalchemy.engine import Connection

from tenants.dialects.catalog import excluded, parenthesised, split_top_level, unquote
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

# SQLite keeps the declared type as written; the standard spellings are all it needs.
TYPE_ALIASES: Mapping[str, str] = STANDARD_TYPES

# :exclude is a JSON array of lower-case table names. `to` of a foreign key is NULL when it references the
# parent's primary key implicitly: the parent's key column of that position is looked up.
SNAPSHOT_SQL = """\
SELECT json_object(
  'tables', json((SELECT json_group_array(json_object(
    'name', m.name,
    'sql', m.sql,
    'columns', json((SELECT json_group_array(json_object(
        'cid', c.cid, 'name', c.name, 'type', c.type, 'notnull', c."notnull", 'default', c.dflt_value, 'pk', c.pk))
      FROM pragma_table_info(m.name) AS c)),
    'indexes', json((SELECT json_group_array(json_object(
        'name', il.name, 'unique', il."unique", 'origin', il.origin, 'partial', il.partial,
        'sql', (SELECT s.sql FROM sqlite_master AS s WHERE s.type = 'index' AND s.name = il.name),
        'keys', json((SELECT json_group_array(json_object(
            'seqno', x.seqno, 'cid', x.cid, 'name', x.name, 'desc', x."desc", 'key', x."key"))
          FROM pragma_index_xinfo(il.name) AS x))))
      FROM pragma_index_list(m.name) AS il)),
    'foreign_keys', json((SELECT json_group_array(json_object(
        'id', f.id, 'seq', f.seq, 'table', f."table", 'from', f."from",
        'to', COALESCE(f."to", (SELECT p.name FROM pragma_table_info(f."table") AS p WHERE p.pk = f.seq + 1)),
        'on_update', f.on_update, 'on_delete', f.on_delete))
      FROM pragma_foreign_key_list(m.name) AS f))))
    FROM sqlite_master AS m
    WHERE m.type = 'table' AND m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
      AND lower(m.name) NOT IN (SELECT value FROM json_each(:exclude)))),
  'views', json((SELECT json_group_array(json_object('name', v.name, 'sql', v.sql))
    FROM sqlite_master AS v
    WHERE v.type = 'view' AND lower(v.name) NOT IN (SELECT value FROM json_each(:exclude))))
)"""

_NAME = r'("[^"]+"|\[[^\]]+\]|`[^`]+`|\w+)'
_NAMED = re.compile(rf"^CONSTRAINT\s+{_NAME}\s+(UNIQUE|FOREIGN\s+KEY)\s*\(", re.IGNORECASE)
_CHECK = re.compile(rf"(?:CONSTRAINT\s+{_NAME}\s+)?\bCHECK\s*\(", re.IGNORECASE)
_WHERE = re.compile(r"\bWHERE\b(.*)$", re.IGNORECASE | re.DOTALL)


def read_snapshot(conn: Connection, exclude: Iterable[str] = ()) -> Snapshot:
    """The snapshot of the connection's database, with one query (see the module's docstring)."""
    document = conn.execute(text(SNAPSHOT_SQL), {"exclude": json.dumps(excluded(exclude))}).scalar_one()
    return snapshot_from_catalog(document)


def snapshot_from_catalog(document: str | Mapping) -> Snapshot:
    """The :class:`Snapshot` of :data:`SNAPSHOT_SQL`'s answer (the JSON text, or its parsed value)."""
    doc = json.loads(document) if isinstance(document, str) else document
    return Snapshot(tuple(_table(t) for t in doc["tables"]),
                    tuple(View(v["name"], canonical_sql(v["sql"]) or "") for v in doc["views"]), dialect="sqlite")


def _table(t: Mapping) -> Table:
    named, checks = _parse_create(t["sql"] or "")
    columns = sorted(t["columns"], key=lambda c: c["cid"])
    names = {c["cid"]: c["name"] for c in columns}
    indexes, uniques = [], []
    for index in t["indexes"]:
        keys = sorted((k for k in index["keys"] if k["key"]), key=lambda k: k["seqno"])
        cols = tuple(_key_name(k, names) for k in keys)
        if index["origin"] == "u":
            uniques.append(Unique(named.get(("UNIQUE", _lower(cols))), cols))
        elif index["origin"] == "c":
            where = _WHERE.search(index["sql"] or "") if index["partial"] else None
            indexes.append(Index(index["name"], cols, bool(index["unique"]),
                                 canonical_sql(where.group(1)) if where else None))
    return Table(
        name=t["name"],
        columns=tuple(Column(c["name"], canonical_type(c["type"] or "", TYPE_ALIASES), not c["notnull"],
                             canonical_sql(c["default"])) for c in columns),
        primary_key=tuple(c["name"] for c in sorted((c for c in columns if c["pk"]), key=lambda c: c["pk"])),
        uniques=tuple(uniques), foreign_keys=_foreign_keys(t["foreign_keys"], named), indexes=tuple(indexes),
        checks=tuple(checks),
    )


def _key_name(key: Mapping, names: Mapping[int, str]) -> str:
    # cid -2: an expression (pragma gives no text for it), -1: the rowid.
    name = key["name"] or names.get(key["cid"]) or ("(expression)" if key["cid"] == -2 else "rowid")
    return f"{name} DESC" if key["desc"] else name


def _foreign_keys(rows, named: Mapping) -> tuple[ForeignKey, ...]:
    by_id: dict[int, list[Mapping]] = {}
    for row in rows:
        by_id.setdefault(row["id"], []).append(row)
    keys = []
    for parts in by_id.values():
        parts.sort(key=lambda r: r["seq"])
        cols = tuple(r["from"] for r in parts)
        first = parts[0]
        keys.append(ForeignKey(named.get(("FOREIGN KEY", _lower(cols))), cols, first["table"],
                               tuple(r["to"] for r in parts), first["on_delete"].upper(), first["on_update"].upper()))
    return tuple(keys)


def _parse_create(sql: str) -> tuple[dict[tuple[str, tuple[str, ...]], str], list[Check]]:
    """The names of the unique and foreign-key constraints (by kind and columns) and the check constraints,
    from a ``CREATE TABLE`` statement: the part of a SQLite schema no pragma reports."""
    body = parenthesised(sql, 0) or ""
    named: dict[tuple[str, tuple[str, ...]], str] = {}
    checks: list[Check] = []
    for item in split_top_level(body):
        match = _NAMED.match(item)
        if match:
            kind = " ".join(match.group(2).upper().split())
            cols = split_top_level(parenthesised(item, match.end() - 1) or "")
            named[kind, _lower(tuple(unquote(c) for c in cols))] = unquote(match.group(1))
        for check in _CHECK.finditer(item):
            condition = parenthesised(item, check.end() - 1)
            if condition is not None:
                checks.append(Check(unquote(check.group(1)) if check.group(1) else None,
                                    canonical_sql(condition) or ""))
    return named, checks


def _lower(cols: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(c.lower() for c in cols)
