"""SQL Server's (Azure SQL's) schema snapshot: one query over ``sys.*`` for the caller's default schema
(``SCHEMA_ID()``), returned as one JSON document by nested ``FOR JSON PATH``.

The outer ``SELECT (SELECT ... FOR JSON PATH, WITHOUT_ARRAY_WRAPPER) AS snapshot`` is deliberate: a top-level
``FOR JSON`` result is streamed to the client in rows of about 2,000 characters (ODBC drivers hand them over
as separate rows), while a ``FOR JSON`` subquery is one ``nvarchar(max)`` value. The nested ``FOR JSON``
subqueries are embedded as JSON, not as escaped strings. A ``FOR JSON`` subquery with no rows is NULL, and
its key is then absent: every list below may be missing.

What the catalog tells, and what the model keeps:

* types from ``sys.types`` plus length, precision and scale (``max_length`` is in bytes: ``nvarchar(20)``
  has 40; ``-1`` is ``MAX``); an alias type is named by its own name;
* defaults from ``sys.default_constraints`` without the parentheses the server wraps them in (``('EUR')``,
  ``((0))``, ``(getdate())``), the constraint's name dropped (usually system-made, ``DF__invoices__curre__...``);
  an identity column's default is ``IDENTITY``;
* names of primary keys, unique, foreign-key and check constraints the server made up
  (``is_system_named``: ``PK__users__3213E83F0AD2A005``) are None: they differ in every database;
* filtered indexes' predicates (``filter_definition``) and check conditions keep the server's bracketed
  text (``([amount]>=(0))`` becomes ``[amount]>=(0)``); a view's definition is its whole ``CREATE VIEW``
  text from ``sys.sql_modules``, as written;
* not in the model: columnstore and XML/spatial specifics, computed columns' expressions (a computed column
  is reported with its type), collations, triggers, sequences, synonyms.

It cannot run in this project's test suite: the SQL is checked by sqlglot's T-SQL parser and the conversion
against a recorded answer (``tests/data/mssql_catalog.json``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from sqlalchemy import text
from sqlalchemy.engine import Connection

from tenants.dialects.catalog import excluded, strip_parens
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

# SQL Server's own spellings. BIT stays BIT (SQLAlchemy's Boolean there), DATETIME stays DATETIME.
# sys.types calls rowversion "timestamp", which is no date: it is ROWVERSION here.
TYPE_ALIASES: Mapping[str, str] = {**STANDARD_TYPES, "TIMESTAMP": "ROWVERSION"}
_CHARACTERS = {"char", "varchar", "binary", "varbinary"}
_WIDE = {"nchar", "nvarchar"}  # max_length is in bytes, two per character
_SCALED = {"datetime2", "datetimeoffset", "time"}
_EXACT = {"decimal", "numeric"}

# :exclude is a JSON array of lower-case table names (OPENJSON: compatibility level 130, any Azure SQL).
SNAPSHOT_SQL = """\
SELECT (
  SELECT
    SCHEMA_NAME() AS [schema],
    (SELECT t.name AS name,
       (SELECT c.column_id AS column_id, c.name AS name, ty.name AS type_name, c.max_length AS max_length,
               c.precision AS precision, c.scale AS scale, c.is_nullable AS is_nullable,
               c.is_identity AS is_identity, dc.definition AS default_definition
          FROM sys.columns AS c
          JOIN sys.types AS ty ON ty.user_type_id = c.user_type_id
          LEFT JOIN sys.default_constraints AS dc ON dc.object_id = c.default_object_id
          WHERE c.object_id = t.object_id
          ORDER BY c.column_id
          FOR JSON PATH) AS columns,
       (SELECT i.name AS name, i.is_unique AS is_unique, i.is_primary_key AS is_primary_key,
               i.is_unique_constraint AS is_unique_constraint, kc.is_system_named AS is_system_named,
               i.filter_definition AS filter_definition,
               (SELECT COL_NAME(ic.object_id, ic.column_id) AS name, ic.key_ordinal AS key_ordinal,
                       ic.is_descending_key AS is_descending_key, ic.is_included_column AS is_included_column
                  FROM sys.index_columns AS ic
                  WHERE ic.object_id = i.object_id AND ic.index_id = i.index_id
                  ORDER BY ic.key_ordinal, ic.index_column_id
                  FOR JSON PATH) AS columns
          FROM sys.indexes AS i
          LEFT JOIN sys.key_constraints AS kc ON kc.parent_object_id = i.object_id AND kc.unique_index_id = i.index_id
          WHERE i.object_id = t.object_id AND i.type > 0 AND i.is_hypothetical = 0
          FOR JSON PATH) AS indexes,
       (SELECT fk.name AS name, fk.is_system_named AS is_system_named,
               OBJECT_NAME(fk.referenced_object_id) AS ref_table,
               OBJECT_SCHEMA_NAME(fk.referenced_object_id) AS ref_schema,
               fk.delete_referential_action_desc AS on_delete, fk.update_referential_action_desc AS on_update,
               (SELECT COL_NAME(fc.parent_object_id, fc.parent_column_id) AS name,
                       COL_NAME(fc.referenced_object_id, fc.referenced_column_id) AS ref_name
                  FROM sys.foreign_key_columns AS fc
                  WHERE fc.constraint_object_id = fk.object_id
                  ORDER BY fc.constraint_column_id
                  FOR JSON PATH) AS columns
          FROM sys.foreign_keys AS fk
          WHERE fk.parent_object_id = t.object_id
          FOR JSON PATH) AS foreign_keys,
       (SELECT cc.name AS name, cc.is_system_named AS is_system_named, cc.definition AS definition
          FROM sys.check_constraints AS cc
          WHERE cc.parent_object_id = t.object_id
          FOR JSON PATH) AS checks
      FROM sys.tables AS t
      WHERE t.schema_id = SCHEMA_ID() AND t.is_ms_shipped = 0
        AND LOWER(t.name) NOT IN (SELECT LOWER(j.value) FROM OPENJSON(:exclude) AS j)
      ORDER BY t.name
      FOR JSON PATH) AS tables,
    (SELECT v.name AS name, m.definition AS definition
      FROM sys.views AS v
      JOIN sys.sql_modules AS m ON m.object_id = v.object_id
      WHERE v.schema_id = SCHEMA_ID() AND v.is_ms_shipped = 0
        AND LOWER(v.name) NOT IN (SELECT LOWER(j.value) FROM OPENJSON(:exclude) AS j)
      ORDER BY v.name
      FOR JSON PATH) AS views
  FOR JSON PATH, WITHOUT_ARRAY_WRAPPER
) AS snapshot"""


def type_spelling(c: Mapping) -> str:
    """A column's type as DDL spells it, from ``sys.types``' name and the column's length, precision, scale."""
    name, length = c["type_name"], c.get("max_length")
    if name in _CHARACTERS:
        return f"{name}({'max' if length == -1 else length})"
    if name in _WIDE:
        return f"{name}({'max' if length == -1 else length // 2})"
    if name in _EXACT:
        return f"{name}({c['precision']},{c['scale']})"
    if name in _SCALED:
        return f"{name}({c['scale']})"
    if name == "float" and c.get("precision") not in (None, 53):
        return f"float({c['precision']})"
    return name


