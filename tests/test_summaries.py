"""tenants.output.junit and .job_summary: JUnit XML and the GitHub job summary, over reports built by hand."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tenants.model import GOOD, RunReport, Status, TenantResult
from tenants.output.job_summary import CELL, SHOWN, markdown_summary
from tenants.output.junit import junit_xml

HEAD = "0004_invoice_user_index"
MIB = 1024 * 1024
XSD = Path(__file__).with_name("junit.xsd")


def make_report(results, **fields) -> RunReport:
    base = dict(run_id="3f6c2a", environment="dev", operation="upgrade", target=HEAD, head=HEAD, concurrency=4,
                started_at="2026-11-26T11:02:05+00:00", finished_at="2026-11-26T11:02:06+00:00", duration=0.61,
                tool_version="0.1.0")
    return RunReport(results=tuple(results), **{**base, **fields})


def small_report() -> RunReport:
    return make_report([
        TenantResult("acme", Status.UPGRADED, "base", HEAD,
                     ("0001_users", "0002_invoices", "0003_invoice_status", HEAD), 1, 0.07),
        TenantResult("initech", Status.FAILED, "0001_users", "0001_users", (), 1, 0.05,
                     'ProgrammingError: (psycopg.errors.SyntaxError) syntax error at or near "|"'),
        TenantResult("globex", Status.SKIPPED, error="not started: the failure policy stopped the run"),
    ])


def every_status_report() -> RunReport:
    return make_report([TenantResult(f"t-{status.value}", status, "0001_users", HEAD, duration=0.5,
                                     error=None if status in GOOD else f"why {status.value}")
                        for status in Status])


def cells(row: str) -> list[str]:
    """A Markdown table row split on its unescaped pipes, the way GitHub splits it."""
    out, cell = [], ""
    for token in re.findall(r"\\.|[^\\|]+|\||\\", row):
        if token == "|":
            out.append(cell)
            cell = ""
        else:
            cell += token
    out.append(cell)
    return [c.strip() for c in out[1:-1]]


# --------------------------------------------------------------------------------------------------- JUnit

JUNIT_GOLDEN = """\
<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="tenants" tests="3" failures="1" errors="0" skipped="1" time="0.610">
  <testsuite name="tenants upgrade dev" tests="3" failures="1" errors="0" skipped="1" time="0.610" \
timestamp="2026-11-26T11:02:05">
    <properties>
      <property name="run_id" value="3f6c2a" />
      <property name="environment" value="dev" />
      <property name="operation" value="upgrade" />
      <property name="target" value="0004_invoice_user_index" />
      <property name="head" value="0004_invoice_user_index" />
      <property name="concurrency" value="4" />
      <property name="tool_version" value="0.1.0" />
    </properties>
    <testcase classname="tenants.dev" name="acme" time="0.070">
      <system-out>status: upgraded
from: base
to: 0004_invoice_user_index
applied: 0001_users, 0002_invoices, 0003_invoice_status, 0004_invoice_user_index
attempts: 1</system-out>
    </testcase>
    <testcase classname="tenants.dev" name="initech" time="0.050">
      <failure type="failed" message="ProgrammingError: (psycopg.errors.SyntaxError) syntax error at or near \
&quot;|&quot;">ProgrammingError: (psycopg.errors.SyntaxError) syntax error at or near "|"</failure>
      <system-out>status: failed
from: 0001_users
to: 0001_users
attempts: 1</system-out>
    </testcase>
    <testcase classname="tenants.dev" name="globex" time="0.000">
      <skipped message="not started: the failure policy stopped the run" />
      <system-out>status: skipped
from: ?
to: ?</system-out>
    </testcase>
  </testsuite>
