"""PostgreSQL's schema snapshot: one query over ``pg_catalog`` for ``current_schema()``, one JSON document.

The server prints every piece of SQL itself, so two tenants print the same schema the same way: types by
``format_type`` (``character varying(20)``, canonically ``VARCHAR(20)``), defaults and index predicates by
``pg_get_expr``, index keys by ``pg_get_indexdef`` (a column name, or an expression's text), check constraints
by ``pg_get_constraintdef``, views by ``pg_get_viewdef``. Indexes that back a constraint (primary key,
unique, exclusion) are that constraint, not indexes of their own.

Limits: partitions are left out (their parent is the table); exclusion constraints, triggers, sequences
(other than through a column's ``nextval(...)`` default), column collations, comments, privileges and row
security are not in the model. A foreign key to a table of another schema names it ``schema.table``. An
identity column's default is ``IDENTITY ALWAYS`` or ``IDENTITY BY DEFAULT``; a generated column's is
``GENERATED (expression) STORED``.
"""

from __future__ import annotations

import functools
import json
import re
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

# format_type's spellings are SQL-standard ones (integer, character varying, timestamp without time zone);
# the standard table covers them. Its own: "char" (quoted) is the one-byte internal type, not CHAR(1).
TYPE_ALIASES: Mapping[str, str] = {**STANDARD_TYPES, '"CHAR"': '"CHAR"'}

# pg_constraint's referential action codes.
ACTIONS = {"a": "NO ACTION", "r": "RESTRICT", "c": "CASCADE", "n": "SET NULL", "d": "SET DEFAULT"}
_IDENTITY = {"a": "IDENTITY ALWAYS", "d": "IDENTITY BY DEFAULT"}

# :exclude is an array of lower-case table names. Relations: ordinary, partitioned and foreign tables; views
# and materialized views. indoption bit 0 is DESC; int2vector subscripts start at 0.
SNAPSHOT_SQL = """\
WITH rel AS (
  SELECT c.oid, c.relname, c.relkind
  FROM pg_catalog.pg_class AS c
  WHERE c.relnamespace = (SELECT n.oid FROM pg_catalog.pg_namespace AS n WHERE n.nspname = current_schema())
    AND c.relkind IN ('r', 'p', 'f', 'v', 'm') AND NOT c.relispartition
    AND lower(c.relname) <> ALL (CAST(:exclude AS text[]))
)
SELECT json_build_object(
  'tables', COALESCE((SELECT json_agg(json_build_object(
    'name', r.relname,
    'columns', (SELECT json_agg(json_build_object(
        'name', a.attname, 'type', pg_catalog.format_type(a.atttypid, a.atttypmod), 'notnull', a.attnotnull,
        'default', pg_catalog.pg_get_expr(d.adbin, d.adrelid), 'identity', a.attidentity,
        'generated', a.attgenerated) ORDER BY a.attnum)
      FROM pg_catalog.pg_attribute AS a
      LEFT JOIN pg_catalog.pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
      WHERE a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped),
    'constraints', (SELECT json_agg(json_build_object(
        'name', k.conname, 'type', k.contype,
        'columns', (SELECT json_agg(a.attname ORDER BY u.ord) FROM unnest(k.conkey) WITH ORDINALITY AS u(num, ord)
                    JOIN pg_catalog.pg_attribute AS a ON a.attrelid = k.conrelid AND a.attnum = u.num),
        'ref_table', CASE WHEN f.oid IS NULL THEN NULL WHEN f.relnamespace = r_ns.oid THEN f.relname
                          ELSE fn.nspname || '.' || f.relname END,
        'ref_columns', (SELECT json_agg(a.attname ORDER BY u.ord)
                        FROM unnest(k.confkey) WITH ORDINALITY AS u(num, ord)
                        JOIN pg_catalog.pg_attribute AS a ON a.attrelid = k.confrelid AND a.attnum = u.num),
        'on_delete', k.confdeltype, 'on_update', k.confupdtype,
        'definition', pg_catalog.pg_get_constraintdef(k.oid, true)) ORDER BY k.conname)
      FROM pg_catalog.pg_constraint AS k
      LEFT JOIN pg_catalog.pg_class AS f ON f.oid = k.confrelid
      LEFT JOIN pg_catalog.pg_namespace AS fn ON fn.oid = f.relnamespace
      CROSS JOIN (SELECT n.oid FROM pg_catalog.pg_namespace AS n WHERE n.nspname = current_schema()) AS r_ns
      WHERE k.conrelid = r.oid AND k.contype IN ('p', 'u', 'f', 'c')),
    'indexes', (SELECT json_agg(json_build_object(
        'name', i.relname, 'unique', x.indisunique,
        'where', pg_catalog.pg_get_expr(x.indpred, x.indrelid, true),
        'keys', (SELECT json_agg(json_build_object(
                   'expr', pg_catalog.pg_get_indexdef(x.indexrelid, k.n, true),
                   'desc', k.n <= x.indnkeyatts AND (x.indoption[k.n - 1] & 1) = 1,
                   'included', k.n > x.indnkeyatts) ORDER BY k.n)
                 FROM generate_series(1, x.indnatts) AS k(n))) ORDER BY i.relname)
      FROM pg_catalog.pg_index AS x JOIN pg_catalog.pg_class AS i ON i.oid = x.indexrelid
      WHERE x.indrelid = r.oid AND NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_constraint AS k
        WHERE k.conrelid = x.indrelid AND k.conindid = x.indexrelid AND k.contype IN ('p', 'u', 'x')))
  ) ORDER BY r.relname) FROM rel AS r WHERE r.relkind IN ('r', 'p', 'f')), '[]'::json),
  'views', COALESCE((SELECT json_agg(json_build_object(
    'name', r.relname, 'definition', pg_catalog.pg_get_viewdef(r.oid, true)) ORDER BY r.relname)
    FROM rel AS r WHERE r.relkind IN ('v', 'm')), '[]'::json)
)::text"""

