"""``tenants baseline``: the Python of an Alembic revision that creates a tenant's schema (issue 12).

For a fleet whose schema predates any revision: the revision is rendered from one tenant's snapshot
(:class:`tenants.snapshot.Snapshot`) and written by Alembic itself (:func:`tenants.api.baseline`), so that a
new tenant gets the same schema from the graph, and the existing ones are adopted at it (``tenants adopt``).

What is rendered, in this order, each step guarded (:mod:`tenants.guards`: re-running it on a database that has
the object skips it) and readable in review:

* each table, with its columns (type, nullability, default), primary key, unique constraints, foreign keys and
  check constraints, in dependency order (a table after the tables its foreign keys reference). A foreign key
  of a cycle (two tables referencing each other) is added after the tables, with ``op.create_foreign_key``
  behind ``guards.has_foreign_key`` (not on SQLite, which cannot add a constraint to a table);
* each index (columns in order, descending keys and expressions as SQL text, uniqueness, a partial index's
  predicate, included columns);
* each view, as the catalog prints its query (``CREATE VIEW`` behind ``guards.has_table``, which sees views).

The downgrade drops them in reverse: views, the cycle's foreign keys, tables (their indexes go with them).

Types are SQLAlchemy's generic types (``sa.Integer()``, ``sa.String(20)``, ...) where one renders, on the
tenant's dialect, the very spelling the catalog holds (checked by compiling it); otherwise
``guards.Spelled("...")``, a type that renders the spelling as is (the generated file says so). A single integer
primary key whose default draws from a sequence (PostgreSQL's ``serial``, SQL Server's ``IDENTITY``) is
rendered as SQLAlchemy's autoincrement key, which creates them again; other sequences are not recreated.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import sqlalchemy as sa
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import make_url

from alembic import util
from tenants.errors import RevisionError
from tenants.snapshot import Column, ForeignKey, Index, Snapshot, Table, View, canonical_type

# Generic types tried for a canonical type name, as Python source with {args} for its arguments: the first that
# compiles, on the tenant's dialect, to the catalog's spelling is used.
_CANDIDATES: dict[str, tuple[str, ...]] = {
    "INTEGER": ("sa.Integer()",), "BIGINT": ("sa.BigInteger()",), "SMALLINT": ("sa.SmallInteger()",),
    "VARCHAR": ("sa.String({args})", "sa.Unicode({args})", "sa.NVARCHAR({args})"),
    "NVARCHAR": ("sa.Unicode({args})", "sa.NVARCHAR({args})"),
    "CHAR": ("sa.CHAR({args})",), "NCHAR": ("sa.NCHAR({args})",),
    "TEXT": ("sa.Text()",), "CLOB": ("sa.Text()",), "BOOLEAN": ("sa.Boolean()",), "BIT": ("sa.Boolean()",),
    "NUMERIC": ("sa.Numeric({args})",), "REAL": ("sa.REAL()",), "FLOAT": ("sa.Float({args})",),
    "DOUBLE PRECISION": ("sa.Double()",), "DATE": ("sa.Date()",), "TIME": ("sa.Time()",),
    "DATETIME": ("sa.DateTime()",), "TIMESTAMP": ("sa.DateTime()", "sa.TIMESTAMP()"),
    "TIMESTAMPTZ": ("sa.DateTime(timezone=True)",), "DATETIME2": ("sa.DateTime()",),
    "DATETIMEOFFSET": ("sa.DateTime(timezone=True)",),
    "BLOB": ("sa.LargeBinary()",), "BYTEA": ("sa.LargeBinary()",), "VARBINARY": ("sa.LargeBinary()",),
    "JSON": ("sa.JSON()",), "UUID": ("sa.Uuid()",), "UNIQUEIDENTIFIER": ("sa.Uuid()",),
}
_NO_ACTION = "NO ACTION"
# A partial index's predicate and included columns go by dialect-prefixed keywords; each dialect reads its own
# and ignores the others', so the revision runs on any of them.
_WHERE_KEYWORDS = ("postgresql_where", "sqlite_where", "mssql_where")
_INCLUDE_KEYWORDS = ("postgresql_include", "mssql_include")

SPELLED_NOTE = ("# guards.Spelled(\"...\"): no SQLAlchemy type renders this spelling on this database, so the "
                "type is written as the catalog spells it.")


def sa_dialect(name: str) -> sa.engine.Dialect:
    """A SQLAlchemy dialect of that backend name, to compile types with (never connects)."""
    return make_url(f"{name}://").get_dialect()()


def render_type(canonical: str, dialect: sa.engine.Dialect) -> str:
    """Python source of a type that compiles to ``canonical`` on ``dialect``, or ``guards.Spelled(...)``."""
    name, _, rest = canonical.partition("(")
    args = rest[:-1] if rest.endswith(")") else ""
    numeric = re.fullmatch(r"\d+(,\d+)*", args) is not None
    for candidate in _CANDIDATES.get(name, ()) if (not rest or numeric) else ():
        source = candidate.format(args=args.replace(",", ", "))
        try:
            # Our own table above, with numeric arguments only: nothing of the catalog's text is evaluated.
            compiled = eval(source, {"sa": sa}).compile(dialect=dialect)
        except Exception:  # noqa: BLE001 - not this one
            continue
        if canonical_type(compiled) == canonical:
            return source
    return f"guards.Spelled({canonical!r})"


def _generated_key(table: Table, column: Column) -> bool:
    """A single integer key whose default is a sequence (``nextval(...)``) or ``IDENTITY``: SQLAlchemy's
    autoincrement key makes one again (SERIAL, IDENTITY); a literal default of it could not run."""
    default = (column.default or "").upper()
    return (table.primary_key == (column.name,) and default.startswith(("NEXTVAL(", "IDENTITY"))
            and column.type in ("INTEGER", "BIGINT", "SMALLINT"))


def _column(table: Table, column: Column, dialect) -> str:
    parts = [repr(column.name), render_type(column.type, dialect)]
    if table.primary_key == (column.name,):
        parts.append("primary_key=True")
        if column.type in ("INTEGER", "BIGINT", "SMALLINT"):
            parts.append(f"autoincrement={_generated_key(table, column)}")
    if not column.nullable:
        parts.append("nullable=False")
    if column.default is not None and not _generated_key(table, column):
        parts.append(f"server_default=sa.text({column.default!r})")
    return f"sa.Column({', '.join(parts)})"


def _foreign_key(fk: ForeignKey) -> str:
    refs = [f"{fk.ref_table}.{c}" for c in fk.ref_columns]
    text = f"sa.ForeignKeyConstraint({list(fk.columns)!r}, {refs!r}"
    text += f", name={fk.name!r}" if fk.name else ""
    text += f", ondelete={fk.on_delete!r}" if fk.on_delete != _NO_ACTION else ""
    text += f", onupdate={fk.on_update!r}" if fk.on_update != _NO_ACTION else ""
    return text + ")"


def _create_table(table: Table, deferred: set, dialect) -> list[str]:
    items = [_column(table, c, dialect) for c in table.columns]
    if len(table.primary_key) > 1:  # in key order (the columns above are in name order)
        items.append(f"sa.PrimaryKeyConstraint({', '.join(map(repr, table.primary_key))})")
    items += [f"sa.UniqueConstraint({', '.join(map(repr, u.columns))}{f', name={u.name!r}' if u.name else ''})"
              for u in table.uniques]
    items += [_foreign_key(fk) for fk in table.foreign_keys if (table.name, fk) not in deferred]
    items += [f"sa.CheckConstraint({c.sql!r}{f', name={c.name!r}' if c.name else ''})" for c in table.checks]
    return [f"guards.create_table(\n    {table.name!r},", *[f"    {item}," for item in items], ")"]


def _create_index(table: Table, index: Index) -> list[str]:
    columns = ", ".join(repr(c) if c.isidentifier() else f"sa.text({c!r})" for c in index.columns)
    kw = ", unique=True" if index.unique else ""
    if index.where:
        kw += "".join(f", {key}=sa.text({index.where!r})" for key in _WHERE_KEYWORDS)
    if index.include:
        kw += "".join(f", {key}={list(index.include)!r}" for key in _INCLUDE_KEYWORDS)
    return [f"guards.create_index({index.name!r}, {table.name!r}, [{columns}]{kw})"]


def _create_view(view: View) -> list[str]:
    # SQLite keeps the whole CREATE VIEW statement; other catalogs print the query alone.
    statement = view.definition if view.definition.upper().startswith("CREATE ") else \
        f"CREATE VIEW {view.name} AS {view.definition}"
    return [f"if not guards.has_table({view.name!r}):", f"    op.execute({statement!r})"]


def table_order(tables: Iterable[Table]) -> tuple[list[Table], set]:
    """Tables in dependency order (each after those its foreign keys reference, by name otherwise), and the
    foreign keys that close a cycle, as ``(table name, ForeignKey)``: those are added after every table."""
    pending = {t.name: t for t in tables}
    done: list[Table] = []
    deferred: set = set()
    while pending:
        ready = [t for t in pending.values()
                 if all(fk.ref_table in {d.name for d in done} | {t.name} or fk.ref_table not in pending
                        or (t.name, fk) in deferred for fk in t.foreign_keys)]
        if not ready:  # a cycle: defer the foreign keys of the first table (by name) that point to a pending one
            first = sorted(pending)[0]
            deferred |= {(first, fk) for fk in pending[first].foreign_keys
                         if fk.ref_table in pending and fk.ref_table != first}
            continue
        for table in sorted(ready, key=lambda t: t.name):
            done.append(pending.pop(table.name))
    return done, deferred


def render(snapshot: Snapshot) -> tuple[list[str], list[str]]:
    """The lines of ``upgrade()`` and ``downgrade()`` (unindented) that create and drop ``snapshot``'s schema."""
    dialect = sa_dialect(snapshot.dialect or "sqlite")
    tables, deferred = table_order(snapshot.tables)
    up: list[str] = []
    for table in tables:
        up += _create_table(table, deferred, dialect)
    for name, fk in sorted(deferred, key=lambda pair: (pair[0], pair[1].key)):
        up += _add_foreign_key(name, fk)
    for table in tables:
        for index in table.indexes:
            up += _create_index(table, index)
    for view in snapshot.views:
        up += _create_view(view)
    if any("guards.Spelled(" in line for line in up):
        up.insert(0, SPELLED_NOTE)
    down = [line for view in reversed(snapshot.views)
            for line in (f"if guards.has_table({view.name!r}, offline=True):",
                         f"    op.execute({f'DROP VIEW {view.name}'!r})")]
    for name, fk in sorted(deferred, key=lambda pair: (pair[0], pair[1].key)):
        down += [f"if guards.has_foreign_key({name!r}, {_fk_name(name, fk)!r}, offline=True):",
                 f"    op.drop_constraint({_fk_name(name, fk)!r}, {name!r}, type_='foreignkey')"]
    down += [f"guards.drop_table({table.name!r})" for table in reversed(tables)]
    return up, down


