"""Summaries of a run for CI: JUnit XML for test-report viewers, Markdown for a GitHub job summary.

Pure functions over a :class:`~tenants.model.RunReport`, like :mod:`tenants.output.text`: they return text and
the caller writes it where it belongs (``$GITHUB_STEP_SUMMARY``, a ``junit.xml`` artifact).

How statuses map to JUnit, so that CI shows every tenant that did not end well as not passed:

=====================================  ==========================================================
status                                 JUnit
=====================================  ==========================================================
upgraded, downgraded, stamped,         a passed ``<testcase>``
up-to-date
failed, unknown-revision, unmanaged,   ``<failure type="<status>" message="<the error>">``
locked
skipped                                ``<skipped message="<the error>">``
=====================================  ==========================================================

A locked tenant is a failure, not a skip: another run held it, so this run did not bring it to the target,
and a viewer that counts skips as fine would show a green run. ``unknown-revision`` and ``unmanaged`` are
failures too: the tenant was never touched and needs a person. Any other status that is not good
(``throttled`` is never final, but a report can be edited) is a failure of that type. ``errors`` is always
0: a migration that raised is a failed tenant, and the tool itself failing produces no report at all.

The Markdown summary must fit GitHub's limit on a step summary (1 MiB) whatever the fleet's size, so it is
built against a byte budget: the outcome, counts and resume command always fit; the table of tenants that
did not end well shows the first ones (worst first) and folds the rest into a ``<details>`` block for as
long as the budget lasts, then says how many more are in the report file.
"""

from __future__ import annotations

import re
import shlex
import xml.etree.ElementTree as ET
from datetime import datetime, timezone

from tenants.model import GOOD, RunReport, Status, TenantResult, counted

__all__ = ["junit_xml", "markdown_summary", "MARKDOWN_LIMIT"]

# GitHub refuses a step summary over 1 MiB (1,048,576 bytes); keep clear of it.
MARKDOWN_LIMIT = 1_000_000
CELL = 200  # characters of an error (or a name) in a Markdown table cell before it is cut with "…"
SHOWN = 25  # rows of the "did not end well" table shown before the rest is folded into <details>
PROBE_LINES = 5  # distinct pressure probe errors listed
RESUME_ONLY = "failed,timed-out,skipped,locked"  # what a resume runs again; unknown-revision needs a person first

# Worst first, so the first rows of a long table are the tenants that need a person, not the skipped ones.
_SEVERITY = {Status.FAILED: 0, Status.TIMED_OUT: 1, Status.UNKNOWN_REVISION: 2, Status.UNMANAGED: 2,
             Status.LOCKED: 3, Status.THROTTLED: 4, Status.SKIPPED: 5}

# Characters XML 1.0 cannot carry at all, not even escaped (NUL, most C0 controls, lone surrogates):
# ElementTree writes them as they are and the file would not parse. A driver's error text can hold them.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _rev(revision: str | None) -> str:
    """As :func:`tenants.output.text.rev`: ``base`` is none recorded; ``?`` is unknown."""
    return "?" if revision is None else revision


def _one_line(text: str) -> str:
    return " ".join(text.split())


# ---------------------------------------------------------------------------------------------------- JUnit


def _xml_text(text: str) -> str:
    return _NOT_XML.sub("\ufffd", text)


def _seconds(value: float) -> str:
    # Three decimals: Surefire's and the Jenkins schema's time format (no exponent, no thousands separator).
    return f"{max(value, 0.0):.3f}"


def _timestamp(started_at: str) -> str | None:
    """The run's start in Ant's JUnit form: UTC, to the second, no offset (some readers reject one)."""
    try:
        moment = datetime.fromisoformat(started_at)
    except ValueError:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return moment.strftime("%Y-%m-%dT%H:%M:%S")


