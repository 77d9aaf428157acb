"""What ``tenants check`` found, as plain data: one :class:`Finding` per problem, one :class:`CheckReport` per run.

A finding names its revision, its check (``stairway``, ``idempotency``, ``t-sql``, ``pool-safety``) and, for the
checks that run on a database, the dialect; its rule (``drop-column``...), its severity, what is wrong and why,
the way out, and the file and line a reviewer should look at. An acknowledged finding (see
:mod:`tenants.engine.check.source`) keeps its rule and message, with severity ``acknowledged`` and the reason
the author wrote: it is shown, it does not fail the check.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

__all__ = [
    "ACKNOWLEDGED", "CHECKS", "ERROR", "IDEMPOTENCY", "LINT", "STAIRWAY", "TSQL", "WARNING", "CheckReport",
    "Finding", "RevisionChecked", "column",
]

ERROR, WARNING, ACKNOWLEDGED = "error", "warning", "acknowledged"
STAIRWAY, IDEMPOTENCY, TSQL, LINT = "stairway", "idempotency", "t-sql", "pool-safety"
CHECKS = (STAIRWAY, IDEMPOTENCY, TSQL, LINT)
OK, SKIPPED = "ok", "skipped"


def column(check: str, dialect: str = "") -> str:
    """The report's column of a check: ``stairway sqlite`` for a check run on a database, ``t-sql`` otherwise."""
    return f"{check} {dialect}" if dialect else check


@dataclass(frozen=True)
class Finding:
    revision: str
    check: str
    rule: str
    severity: str  # error | warning | acknowledged
    message: str  # what is wrong, and why it matters on a pool of tenant databases
    fix: str  # the way out
    file: str  # the revision file, as shown (relative to the repository when there is one)
    line: int
    dialect: str = ""
    details: tuple[str, ...] = ()  # schema differences, the SQL that failed...
    reason: str | None = None  # the author's reason, for an acknowledged finding

    @property
    def column(self) -> str:
        return column(self.check, self.dialect)

    def acknowledged(self, reason: str) -> Finding:
        return replace(self, severity=ACKNOWLEDGED, reason=reason)

    def to_dict(self) -> dict:
        return {"revision": self.revision, "check": self.check, "dialect": self.dialect or None, "rule": self.rule,
                "severity": self.severity, "message": self.message, "fix": self.fix, "file": self.file,
                "line": self.line, "details": list(self.details), "reason": self.reason}


@dataclass(frozen=True)
class RevisionChecked:
    revision: str
    file: str
    message: str  # the revision's one-line message (its docstring's first line)


@dataclass(frozen=True)
class CheckReport:
    """``revisions`` checked in graph order; ``columns`` the checks run (``stairway sqlite``, ..., ``t-sql``,
    ``pool-safety``); ``skipped`` maps (revision, column) to why that cell was not checked; ``dialects`` maps
    each dialect tried to ``checked`` or why it was not; ``notes`` say how the revisions were chosen and what
    could not be seeded."""

    revisions: tuple[RevisionChecked, ...]
    columns: tuple[str, ...]
    findings: tuple[Finding, ...] = ()
    skipped: Mapping[tuple[str, str], str] = field(default_factory=dict)
    dialects: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR]

    @property
    def ok(self) -> bool:
        return not self.errors

    def status(self, revision: str, col: str) -> str:
        """``error``, ``warning``, ``acknowledged``, ``ok`` or ``skipped`` for one cell of the table."""
        found = {f.severity for f in self.findings if f.revision == revision and f.column == col}
        for severity in (ERROR, WARNING, ACKNOWLEDGED):
            if severity in found:
                return severity
        return SKIPPED if (revision, col) in self.skipped else OK

    def to_dict(self) -> dict:
        return {
            "ok": self.ok,
            "revisions": [{"revision": r.revision, "file": r.file, "message": r.message,
                           "checks": {c: self.status(r.revision, c) for c in self.columns}}
                          for r in self.revisions],
            "dialects": dict(self.dialects),
            "findings": [f.to_dict() for f in self.findings],
            "skipped": [{"revision": rev, "check": col, "why": why} for (rev, col), why in self.skipped.items()],
            "notes": list(self.notes),
        }