# A literal with a cast the server added: 'EUR'::character varying -> 'EUR'.
_CAST_LITERAL = re.compile(r"^('(?:[^']|'')*')::[\w .\"]+(?:\([\d,\s]+\))?(?:\[\])*$")


def canonical_default(expression: str | None) -> str | None:
    """A default as compared: the server's text without the cast it puts on a literal."""
    if expression is None:
        return None
    match = _CAST_LITERAL.match(expression.strip())
    return canonical_sql(match.group(1) if match else expression)


def read_snapshot(conn: Connection, exclude: Iterable[str] = ()) -> Snapshot:
    """The snapshot of the connection's database, with one query (see the module's docstring)."""
    document = conn.execute(text(SNAPSHOT_SQL), {"exclude": excluded(exclude)}).scalar_one()
    return snapshot_from_catalog(document)


def snapshot_from_catalog(document: str | Mapping) -> Snapshot:
    """The :class:`Snapshot` of :data:`SNAPSHOT_SQL`'s answer (the JSON text, or its parsed value).

    The query answers text (not ``json``, which the driver would parse) so that identical schemas, the usual
    case across a fleet, are turned into a snapshot once per process: the answer is deterministic (every
    aggregate is ordered) and a Snapshot is immutable. Measured: about a fifth of a tenant's drift read was
    this conversion, done under the GIL by every reading thread."""
    if isinstance(document, str):
        return _from_text(document)
    return _from_doc(document)


@functools.lru_cache(maxsize=64)
def _from_text(document: str) -> Snapshot:
    return _from_doc(json.loads(document))


def _from_doc(doc: Mapping) -> Snapshot:
    return Snapshot(tuple(_table(t) for t in doc["tables"]),
                    tuple(View(v["name"], canonical_sql(v["definition"]) or "") for v in doc["views"]),
                    dialect="postgresql")


def _table(t: Mapping) -> Table:
    constraints = t["constraints"] or []
    of = {kind: [k for k in constraints if k["type"] == kind] for kind in "pufc"}
    return Table(
        name=t["name"],
        columns=tuple(_column(c) for c in t["columns"] or ()),
        primary_key=tuple(of["p"][0]["columns"]) if of["p"] else (),
        uniques=tuple(Unique(k["name"], tuple(k["columns"])) for k in of["u"]),
        foreign_keys=tuple(ForeignKey(k["name"], tuple(k["columns"]), k["ref_table"], tuple(k["ref_columns"]),
                                      ACTIONS[k["on_delete"]], ACTIONS[k["on_update"]]) for k in of["f"]),
        indexes=tuple(_index(i) for i in t["indexes"] or ()),
        checks=tuple(Check(k["name"], _check(k["definition"])) for k in of["c"]),
    )


def _column(c: Mapping) -> Column:
    default = canonical_default(c["default"])
    if c["identity"]:
        default = _IDENTITY[c["identity"]]
    elif c["generated"]:
        default = f"GENERATED ({strip_parens(default)}) STORED"
    return Column(c["name"], canonical_type(c["type"], TYPE_ALIASES), not c["notnull"], default)


def _index(i: Mapping) -> Index:
    keys = [k for k in i["keys"] if not k["included"]]
    return Index(i["name"], tuple(f"{k['expr']} DESC" if k["desc"] else k["expr"] for k in keys), i["unique"],
                 canonical_sql(i["where"]), tuple(k["expr"] for k in i["keys"] if k["included"]))


def _check(definition: str) -> str:
    """``CHECK ((amount > 0)) NOT VALID`` -> ``amount > 0 NOT VALID``."""
    body = definition.strip()
    body = body[len("CHECK"):].strip() if body.upper().startswith("CHECK") else body
    suffix = ""
    if body.upper().endswith("NOT VALID"):
        body, suffix = body[: -len("NOT VALID")].strip(), " NOT VALID"
    return (canonical_sql(strip_parens(body)) or "") + suffix
