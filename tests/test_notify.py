"""tenants.output.notify: webhook targets, Slack and Teams payloads, and posting them to a real local HTTP server.

The server is helpers.Webhook (the ``webhook`` fixture): http.server on 127.0.0.1 in a thread, one per test,
stopped at teardown; it records what it received and answers with whatever status, body and delay the test sets.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
from helpers import HEAD, SECRET_PARTS, SECRET_PATH, slack_texts, teams_card, teams_lines

from tenants.errors import UsageError
from tenants.model import GOOD, RunReport, Status, TenantResult
from tenants.output.notify import SHOWN, Target, notify, parse_target, slack_payload, teams_payload
from tenants.secrets import mask_webhook


def make_report(results, **fields) -> RunReport:
    base = dict(run_id="3f6c2a", environment="prod-eu", operation="upgrade", target=HEAD, head=HEAD,
                concurrency=4, started_at="2026-11-26T11:02:05+00:00", finished_at="2026-11-26T11:02:06+00:00",
                duration=0.61, tool_version="0.1.0")
    return RunReport(results=tuple(results), **{**base, **fields})


def mixed_report() -> RunReport:
    return make_report([
        TenantResult("acme", Status.UPGRADED, "base", HEAD, ("0001_users", HEAD), 1, 0.07),
        TenantResult("globex", Status.SKIPPED, error="not started: the failure policy stopped the run"),
        TenantResult("initech", Status.FAILED, "0001_users", "0001_users", (), 1, 0.05,
                     'ProgrammingError: (psycopg.errors.SyntaxError) syntax error at or near "|"'),
        TenantResult("hooli", Status.UP_TO_DATE, HEAD, HEAD),
    ])


def good_report() -> RunReport:
    return make_report([TenantResult("acme", Status.UPGRADED, "base", HEAD, (HEAD,), 1, 0.07),
                        TenantResult("hooli", Status.UP_TO_DATE, HEAD, HEAD)])


# --------------------------------------------------------------------------------------------- the local side


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """urllib honours proxy variables; a CI runner's proxy must not stand between the test and 127.0.0.1."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_no_secret(warnings: list[str]) -> None:
    for warning in warnings:
        for part in SECRET_PARTS:
            assert part not in warning, warning


# ----------------------------------------------------------------------------------------- posting: received


def test_notify_slack_posts_the_summary(webhook):
    warnings = notify(mixed_report(), [parse_target("slack:" + webhook.url())], timeout=5)

    assert warnings == []
    [(path, headers, _)] = webhook.received
    assert path == SECRET_PATH
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert headers["User-Agent"].startswith("tenants/")
    [payload] = webhook.payloads()
    assert payload["text"].startswith("❌ tenants upgrade on prod-eu: 2 of 4 tenants did not end well")
    assert "3f6c2a" in payload["text"]
    assert [b["type"] for b in payload["blocks"]] == ["header", "section", "section", "context"]
    header = payload["blocks"][0]["text"]
    assert header["type"] == "plain_text" and header["text"].startswith("❌")
    fields = {f["text"].split("\n")[0]: f["text"].split("\n")[1] for f in payload["blocks"][1]["fields"]}
    assert fields["*Environment*"] == "prod-eu"
    assert fields["*Operation*"] == "upgrade"
    assert fields["*Target*"] == f"{HEAD} (the head)"
    assert fields["*Tenants*"] == "4: 1 upgraded · 1 up-to-date · 1 failed · 1 skipped"
    assert fields["*Run*"] == "3f6c2a"
    failures = payload["blocks"][2]["text"]["text"].split("\n")
    assert failures[0] == "*Did not end well (2)*"
    # Worst first: the failed tenant before the skipped one, each with status and error.
    assert failures[1] == ('• `initech` failed: ProgrammingError: (psycopg.errors.SyntaxError) syntax error '
                           'at or near "|"')
    assert failures[2] == "• `globex` skipped: not started: the failure policy stopped the run"
    assert "acme" not in slack_texts(payload)
    assert "run 3f6c2a" in payload["blocks"][3]["elements"][0]["text"]


def test_notify_teams_posts_an_adaptive_card(webhook):
    webhook.status, webhook.answer = 202, b""  # what a Workflows webhook answers

    warnings = notify(mixed_report(), [parse_target("teams:" + webhook.url())], timeout=5)

    assert warnings == []
    [payload] = webhook.payloads()
    card = teams_card(payload)
    assert payload["attachments"][0]["contentUrl"] is None
    lines = teams_lines(card)
    assert lines[0] == "❌ tenants upgrade on prod-eu: 2 of 4 tenants did not end well"
    assert card["body"][0]["inlines"][0]["color"] == "Attention"
    assert "Environment: prod-eu" in lines
    assert f"Target: {HEAD} (the head)" in lines
    assert "Tenants: 4: 1 upgraded · 1 up-to-date · 1 failed · 1 skipped" in lines
    assert "Run: 3f6c2a" in lines
    start = lines.index("Did not end well (2)")
    assert lines[start + 1].startswith("initech failed: ProgrammingError")
    assert lines[start + 2] == "globex skipped: not started: the failure policy stopped the run"
    assert "acme" not in "\n".join(lines)
    assert "run 3f6c2a" in lines[-1]


