"""The pool-safety lint: what a revision's source does that hurts a busy elastic pool, found with :mod:`ast`
(and, for ``op.execute`` of a SQL literal, in that SQL). Each rule says why and the way out.

The destructive and locking rules look at ``upgrade()`` only: a downgrade drops what its upgrade created, and
runs on one tenant at a time, by hand. A table created earlier in the same ``upgrade()`` is new and empty, so
indexing it or adding a NOT NULL column to it is harmless.

======================  ========  ==============================================================================
rule                    severity  caught
======================  ========  ==============================================================================
``no-downgrade``        error     ``downgrade()`` missing or only ``pass`` while ``upgrade()`` does something
``drop-table``          error     ``drop_table`` (``op``, ``guards``, batch) or ``DROP TABLE`` in ``upgrade()``
``drop-column``         error     ``drop_column`` or ``ALTER TABLE ... DROP COLUMN`` in ``upgrade()``
``not-null-no-default`` error     ``add_column`` of a ``nullable=False`` column without ``server_default``
``type-change``         error     ``alter_column(..., type_=...)``: the table is rewritten under a lock
``unbounded-dml``       error     ``UPDATE`` / ``DELETE`` without ``WHERE`` in ``op.execute``
``online-index``        warning   ``create_index`` on an existing table without ``mssql_online=True``
======================  ========  ==============================================================================
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator

from tenants.engine.check.report import ERROR, LINT, WARNING, Finding
from tenants.engine.check.source import RevisionSource, string_of, trivial

__all__ = ["lint"]

ACKNOWLEDGE = "if it is intended, say so on that line: `# tenants: allow {rule}: <why>`"

WHY = {
    "no-downgrade": (
        "no downgrade: `tenants downgrade` cannot take a tenant back over this revision (an incident on one "
        "customer), and nothing proves the revision reversible",
        "write downgrade() as the inverse of upgrade(), with tenants.guards (drop what upgrade created); if it "
        "truly cannot be undone, say why in the file: tenants_allow = {\"no-downgrade\": \"<why>\"}"),
    "drop-table": (
        "drops table {name}: its rows are gone on every tenant, and neither a rerun nor a downgrade brings them "
        "back",
        "stop using it in one release and drop it in a later one; " + ACKNOWLEDGE),
    "drop-column": (
        "drops column {name}: its values are gone on every tenant (SQLite rebuilds the whole table to do it)",
        "stop using it in one release and drop it in a later one; " + ACKNOWLEDGE),
    "not-null-no-default": (
        "adds NOT NULL column {name} without a server default: the ALTER fails on every tenant that has rows "
        "in the table (SQLite refuses it even on an empty one)",
        "give it a server_default, or add it nullable, backfill it, and make it NOT NULL in a later revision"),
    "type-change": (
        "changes the type of {name}: SQL Server and PostgreSQL rewrite the table under an exclusive lock, on "
        "every tenant of the pool, for as long as the table is large",
        "add a new column, backfill it in batches, switch the code over, drop the old column in a later "
        "release; for a table known to be small, " + ACKNOWLEDGE),
    "unbounded-dml": (
        "{name} without a WHERE: one transaction over every row of the table, holding its locks and the pool's "
        "log rate until it ends, and doing it all again on a rerun",
        "add a WHERE that matches only the rows still to change (the rerun then changes nothing), and on a "
        "large table backfill in batches (UPDATE TOP (n) ... WHERE ... until no row changes)"),
    "online-index": (
        "builds index {name} on an existing table offline: SQL Server blocks writes to the table for the whole "
        "build",
        "pass mssql_online=True (guards.create_index / op.create_index render WITH (ONLINE = ON) on SQL "
        "Server; Azure SQL supports it); for a table known to be small, " + ACKNOWLEDGE),
}
SEVERITY = {"online-index": WARNING}

_CREATE_NAMES = {"create_table"}
_SQL_RULES = [
    ("drop-table", re.compile(r"^\s*DROP\s+TABLE\s+(?:IF\s+EXISTS\s+)?([\w.\[\]\"]+)", re.I)),
    ("drop-column", re.compile(r"^\s*ALTER\s+TABLE\s+([\w.\[\]\"]+)\s+DROP\s+(?:COLUMN\s+)?(?!CONSTRAINT\b)"
                               r"(?:IF\s+EXISTS\s+)?([\w\[\]\"]+)", re.I)),
    ("online-index", re.compile(r"^\s*CREATE\s+(?:UNIQUE\s+)?(?:(?:NON)?CLUSTERED\s+)?INDEX\s+([\w\[\]\"]+)\s+ON\s+"
                                r"([\w.\[\]\"]+)", re.I)),
    ("not-null-no-default", re.compile(r"^\s*ALTER\s+TABLE\s+([\w.\[\]\"]+)\s+ADD\s+(?:COLUMN\s+)?"
                                       r"(?:IF\s+NOT\s+EXISTS\s+)?([\w\[\]\"]+)\b", re.I)),
]
_DML = re.compile(r"^\s*(UPDATE|DELETE)\b(?:\s+TOP\s*\(\s*\d+\s*\))?\s*(?:FROM\s+)?([\w.\[\]\"]+)", re.I)


def lint(source: RevisionSource, revision: str) -> list[Finding]:
    """The pool-safety findings of one revision file (acknowledged ones included, marked as such)."""
    found: list[tuple[str, int, str]] = []  # (rule, line, the object named)
    if trivial(source.functions.get("downgrade")) and not trivial(source.functions.get("upgrade")):
        found.append(("no-downgrade", source.line_of("downgrade"), ""))
    created: set[str] = set()
    batches = _batch_tables(source)
    for call in source.calls("upgrade"):
        name = _callee(call)
        if name in _CREATE_NAMES and string_of(_arg(call, 0, "table_name")):
            created.add(string_of(_arg(call, 0, "table_name")).lower())
        found += [(rule, call.lineno, what) for rule, what in _call_rules(call, name, created, batches)]
    return [_finding(source, revision, rule, line, what) for rule, line, what in found]


def _finding(source: RevisionSource, revision: str, rule: str, line: int, what: str) -> Finding:
    message, fix = WHY[rule]
    fix = fix.replace("{rule}", rule)
    finding = Finding(revision, LINT, rule, SEVERITY.get(rule, ERROR), message.format(name=what), fix, source.shown,
                      line)
    reason, reasonless = source.acknowledgment(rule, line)
    if reason:
        return finding.acknowledged(reason)
    if reasonless:
        return Finding(**{**finding.__dict__, "fix": fix + " (an acknowledgment needs a reason after the rule)"})
    return finding


def _callee(call: ast.Call) -> str | None:
    """``op.drop_table`` / ``guards.drop_table`` / ``batch_op.drop_column`` -> the operation's name."""
    return call.func.attr if isinstance(call.func, ast.Attribute) else None