def _fk_name(table: str, fk: ForeignKey) -> str:
    return fk.name or f"fk_{table}_{'_'.join(fk.columns)}_{fk.ref_table}"


def _add_foreign_key(table: str, fk: ForeignKey) -> list[str]:
    name = _fk_name(table, fk)
    kw = f", ondelete={fk.on_delete!r}" if fk.on_delete != _NO_ACTION else ""
    kw += f", onupdate={fk.on_update!r}" if fk.on_update != _NO_ACTION else ""
    return [f"if not guards.has_foreign_key({table!r}, {name!r}):",
            f"    op.create_foreign_key({name!r}, {table!r}, {fk.ref_table!r}, {list(fk.columns)!r}, "
            f"{list(fk.ref_columns)!r}{kw})"]


def write_revision(script: ScriptDirectory, snapshot: Snapshot, message: str, tenant: str) -> Path:
    """Write the revision through Alembic (its id, template and ``down_revision``: the current head, None in an
    empty graph) and return its path."""
    up, down = render(snapshot)
    note = [f"# Generated by `tenants baseline` from tenant {tenant!r} ({snapshot.dialect}, schema fingerprint "
            f"{snapshot.fingerprint}).",
            "# Review it like any revision. Columns are in name order (the schema snapshot's order); each step is "
            "guarded.",
            "# Plain op steps (views) are behind guards.has_* checks online only."]
    template = Path(script.dir, "script.py.mako")
    has_guards = template.is_file() and "from tenants import guards" in template.read_text(encoding="utf-8")
    # Alembic says "Generating ..." on stdout unless quiet: the command's own line says what was written.
    script.messaging_opts = {**script.messaging_opts, "quiet": True}
    try:
        written = script.generate_revision(
            util.rev_id(), message, head="head",
            imports="" if has_guards else "from tenants import guards",
            upgrades="\n    ".join(line.replace("\n", "\n    ") for line in note + up),
            downgrades="\n    ".join(line.replace("\n", "\n    ") for line in down),
        )
    except CommandError as err:
        raise RevisionError(f"cannot write the baseline revision: {err}") from err
    if written is None:  # pragma: no cover - Alembic returns None only for a revision it was asked not to write
        raise RevisionError("cannot write the baseline revision")
    return Path(written.path)
