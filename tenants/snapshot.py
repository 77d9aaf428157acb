"""A tenant's schema as plain data: :class:`Snapshot`, its canonical form, its fingerprint and a readable diff.

Issue 12 ("schema truth"): the version table says which revision a tenant is on; a snapshot says what its
schema *is*. Each dialect reads one in one round trip (:meth:`tenants.dialects.Dialect.snapshot`, through
:func:`tenants.db.schema_snapshot`) and turns the catalog's answer into this model; this module does no I/O.

The model is canonical by construction, so two databases built by the same revisions give equal snapshots
(and equal fingerprints) whatever order their catalogs list things in:

* tables, views, and the columns, indexes and constraints of a table are sorted by name (their order in the
  catalog is an accident of history: a column added by a later revision comes last in one tenant and in the
  middle of another that was rebuilt);
* what has an order keeps it: the columns of an index, a primary key, a unique constraint or a foreign key;
* type spellings are normalised (:func:`canonical_type`): ``int``, ``integer`` and ``int4`` are ``INTEGER``,
  ``character varying(20)`` is ``VARCHAR(20)``. Each dialect adds its own spellings (its ``TYPE_ALIASES``);
* names the database made up (a SQL Server ``PK__users__3213E83F...``) are left out (None), names a revision
  gave are kept. A primary key is compared by its columns only.

What is *not* normalised is SQL text: defaults, check expressions, index predicates and view definitions are
kept as the catalog prints them (whitespace collapsed, a dialect's redundant decoration stripped by the
dialect). Two tenants of one dialect print the same expression the same way; across dialects they differ,
which is fine: the expected schema of a tenant is always taken from a database of the same dialect.

``to_dict`` / ``from_dict`` round-trip through JSON losslessly (snapshots are cached on disk and put in
reports); :attr:`Snapshot.fingerprint` is the first 12 hex digits of the SHA-256 of the canonical JSON, leaving
out the dialect name, so a SQLite and a PostgreSQL snapshot are comparable where their spellings agree.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

__all__ = [
    "STANDARD_TYPES", "Check", "Column", "ForeignKey", "Index", "Snapshot", "Table", "Unique", "View",
    "canonical_sql", "canonical_type", "diff", "distance",
]

# Spellings of one type across SQL dialects -> the one this model uses. A dialect adds its own (its
# ``TYPE_ALIASES``) on top; the keys are upper case with single spaces, without arguments.
STANDARD_TYPES: Mapping[str, str] = {
    "INT": "INTEGER", "INT4": "INTEGER", "INTEGER": "INTEGER",
    "INT8": "BIGINT", "BIGINT": "BIGINT", "INT2": "SMALLINT", "SMALLINT": "SMALLINT",
    "BOOL": "BOOLEAN", "BOOLEAN": "BOOLEAN",
    "CHARACTER VARYING": "VARCHAR", "VARCHAR": "VARCHAR", "CHARACTER": "CHAR", "CHAR": "CHAR", "BPCHAR": "CHAR",
    "DECIMAL": "NUMERIC", "NUMERIC": "NUMERIC",
    "FLOAT8": "DOUBLE PRECISION", "DOUBLE": "DOUBLE PRECISION", "FLOAT4": "REAL",
    "TIMESTAMP WITHOUT TIME ZONE": "TIMESTAMP", "TIMESTAMP WITH TIME ZONE": "TIMESTAMPTZ",
    "TIME WITHOUT TIME ZONE": "TIME", "TIME WITH TIME ZONE": "TIMETZ",
}

_ARGS = re.compile(r"\(([^()]*)\)")


def canonical_type(spelling: str, aliases: Mapping[str, str] = STANDARD_TYPES) -> str:
    """One spelling per type: upper case, single spaces, the name through ``aliases``, arguments without
    spaces. ``character varying(20)`` -> ``VARCHAR(20)``, ``timestamp(3) without time zone`` ->
    ``TIMESTAMP(3)``, ``numeric(10, 2)`` -> ``NUMERIC(10,2)``, ``integer[]`` -> ``INTEGER[]``. An empty
    spelling (SQLite lets a column have no type) stays empty."""
    text = " ".join(spelling.split()).upper()
    match = _ARGS.search(text)
    args = f"({match.group(1).replace(' ', '')})" if match else ""
    name = _ARGS.sub("", text)
    array = ""
    while name.endswith("[]"):
        name, array = name[:-2].rstrip(), array + "[]"
    name = " ".join(name.split())
    return f"{aliases.get(name, name)}{args}{array}"


def canonical_sql(text: str | None) -> str | None:
    """SQL text as compared: whitespace collapsed to single spaces outside quotes; None stays None."""
    if text is None:
        return None
    parts = re.split(r"('(?:[^']|'')*')", text.strip())
    return "".join(p if i % 2 else re.sub(r"\s+", " ", p) for i, p in enumerate(parts))


# --- the model ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Column:
    name: str
    type: str  # canonical (canonical_type)
    nullable: bool = True
    default: str | None = None  # SQL text as the catalog prints it; None: no default

    def to_dict(self) -> dict:
        return {"name": self.name, "type": self.type, "nullable": self.nullable, "default": self.default}


@dataclass(frozen=True)
class Index:
    """An index that no constraint owns (a unique constraint's or primary key's index is that constraint)."""

    name: str
    columns: tuple[str, ...]  # in key order; a descending key is "name DESC"; an expression is its SQL text
    unique: bool = False
    where: str | None = None  # the predicate of a partial (filtered) index
    include: tuple[str, ...] = ()  # non-key columns carried in the index (INCLUDE), sorted

    def __post_init__(self) -> None:
        object.__setattr__(self, "include", tuple(sorted(self.include)))

    def to_dict(self) -> dict:
        return {"name": self.name, "columns": list(self.columns), "unique": self.unique, "where": self.where,
                "include": list(self.include)}

    def describe(self) -> str:
        text = ("UNIQUE " if self.unique else "") + f"({', '.join(self.columns)})"
        text += f" INCLUDE ({', '.join(self.include)})" if self.include else ""
        return text + (f" WHERE {self.where}" if self.where else "")


@dataclass(frozen=True)
class Unique:
    name: str | None  # None when the database made the name up, or cannot tell it (see the dialect)
    columns: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "columns": list(self.columns)}

    @property
    def key(self) -> str:
        return self.name or f"({', '.join(self.columns)})"


@dataclass(frozen=True)
class ForeignKey:
    name: str | None
    columns: tuple[str, ...]
    ref_table: str
    ref_columns: tuple[str, ...]
    on_delete: str = "NO ACTION"  # upper case, e.g. CASCADE, SET NULL
    on_update: str = "NO ACTION"

    def to_dict(self) -> dict:
        return {"name": self.name, "columns": list(self.columns), "ref_table": self.ref_table,
                "ref_columns": list(self.ref_columns), "on_delete": self.on_delete, "on_update": self.on_update}

    @property
    def key(self) -> str:
        return self.name or f"({', '.join(self.columns)})"

    def describe(self) -> str:
        text = f"({', '.join(self.columns)}) -> {self.ref_table}({', '.join(self.ref_columns)})"
        if self.on_delete != "NO ACTION":
            text += f" ON DELETE {self.on_delete}"
        if self.on_update != "NO ACTION":
            text += f" ON UPDATE {self.on_update}"
        return text


@dataclass(frozen=True)
class Check:
    name: str | None
    sql: str  # the condition as the catalog prints it

    def to_dict(self) -> dict:
        return {"name": self.name, "sql": self.sql}

    @property
    def key(self) -> str:
        return self.name or self.sql


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...] = ()
    primary_key: tuple[str, ...] = ()  # columns in key order; () without one
    uniques: tuple[Unique, ...] = ()
    foreign_keys: tuple[ForeignKey, ...] = ()
    indexes: tuple[Index, ...] = ()
    checks: tuple[Check, ...] = ()

    def __post_init__(self) -> None:
        # Canonical by construction: whatever order a catalog lists things in, equal schemas are equal values.
        object.__setattr__(self, "columns", tuple(sorted(self.columns, key=lambda c: c.name)))
        object.__setattr__(self, "uniques", tuple(sorted(self.uniques, key=lambda u: (u.key, u.columns))))
        object.__setattr__(self, "foreign_keys", tuple(sorted(self.foreign_keys, key=lambda f: (f.key, f.columns))))
        object.__setattr__(self, "indexes", tuple(sorted(self.indexes, key=lambda i: i.name)))
        object.__setattr__(self, "checks", tuple(sorted(self.checks, key=lambda c: (c.key, c.sql))))

    def to_dict(self) -> dict:
        return {
            "name": self.name, "columns": [c.to_dict() for c in self.columns], "primary_key": list(self.primary_key),
            "uniques": [u.to_dict() for u in self.uniques], "foreign_keys": [f.to_dict() for f in self.foreign_keys],
            "indexes": [i.to_dict() for i in self.indexes], "checks": [c.to_dict() for c in self.checks],
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> Table:
        return cls(
            name=data["name"],
            columns=tuple(Column(**c) for c in data.get("columns", ())),
            primary_key=tuple(data.get("primary_key", ())),
            uniques=tuple(Unique(u["name"], tuple(u["columns"])) for u in data.get("uniques", ())),
            foreign_keys=tuple(ForeignKey(f["name"], tuple(f["columns"]), f["ref_table"], tuple(f["ref_columns"]),
                                          f.get("on_delete", "NO ACTION"), f.get("on_update", "NO ACTION"))
                               for f in data.get("foreign_keys", ())),
            indexes=tuple(Index(i["name"], tuple(i["columns"]), i.get("unique", False), i.get("where"),
                                tuple(i.get("include", ())))
                          for i in data.get("indexes", ())),
            checks=tuple(Check(c["name"], c["sql"]) for c in data.get("checks", ())),
        )


@dataclass(frozen=True)
class View:
    name: str
    definition: str  # the query as the catalog prints it

    def to_dict(self) -> dict:
        return {"name": self.name, "definition": self.definition}


@dataclass(frozen=True)
class Snapshot:
    """One database's schema (its default schema, leaving out the tables the caller excluded)."""

    tables: tuple[Table, ...] = ()
    views: tuple[View, ...] = ()
    dialect: str = field(default="", compare=False)  # where it was read; not part of the fingerprint

    def __post_init__(self) -> None:
        object.__setattr__(self, "tables", tuple(sorted(self.tables, key=lambda t: t.name)))
        object.__setattr__(self, "views", tuple(sorted(self.views, key=lambda v: v.name)))

    def table(self, name: str) -> Table | None:
        return next((t for t in self.tables if t.name == name), None)

    def canonical(self) -> dict:
        """The schema alone (no dialect name): what the fingerprint hashes and what two snapshots compare."""
        return {"tables": [t.to_dict() for t in self.tables], "views": [v.to_dict() for v in self.views]}

    def to_dict(self) -> dict:
        return {"dialect": self.dialect, "fingerprint": self.fingerprint, **self.canonical()}

    @classmethod
    def from_dict(cls, data: Mapping) -> Snapshot:
        return cls(tables=tuple(Table.from_dict(t) for t in data.get("tables", ())),
                   views=tuple(View(v["name"], v["definition"]) for v in data.get("views", ())),
                   dialect=data.get("dialect", ""))

    @property
    def fingerprint(self) -> str:
        """First 12 hex digits of the SHA-256 of the canonical JSON: equal schemas, equal fingerprints."""
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def diff(self, found: Snapshot) -> list[str]:
        """See :func:`diff` (``self`` is the expected schema)."""
        return diff(self, found)


