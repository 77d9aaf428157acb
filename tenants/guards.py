"""Idempotent revision steps: "create it unless it is there, drop it unless it is gone".

A revision must be safe to re-run on a tenant that already has its change (a tenant changed by hand, a
database restored from a copy, a stamp that lagged behind). Each helper below has the signature of the
``op`` function it guards, so guarding a step is writing ``guards.`` for ``op.``::

    guards.create_table("users", sa.Column("id", sa.Integer, primary_key=True), ...)
    guards.create_index("ux_users_email", "users", ["email"], unique=True)
    guards.create_index("ix_invoices_issued_at", "invoices", ["issued_at"], mssql_online=True)  # SQL Server: ONLINE
    guards.add_column("invoices", sa.Column("status", sa.String(20), server_default="open", nullable=False))
    guards.drop_column("invoices", "status", mssql_drop_default=True)
    guards.drop_index("ux_users_email", "users")
    guards.drop_table("users")

Online a helper skips the step when the object is already there (or already gone). Where the dialect has
the ``IF [NOT] EXISTS`` syntax for that kind of object (PostgreSQL: tables, columns, indexes) the statement
itself says so (``CREATE TABLE IF NOT EXISTS``, ``ADD COLUMN IF NOT EXISTS``, ``DROP INDEX IF EXISTS``...), as
offline: the database decides, in the same round trip as the DDL (issue 13: a catalog query per guard was a
round trip per step, paid by every tenant of every revision). Elsewhere (SQLite, SQL Server) the helper asks
the database first (one catalog query, see the predicates below).

Offline (``--sql``) nothing can be asked, so the question goes into the
script itself, which is then safe to run twice:

* SQL Server: the DDL Alembic would emit, wrapped in a T-SQL existence check, as one batch::

      IF OBJECT_ID(N'users', N'U') IS NULL
      BEGIN
      CREATE TABLE users (...);
      END

  (``IF COL_LENGTH(...) IS NULL`` for columns, ``IF NOT EXISTS (SELECT 1 FROM sys.indexes ...)`` for
  indexes; ``IS NOT NULL`` / ``EXISTS`` for the drops). SQL Server has no ``CREATE TABLE IF NOT EXISTS``.
* PostgreSQL: its own syntax: ``CREATE TABLE IF NOT EXISTS``, ``ADD COLUMN IF NOT EXISTS``, ``DROP ... IF
  EXISTS`` and so on.
* Other dialects (SQLite: no ``ADD COLUMN IF NOT EXISTS``): the plain DDL, for review.

The predicates (``has_table``, ``has_column``, ``has_index``, ``has_foreign_key``,
``has_unique_constraint``) stay for steps the helpers do not cover. Offline they cannot ask either: each
answers its ``offline`` argument (default False, "not there", so an upgrade renders its step; a downgrade
asking "is it still there?" passes ``offline=True``), and the rendered script is then not idempotent::

    if not guards.has_foreign_key("invoices", "fk_invoices_user_id_users"):
        op.create_foreign_key("fk_invoices_user_id_users", "invoices", "users", ["user_id"], ["id"])
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import CreateIndex

from alembic import context, op
from tenants.dialects import dialect_for

# --- guarded steps ----------------------------------------------------------------------------------------

def create_table(table_name: str, *columns: sa.schema.SchemaItem, schema: str | None = None, **kw: Any) -> None:
    """``op.create_table`` unless the table exists. Returns nothing: when skipped there is no new table."""
    _step(lambda: has_table(table_name, schema), present=False,
          tsql=f"OBJECT_ID({_tsql_object(table_name, schema)}, N'U') IS NULL",
          flag=("if_not_exists", "table"),
          run=lambda **flag: op.create_table(table_name, *columns, schema=schema, **kw, **flag))


def drop_table(table_name: str, *, schema: str | None = None, **kw: Any) -> None:
    """``op.drop_table`` unless the table is gone."""
    _step(lambda: has_table(table_name, schema), present=True,
          tsql=f"OBJECT_ID({_tsql_object(table_name, schema)}, N'U') IS NOT NULL",
          flag=("if_exists", "table"),
          run=lambda **flag: op.drop_table(table_name, schema=schema, **kw, **flag))


def add_column(table_name: str, column: sa.Column, *, schema: str | None = None, **kw: Any) -> None:
    """``op.add_column`` unless the table has the column."""
    _step(lambda: has_column(table_name, column.name, schema), present=False,
          tsql=f"COL_LENGTH({_tsql_object(table_name, schema)}, {_tsql_string(column.name)}) IS NULL",
          flag=("if_not_exists", "column"),
          run=lambda **flag: op.add_column(table_name, column, schema=schema, **kw, **flag))


def drop_column(table_name: str, column_name: str, *, schema: str | None = None, **kw: Any) -> None:
    """``op.drop_column`` unless the column is gone.

    On SQL Server a column with a default (or a check, or a foreign key) keeps it in a named constraint that
    must be dropped first: pass ``mssql_drop_default=True`` (``mssql_drop_check``, ``mssql_drop_foreign_key``)
    as with ``op.drop_column``; offline, Alembic's constraint-dropping block stays inside the guarded batch.
    """
    def run(**flag: Any) -> None:
        if not context.is_offline_mode() and dialect_for(op.get_bind().dialect.name).rebuilds_to_drop_column:
            # SQLite: batch mode rebuilds the table (see tenants.dialects.sqlite). Elsewhere the plain ALTER.
            with op.batch_alter_table(table_name, schema=schema) as batch:
                batch.drop_column(column_name, **kw)
        else:
            op.drop_column(table_name, column_name, schema=schema, **kw, **flag)

    _step(lambda: has_column(table_name, column_name, schema), present=True,
          tsql=f"COL_LENGTH({_tsql_object(table_name, schema)}, {_tsql_string(column_name)}) IS NOT NULL",
          flag=("if_exists", "column"), run=run)


def create_index(index_name: str, table_name: str, columns: Sequence[str | sa.ColumnElement[Any]], *,
                 schema: str | None = None, unique: bool = False, **kw: Any) -> None:
    """``op.create_index`` unless the table has an index of that name."""
    _step(lambda: has_index(table_name, index_name, schema), present=False,
          tsql=f"NOT EXISTS ({_tsql_index(index_name, table_name, schema)})",
          flag=("if_not_exists", "index"),
          run=lambda **flag: op.create_index(index_name, table_name, columns, schema=schema, unique=unique,
                                             **kw, **flag))


def drop_index(index_name: str, table_name: str, *, schema: str | None = None, **kw: Any) -> None:
    """``op.drop_index`` unless the index is gone. ``table_name`` is required: the question is asked of it."""
    _step(lambda: has_index(table_name, index_name, schema), present=True,
          tsql=f"EXISTS ({_tsql_index(index_name, table_name, schema)})",
          flag=("if_exists", "index"),
          run=lambda **flag: op.drop_index(index_name, table_name=table_name, schema=schema, **kw, **flag))




def _step(exists: Callable[[], bool], *, present: bool, tsql: str, flag: tuple[str, str],
          run: Callable[..., None]) -> None:
    """Run one DDL step if the object is ``present`` (a drop) or absent (a create).

    The step's ``flag`` (``if_not_exists=True``, ...) where the dialect has that syntax for that ``kind`` of
    object, online and offline alike. Otherwise online the database answers ``exists()`` first; offline the
    question is rendered: on SQL Server as the T-SQL condition ``tsql`` around the step, elsewhere not at all.
    """
    if not context.is_offline_mode():
        name, kind = flag
        if kind in dialect_for(op.get_bind().dialect.name).if_exists_kinds:
            run(**{name: True})  # the database answers in the statement itself: no catalog round trip
        elif exists() == present:
            run()
        return
    dialect = dialect_for(context.get_context().dialect.name)
    if dialect.guards_in_tsql:
        _tsql_guarded(tsql, run)
    else:
        name, kind = flag
        run(**({name: True} if kind in dialect.if_exists_kinds else {}))


def _tsql_guarded(condition: str, run: Callable[[], None]) -> None:
    """Offline on SQL Server: emit what ``run`` renders as ONE batch, ``IF condition BEGIN ... END``.

    Alembic writes each statement straight to the output followed by a ``GO`` line, and a ``GO`` would end
    the batch (and the IF) in the middle. So the statements are captured (with the separator off), wrapped,
    and emitted again as one statement, after which Alembic writes the one ``GO``. A step may render several
    statements (``mssql_drop_default`` first drops the default constraint): all go inside the same IF.
    ``impl.output_buffer`` and ``impl.batch_separator`` are Alembic internals, used here and nowhere else.
    """
    impl = op.get_context().impl
    saved = impl.output_buffer, getattr(impl, "batch_separator", None)
    impl.output_buffer, impl.batch_separator = io.StringIO(), None
    try:
        run()
        rendered = impl.output_buffer.getvalue().strip()
    finally:
        impl.output_buffer, impl.batch_separator = saved
    if not rendered:
        return  # an empty BEGIN END is a syntax error
    # Not re-indented: a string literal of the DDL (a default, a comment) may span lines.
    batch = f"IF {condition}\nBEGIN\n{rendered}\nEND"
    # DDL, not text(): text() would read ":name" in the rendered SQL as a bind parameter. DDL applies
    # %-formatting instead, hence the doubled percent signs.
    op.execute(sa.schema.DDL(batch.replace("%", "%%")))


def _tsql_string(value: str) -> str:
    return "N'" + value.replace("'", "''") + "'"


def _tsql_object(table: str, schema: str | None) -> str:
    """The table as OBJECT_ID and COL_LENGTH read it: quoted as the DDL quotes it, schema-qualified."""
    preparer = context.get_context().dialect.identifier_preparer
    name = preparer.quote(table) if schema is None else f"{preparer.quote_schema(schema)}.{preparer.quote(table)}"
    return _tsql_string(name)


def _tsql_index(index: str, table: str, schema: str | None) -> str:
    return (f"SELECT 1 FROM sys.indexes WHERE name = {_tsql_string(index)} "
            f"AND object_id = OBJECT_ID({_tsql_object(table, schema)})")


# --- building an index online on SQL Server ----------------------------------------------------------------
# A plain CREATE INDEX blocks writes to the table on SQL Server for the whole build: on a large table of every
# tenant of a pool, minutes of failed customer writes. Azure SQL builds it ONLINE. SQLAlchemy has no option for
# it, so this adds one the documented way (a new dialect argument, and a compiler extension for CreateIndex):
# ``create_index(..., mssql_online=True)`` renders ``... WITH (ONLINE = ON)`` on SQL Server and nothing on the
# other dialects. ``tenants check`` warns about an index on an existing table built without it.

sa.Index.argument_for("mssql", "online", False)


@compiles(CreateIndex, "mssql")
def _create_index_online(create: CreateIndex, compiler: Any, **kw: Any) -> str:
    text = compiler.visit_create_index(create, **kw)
    if create.element.dialect_options["mssql"]["online"]:
        text += " WITH (ONLINE = ON)"
    return text


# --- types ---------------------------------------------------------------------------------------------------

class Spelled(sa.types.UserDefinedType):
    """A column type written as the database spells it (``Spelled("MONEY")``): for a type no SQLAlchemy type
    renders that way on the tenant's dialect. ``tenants baseline`` writes it, and says so in the file."""

    cache_ok = True

    def __init__(self, spelling: str) -> None:
        self.spelling = spelling

    def get_col_spec(self, **kw: Any) -> str:
        return self.spelling