def _arg(call: ast.Call, index: int, keyword: str) -> ast.AST | None:
    for kw in call.keywords:
        if kw.arg == keyword:
            return kw.value
    return call.args[index] if len(call.args) > index else None


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((kw.value for kw in call.keywords if kw.arg == name), None)


def _is_const(node: ast.AST | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _batch_tables(source: RevisionSource) -> dict[str, str]:
    """``with op.batch_alter_table("users") as batch_op``: {"batch_op": "users"} in ``upgrade()``."""
    found = {}
    node = source.functions.get("upgrade")
    for item in (i for w in ast.walk(node) if isinstance(w, ast.With) for i in w.items) if node else ():
        call, alias = item.context_expr, item.optional_vars
        if isinstance(call, ast.Call) and _callee(call) == "batch_alter_table" and isinstance(alias, ast.Name):
            found[alias.id] = string_of(_arg(call, 0, "table_name")) or "?"
    return found


def _call_rules(call: ast.Call, name: str | None, created: set[str], batches: dict[str, str]
                ) -> Iterator[tuple[str, str]]:
    """(rule, the object named) for each rule one call breaks."""
    receiver = call.func.value.id if isinstance(call.func, ast.Attribute) and isinstance(call.func.value,
                                                                                        ast.Name) else ""
    batch = receiver in batches
    table = batches[receiver] if batch else string_of(_arg(call, 0, "table_name"))
    if name == "drop_table":
        yield "drop-table", table or "?"
    elif name == "drop_column":
        column = string_of(_arg(call, 0, "column_name") if batch else _arg(call, 1, "column_name"))
        yield "drop-column", ".".join(x for x in (table, column) if x) or "?"
    elif name == "add_column":
        yield from _add_column(call, table, batch, created)
    elif name == "alter_column" and _keyword(call, "type_") is not None:
        yield "type-change", ".".join(x for x in (table, string_of(_arg(call, 1, "column_name"))) if x) or "?"
    elif name == "create_index":
        on = string_of(_arg(call, 1, "table_name"))
        if on is not None and on.lower() not in created and not _is_const(_keyword(call, "mssql_online"), True):
            yield "online-index", string_of(_arg(call, 0, "index_name")) or "?"
    elif name == "execute":
        yield from _sql_rules(string_of(_arg(call, 0, "sqltext")), created)


def _add_column(call: ast.Call, table: str | None, batch: bool, created: set[str]) -> Iterator[tuple[str, str]]:
    column = _arg(call, 0, "column") if batch else _arg(call, 1, "column")
    if not isinstance(column, ast.Call) or (table or "").lower() in created:
        return
    not_null = _is_const(_keyword(column, "nullable"), False)
    default = _keyword(column, "server_default")
    if not_null and (default is None or _is_const(default, None)):
        yield "not-null-no-default", ".".join(x for x in (table, string_of(_arg(column, 0, "name"))) if x) or "?"


def _sql_rules(sql: str | None, created: set[str]) -> Iterator[tuple[str, str]]:
    """The rules broken by the statements of a SQL literal."""
    for statement in (sql or "").split(";"):
        dml = _DML.match(statement)
        if dml and not re.search(r"\bWHERE\b", statement, re.I):
            yield "unbounded-dml", f"{dml.group(1).upper()} of {dml.group(2)}"
        for rule, pattern in _SQL_RULES:
            match = pattern.match(statement)
            if match is None or not _sql_applies(rule, statement, match, created):
                continue
            yield rule, ".".join(match.groups()) if rule != "online-index" else match.group(1)


def _sql_applies(rule: str, statement: str, match: re.Match, created: set[str]) -> bool:
    if rule == "online-index":
        return match.group(2).strip("[]\"").lower() not in created and not re.search(r"\bONLINE\s*=\s*ON\b",
                                                                                      statement, re.I)
    if rule == "not-null-no-default":
        return bool(re.search(r"\bNOT\s+NULL\b", statement, re.I)) and not re.search(r"\bDEFAULT\b", statement, re.I)
    return True
