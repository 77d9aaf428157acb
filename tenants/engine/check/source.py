"""A revision file as ``tenants check`` reads it: its ``upgrade``/``downgrade`` functions (:mod:`ast`), the line
of the operation a finding is about, and the findings its author acknowledged.

Acknowledging a finding (a destructive step that is intended, a type change on a table known to be small) is
written in the revision file, with a reason, in one of two ways:

* a comment on the line of the operation, or on the line just above it::

      guards.drop_column("users", "legacy_flag")  # tenants: allow drop-column: unused since 2025-03, see #812

* a module-level dict for the whole file (also for the findings of the checks that run on a database, which
  have no line of their own)::

      tenants_allow = {"no-downgrade": "the rows it deletes cannot be restored; restore from backup instead"}

The reason is required: an acknowledgment without one does not count (the finding says so). Several rules may
share a comment: ``# tenants: allow drop-table, drop-column: ...``.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
import traceback
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ALLOW_NAME", "RevisionSource", "string_of", "trivial"]

ALLOW_NAME = "tenants_allow"
_DML = re.compile(r"\b(INSERT|UPDATE|DELETE|MERGE)\b", re.IGNORECASE)
_COMMENT = re.compile(r"#\s*tenants:\s*allow\s+([a-z][a-z-]*(?:\s*,\s*[a-z][a-z-]*)*)\s*(?::|--|—)?\s*(.*)$")


def trivial(function: ast.FunctionDef | None) -> bool:
    """No function, or one whose body is only ``pass``, ``...`` or a docstring."""
    if function is None:
        return True
    return all(isinstance(s, ast.Pass) or (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
               for s in function.body)


def string_of(node: ast.AST | None) -> str | None:
    """The text of a string literal, also inside ``sa.text("...")`` / ``text("...")``; None otherwise."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.Call) and _name(node.func) == "text" and node.args:
        return string_of(node.args[0])
    return None


def _name(func: ast.AST) -> str | None:
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return None


@dataclass
class RevisionSource:
    path: Path
    shown: str  # the path as findings name it
    text: str
    tree: ast.Module
    functions: dict[str, ast.FunctionDef] = field(default_factory=dict)
    allowed: dict[str, str] = field(default_factory=dict)  # rule -> reason (tenants_allow)
    comments: dict[int, tuple[tuple[str, ...], str]] = field(default_factory=dict)  # line -> (rules, reason)

    @classmethod
    def read(cls, path: Path, shown: str) -> RevisionSource:
        text = path.read_text(encoding="utf-8")
        source = cls(path, shown, text, ast.parse(text, filename=str(path)))
        for node in source.tree.body:
            if isinstance(node, ast.FunctionDef):
                source.functions[node.name] = node
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                source._read_allow(node)
        source._read_comments()
        return source

    def _read_allow(self, node: ast.Assign | ast.AnnAssign) -> None:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        if not any(isinstance(t, ast.Name) and t.id == ALLOW_NAME for t in targets):
            return
        if isinstance(node.value, ast.Dict):
            for key, value in zip(node.value.keys, node.value.values, strict=True):
                rule, reason = string_of(key), string_of(value)
                if rule:
                    self.allowed[rule] = (reason or "").strip()

    def _read_comments(self) -> None:
        try:
            tokens = list(tokenize.generate_tokens(io.StringIO(self.text).readline))
        except (tokenize.TokenError, SyntaxError):  # pragma: no cover - the file imported, so it tokenizes
            return
        for token in tokens:
            if token.type == tokenize.COMMENT:
                match = _COMMENT.search(token.string)
                if match:
                    rules = tuple(r.strip() for r in match.group(1).split(","))
                    self.comments[token.start[0]] = (rules, match.group(2).strip())

    # --- where a finding points -------------------------------------------------------------------------

    def line_of(self, function: str) -> int:
        """The ``def`` line of ``function``, else 1 (the file)."""
        node = self.functions.get(function)
        return node.lineno if node is not None else 1

    def calls(self, function: str) -> list[ast.Call]:
        """The calls inside ``function``, in source order."""
        node = self.functions.get(function)
        if node is None:
            return []
        found = [n for n in ast.walk(node) if isinstance(n, ast.Call)]
        return sorted(found, key=lambda n: (n.lineno, n.col_offset))

    def find(self, function: str, name: str, sql: bool = False) -> int:
        """The first line of ``function`` holding a string literal that names ``name`` (a table, an index),
        else the ``def`` line: where a finding about that object points. A literal in a question
        (``guards.has_index(...)``) counts only when no step names it; with ``sql``, a SQL statement that changes
        rows (INSERT, UPDATE, DELETE, MERGE) naming it comes first."""
        node = self.functions.get(function)
        if node is None or not name:
            return self.line_of(function)
        word = re.compile(rf"(?<![\w$]){re.escape(name)}(?![\w$])", re.IGNORECASE)
        asked = {id(c) for call in ast.walk(node) if isinstance(call, ast.Call) and (_name(call.func) or "")
                 .startswith("has_") for c in ast.walk(call)}
        hits = [(id(n) in asked, n.lineno, n.value) for n in ast.walk(node)
                if isinstance(n, ast.Constant) and isinstance(n.value, str) and word.search(n.value)]
        if sql:
            hits = [(not _DML.search(text), asked, line, text) for asked, line, text in hits]
        return min(hits)[-2] if hits else node.lineno

    def raised_at(self, err: BaseException, function: str) -> int:
        """The line of this file where ``err`` was raised (the operation that failed), else the ``def`` line."""
        seen: BaseException | None = err
        while seen is not None:  # the tool's own error wraps the revision's (raise ... from err)
            lines = [frame.lineno for frame in traceback.extract_tb(seen.__traceback__)
                     if Path(frame.filename).resolve() == self.path.resolve() and frame.lineno]
            if lines:
                return lines[-1]
            seen = seen.__cause__ or seen.__context__
        return self.line_of(function)

    # --- acknowledgments ---------------------------------------------------------------------------------

    def acknowledgment(self, rule: str, line: int) -> tuple[str | None, bool]:
        """(the reason ``rule`` is acknowledged at ``line``, or None; whether an acknowledgment without a
        reason was found, so the finding can say it does not count)."""
        reasonless = False
        if rule in self.allowed:
            if self.allowed[rule]:
                return self.allowed[rule], False
            reasonless = True
        for at in (line, line - 1):
            rules, reason = self.comments.get(at, ((), ""))
            if rule in rules and (at == line or self._comment_only(at)):
                if reason:
                    return reason, False
                reasonless = True
        return None, reasonless

    def _comment_only(self, line: int) -> bool:
        lines = self.text.splitlines()
        return 0 < line <= len(lines) and lines[line - 1].lstrip().startswith("#")
