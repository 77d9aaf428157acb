"""The helpers every output shares: tenants.output.format (plain text), tenants.output.markdown (the one GitHub
escaping rule), the severity order in tenants.model and the webhook half of tenants.secrets."""

from __future__ import annotations

import pytest

from tenants.model import SEVERITY, RunReport, Status, TenantResult, worst_first
from tenants.output import markdown as md
from tenants.output.format import cut, fold, heads, one_line, outcome, plural, rev
from tenants.output.job_summary import markdown_summary
from tenants.output.junit import junit_xml
from tenants.secrets import mask_webhook, scrub, webhook_secrets


def _report(*results: TenantResult) -> RunReport:
    return RunReport(run_id="r1", environment="prod", operation="upgrade", target="b", head="b", concurrency=1,
                     started_at="2025-01-01T00:00:00+00:00", finished_at="", duration=1.0, results=results)


# ---------------------------------------------------------------------------------------------- format


def test_rev_and_heads():
    assert rev(None) == "?"
    assert rev("base") == "base"
    assert heads(()) == "base"
    assert heads(("a", "b")) == "a,b"


def test_one_line_collapses_whitespace_and_shows_control_characters():
    assert one_line("  a\n\tb  \r\n c ") == "a b c"
    assert one_line("x\x00y\x1b[31mz\x7f\x9b") == "x\ufffdy\ufffd[31mz\ufffd\ufffd"
    assert one_line("") == ""


def test_cut():
    assert cut("abc", 3) == "abc"
    assert cut("abcd", 3) == "ab…"
    assert len(cut("x" * 500, 200)) == 200


def test_plural_and_fold():
    assert plural(1, "tenant") == "1 tenant"
    assert plural(0, "tenant") == "0 tenants"
    assert fold(["a", "b"]) == "a, b"
    assert fold([str(i) for i in range(12)], 10) == "0, 1, 2, 3, 4, 5, 6, 7, 8, 9 ... and 2 more"


def test_outcome():
    assert outcome(_report()) == ("✅", "no tenants selected")
    assert outcome(_report(TenantResult("a", Status.UPGRADED))) == ("✅", "the tenant ended well")
    assert outcome(_report(TenantResult("a", Status.UPGRADED), TenantResult("b", Status.UP_TO_DATE))) == (
        "✅", "all 2 tenants ended well")
    assert outcome(_report(TenantResult("a", Status.FAILED), TenantResult("b", Status.UPGRADED))) == (
        "❌", "1 of 2 tenants did not end well")


# ------------------------------------------------------------------------------------------- markdown


@pytest.mark.parametrize(("raw", "escaped"), [
    ("plain words, digits 1.2", "plain words, digits 1.2"),
    ("a|b", r"a\|b"),
    ("`code`", r"\`code\`"),
    ("*bold* _em_ ~~struck~~", r"\*bold\* \_em\_ \~\~struck\~\~"),  # ~ was not escaped in the plan's copy
    ("[link](http://x)", r"\[link\](http://x)"),
    ("a\\b", r"a\\b"),
    ("<!-- hide the rest", "&lt;!-- hide the rest"),
    ("<b>x</b> & y", "&lt;b&gt;x&lt;/b&gt; &amp; y"),
    ("&amp;", "&amp;amp;"),  # an entity in the data is shown, not decoded
    ('"quoted"', '"quoted"'),
])
def test_markdown_text(raw, escaped):
    assert md.text(raw) == escaped


def test_markdown_cell_is_one_line_cut_and_escaped():
    assert md.cell("a|b\nc", 200) == r"a\|b c"
    assert md.cell(None, 10) == ""
    assert md.cell("x" * 20 + "|", 10) == "x" * 9 + "…"
    assert md.cell("<" * 5, 3) == "&lt;&lt;…"  # cut first, then escaped: the width counts what is shown


@pytest.mark.parametrize(("raw", "span"), [
    ("abc", "`abc`"),
    ("a`b", "``a`b``"),
    ("a``b`", "``` a``b` ```"),
    ("`start", "`` `start ``"),
    ("a|b", "`a|b`"),  # outside a table a pipe is just a pipe
    ("<b>*x*</b>", "`<b>*x*</b>`"),  # nothing is read inside a code span
])
def test_markdown_code(raw, span):
    assert md.code(raw) == span