</testsuites>
"""


def test_junit_xml_golden():
    assert junit_xml(small_report()) == JUNIT_GOLDEN


def test_junit_xml_validates_and_names_each_tenant():
    xmlschema = pytest.importorskip("xmlschema", reason="xmlschema (a test extra) validates the JUnit XML")
    schema = xmlschema.XMLSchema(str(XSD))
    for report in (small_report(), every_status_report(), make_report([])):
        text = junit_xml(report)
        schema.validate(text)
        suite = ET.fromstring(text).find("testsuite")
        assert [c.get("name") for c in suite.iter("testcase")] == [r.tenant for r in report.results]


def test_junit_xml_maps_each_status():
    suite = ET.fromstring(junit_xml(every_status_report())).find("testsuite")
    outcome = {}
    for case in suite.iter("testcase"):
        assert case.get("classname") == "tenants.dev"
        assert case.get("time") == "0.500"
        marks = [child for child in case if child.tag != "system-out"]
        outcome[case.get("name")] = (marks[0].tag, marks[0].get("type"), marks[0].get("message")) if marks else None
    assert outcome == {
        "t-upgraded": None, "t-downgraded": None, "t-stamped": None, "t-up-to-date": None,
        "t-failed": ("failure", "failed", "why failed"),
        "t-locked": ("failure", "locked", "why locked"),  # not passed: another run held it
        "t-skipped": ("skipped", None, "why skipped"),
        "t-unknown-revision": ("failure", "unknown-revision", "why unknown-revision"),
        "t-throttled": ("failure", "throttled", "why throttled"),  # never final; if a report has it, not passed
        "t-timed-out": ("failure", "timed-out", "why timed-out"),
        "t-pinned": None,  # held back on purpose: not a failure
        "t-unmanaged": ("failure", "unmanaged", "why unmanaged"),  # never touched: needs a person
        "t-drifted": ("failure", "drifted", "why drifted"),  # check_schema: never touched, needs a person
    }
    assert {k: suite.get(k) for k in ("tests", "failures", "errors", "skipped")} == {
        "tests": "13", "failures": "7", "errors": "0", "skipped": "1"}
    assert suite.get("name") == "tenants upgrade dev"


def test_junit_xml_properties_carry_run_id_and_target():
    suite = ET.fromstring(junit_xml(make_report([], target="0002_invoices", throttled=3))).find("testsuite")
    properties = {p.get("name"): p.get("value") for p in suite.find("properties")}
    assert properties["run_id"] == "3f6c2a"
    assert properties["target"] == "0002_invoices"
    assert properties["head"] == HEAD
    assert properties["throttled"] == "3"


def test_junit_xml_escapes_names_and_drops_what_xml_cannot_carry():
    error = 'boom <b>&amp; "quoted"\nsecond line \x00\x1b[31m red'
    report = make_report([TenantResult('a&b<c>"d', Status.FAILED, error=error)], environment="prod & co")
    text = junit_xml(report)
    root = ET.fromstring(text)  # parses: NUL and ESC would make it unreadable
    case = root.find("testsuite/testcase")
    assert case.get("name") == 'a&b<c>"d'
    assert case.get("classname") == "tenants.prod & co"
    failure = case.find("failure")
    assert failure.get("message") == 'boom <b>&amp; "quoted" second line \ufffd\ufffd[31m red'  # one line
    assert failure.text == 'boom <b>&amp; "quoted"\nsecond line \ufffd\ufffd[31m red'  # the whole text
    assert "\x00" not in text and "\x1b" not in text


def test_junit_xml_timestamp_is_utc_without_offset():
    def timestamp(started_at):
        return ET.fromstring(junit_xml(make_report([], started_at=started_at))).find("testsuite").get("timestamp")

    assert timestamp("2026-11-26T13:02:05.123+02:00") == "2026-11-26T11:02:05"
    assert timestamp("2026-11-26T11:02:05") == "2026-11-26T11:02:05"
    assert timestamp("") is None  # unknown: left out rather than invented


def test_junit_xml_failure_without_error_says_its_status():
    text = junit_xml(make_report([TenantResult("acme", Status.LOCKED)]))
    assert ET.fromstring(text).find("testsuite/testcase/failure").get("message") == "locked"


# ------------------------------------------------------------------------------------------------ Markdown

MARKDOWN_GOLDEN = """\
## ❌ tenants upgrade on dev: 2 of 3 tenants did not end well