def read_snapshot(conn: Connection, exclude: Iterable[str] = ()) -> Snapshot:
    """The snapshot of the connection's database, with one query (see the module's docstring)."""
    rows = conn.execute(text(SNAPSHOT_SQL), {"exclude": json.dumps(excluded(exclude))}).scalars().all()
    return snapshot_from_catalog("".join(row for row in rows if row) or None)


def snapshot_from_catalog(document: str | Mapping | None) -> Snapshot:
    """The :class:`Snapshot` of :data:`SNAPSHOT_SQL`'s answer (the JSON text, or its parsed value)."""
    doc = json.loads(document) if isinstance(document, str) else (document or {})
    return Snapshot(tuple(_table(t, doc.get("schema")) for t in doc.get("tables", ())),
                    tuple(View(v["name"], canonical_sql(v["definition"]) or "") for v in doc.get("views", ())),
                    dialect="mssql")


def _table(t: Mapping, schema: str | None) -> Table:
    indexes = t.get("indexes", ())
    primary = next((i for i in indexes if i.get("is_primary_key")), None)
    return Table(
        name=t["name"],
        columns=tuple(_column(c) for c in sorted(t.get("columns", ()), key=lambda c: c["column_id"])),
        primary_key=_keys(primary)[0] if primary else (),
        uniques=tuple(Unique(_name(i), _keys(i)[0]) for i in indexes if i.get("is_unique_constraint")),
        foreign_keys=tuple(_foreign_key(f, schema) for f in t.get("foreign_keys", ())),
        indexes=tuple(_index(i) for i in indexes if not (i.get("is_primary_key") or i.get("is_unique_constraint"))),
        checks=tuple(Check(_name(k), canonical_sql(strip_parens(k["definition"])) or "") for k in t.get("checks", ())),
    )


def _column(c: Mapping) -> Column:
    default = "IDENTITY" if c.get("is_identity") else canonical_sql(strip_parens(c.get("default_definition")))
    return Column(c["name"], canonical_type(type_spelling(c), TYPE_ALIASES), bool(c["is_nullable"]), default)


def _keys(index: Mapping) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """An index's key columns in order ("name DESC" when descending) and its included columns."""
    columns = index.get("columns", ())
    keys = sorted((c for c in columns if not c.get("is_included_column")), key=lambda c: c["key_ordinal"])
    return (tuple(f"{c['name']} DESC" if c.get("is_descending_key") else c["name"] for c in keys),
            tuple(c["name"] for c in columns if c.get("is_included_column")))


def _index(i: Mapping) -> Index:
    keys, included = _keys(i)
    return Index(i["name"], keys, bool(i.get("is_unique")), canonical_sql(strip_parens(i.get("filter_definition"))),
                 included)


def _foreign_key(f: Mapping, schema: str | None) -> ForeignKey:
    """A foreign key; a referenced table of another schema than the snapshot's is named ``schema.table``."""
    columns = f.get("columns", ())
    table = f["ref_table"] if f.get("ref_schema") in (None, schema) else f"{f['ref_schema']}.{f['ref_table']}"
    return ForeignKey(_name(f), tuple(c["name"] for c in columns), table, tuple(c["ref_name"] for c in columns),
                      f["on_delete"].replace("_", " "), f["on_update"].replace("_", " "))


def _name(thing: Mapping) -> str | None:
    return None if thing.get("is_system_named") else thing["name"]
