"""The offline T-SQL check: the revision's ``tenants sql --dialect mssql``, upgrade and downgrade, parsed with
sqlglot's T-SQL dialect batch by batch (the text between ``GO`` lines), and every DDL statement inside an
existence check (``IF OBJECT_ID(...) IS NULL BEGIN ... END``, ``IF COL_LENGTH``, ``IF [NOT] EXISTS``).

No SQL Server runs here: this is the script a DBA would run by hand, or the deploy job shows for review, and
it must be safe to run twice. Alembic's own version-table statements are left out (the script guards them
itself, :func:`tenants.dialects.mssql.idempotent_script`).

sqlglot reads most T-SQL. What it cannot read it keeps as an opaque ``Command`` (Alembic's block that drops a
column's default constraint is one, see tests/test_tsql.py): inside an existence check that is accepted;
outside one, a Command that starts like DDL is unguarded DDL, any other is a warning to read it by hand.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator

from tenants.dialects import placeholder_urls
from tenants.engine.check.report import ERROR, TSQL, WARNING, Finding
from tenants.engine.check.source import RevisionSource
from tenants.engine.revisions import Revisions
from tenants.errors import TenantsError

__all__ = ["TSQL_DIALECT", "batches", "check_tsql"]

TSQL_DIALECT = "mssql"
_EXISTENCE = re.compile(r"\b(OBJECT_ID|COL_LENGTH|EXISTS|INDEXPROPERTY|TYPE_ID|SCHEMA_ID|DB_ID)\b", re.I)
_DDL_WORD = re.compile(r"^\s*(CREATE|ALTER|DROP|EXEC|EXECUTE|DECLARE|sp_rename)\b", re.I)
_GUARD_FIX = ("write the step with tenants.guards (create_table, add_column, create_index, drop_*) instead of op "
              "or raw SQL; for a step without a helper, wrap the T-SQL of op.execute in IF OBJECT_ID(...) IS NULL "
              "BEGIN ... END yourself")


def batches(script: str) -> list[str]:
    """The script's batches: the text between lines that are exactly ``GO`` (blank ones dropped)."""
    return [b.strip() for b in re.split(r"^GO$", script, flags=re.MULTILINE) if b.strip()]


def check_tsql(revisions: Revisions, revision: str, parent: str | None, source: RevisionSource,
               *, downgrade: bool = True) -> list[Finding]:
    """Findings of the T-SQL of ``revision``'s upgrade (from ``parent``) and, with ``downgrade``, its downgrade."""
    url = placeholder_urls()[TSQL_DIALECT]
    steps = [("upgrade", parent, revision)] + ([("downgrade", revision, parent)] if downgrade else [])
    findings: list[Finding] = []
    for function, start, target in steps:
        try:
            script = revisions.offline_sql(url, start, target, function)
        except TenantsError as err:
            findings.append(Finding(
                revision, TSQL, "tsql-render", ERROR, f"the {function} cannot be rendered offline: {err}",
                "offline nothing is connected: a step that reads the database must be guarded with "
                "context.is_offline_mode()", source.shown, source.raised_at(err, function)))
            continue
        findings += _check_script(script, revision, function, source, revisions.version_table)
    return findings


def _check_script(script: str, revision: str, function: str, source: RevisionSource,
                  version_table: str) -> list[Finding]:
    import sqlglot
    from sqlglot import ErrorLevel
    from sqlglot.errors import ParseError

    findings = []
    for number, batch in enumerate(batches(script), 1):
        try:
            with _quiet_sqlglot():  # its "falling back to a Command" warnings: handled below, not for the log
                statements = [s for s in sqlglot.parse(batch, read="tsql", error_level=ErrorLevel.RAISE)
                              if s is not None]
        except ParseError as err:
            first = str(err).splitlines()[0]
            findings.append(Finding(
                revision, TSQL, "tsql-parse", ERROR,
                f"batch {number} of the {function} is not T-SQL that sqlglot can read: {first}",
                "fix the SQL of op.execute for SQL Server (or render it per dialect); check it with "
                "`tenants sql --dialect mssql`", source.shown, source.line_of(function),
                details=tuple(batch.splitlines()[:6])))
            continue
        for statement in statements:
            findings += _statement(statement, revision, function, source, version_table)
    return findings


@contextlib.contextmanager
def _quiet_sqlglot() -> Iterator[None]:
    logger = logging.getLogger("sqlglot")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _statement(statement, revision: str, function: str, source: RevisionSource, version_table: str
               ) -> list[Finding]:
    from sqlglot import exp

    findings = []
    for node in statement.find_all(exp.Create, exp.Alter, exp.Drop, exp.Command):
        if isinstance(node, exp.Drop) and node.find_ancestor(exp.Alter):
            continue  # a DROP inside ALTER TABLE is part of that ALTER
        target = _object(node)
        if target.lower() == version_table.lower():
            continue
        guard = node.find_ancestor(exp.IfBlock)
        text = " ".join(node.sql(dialect="tsql", comments=False).split())
        if guard is not None and _EXISTENCE.search(guard.this.sql(dialect="tsql")):
            continue
        if isinstance(node, exp.Command) and not _DDL_WORD.match(text):
            findings.append(Finding(
                revision, TSQL, "tsql-unreadable", WARNING,
                f"sqlglot could not read a statement of the {function}: {text[:120]}",
                "read it by hand in `tenants sql --dialect mssql`", source.shown, source.line_of(function)))
            continue
        where = "inside an IF that asks no existence question" if guard is not None else "without an existence check"
        findings.append(Finding(
            revision, TSQL, "tsql-unguarded", ERROR,
            f"`{text[:120]}` runs {where} in the offline T-SQL of the {function}: run twice (a rerun, a "
            "resumed deploy, a DBA running the script again) it fails or does it twice",
            _GUARD_FIX, source.shown, source.find(function, target)))
    return findings


def _object(node) -> str:
    """The name of the table, index or column a DDL statement is about (for its line in the source)."""
    from sqlglot import exp

    this = node.this
    if isinstance(node, exp.Command):
        words = str(node.expression or "").split()
        return words[1].strip("[]") if len(words) > 1 else ""
    if isinstance(this, exp.Schema):
        this = this.this
    if this is not None and getattr(this, "name", ""):
        return this.name
    table = node.find(exp.Table)  # DROP INDEX ix ON t: the index is the first "table"
    return table.name if table is not None else ""