def test_notify_each_target_gets_its_own_format_in_order(webhook):
    targets = [parse_target("slack:" + webhook.url("/a")), parse_target("teams:" + webhook.url("/b"))]

    assert notify(good_report(), targets, timeout=5) == []

    assert [path for path, _, _ in webhook.received] == ["/a", "/b"]
    slack, teams = webhook.payloads()
    assert "blocks" in slack and slack["text"].startswith("✅ tenants upgrade on prod-eu: all 2 tenants ended well")
    assert teams_lines(teams_card(teams))[0] == "✅ tenants upgrade on prod-eu: all 2 tenants ended well"


# ----------------------------------------------------------------------------------------- posting: failures


def test_notify_http_500_is_one_warning(webhook):
    webhook.status, webhook.answer = 500, b"boom"

    warnings = notify(mixed_report(), [parse_target("slack:" + webhook.url())], timeout=5)

    port = webhook.server_address[1]
    assert warnings == [f"notification to slack webhook http://127.0.0.1:{port}/… failed: "
                        "HTTP 500 Internal Server Error: boom"]
    assert len(webhook.received) == 1
    assert_no_secret(warnings)


def test_notify_error_body_echoing_the_url_is_scrubbed(webhook):
    # Some services quote the request in their error: the quote must not give the token away.
    webhook.status, webhook.answer = 404, b"no_service for {path} (" + webhook.url().encode() + b")"

    [warning] = notify(mixed_report(), [parse_target("slack:" + webhook.url())], timeout=5)

    assert "HTTP 404 Not Found: no_service for ***" in warning
    assert_no_secret([warning])


def test_notify_closed_port_is_one_warning():
    target = parse_target(f"slack:http://127.0.0.1:{closed_port()}{SECRET_PATH}")

    warnings = notify(mixed_report(), [target], timeout=5)

    assert len(warnings) == 1
    assert "failed: could not connect:" in warnings[0] and "refused" in warnings[0]
    assert_no_secret(warnings)


def test_notify_slow_server_times_out(webhook):
    webhook.delay = 10.0  # released at teardown

    started = time.monotonic()
    warnings = notify(mixed_report(), [parse_target("teams:" + webhook.url())], timeout=0.3)

    assert time.monotonic() - started < 5
    assert len(warnings) == 1
    assert warnings[0].endswith("failed: no answer within 0.3 s")
    assert_no_secret(warnings)


def test_notify_one_failing_webhook_does_not_stop_the_others(webhook):
    targets = [parse_target(f"slack:http://127.0.0.1:{closed_port()}/dead"),
               parse_target("teams:" + webhook.url())]

    warnings = notify(mixed_report(), targets, timeout=5)

    assert len(warnings) == 1 and warnings[0].startswith("notification to slack webhook")
    assert len(webhook.received) == 1


def test_notify_does_not_follow_redirects(webhook):
    # A redirected POST would arrive as a GET without the message, or somewhere nobody named.
    webhook.status, webhook.answer = 302, b""
    webhook.headers = {"Location": "/elsewhere"}

    [warning] = notify(mixed_report(), [parse_target("slack:" + webhook.url())], timeout=5)

    assert "HTTP 302" in warning
    assert [path for path, _, _ in webhook.received] == [SECRET_PATH]
    assert_no_secret([warning])


def test_notify_teams_connector_error_in_a_200_body(webhook):
    # The old Teams connector webhooks answer 200 and report throttling in the body.
    webhook.answer = b"Microsoft Teams endpoint returned HTTP error 429 with ContextId tcid=0,server=msgapi"

    [warning] = notify(mixed_report(), [parse_target("teams:" + webhook.url())], timeout=5)

    assert "HTTP 429 reported in the answer" in warning


def test_notify_never_raises_whatever_the_opener_does():
    class Broken:
        def open(self, request, timeout):
            raise RuntimeError(f"cannot open {request.full_url}")

    [warning] = notify(mixed_report(), [parse_target("slack:https://hooks.slack.com" + SECRET_PATH)],
                       opener=Broken())

    assert warning == ("notification to slack webhook https://hooks.slack.com/… failed: "
                       "unexpected error: RuntimeError: cannot open ***")


