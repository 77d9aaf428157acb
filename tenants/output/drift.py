"""The renderings of a :class:`~tenants.model.DriftReport` (``tenants drift``, ``tenants verify --schema``):
:func:`drift_text` (a terminal or a CI log), :func:`drift_markdown` (a GitHub job summary, escaped by
:mod:`tenants.output.markdown`), :func:`drift_json`; the JUnit file is :func:`tenants.output.junit.drift_junit`.
Pure functions; the CLI prints what they return.

Tenants are shown by group (:meth:`DriftReport.groups`): tenants at one revision with one fingerprint are one
line, so 300 identical tenants are one line and the few that differ stand out, each with its differences.
"""

from __future__ import annotations

from tenants.model import DriftGroup, DriftReport, Verdict
from tenants.output import markdown as md
from tenants.output.format import fold, one_line, plural

__all__ = ["drift_json", "drift_lines", "drift_markdown", "drift_text", "reference_line", "summary_line"]

NOT_VERIFIED = "not-verified"  # an offline database: its schema could not be read


def reference_line(report: DriftReport) -> str:
    """Where the expected schemas come from, in one line."""
    revisions = plural(report.revisions, "revision")
    if report.reference == "scratch":
        where = f"built on a scratch {report.dialect} database"
    elif report.reference == "cache":
        where = f"read from the cache (built on a scratch {report.dialect} database)"
    else:
        where = "consensus of the fleet (the largest group of tenants recorded at each revision)"
    return f"expected schemas: {where}, {revisions}"


def _consensus_lines(report: DriftReport) -> list[str]:
    lines = []
    for where, agreeing, total, tied in report.consensus:
        if tied:
            lines.append(f"  {where}: tie, {len(tied)} schemas of {agreeing} tenant(s) each "
                         f"({', '.join(tied)}): no expected schema")
        else:
            lines.append(f"  {where}: {agreeing} of {plural(total, 'tenant')} agree")
    return lines


def _who(group: DriftGroup) -> str:
    if len(group.tenants) == 1:
        return group.tenants[0]
    if group.verdict in (Verdict.MATCH, Verdict.NEW):
        return plural(len(group.tenants), "tenant")
    return f"{plural(len(group.tenants), 'tenant')} ({fold(list(group.tenants))})"


def _group_line(group: DriftGroup) -> str:
    line = f"{group.verdict.value:<8} {_who(group)}"
    if group.verdict is Verdict.NEW:
        return line + "  no revision recorded, no tables"
    if group.current:
        line += f"  at {','.join(group.current)}"
    if group.fingerprint:
        line += f"  fingerprint {group.fingerprint}"
    if group.reason:
        line += f"  {one_line(group.reason)}"
    return line


def drift_lines(report: DriftReport, *, matching: bool = True, offline: bool = True) -> list[str]:
    """One line per group, each drifted group followed by its differences, then one per offline database;
    ``matching=False`` leaves out the groups that match or are new and ``offline=False`` the offline databases
    (``verify --schema`` names only what is wrong, and has named the offline ones already)."""
    lines = []
    for group in report.groups():
        if not matching and group.verdict in (Verdict.MATCH, Verdict.NEW):
            continue
        lines.append(_group_line(group))
        lines += [f"           - {one_line(difference)}" for difference in group.differences]
    if offline:
        lines += [f"{NOT_VERIFIED:<8} {name}  {one_line(why)}" for name, why in report.offline]
    return lines


def summary_line(report: DriftReport) -> str:
    total = len(report.tenants)
    counts = {v: sum(t.verdict is v for t in report.tenants) for v in Verdict}
    line = f"{counts[Verdict.MATCH]}/{total} tenants match the expected schema of their revision"
    line += "".join(f"; {counts[v]} {v.value}" for v in (Verdict.DRIFTED, Verdict.UNKNOWN, Verdict.NEW)
                    if counts[v])
    if report.offline:
        line += f"; {len(report.offline)} not verified (not online)"
    return line


def drift_text(report: DriftReport) -> str:
    lines = [reference_line(report), *_consensus_lines(report), *drift_lines(report), summary_line(report)]
    return "\n".join(lines) + "\n"


def drift_json(report: DriftReport) -> dict:
    return report.to_dict()


def drift_markdown(report: DriftReport) -> str:
    """For a GitHub job summary: the reference, then one table row per group, differences listed in it."""
    out = [f"### Schema drift: {md.code(report.environment)}", "", md.text(reference_line(report)) + ".", ""]
    out += [f"- {md.text(line.strip())}" for line in _consensus_lines(report)]
    out += ([""] if report.consensus else [])
    out += [md.text(summary_line(report)) + ".", "", "| verdict | tenants | revision | fingerprint | detail |",
            "|---|---|---|---|---|"]
    for group in report.groups():
        detail = "<br>".join(md.cell(d, 200) for d in group.differences) or md.cell(group.reason, 300)
        out.append(md.row(group.verdict.value, f"{len(group.tenants)}: {md.cell(fold(list(group.tenants)), 400)}",
                          md.code(",".join(group.current) or "base"), md.code(group.fingerprint or "-"), detail))
    out += [md.row(NOT_VERIFIED, md.cell(name, 100), "", "", md.cell(why, 300)) for name, why in report.offline]
    return "\n".join(out) + "\n"