def test_markdown_code_with_width_is_one_line_and_cut():
    assert md.code("a\nb", 10) == "`a b`"
    assert md.code("x" * 20, 5) == "`xxxx…`"
    assert md.code("a\nb") == "`a\nb`"  # without a width the text is kept as it is


def test_markdown_row_escapes_bare_pipes_once():
    assert md.row("1", md.code("x|y")) == r"| 1 | `x\|y` |"
    assert md.row(md.text("a|b"), md.text("c\\d")) == r"| a\|b | c\\d |"  # already escaped: left alone
    assert md.row("", "x") == "|  | x |"


def test_markdown_code_block_fence_outgrows_the_body():
    assert md.code_block("select 1;\n", "sql") == ["```sql", "select 1;", "```"]
    assert md.code_block("a ```` b") == ["`````", "a ```` b", "`````"]


def test_markdown_html():
    assert md.html('<a href="x">&') == "&lt;a href=&quot;x&quot;&gt;&amp;"


def test_job_summary_and_plan_share_the_rule():
    error = "<!-- ~~x~~ | *y*"
    summary = markdown_summary(_report(TenantResult("acme", Status.FAILED, error=error)))
    assert f"| {md.text(error)} |" in summary
    assert md.text(error) == r"&lt;!-- \~\~x\~\~ \| \*y\*"


def test_outputs_show_control_characters_as_replacement():
    # The job summary's copy of one_line kept C0/C1 controls; the notifications' replaced them. One rule now.
    report = _report(TenantResult("acme", Status.FAILED, error="boom\x1b[31m red\x85x\x9b"))
    assert "\x1b" not in markdown_summary(report) and "\x9b" not in markdown_summary(report)
    assert "boom\ufffd[31m red x\ufffd" in junit_xml(report)


# ------------------------------------------------------------------------------------------- severity


def test_worst_first_orders_by_severity_and_keeps_ties():
    results = [TenantResult(name, status) for name, status in [
        ("s", Status.SKIPPED), ("l", Status.LOCKED), ("u1", Status.UNMANAGED), ("f", Status.FAILED),
        ("k", Status.UNKNOWN_REVISION), ("t", Status.TIMED_OUT), ("u2", Status.UNMANAGED), ("ok", Status.UPGRADED)]]
    assert [r.tenant for r in worst_first(results)] == ["f", "t", "u1", "k", "u2", "l", "s", "ok"]
    assert set(SEVERITY) == {s for s in Status if s not in {
        Status.UPGRADED, Status.DOWNGRADED, Status.STAMPED, Status.UP_TO_DATE, Status.PINNED}}


# -------------------------------------------------------------------------------------------- secrets


def test_mask_webhook():
    assert mask_webhook("https://hooks.slack.com/services/T000/B000/XXXX") == "https://hooks.slack.com/…"
    assert mask_webhook("http://[::1]:8080/hook?sig=abc") == "http://[::1]:8080/…"
    assert mask_webhook("hooks.slack.com/x") == "<webhook URL>"
    assert mask_webhook("https://x:notaport/") == "<webhook URL>"


def test_webhook_secrets_scrub_every_echo_of_the_path():
    url = "https://prod-1.westeurope.logic.azure.com/workflows/abcdef0123/triggers?sig=s3cr3t%2Bsig&api-version=1"
    message = ("403 for /workflows/abcdef0123/triggers?sig=s3cr3t%2Bsig&api-version=1: bad sig s3cr3t+sig, "
               "workflow abcdef0123")
    scrubbed = scrub(message, webhook_secrets(url))
    assert "abcdef0123" not in scrubbed and "s3cr3t" not in scrubbed
    assert scrubbed.startswith("403 for ***")


def test_resume_only_is_the_resumable_statuses():
    from tenants.output.job_summary import RESUME_ONLY

    assert RESUME_ONLY == "failed,timed-out,skipped,locked"  # the default of upgrade --only


def test_mask_url_scrubs_each_encoding_of_a_known_secret():
    from tenants.secrets import mask_url

    masked = mask_url("mssql+pyodbc://u@h/db?token=p%40ss&other=p%2540ss&raw=x", ("p@ss",))
    assert "p%40ss" not in masked and "p%2540ss" not in masked and masked.count("***") == 2