# --- the difference --------------------------------------------------------------------------------------------

def diff(expected: Snapshot, found: Snapshot) -> list[str]:
    """What differs between the expected schema and the one found, one line per difference, in a fixed order
    (tables by name, then views; inside a table: columns, primary key, indexes, uniques, foreign keys, checks).

    ``table audit_log missing``, ``extra table scratch``, ``extra column users.legacy_flag``,
    ``column invoices.status: VARCHAR(20) expected, VARCHAR(40) found``, ``index ix_a missing on invoices``...
    A table missing (or extra) is one line, not one per column: it is one thing to fix.
    """
    lines: list[str] = []
    lines += _named(expected.tables, found.tables, lambda t: t.name, "table {} missing", "extra table {}",
                    _table_diff)
    lines += _named(expected.views, found.views, lambda v: v.name, "view {} missing", "extra view {}", _view_diff)
    return lines


def distance(expected: Snapshot, found: Snapshot) -> int:
    """The number of differences (``len(diff(...))``): 0 for equal schemas; the smallest one over the snapshots
    of a graph's revisions names the revision a database is closest to."""
    return len(diff(expected, found))


def _named(expected: Iterable, found: Iterable, key: Callable, missing: str, extra: str,
           compare: Callable) -> list[str]:
    """Lines for things matched by ``key``: missing, extra, or ``compare(a, b)`` for those on both sides."""
    want = {key(x): x for x in expected}
    have = {key(x): x for x in found}
    lines = []
    for name in sorted(want.keys() | have.keys()):
        if name not in have:
            lines.append(missing.format(name))
        elif name not in want:
            lines.append(extra.format(name))
        else:
            lines += compare(want[name], have[name])
    return lines


