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

from tenants.model import GOOD, RunReport, State, Status, StatusReport, TenantResult
from tenants.output.format import heads, one_line, rev

__all__ = ["junit_xml", "status_junit"]

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


def status_junit(report: StatusReport, allow_offline: bool = False) -> str:
    """JUnit XML for ``tenants verify``: one test case per tenant, failing unless it is at head; one per
    offline database (not read), failing, or skipped with ``allow_offline``."""
    offline = len(report.offline)
    suite = ET.Element("testsuite", name=f"tenants verify {report.environment}",
                       tests=str(len(report.tenants) + offline),
                       failures=str(sum(t.state is not State.AT_HEAD for t in report.tenants)
                                    + (0 if allow_offline else offline)), errors="0",
                       skipped=str(offline if allow_offline else 0))
    for t in report.tenants:
        case = ET.SubElement(suite, "testcase", classname=f"tenants.{report.environment}", name=t.tenant)
        if t.state is not State.AT_HEAD:
            message = _xml_text(one_line(t.error or f"{t.state.value}: at {heads(t.current)}, "
                                                      f"head is {report.head}"))
            failure = ET.SubElement(case, "failure", type=t.state.value, message=message)
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