def test_notify_nothing_to_do():
    assert notify(mixed_report(), []) == []


# --------------------------------------------------------------------------------------------- parse_target


@pytest.mark.parametrize(("spec", "kind"), [
    ("https://hooks.slack.com/services/T0/B0/x", "slack"),
    ("https://contoso.webhook.office.com/webhookb2/abc/IncomingWebhook/def/ghi", "teams"),
    ("https://prod-12.westeurope.logic.azure.com:443/workflows/abc/triggers/manual/paths/invoke?sig=x", "teams"),
    ("https://default1234.56.environment.api.powerplatform.com:443/powerautomate/automations/direct/x", "teams"),
    ("slack:https://example.com/hook", "slack"),
    ("teams:https://example.com/hook", "teams"),
    ("Teams: https://example.com/hook", "teams"),
    ("teams:https://hooks.slack.com/odd-but-said", "teams"),  # the prefix wins over the host
    ("slack:http://127.0.0.1:8080/hook", "slack"),
    ("slack:http://localhost/hook", "slack"),
])
def test_parse_target_kind(spec, kind):
    target = parse_target(spec)
    assert target.kind == kind
    prefixed = spec.lower().startswith(("slack:", "teams:"))
    assert target.url == (spec.split(":", 1)[1].strip() if prefixed else spec)


def test_parse_target_kind_from_configuration():
    assert parse_target("https://example.com/hook", kind="teams") == Target("teams", "https://example.com/hook")
    assert parse_target("teams:https://example.com/hook", kind="teams").kind == "teams"


@pytest.mark.parametrize(("spec", "message"), [
    ("https://example.com/services/T0AAAAAAA/B0BBBBBBB/Xs3cr3tT0k3nXs3cr3tT0k3n",
     "--notify (or TENANTS_NOTIFY_URL) https://example.com/…: cannot tell whether this is a Slack or a Teams "
     "webhook from its host: prefix it with slack: or teams:"),
    # Look-alike hosts are not trusted to say their kind.
    ("https://hooks.slack.com.example.net/services/T0AAAAAAA", "prefix it with slack: or teams:"),
    ("https://evilwebhook.office.com/x/T0AAAAAAA", "prefix it with slack: or teams:"),
    ("http://hooks.slack.com/services/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",
     "http://hooks.slack.com/…: the webhook URL is a secret and http:// would send it in clear text: use its "
     "https:// form"),
    ("slack:http://10.0.0.5/services/T0AAAAAAA", "use its https:// form"),
    ("slack:ftp://example.com/services/T0AAAAAAA", "ftp://example.com/…: not a webhook URL: expected https://"),
    ("slack:hooks.slack.com/services/T0AAAAAAA", "not a webhook URL: expected https://"),
    ("discord:https://discord.com/api/webhooks/T0AAAAAAA",
     "unknown webhook kind 'discord': prefix the URL with slack: or teams:"),
    ("", "no webhook URL given"),
    ("slack:", "no webhook URL given"),
    ("slack:https://hooks.slack.com/services/T0AAAAAAA B0BBBBBBB", "contains spaces or control characters"),
    ("slack:https://hooks.slack.com:notaport/services/T0AAAAAAA", "not a valid URL"),
])
def test_parse_target_errors(spec, message):
    with pytest.raises(UsageError) as caught:
        parse_target(spec)
    assert message in str(caught.value)
    assert str(caught.value).startswith("--notify")
    for part in SECRET_PARTS:
        assert part not in str(caught.value)


def test_parse_target_errors_name_the_source_and_kind_conflicts():
    with pytest.raises(UsageError, match=r"^tenants.toml notify: the URL says slack: but the configuration "
                                         r"says teams: drop one of them$"):
        parse_target("slack:https://example.com/x", kind="teams", source="tenants.toml notify")
    with pytest.raises(UsageError, match="unknown webhook kind 'discord': use slack or teams"):
        parse_target("https://example.com/x", kind="discord")


def test_target_repr_and_mask_hide_the_secret():
    target = parse_target("https://hooks.slack.com" + SECRET_PATH + "?token=Xs3cr3tT0k3nXs3cr3tT0k3n")
    assert repr(target) == "Target(kind='slack', url='https://hooks.slack.com/…')"
    assert str(target) == repr(target)
    assert target.masked == "https://hooks.slack.com/…"
    assert mask_webhook("https://user:pw@Example.com:8443/x") == "https://example.com:8443/…"
    assert mask_webhook("not a url") == "<webhook URL>"


# ------------------------------------------------------------------------------------------------- payloads