def _view_diff(want: View, have: View) -> list[str]:
    return [] if want.definition == have.definition else [f"view {want.name}: definition differs"]


def _table_diff(want: Table, have: Table) -> list[str]:
    t = want.name
    lines = _named(want.columns, have.columns, lambda c: c.name, f"column {t}.{{}} missing",
                   f"extra column {t}.{{}}", lambda a, b: _column_diff(t, a, b))
    if want.primary_key != have.primary_key:
        lines.append(f"primary key of {t}: {_cols(want.primary_key)} expected, {_cols(have.primary_key)} found")
    lines += _named(want.indexes, have.indexes, lambda i: i.name, f"index {{}} missing on {t}",
                    f"extra index {{}} on {t}", lambda a, b: _changed(f"index {a.name} on {t}", a, b))
    lines += _named(want.uniques, have.uniques, lambda u: u.key, f"unique constraint {{}} missing on {t}",
                    f"extra unique constraint {{}} on {t}",
                    lambda a, b: _changed(f"unique constraint {a.key} on {t}", a, b, _cols))
    lines += _named(want.foreign_keys, have.foreign_keys, lambda f: f.key, f"foreign key {{}} missing on {t}",
                    f"extra foreign key {{}} on {t}", lambda a, b: _changed(f"foreign key {a.key} on {t}", a, b))
    lines += _named(want.checks, have.checks, lambda c: c.key, f"check {{}} missing on {t}",
                    f"extra check {{}} on {t}", lambda a, b: _changed(f"check {a.key} on {t}", a, b,
                                                                     lambda c: c.sql))
    return lines


def _column_diff(table: str, want: Column, have: Column) -> list[str]:
    where = f"column {table}.{want.name}"
    lines = []
    if want.type != have.type:
        lines.append(f"{where}: {want.type or '(no type)'} expected, {have.type or '(no type)'} found")
    if want.nullable != have.nullable:
        lines.append(f"{where}: {_null(want.nullable)} expected, {_null(have.nullable)} found")
    if want.default != have.default:
        lines.append(f"{where}: {_default(want.default)} expected, {_default(have.default)} found")
    return lines


def _changed(what: str, want, have, describe: Callable | None = None) -> list[str]:
    if want == have:
        return []
    show = describe or (lambda x: x.describe())
    shown = (show(want), show(have))
    if shown[0] == shown[1]:  # differ in what the description leaves out (a name of a system-named thing)
        shown = (repr(want), repr(have))
    return [f"{what}: {shown[0]} expected, {shown[1]} found"]


def _cols(columns) -> str:
    return f"({', '.join(getattr(columns, 'columns', columns))})"


def _null(nullable: bool) -> str:
    return "nullable" if nullable else "NOT NULL"


def _default(default: str | None) -> str:
    return "no default" if default is None else f"default {default}"
