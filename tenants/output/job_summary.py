"""The run as a GitHub job summary (Markdown for ``$GITHUB_STEP_SUMMARY``): :func:`markdown_summary`.

A pure function over a :class:`~tenants.model.RunReport`; the CLI appends the text to the summary file. Every
piece of the report goes through :mod:`tenants.output.markdown`, the escaping rule shared with
``tenants plan --format markdown`` (both can land on the same page). The other CI file is
:mod:`tenants.output.junit`.

The summary must fit GitHub's limit on a step summary (1 MiB) whatever the fleet's size, so it is built
against a byte budget: the outcome, counts and resume command always fit; the table of tenants that did not
end well shows the first ones (worst first) and folds the rest into a ``<details>`` block for as long as the
budget lasts, then says how many more are in the report file.
"""

from __future__ import annotations

import shlex

from tenants.model import RESUMABLE, RunReport, TenantResult, counted, worst_first
from tenants.output import markdown as md
from tenants.output.format import cut, one_line, outcome, plural, rev

__all__ = ["markdown_summary", "MARKDOWN_LIMIT", "CELL", "SHOWN"]

# GitHub refuses a step summary over 1 MiB (1,048,576 bytes); keep clear of it.
MARKDOWN_LIMIT = 1_000_000
CELL = 200  # characters of an error (or a name) in a Markdown table cell before it is cut with "…"
SHOWN = 25  # rows of the "did not end well" table shown before the rest is folded into <details>
PROBE_LINES = 5  # distinct pressure probe errors listed
RESUME_ONLY = ",".join(status.value for status in RESUMABLE)  # the --only of the resume command


def _size(text: str) -> int:
    return len(text.encode("utf-8"))


def _heading(report: RunReport) -> str:
    mark, how = outcome(report)
    return f"## {mark} tenants {report.operation} on {cut(one_line(report.environment), CELL)}: {how}"


def _head(report: RunReport) -> str:
    """Everything but the per-tenant table: bounded in size whatever the fleet's."""
    target = f"Target {md.code(report.target, CELL)}"
    if report.head is not None:
        target += " (the head)" if report.head == report.target else f", head {md.code(report.head, CELL)}"
    facts = [target, f"concurrency {report.concurrency}", f"{report.duration:.1f} s",
             f"run {md.code(report.run_id, CELL)}"]
    if report.tool_version:
        facts.append(f"tenants {cut(one_line(report.tool_version), 40)}")
    lines = [_heading(report), "", " · ".join(facts), ""]

    if report.results:
        lines += ["| status | tenants |", "| :-- | --: |"]
        lines += [f"| {status} | {n} |" for status, n in report.counts.items()]
        lines += [f"| **total** | **{len(report.results)}** |", ""]

    notes = []
    if report.throttled:
        note = f"Throttled {plural(report.throttled, 'time')} by the database"
        if report.concurrency_changes:
            note += (f": concurrency lowered from {report.concurrency} to "
                     f"{min(n for _, n in report.concurrency_changes)}")
        notes.append(note + ".")
    if report.pressure_wait:
        notes.append(f"Tenant starts waited {report.pressure_wait:.1f} s for the pool's load to drop.")
    for line, times in report.pressure_errors[:PROBE_LINES]:  # each says what the probe then did
        notes.append(f"Pressure probe: {md.cell(counted(line, times), 2 * CELL)}")
    if len(report.pressure_errors) > PROBE_LINES:
        notes.append(f"Pressure probe: {len(report.pressure_errors) - PROBE_LINES} more errors in the report file.")
    if report.skipped_databases:
        named = [f"{md.cell(name, 60)} ({md.cell(why, 60)})" for name, why in report.skipped_databases[:10]]
        more = len(report.skipped_databases) - len(named)
        notes.append(f"Not tenants, passed over: {', '.join(named)}{f' ... and {more} more' if more else ''}.")
    if notes:
        lines += [f"- {note}" for note in notes] + [""]
    return "\n".join(lines)