def big_report() -> RunReport:
    """5,000 tenants, 2,000 of them did not end well, with long names and long errors full of characters
    that Slack escapes (each & becomes 5 characters) and emoji (4 bytes each)."""
    statuses = [Status.FAILED, Status.LOCKED, Status.SKIPPED, Status.UNKNOWN_REVISION]
    results = []
    for i in range(5000):
        name = f"tenant-{i:05d}-" + "&<>🙂" * 50
        if i % 5 < 3:
            results.append(TenantResult(name, Status.UPGRADED, "base", HEAD, (HEAD,), 1, 0.1))
        else:
            results.append(TenantResult(name, statuses[i % 4], "0001_users", "0001_users", (), 3, 1.0,
                                        "OperationalError: <!channel> & " + "x🙂&" * 2000 + "\n\x00trace"))
    return make_report(results, environment="prod-" + "&🙂" * 200, run_id="r" * 500, tool_version="v" * 500,
                       target="t" * 500, head="h" * 500, throttled=12, concurrency_changes=((1.0, 8), (2.0, 2)))


def units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def test_payload_size_is_bounded_for_a_large_fleet():
    report = big_report()
    assert len(report.results) == 5000 and len(report.failed) == 2000

    slack, teams = slack_payload(report), teams_payload(report)

    for payload in (slack, teams):
        size = len(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode())
        assert size < 20_000, size  # Teams refuses over 28 KB
    # Slack's documented Block Kit limits, counted in UTF-16 code units (the stricter reading for emoji).
    assert len(slack["blocks"]) <= 50
    assert units(slack["blocks"][0]["text"]["text"]) <= 150
    assert len(slack["blocks"][1]["fields"]) <= 10
    assert all(units(field["text"]) <= 2000 for field in slack["blocks"][1]["fields"])
    failures = slack["blocks"][2]["text"]["text"]
    assert units(failures) <= 3000
    assert "<" not in failures.replace("&lt;", "")
    assert failures.startswith("*Did not end well (2000)*")
    assert failures.rstrip("_").endswith("more: see the run's report")
    # Teams: SHOWN tenants, then the rest folded.
    lines = teams_lines(teams_card(teams))
    start = lines.index("Did not end well (2000)")
    assert sum(line.startswith("tenant-") for line in lines) == SHOWN
    assert lines[start + SHOWN + 1] == f"… and {2000 - SHOWN} more: see the run's report"


def test_payloads_show_report_text_as_text():
    report = make_report([TenantResult("acme", Status.FAILED, error="<!channel> *bold* & <https://x|y>")],
                         environment="prod_eu")
    text = slack_texts(slack_payload(report))
    assert "<!channel>" not in text and "<https://x" not in text
    assert "&lt;!channel&gt; *bold* &amp; &lt;https://x|y&gt;" in text
    # Teams: Markdown is read in TextBlocks and FactSets, not in TextRuns; nothing from the report goes
    # anywhere but a TextRun.
    card = teams_card(teams_payload(report))
    assert {e["type"] for e in card["body"]} <= {"RichTextBlock", "TextBlock"}
    assert [e["text"] for e in card["body"] if e["type"] == "TextBlock"] == ["Did not end well (1)"]
    assert any("<!channel> *bold* & <https://x|y>" in line for line in teams_lines(card))


def test_payloads_for_every_status_and_no_tenants():
    every = make_report([TenantResult(f"t-{s.value}", s, error=None if s in GOOD else f"why {s.value}")
                         for s in Status])
    lines = slack_payload(every)["blocks"][2]["text"]["text"].split("\n")
    assert [line.split("`")[1] for line in lines[1:]] == [
        "t-failed", "t-timed-out", "t-unknown-revision", "t-unmanaged", "t-drifted", "t-locked", "t-throttled",
        "t-skipped"]

    empty = make_report([])
    assert slack_payload(empty)["text"].startswith("✅ tenants upgrade on prod-eu: no tenants selected")
    assert [b["type"] for b in slack_payload(empty)["blocks"]] == ["header", "section", "context"]
    assert "Tenants: none selected" in teams_lines(teams_card(teams_payload(empty)))


def test_payload_target_other_than_head_and_downgrade():
    report = make_report([TenantResult("acme", Status.DOWNGRADED, HEAD, "0002_invoices")],
                         operation="downgrade", target="0002_invoices")
    lines = teams_lines(teams_card(teams_payload(report)))
    assert lines[0] == "✅ tenants downgrade on prod-eu: the tenant ended well"
    assert f"Target: 0002_invoices (head {HEAD})" in lines


def test_ci_run_url_only_inside_github_actions():
    from tenants.output.notify import ci_run_url

    assert ci_run_url({}) is None
    assert ci_run_url({"GITHUB_SERVER_URL": "https://ghe.example.com/", "GITHUB_REPOSITORY": "o/r",
                       "GITHUB_RUN_ID": "7"}) == "https://ghe.example.com/o/r/actions/runs/7"