def _details(result: TenantResult) -> str:
    """What a test viewer shows for one tenant: where it was, where it is, what ran."""
    lines = [f"status: {result.status.value}",
             f"from: {_rev(result.from_revision)}",
             f"to: {_rev(result.to_revision)}"]
    if result.applied:
        lines.append(f"applied: {', '.join(result.applied)}")
    if result.attempts:
        lines.append(f"attempts: {result.attempts}")
    return "\n".join(lines)  # the error is in <failure> or <skipped>


def junit_xml(report: RunReport) -> str:
    """The run as JUnit XML: one ``<testsuite>`` named ``tenants <operation> <environment>``, one
    ``<testcase>`` per tenant (``classname="tenants.<environment>"``, ``name`` the tenant, ``time`` its
    duration), in the report's order. See the module docstring for how statuses map.

    The suite carries the run's id, environment, operation, target, head, concurrency and tool version as
    ``<properties>``. Returns a complete document, declaration included; write it as UTF-8.
    """
    environment = report.environment
    failures = skipped = 0
    cases = []
    for result in report.results:
        case = ET.Element("testcase", {"classname": _xml_text(f"tenants.{environment}"),
                                       "name": _xml_text(result.tenant), "time": _seconds(result.duration)})
        if result.status not in GOOD:
            message = _xml_text(_one_line(result.error or "") or result.status.value)
            if result.status is Status.SKIPPED:
                skipped += 1
                ET.SubElement(case, "skipped", {"message": message})
            else:
                failures += 1
                failure = ET.SubElement(case, "failure", {"type": result.status.value, "message": message})
                failure.text = _xml_text(result.error or result.status.value)
        ET.SubElement(case, "system-out").text = _xml_text(_details(result))
        cases.append(case)

    counts = {"tests": str(len(report.results)), "failures": str(failures), "errors": "0",
              "skipped": str(skipped), "time": _seconds(report.duration)}
    root = ET.Element("testsuites", {"name": "tenants", **counts})
    suite = ET.SubElement(root, "testsuite", {"name": _xml_text(f"tenants {report.operation} {environment}"),
                                              **counts})
    timestamp = _timestamp(report.started_at)
    if timestamp:
        suite.set("timestamp", timestamp)
    properties = ET.SubElement(suite, "properties")
    for name, value in (
        ("run_id", report.run_id),
        ("environment", environment),
        ("operation", report.operation),
        ("target", report.target),
        ("head", report.head),
        ("concurrency", report.concurrency),
        ("tool_version", report.tool_version),
        ("throttled", report.throttled or None),
    ):
        if value not in (None, ""):
            ET.SubElement(properties, "property", {"name": name, "value": _xml_text(str(value))})
    suite.extend(cases)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


# ------------------------------------------------------------------------------------------------- Markdown

# Backslash-escaped in a table cell: "|" would end the cell; the rest would start emphasis, a code span, a
# link, an HTML tag (an error text with "<!--" would hide the rest of the page) or an entity.
_MD_SPECIAL = re.compile(r"([\\|`*_~\[\]<>&])")


def _cut(text: str, width: int = CELL) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _cell(text: str | None, width: int = CELL) -> str:
    """One table cell: one line, at most ``width`` characters of the text, nothing Markdown would read."""
    return _MD_SPECIAL.sub(r"\\\1", _cut(_one_line(text or ""), width))


def _code(text: str, width: int = CELL) -> str:
    """An inline code span (outside tables) that holds any text, backticks included."""
    text = _cut(_one_line(text), width)
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _size(text: str) -> int:
    return len(text.encode("utf-8"))


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _heading(report: RunReport) -> str:
    total = len(report.results)
    where = f"tenants {report.operation} on {_cut(_one_line(report.environment))}"
    if not total:
        return f"## ✅ {where}: no tenants selected"
    bad = len(report.failed)
    if not bad:
        return f"## ✅ {where}: {'the tenant' if total == 1 else f'all {total} tenants'} ended well"
    return f"## ❌ {where}: {bad} of {_plural(total, 'tenant')} did not end well"