# --- predicates ---------------------------------------------------------------------------------------------



def _exists(kind: str, table: str, name: str | None, schema: str | None, offline: bool,
            found: Callable[[sa.Inspector], bool]) -> bool:
    """Does ``table`` (and the ``kind`` called ``name`` on it) exist? ``offline`` in ``--sql`` mode."""
    if context.is_offline_mode():
        return offline  # no database to ask
    bind = op.get_bind()
    query = dialect_for(bind.dialect.name).exists_sql.get(kind)
    if query is not None:
        return bool(bind.execute(sa.text(query), {"table": table, "schema": schema, "name": name}).scalar())
    # A fresh inspector every time: its caches would not see DDL run earlier in the same revision.
    inspector = sa.inspect(bind)
    return inspector.has_table(table, schema=schema) and found(inspector)


def has_table(table: str, schema: str | None = None, offline: bool = False) -> bool:
    return _exists("table", table, None, schema, offline, lambda i: True)


def has_column(table: str, column: str, schema: str | None = None, offline: bool = False) -> bool:
    return _exists("column", table, column, schema, offline,
                   lambda i: any(c["name"] == column for c in i.get_columns(table, schema=schema)))


def has_index(table: str, index: str, schema: str | None = None, offline: bool = False) -> bool:
    return _exists("index", table, index, schema, offline,
                   lambda i: any(ix["name"] == index for ix in i.get_indexes(table, schema=schema)))


def has_foreign_key(table: str, name: str, schema: str | None = None, offline: bool = False) -> bool:
    return _exists("foreign_key", table, name, schema, offline,
                   lambda i: any(fk.get("name") == name for fk in i.get_foreign_keys(table, schema=schema)))


def has_unique_constraint(table: str, name: str, schema: str | None = None, offline: bool = False) -> bool:
    return _exists("unique", table, name, schema, offline,
                   lambda i: any(uc.get("name") == name for uc in i.get_unique_constraints(table, schema=schema)))
