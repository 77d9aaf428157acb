"""JUnit XML for CI test-report viewers: a run (:func:`junit_xml`) or a ``verify`` (:func:`status_junit`).

Pure functions over a :class:`~tenants.model.RunReport` or :class:`~tenants.model.StatusReport`: they return the
document and the CLI writes it where it belongs (a ``junit.xml`` artifact). The other CI file, the GitHub job
summary, is :mod:`tenants.output.job_summary`.

How statuses map to JUnit, so that CI shows every tenant that did not end well as not passed:

=====================================  ==========================================================
status                                 JUnit
=====================================  ==========================================================
upgraded, downgraded, stamped,         a passed ``<testcase>``
up-to-date
failed, unknown-revision, unmanaged,   ``<failure type="<status>" message="<the error>">``
drifted, locked
skipped                                ``<skipped message="<the error>">``
=====================================  ==========================================================

A locked tenant is a failure, not a skip: another run held it, so this run did not bring it to the target,
and a viewer that counts skips as fine would show a green run. ``unknown-revision``, ``unmanaged`` and
``drifted`` are failures too: the tenant was never touched and needs a person. Any other status that is not
good (``throttled`` is never final, but a report can be edited) is a failure of that type. ``errors`` is always
0: a migration that raised is a failed tenant, and the tool itself failing produces no report at all.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

from tenants.model import (
    GOOD,
    DriftReport,
    RunReport,
    State,
    Status,
    StatusReport,
    TenantDrift,
    TenantResult,
    TenantStatus,
    Verdict,
)
from tenants.output.format import heads, one_line, rev

__all__ = ["drift_junit", "junit_xml", "status_junit"]

# Characters XML 1.0 cannot carry at all, not even escaped (NUL, most C0 controls, lone surrogates):
# ElementTree writes them as they are and the file would not parse. A driver's error text can hold them.
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


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
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment.strftime("%Y-%m-%dT%H:%M:%S")


def _details(result: TenantResult) -> str:
    """What a test viewer shows for one tenant: where it was, where it is, what ran."""
    lines = [f"status: {result.status.value}",
             f"from: {rev(result.from_revision)}",
             f"to: {rev(result.to_revision)}"]
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
            message = _xml_text(one_line(result.error or "") or result.status.value)
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


def status_junit(report: StatusReport, allow_offline: bool = False, drift: DriftReport | None = None) -> str:
    """JUnit XML for ``tenants verify``: one test case per tenant, failing unless it is at head (and, with
    ``drift`` from ``verify --schema``, unless its schema matches its revision's); one per offline database
    (not read), failing, or skipped with ``allow_offline``."""
    offline = len(report.offline)
    schema = {t.tenant: t for t in drift.tenants} if drift is not None else {}
    problems = {t.tenant: _problem(t, report.head, schema.get(t.tenant)) for t in report.tenants}
    suite = ET.Element("testsuite", name=f"tenants verify {report.environment}",
                       tests=str(len(report.tenants) + offline),
                       failures=str(sum(p is not None for p in problems.values()) + (0 if allow_offline else offline)),
                       errors="0", skipped=str(offline if allow_offline else 0))
    for t in report.tenants:
        case = ET.SubElement(suite, "testcase", classname=f"tenants.{report.environment}", name=t.tenant)
        if problems[t.tenant] is not None:
            kind, text = problems[t.tenant]
            message = _xml_text(one_line(text))
            failure = ET.SubElement(case, "failure", type=kind, message=message)
            failure.text = message
    for name, why in report.offline:
        case = ET.SubElement(suite, "testcase", classname=f"tenants.{report.environment}", name=name)
        message = _xml_text(one_line(f"not verified: {why}"))
        if allow_offline:
            ET.SubElement(case, "skipped", message=message)
        else:
            failure = ET.SubElement(case, "failure", type="not-verified", message=message)
            failure.text = message
    root = ET.Element("testsuites", name="tenants")
    root.append(suite)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _problem(t: TenantStatus, head: str, schema: TenantDrift | None) -> tuple[str, str] | None:
    """(failure type, message) of a verified tenant, or None when it passes."""
    if t.state is not State.AT_HEAD:
        return t.state.value, t.error or f"{t.state.value}: at {heads(t.current)}, head is {head}"
    if schema is not None and schema.verdict is Verdict.DRIFTED:
        return "drifted", f"schema drifted from {heads(schema.current)}: " + "; ".join(schema.differences)
    if schema is not None and schema.verdict is Verdict.UNKNOWN:
        return "unknown", schema.reason or "schema unknown"
    return None


def drift_junit(report: DriftReport) -> str:
    """JUnit XML for ``tenants drift``: one test case per tenant, failing when its schema drifted (the message
    lists the differences) or has no verdict (unknown: why); one failing case per offline database."""
    bad = [t for t in report.tenants if t.verdict in (Verdict.DRIFTED, Verdict.UNKNOWN)]
    suite = ET.Element("testsuite", name=f"tenants drift {report.environment}",
                       tests=str(len(report.tenants) + len(report.offline)),
                       failures=str(len(bad) + len(report.offline)), errors="0", skipped="0")
    for t in report.tenants:
        case = ET.SubElement(suite, "testcase", classname=f"tenants.drift.{report.environment}", name=t.tenant)
        if t.verdict is Verdict.DRIFTED:
            failure = ET.SubElement(case, "failure", type="drifted", message=_xml_text(one_line(
                f"at {heads(t.current)}: {len(t.differences)} difference(s) from the expected schema")))
            failure.text = _xml_text("\n".join(t.differences))
        elif t.verdict is Verdict.UNKNOWN:
            message = _xml_text(one_line(t.reason or "unknown"))
            failure = ET.SubElement(case, "failure", type="unknown", message=message)
            failure.text = message
    for name, why in report.offline:
        case = ET.SubElement(suite, "testcase", classname=f"tenants.drift.{report.environment}", name=name)
        message = _xml_text(one_line(f"not verified: {why}"))
        failure = ET.SubElement(case, "failure", type="not-verified", message=message)
        failure.text = message
    root = ET.Element("testsuites", name="tenants")
    root.append(suite)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
