"""The renderings of a :class:`~tenants.engine.check.report.CheckReport` (``tenants check``): :func:`check_text`
(a terminal, a CI log), :func:`check_github` (GitHub workflow commands: one annotation per finding, on the
revision file's line, so a pull request's reviewers see it on the diff), :func:`check_markdown` (the job
summary) and :func:`check_json`. Pure functions; the CLI prints what they return.
"""

from __future__ import annotations

from tenants.engine.check.report import ACKNOWLEDGED, ERROR, WARNING, CheckReport, Finding
from tenants.output import markdown as md
from tenants.output.format import one_line, plural

__all__ = ["check_github", "check_json", "check_markdown", "check_text", "summary_line"]

_ICON = {"ok": "✅", "error": "❌", "warning": "⚠️", "acknowledged": "☑️", "skipped": "➖"}
_COMMAND = {ERROR: "error", WARNING: "warning", ACKNOWLEDGED: "notice"}


def summary_line(report: CheckReport) -> str:
    """``check passed: 4 revisions, no finding`` / ``check failed: 2 errors, 1 warning in 5 revisions``."""
    counts = [plural(sum(1 for f in report.findings if f.severity == s), s) for s in (ERROR, WARNING)]
    acknowledged = sum(1 for f in report.findings if f.severity == ACKNOWLEDGED)
    counts += [f"{acknowledged} acknowledged"] if acknowledged else []
    verdict = "passed" if report.ok else "failed"
    return f"check {verdict}: {', '.join(counts)} in {plural(len(report.revisions), 'revision')}"


def _title(finding: Finding) -> str:
    return f"{finding.column}: {finding.rule}"


def _table(report: CheckReport) -> list[str]:
    header = ["revision", *report.columns]
    rows = [[r.revision, *(report.status(r.revision, c) for c in report.columns)] for r in report.revisions]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]


def _finding_lines(finding: Finding) -> list[str]:
    lines = [f"{finding.severity:<12} {finding.file}:{finding.line}  {finding.revision}  {_title(finding)}",
             f"             {one_line(finding.message)}"]
    if finding.severity == ACKNOWLEDGED:
        lines.append(f"             acknowledged: {one_line(finding.reason or '')}")
    else:
        lines.append(f"             way out: {one_line(finding.fix)}")
    lines += [f"               {one_line(d)}" for d in finding.details]
    return lines


def check_text(report: CheckReport) -> str:
    lines = [f"dialects: {', '.join(f'{name} {how}' for name, how in report.dialects.items())}"]
    lines += report.notes
    if report.revisions:
        lines += ["", *_table(report)]
    for finding in report.findings:
        lines += ["", *_finding_lines(finding)]
    skipped = sorted({why for why in report.skipped.values()})
    if skipped:
        lines += ["", "skipped: " + "; ".join(skipped)]
    lines += ["", summary_line(report)]
    return "\n".join(lines) + "\n"


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotation(finding: Finding) -> str:
    """One GitHub workflow command: ``::error file=F,line=L,title=T::message``, escaped as GitHub documents
    (``%``, CR and LF in the message; also ``:`` and ``,`` in the properties)."""
    body = finding.message
    body += f"\nAcknowledged: {finding.reason}" if finding.severity == ACKNOWLEDGED else f"\nWay out: {finding.fix}"
    body += "".join(f"\n  {d}" for d in finding.details)
    title = f"tenants check: {finding.revision} {_title(finding)}"
    return (f"::{_COMMAND[finding.severity]} file={_escape_property(finding.file)},line={finding.line},"
            f"title={_escape_property(title)}::{_escape_data(body)}")


def check_github(report: CheckReport) -> str:
    """An annotation per finding, then the text report (for the log)."""
    return "".join(annotation(f) + "\n" for f in report.findings) + check_text(report)


def check_markdown(report: CheckReport) -> str:
    lines = [f"### {'✅' if report.ok else '❌'} tenants check: {md.text(summary_line(report))}", ""]
    lines += [f"Dialects: {md.text(', '.join(f'{n} {how}' for n, how in report.dialects.items()))}. "
              + md.text(" ".join(report.notes))]
    if report.revisions:
        lines += ["", md.row("revision", *map(md.text, report.columns)),
                  md.row(*["---"] * (len(report.columns) + 1))]
        for r in report.revisions:
            cells = [f"{_ICON[report.status(r.revision, c)]} {report.status(r.revision, c)}" for c in report.columns]
            lines.append(md.row(md.code(r.revision), *cells))
    for finding in report.findings:
        where = md.code(f"{finding.file}:{finding.line}")
        lines += ["", f"- **{finding.severity}** {where} {md.code(finding.revision)} {md.text(_title(finding))}: "
                      f"{md.cell(finding.message, 500)}"]
        lines.append(f"  - {'acknowledged: ' + md.cell(finding.reason, 300) if finding.severity == ACKNOWLEDGED else 'way out: ' + md.cell(finding.fix, 500)}")  # noqa: E501
        lines += [f"  - {md.code(d, 200)}" for d in finding.details[:20]]
    return "\n".join(lines) + "\n"


def check_json(report: CheckReport) -> dict:
    return report.to_dict()