def _resume(report: RunReport, report_file: str) -> str:
    """The command that runs again what this run did not finish; "" when there is nothing to resume."""
    wanted = set(RESUME_ONLY.split(","))
    if report.operation != "upgrade" or not any(r.status.value in wanted for r in report.results):
        return ""  # downgrade and stamp name their tenants one by one: the per-tenant table says which
    command = ["tenants", "--env", report.environment, "upgrade"]
    if report.head is not None and report.target != report.head:
        command.append(report.target)  # resume to the same target, not to a newer head
    command += ["--from-report", report_file, "--only", RESUME_ONLY]
    return f"**To resume:** {md.code(shlex.join(command), 10_000)}\n"


_TABLE = "| tenant | status | from → to | error |\n| --- | --- | --- | --- |\n"


def _row(result: TenantResult) -> str:
    moved = "" if result.from_revision is None and result.to_revision is None else \
        f"{md.cell(rev(result.from_revision), 60)} → {md.cell(rev(result.to_revision), 60)}"
    return md.row(md.cell(result.tenant, CELL), result.status.value, moved, md.cell(result.error, CELL)) + "\n"


class _Budget:
    """Text appended only while it stays within ``limit`` bytes, after room kept for what must follow."""

    def __init__(self, limit: int) -> None:
        self.left = limit
        self.parts: list[str] = []

    def add(self, text: str, keep: int = 0) -> bool:
        size = _size(text)
        if size + keep > self.left:
            return False
        self.parts.append(text)
        self.left -= size
        return True


def _not_shown(n: int) -> str:
    return f"\n... and {n} more not shown here (size limit): see the report file\n"


def _failures(bad: list[TenantResult], budget: int) -> str:
    """The table of tenants that did not end well, within ``budget`` bytes ("" if not even its title fits)."""
    if not bad:
        return ""
    out = _Budget(budget)
    # Whatever is cut, one line saying how many: its longest form is kept free until the end.
    keep = _size(_not_shown(len(bad)))
    if not out.add(f"### Did not end well ({len(bad)})\n\n{_TABLE}", keep):
        return ""
    shown = 0
    for result in bad[:SHOWN]:
        if not out.add(_row(result), keep):
            out.add(_not_shown(len(bad) - shown))
            return "".join(out.parts) + "\n"
        shown += 1
    rest = bad[SHOWN:]
    if rest:
        close = "\n</details>\n"
        opening = f"\n... and {len(rest)} more\n\n<details><summary>{len(rest)} more</summary>\n\n{_TABLE}"
        if out.add(opening, keep + _size(close)):
            for i, result in enumerate(rest):
                if not out.add(_row(result), keep + _size(close)):
                    out.add(_not_shown(len(rest) - i))
                    break
            out.add(close)
        else:
            out.add(_not_shown(len(rest)))
    return "".join(out.parts) + "\n"


def _fit_bytes(text: str, limit: int) -> str:
    """The last guard: cut at a character boundary so the text is at most ``limit`` bytes."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    marker = "\n\n... (cut: size limit)\n"
    room = max(limit - _size(marker), 0)
    return (data[:room].decode("utf-8", errors="ignore") + marker).encode("utf-8")[:limit].decode(
        "utf-8", errors="ignore")


def markdown_summary(report: RunReport, limit: int = MARKDOWN_LIMIT, *, report_file: str = "report.json") -> str:
    """The run as a GitHub job summary (append it to ``$GITHUB_STEP_SUMMARY``).

    A heading with the outcome (✅ every tenant ended well, ❌ otherwise), the environment and operation;
    the target, concurrency, duration and run id; a table of tenants per status; the throttling, pressure
    and discovery notes when there are any; a table of the tenants that did not end well (worst first,
    errors cut to :data:`CELL` characters, :data:`SHOWN` rows then the rest folded into ``<details>``); and,
    when an upgrade left tenants failed, skipped or locked, the command that resumes it from
    ``report_file`` (the path the caller wrote the JSON report to).

    The result is at most ``limit`` bytes in UTF-8 for any report: the per-tenant rows are what gives way.
    """
    head = _head(report) + "\n"
    tail = _resume(report, report_file)
    bad = worst_first(report.failed)
    table = _failures(bad, limit - _size(head) - _size(tail))
    return _fit_bytes((head + table + tail).rstrip("\n") + "\n", limit)