def _head(report: RunReport) -> str:
    """Everything but the per-tenant table: bounded in size whatever the fleet's."""
    target = f"Target {_code(report.target)}"
    if report.head is not None:
        target += " (the head)" if report.head == report.target else f", head {_code(report.head)}"
    facts = [target, f"concurrency {report.concurrency}", f"{report.duration:.1f} s", f"run {_code(report.run_id)}"]
    if report.tool_version:
        facts.append(f"tenants {_cut(_one_line(report.tool_version), 40)}")
    lines = [_heading(report), "", " · ".join(facts), ""]

    if report.results:
        lines += ["| status | tenants |", "| :-- | --: |"]
        lines += [f"| {status} | {n} |" for status, n in report.counts.items()]
        lines += [f"| **total** | **{len(report.results)}** |", ""]

    notes = []
    if report.throttled:
        note = f"Throttled {_plural(report.throttled, 'time')} by the database"
        if report.concurrency_changes:
            note += (f": concurrency lowered from {report.concurrency} to "
                     f"{min(n for _, n in report.concurrency_changes)}")
        notes.append(note + ".")
    if report.pressure_wait:
        notes.append(f"Tenant starts waited {report.pressure_wait:.1f} s for the pool's load to drop.")
    for line, times in report.pressure_errors[:PROBE_LINES]:  # each says what the probe then did
        notes.append(f"Pressure probe: {_cell(counted(line, times), 2 * CELL)}")
    if len(report.pressure_errors) > PROBE_LINES:
        notes.append(f"Pressure probe: {len(report.pressure_errors) - PROBE_LINES} more errors in the report file.")
    if report.skipped_databases:
        named = [f"{_cell(name, 60)} ({_cell(why, 60)})" for name, why in report.skipped_databases[:10]]
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
    return f"**To resume:** {_code(shlex.join(command), width=10_000)}\n"


_TABLE = "| tenant | status | from → to | error |\n| --- | --- | --- | --- |\n"


def _row(result: TenantResult) -> str:
    moved = "" if result.from_revision is None and result.to_revision is None else \
        f"{_cell(_rev(result.from_revision), 60)} → {_cell(_rev(result.to_revision), 60)}"
    return f"| {_cell(result.tenant)} | {result.status.value} | {moved} | {_cell(result.error)} |\n"


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


def _fit(text: str, limit: int) -> str:
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
    bad = sorted(report.failed, key=lambda r: _SEVERITY.get(r.status, len(_SEVERITY)))
    table = _failures(bad, limit - _size(head) - _size(tail))
    return _fit((head + table + tail).rstrip("\n") + "\n", limit)


def status_junit(report, allow_offline: bool = False) -> str:
    """JUnit XML for ``tenants verify``: one test case per tenant, failing unless it is at head; one per
    offline database (not read), failing, or skipped with ``allow_offline``."""
    from tenants.model import State

    offline = len(report.offline)
    suite = ET.Element("testsuite", name=f"tenants verify {report.environment}",
                       tests=str(len(report.tenants) + offline),
                       failures=str(sum(t.state is not State.AT_HEAD for t in report.tenants)
                                    + (0 if allow_offline else offline)), errors="0",
                       skipped=str(offline if allow_offline else 0))
    for t in report.tenants:
        case = ET.SubElement(suite, "testcase", classname=f"tenants.{report.environment}", name=t.tenant)
        if t.state is not State.AT_HEAD:
            message = _xml_text(_one_line(t.error or f"{t.state.value}: at {','.join(t.current) or 'base'}, "
                                                      f"head is {report.head}"))
            failure = ET.SubElement(case, "failure", type=t.state.value, message=message)
            failure.text = message
    for name, why in report.offline:
        case = ET.SubElement(suite, "testcase", classname=f"tenants.{report.environment}", name=name)
        message = _xml_text(_one_line(f"not verified: {why}"))
        if allow_offline:
            ET.SubElement(case, "skipped", message=message)
        else:
            failure = ET.SubElement(case, "failure", type="not-verified", message=message)
            failure.text = message
    root = ET.Element("testsuites", name="tenants")
    root.append(suite)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