Target `0004_invoice_user_index` (the head) · concurrency 4 · 0.6 s · run `3f6c2a` · tenants 0.1.0

| status | tenants |
| :-- | --: |
| upgraded | 1 |
| failed | 1 |
| skipped | 1 |
| **total** | **3** |

### Did not end well (2)

| tenant | status | from → to | error |
| --- | --- | --- | --- |
| initech | failed | 0001\\_users → 0001\\_users | ProgrammingError: (psycopg.errors.SyntaxError) syntax error at or \
near "\\|" |
| globex | skipped |  | not started: the failure policy stopped the run |

**To resume:** `tenants --env dev upgrade --from-report report.json --only failed,timed-out,skipped,locked`
"""


def test_markdown_summary_golden():
    assert markdown_summary(small_report()) == MARKDOWN_GOLDEN


def test_markdown_summary_all_good():
    report = make_report([TenantResult("acme", Status.UPGRADED, "base", HEAD, duration=0.1),
                          TenantResult("globex", Status.UP_TO_DATE, HEAD, HEAD)])
    text = markdown_summary(report)
    assert text.startswith("## ✅ tenants upgrade on dev: all 2 tenants ended well\n")
    assert text.endswith("| **total** | **2** |\n")
    assert "Did not end well" not in text and "To resume" not in text
    assert markdown_summary(make_report([])).startswith("## ✅ tenants upgrade on dev: no tenants selected\n")


def test_markdown_summary_5000_tenants_2000_failed_stays_under_1_mib():
    error = "OperationalError: " + "a long | driver message\nwith newlines and ünïcödé ✗ " * 200
    results = []
    for i in range(5000):
        if i % 5 in (1, 3):  # 2,000 failed, spread through the fleet
            results.append(TenantResult(f"tenant-{i:05d}", Status.FAILED, "0001_users", "0001_users", (), 4,
                                        1.5, f"{i}: {error}"))
        else:
            results.append(TenantResult(f"tenant-{i:05d}", Status.UPGRADED, "base", HEAD, (), 1, 0.5))
    report = make_report(results)
    text = markdown_summary(report)
    assert len(text.encode("utf-8")) < MIB
    assert "## ❌ tenants upgrade on dev: 2000 of 5000 tenants did not end well" in text
    assert "| upgraded | 3000 |" in text and "| failed | 2000 |" in text and "| **total** | **5000** |" in text
    first = text.index("tenant-00001 | failed")
    assert first < text.index("tenant-00003 | failed") < text.index(f"... and {2000 - SHOWN} more")
    assert text.rstrip().endswith("--only failed,timed-out,skipped,locked`")
    for line in text.splitlines():
        if line.startswith("| tenant-"):
            assert len(cells(line)) == 4  # "|" and newlines in the errors did not break the table
            assert len(cells(line)[3]) < CELL * 2  # cut (escapes add at most one "\" a character)

    # With a tighter limit the <details> block gives way, never the counts or the resume line.
    tight = markdown_summary(report, limit=50_000)
    assert len(tight.encode("utf-8")) <= 50_000
    assert "| failed | 2000 |" in tight and "tenant-00001 | failed" in tight
    assert "more not shown here (size limit): see the report file" in tight
    assert tight.count("<details>") == tight.count("</details>") == 1
    assert tight.rstrip().endswith("--only failed,timed-out,skipped,locked`")


@pytest.mark.parametrize("limit", [0, 1, 7, 60, 200, 500, 900, 1500, 3000, 6000, 10_000])
def test_markdown_summary_never_exceeds_its_limit(limit):
    results = [TenantResult(f"テナント-{i}-😀", Status.FAILED, error="エラー 😀 " * 100) for i in range(60)]
    text = markdown_summary(make_report(results, environment="本番"), limit=limit)
    assert len(text.encode("utf-8")) <= limit
    text.encode("utf-8").decode("utf-8")  # cut on a character boundary


def test_markdown_summary_folds_the_rest_into_details():
    results = [TenantResult(f"t{i:02d}", Status.FAILED, error=f"e{i}") for i in range(SHOWN + 5)]
    text = markdown_summary(make_report(results))
    visible, _, folded = text.partition("<details>")
    assert f"| t{SHOWN - 1:02d} | failed |" in visible and f"| t{SHOWN:02d} |" not in visible
    assert "... and 5 more\n" in visible
    assert "<summary>5 more</summary>" in folded
    assert all(f"| t{i:02d} | failed |" in folded for i in range(SHOWN, SHOWN + 5))
    assert "not shown" not in text


def test_markdown_summary_lists_the_worst_first():
    results = [TenantResult("s", Status.SKIPPED), TenantResult("l", Status.LOCKED),
               TenantResult("u", Status.UNKNOWN_REVISION), TenantResult("f", Status.FAILED),
               TenantResult("ok", Status.UPGRADED)]
    rows = [cells(line)[0] for line in markdown_summary(make_report(results)).splitlines()
            if line.startswith("| ") and cells(line)[1:2] and cells(line)[1] in {s.value for s in Status}]
    assert rows == ["f", "u", "l", "s"]


def test_markdown_summary_escapes_cells():
    tenant = "evil|name\nwith `code` <!-- *x* [y](z) a\\b &amp;"
    report = make_report([TenantResult(tenant, Status.FAILED, "a|b", None, error="x" * 500 + "|tail")])
    row = next(line for line in markdown_summary(report).splitlines() if line.startswith("| evil"))
    name, status, moved, error = cells(row)
    # & < > as entities, the rest with a backslash: tenants.output.markdown's one rule, shared with the plan
    assert name == r"evil\|name with \`code\` &lt;!-- \*x\* \[y\](z) a\\b &amp;amp;"
    assert status == "failed"
    assert moved == r"a\|b → ?"
    assert error == "x" * (CELL - 1) + "…"


def test_markdown_summary_resume_line():
    failed = [TenantResult("acme", Status.FAILED, error="boom")]
    text = markdown_summary(make_report(failed, environment="prod eu", target="0002_invoices"),
                            report_file="out/run 1.json")
    # An upgrade to an older target resumes to that target; the environment and path are shell-quoted.
    assert ("**To resume:** `tenants --env 'prod eu' upgrade 0002_invoices --from-report 'out/run 1.json' "
            "--only failed,timed-out,skipped,locked`") in text
    # Per-tenant operations, and tenants that need a person first, get no resume command.
    assert "To resume" not in markdown_summary(make_report(failed, operation="downgrade", target="base"))
    unknown = [TenantResult("acme", Status.UNKNOWN_REVISION, error="not in the graph")]
    assert "To resume" not in markdown_summary(make_report(unknown))


def test_markdown_summary_fan_out_notes_only_when_nonzero():
    report = make_report([TenantResult("acme", Status.UPGRADED)], concurrency=8, throttled=3,
                         concurrency_changes=((1.0, 4), (2.0, 2)), pressure_wait=12.34,
                         pressure_errors=(("timeout | reading dm_elastic_pool_resource_stats", 3),
                                          ("the run goes on without the pressure probe", 1)),
                         skipped_databases=(("master", "system database"),))
    text = markdown_summary(report)
    assert "- Throttled 3 times by the database: concurrency lowered from 8 to 2.\n" in text
    assert "- Tenant starts waited 12.3 s for the pool's load to drop.\n" in text
    assert ("- Pressure probe: timeout \\| reading dm\\_elastic\\_pool\\_resource\\_stats (3 times)\n"
            "- Pressure probe: the run goes on without the pressure probe\n") in text
    assert "- Not tenants, passed over: master (system database).\n" in text
    assert "\n- " not in markdown_summary(make_report([TenantResult("acme", Status.UPGRADED)]))
