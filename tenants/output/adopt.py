"""``tenants adopt`` as text and JSON: a line per tenant (matched revision, or "no match" with the closest
revision and the differences, or why it was skipped), then a summary line. Pure functions; the CLI prints."""

from __future__ import annotations

import json

from tenants.engine.adopt import AdoptReport, AdoptRow, AdoptState
from tenants.output.format import plural


def adopt_text(report: AdoptReport) -> str:
    width = max((len(row.tenant) for row in report.rows), default=0)
    lines = []
    for row in report.rows:
        lines.append(f"{row.tenant:<{width}}  {row.state.value:<11}  {_detail(row)}".rstrip())
        lines += [f"{'':<{width}}    - {line}" for line in row.differences]
    lines.append(adopt_summary(report))
    return "\n".join(lines)


def _detail(row: AdoptRow) -> str:
    schema = f"(schema {row.fingerprint})"
    if row.state in (AdoptState.MATCHED, AdoptState.ADOPTED):
        same = f"; {', '.join(row.same_schema)} expect the same schema" if row.same_schema else ""
        return f"{row.revision} {schema}{same}"
    if row.state is AdoptState.NO_MATCH:
        if row.closest is None:
            return f"{schema}: the graph has no revisions to match"
        return f"closest {row.closest}, {plural(len(row.differences), 'difference')} {schema}:"
    if row.state is AdoptState.CHANGED:
        return f"{row.revision}: {row.why}"
    return row.why or ""


def adopt_summary(report: AdoptReport) -> str:
    counts = ", ".join(f"{n} {state}" for state, n in report.counts().items()) or "no tenants"
    line = f"adopt ({report.environment}, expected schemas: {report.source}): {counts}"
    if not report.applied:
        matched = report.counts().get(AdoptState.MATCHED.value, 0)
        line += (f"; dry run, nothing changed: `tenants adopt --yes` stamps the {plural(matched, 'matched tenant')}"
                 if matched else "; dry run, nothing changed")
    untouched = [row.tenant for row in report.rows if not row.ok]
    if untouched:
        line += f"\nnot adopted (never touched): {', '.join(untouched)}"
    return line


def adopt_json(report: AdoptReport) -> str:
    return json.dumps(report.to_dict(), indent=2)
