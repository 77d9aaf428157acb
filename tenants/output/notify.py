"""Notifications: a short summary of a run posted to Slack or Microsoft Teams incoming webhooks.

``--notify URL`` (repeatable, or ``TENANTS_NOTIFY_URL``) names the webhooks. :func:`parse_target` turns
each into a :class:`Target` (the kind from a ``slack:`` / ``teams:`` prefix, a config key, or the host);
:func:`slack_payload` and :func:`teams_payload` are pure functions from a
:class:`~tenants.model.RunReport` to the JSON each service takes; :func:`notify` posts them.

Decisions a reader would question:

- **A failing webhook never fails the run.** The migrations are done and the report is written by the time
  anyone is told about them; a chat service that is down, slow or misconfigured must not turn a good run
  into exit code 1 (or hide a bad run's real exit code). :func:`notify` returns one-line warnings for the
  caller to print on stderr and raises for nothing that the network or the far end can do.
- **A webhook URL is a secret.** Whoever has it can post to the channel: Slack's token and Teams' ``sig``
  are in the path and query. Nothing here prints more of it than scheme and host
  (``https://hooks.slack.com/…``): not the warnings, not the :class:`Target` repr, not a :class:`UsageError`;
  an error body from the far end is scrubbed of the path before it is quoted.
- **https only** (``http://`` to 127.0.0.1 / localhost, which is how the tests run a real server): the
  secret would otherwise cross the network in clear text.
- **No redirects.** urllib would turn a redirected POST into a GET without the message (301-303) and send it
  to a host nobody named; a 3xx is reported as the failure it is.
- **Small payloads.** Teams refuses a message over 28 KB and Slack a section over 3,000 characters or a header
  over 150; a fleet can have thousands of failed tenants. Both payloads list at most :data:`SHOWN` tenants,
  cut names and errors to one short line, and fold the rest into "… and N more": their size does not grow
  with the fleet (the full list is in the report file and the job summary).
- **Text from the report is shown as text.** Slack reads ``&``, ``<`` and ``>`` as control characters
  (``<!channel>`` would ping everyone), so they are escaped in every ``mrkdwn`` text. Teams reads Markdown
  in a ``TextBlock`` and a ``FactSet``, so everything that comes from the report (environment, revisions,
  tenant names, errors) goes in ``TextRun`` elements of a ``RichTextBlock``, which do not.

Payload shapes, from the services' documentation: Slack incoming webhooks take
``{"text": <fallback for notifications>, "blocks": [<Block Kit blocks>]}``; Teams (Workflows "when a webhook
request is received", and the older incoming webhooks) takes ``{"type": "message", "attachments":
[{"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": null, "content": <AdaptiveCard>}]}``.
"""

from __future__ import annotations

import http.client
import json
import re
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit

from tenants import __version__
from tenants.errors import UsageError
from tenants.model import RunReport, TenantResult, worst_first
from tenants.output.format import CONTROL, cut, one_line, outcome, plural
from tenants.secrets import mask_webhook, scrub, webhook_secrets

__all__ = ["Target", "parse_target", "slack_payload", "teams_payload", "slack_message", "teams_message",
           "notify", "ci_run_url", "KINDS", "SHOWN", "LINK_LABEL"]

KINDS = ("slack", "teams")
LINK_LABEL = "Open the run: summary, every tenant, how to resume"
SHOWN = 10  # tenants that did not end well listed by name before "… and N more"
NAME = 80  # characters of a tenant name shown
ERROR = 150  # characters of a tenant's error shown (one line)
FACT = 100  # characters of any other value from the report (environment, revision, run id)
SOURCE = "--notify (or TENANTS_NOTIFY_URL)"  # what an error names when the caller does not say

# Slack's documented Block Kit limits: a header's plain_text, a section's text. (A section field's limit,
# 2,000, is never near: each value is cut to FACT characters before escaping makes it at most 5 times longer.)
SLACK_HEADER = 150
SLACK_SECTION = 3000

_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
# Hosts whose webhooks say by themselves which service they belong to. Teams: the old Office 365 connector
# webhooks (<tenant>.webhook.office.com) and the Workflows ones that replace them (Logic Apps
# prod-NN.<region>.logic.azure.com, and Power Platform <env>.environment.api.powerplatform.com).
_SLACK_HOSTS = ("hooks.slack.com",)
_TEAMS_SUFFIXES = (".webhook.office.com", ".logic.azure.com", ".environment.api.powerplatform.com")

_READ = 2048  # bytes of a response body read: enough for any error message, bounded whatever the server
# The old Teams connector webhooks answer 200 and put a throttling or size error in the body.
_TEAMS_BODY_ERROR = re.compile(r"HTTP error (\d{3})")


# --------------------------------------------------------------------------------------------------- targets


@dataclass(frozen=True, repr=False)
class Target:
    """One webhook to notify: ``kind`` is ``slack`` or ``teams``; ``url`` is the secret URL itself."""

    kind: str
    url: str

    @property
    def masked(self) -> str:
        return mask_webhook(self.url)

    def __repr__(self) -> str:  # a Target in a traceback or a log must not give the webhook away
        return f"Target(kind={self.kind!r}, url={self.masked!r})"

    __str__ = __repr__


def parse_target(spec: str, *, kind: str | None = None, source: str = SOURCE) -> Target:
    """A ``--notify`` value as a :class:`Target`.

    ``slack:https://hooks.slack.com/services/...`` and ``teams:https://...`` say the kind; without a prefix
    it is inferred from the host (``hooks.slack.com`` is Slack; ``*.webhook.office.com``,
    ``*.logic.azure.com`` and ``*.environment.api.powerplatform.com`` are Teams). ``kind`` is the kind from a
    configuration key, for a URL given there without a prefix; ``source`` is the flag, variable or key that
    the errors name. Only ``https://`` URLs are accepted (``http://`` only to 127.0.0.1 or localhost).

    Raises :class:`~tenants.errors.UsageError` (naming ``source`` and the way out, never the URL's path)
    for an empty value, an unknown kind, a URL that is not https, or a host that does not say its kind.
    """
    named, text = _kind_prefix(spec, kind, source)
    masked = mask_webhook(text)
    try:
        parts = urlsplit(text)
        host, _ = parts.hostname, parts.port  # .port raises for a port that is not a number
    except ValueError:
        raise UsageError(f"{source} {masked}: not a valid URL: expected https://...") from None
    scheme = parts.scheme.lower()
    if any(ch.isspace() for ch in text) or CONTROL.search(text):
        raise UsageError(f"{source} {masked}: the URL contains spaces or control characters: quote it whole")
    if scheme == "http" and host in _LOOPBACK:
        pass  # a local server (the tests): nothing crosses the network
    elif scheme == "http":
        raise UsageError(f"{source} {masked}: the webhook URL is a secret and http:// would send it in clear "
                         "text: use its https:// form")
    elif scheme != "https" or not host:
        raise UsageError(f"{source} {masked}: not a webhook URL: expected https://...")

    if named is None:
        named = _infer(host or "")
    if named is None:
        raise UsageError(f"{source} {masked}: cannot tell whether this is a Slack or a Teams webhook from its "
                         "host: prefix it with slack: or teams:")
    return Target(named, text)


def _kind_prefix(spec: str, kind: str | None, source: str) -> tuple[str | None, str]:
    """The kind a ``--notify`` value names (``slack:``/``teams:``, or the configuration's ``kind``), and the
    URL after it."""
    if kind is not None and kind not in KINDS:
        raise UsageError(f"{source}: unknown webhook kind {cut(one_line(kind), 20)!r}: use slack or teams")
    text = spec.strip()
    named = kind
    prefix, colon, rest = text.partition(":")
    if colon and prefix.lower() in KINDS:
        if kind is not None and prefix.lower() != kind:
            raise UsageError(f"{source}: the URL says {prefix.lower()}: but the configuration says {kind}: "
                             "drop one of them")
        named, text = prefix.lower(), rest.strip()
    elif colon and prefix.lower() not in ("http", "https") and "://" in rest:
        raise UsageError(f"{source}: unknown webhook kind {cut(one_line(prefix), 20)!r}: "
                         "prefix the URL with slack: or teams:")
    if not text:
        raise UsageError(f"{source}: no webhook URL given: use slack:https://... or teams:https://...")
    return named, text


def _infer(host: str) -> str | None:
    host = host.lower().rstrip(".")
    if host in _SLACK_HOSTS:
        return "slack"
    if any(host.endswith(suffix) or host == suffix[1:] for suffix in _TEAMS_SUFFIXES):
        return "teams"
    return None


# -------------------------------------------------------------------------------------------------- payloads


def _fact(text: str | None, width: int = FACT) -> str:
    return cut(one_line("?" if text is None else str(text)), width)


def _headline(report: RunReport) -> str:
    """✅ or ❌, what ran where, and how it ended: the line a phone's notification shows."""
    mark, how = outcome(report)
    return f"{mark} tenants {_fact(report.operation, 20)} on {_fact(report.environment, 60)}: {how}"


def _facts(report: RunReport) -> list[tuple[str, str]]:
    target = _fact(report.target)
    if report.head is not None:
        target += " (the head)" if report.head == report.target else f" (head {_fact(report.head)})"
    duration = f"{report.duration:.1f} s at concurrency {report.concurrency}"
    if report.throttled:
        duration += f"; throttled {plural(report.throttled, 'time')}"
        if report.concurrency_changes:
            duration += f", lowered to {min(n for _, n in report.concurrency_changes)}"
    return [
        ("Environment", _fact(report.environment)),
        ("Operation", _fact(report.operation, 20)),
        ("Target", target),
        ("Tenants", _counts(report)),
        ("Duration", duration),
        ("Run", _fact(report.run_id)),
    ]


def _counts(report: RunReport) -> str:
    if not report.results:
        return "none selected"
    counts = " · ".join(f"{n} {status}" for status, n in report.counts.items())
    return f"{len(report.results)}: {counts}"


def _bad(report: RunReport) -> list[TenantResult]:
    return worst_first(report.failed)


def _error(result: TenantResult) -> str:
    return cut(one_line(result.error), ERROR) if result.error else ""


def _more(n: int) -> str:
    return f"… and {n} more: see the run's report"


def _footer(report: RunReport) -> str:
    parts = [f"run {_fact(report.run_id)}"]
    if report.tool_version:
        parts.append(f"tenants {_fact(report.tool_version, 40)}")
    if report.finished_at:
        parts.append(f"finished {_fact(report.finished_at, 40)}")
    return " · ".join(parts)


# Slack ---------------------------------------------------------------------------------------------------


def _units(text: str) -> int:
    """Length as Slack may count it: in UTF-16 code units (an emoji is two), so a limit is never crossed."""
    return len(text.encode("utf-16-le")) // 2


def _fit_units(text: str, limit: int) -> str:
    """``text`` cut with "…" to at most ``limit`` UTF-16 code units."""
    if _units(text) <= limit:
        return text
    kept, used = [], 0
    for ch in text:
        used += _units(ch)
        if used > limit - 1:  # room for the "…"
            break
        kept.append(ch)
    return "".join(kept) + "…"


def _mrkdwn(text: str) -> str:
    """Text from the report, safe in Slack ``mrkdwn``: its three control characters as HTML entities."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack_code(text: str) -> str:
    # A backtick would end the code span early; a tenant name with one is shown with a look-alike.
    return f"`{_mrkdwn(text.replace('`', 'ˋ'))}`"


def _slack_failures(bad: list[TenantResult]) -> str:
    """The tenants that did not end well, as one section's mrkdwn: at most SHOWN lines, within its limit."""
    lines = [f"*Did not end well ({len(bad)})*"]
    size = _units(lines[0])
    keep = _units(_more(len(bad))) + 3  # room kept for the "… and N more" line (newline and _italic_)
    for result in bad[:SHOWN]:
        line = f"• {_slack_code(cut(one_line(result.tenant), NAME))} {result.status.value}"
        if result.error:
            line += f": {_mrkdwn(_error(result))}"
        if size + 1 + _units(line) + keep > SLACK_SECTION:
            break  # escaping can make a line longer than it looks: the section's limit wins
        lines.append(line)
        size += 1 + _units(line)
    rest = len(bad) - (len(lines) - 1)
    if rest:
        lines.append(f"_{_more(rest)}_")
    return "\n".join(lines)


def slack_payload(report: RunReport, link: str | None = None, note: str | None = None) -> dict[str, Any]:
    """The run as a Slack incoming-webhook message: ``{"text": ..., "blocks": [...]}``.

    ``text`` is the headline and run id (what a notification shows); the blocks are a header (✅ every
    tenant ended well, ❌ otherwise), the environment, operation, target, counts, duration and run id as
    fields, the first :data:`SHOWN` tenants that did not end well (worst first) with their status and error
    cut to one line, and a context line with the run id and tool version. Its size does not depend on the
    fleet's.
    """
    headline = _headline(report)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _fit_units(headline, SLACK_HEADER), "emoji": True}},
        {"type": "section", "fields": [
            {"type": "mrkdwn", "text": f"*{label}*\n{_mrkdwn(value)}"}
            for label, value in _facts(report)
        ]},
    ]
    bad = _bad(report)
    if bad:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _slack_failures(bad)}})
    if note:  # what the caller knows beyond the report, e.g. which CI job failed
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _mrkdwn(cut(one_line(note), 1000))}})
    if link:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _slack_link(link)}})
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": _mrkdwn(_footer(report))}]})
    return {"text": _mrkdwn(f"{headline} (run {_fact(report.run_id)})"), "blocks": blocks}


def _slack_link(link: str) -> str:
    # <url|label>: the URL is ours (the CI run's page), but escaped all the same so it cannot close the link.
    return f"<{_mrkdwn(link)}|{LINK_LABEL}>"


def slack_message(text: str, link: str | None = None) -> dict[str, Any]:
    """A plain message (no run report to summarise, e.g. a deploy that failed before any tenant ran)."""
    blocks: list[dict[str, Any]] = [{"type": "section", "text": {"type": "mrkdwn", "text": _mrkdwn(
        _fit_units(one_line(text), SLACK_SECTION - 200))}}]
    if link:
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": _slack_link(link)}})
    return {"text": _mrkdwn(cut(one_line(text), SLACK_HEADER)), "blocks": blocks}


# Teams ---------------------------------------------------------------------------------------------------


def _run(text: str, **style: Any) -> dict[str, Any]:
    """A ``TextRun``: shown as it is, Markdown not read (unlike a TextBlock or a FactSet)."""
    return {"type": "TextRun", "text": text, **style}


def _rich(*inlines: dict[str, Any], **props: Any) -> dict[str, Any]:
    return {"type": "RichTextBlock", "inlines": list(inlines), **props}


def teams_payload(report: RunReport, link: str | None = None, note: str | None = None) -> dict[str, Any]:
    """The run as a Teams message carrying one Adaptive Card (version 1.4).

    The same content as :func:`slack_payload`: a headline in green or red, the facts one per line, the first
    :data:`SHOWN` tenants that did not end well with status and one-line error, and the run id. Everything
    taken from the report is in ``TextRun`` elements, so Teams shows it verbatim. Bounded in size.
    """
    headline = _headline(report)
    body: list[dict[str, Any]] = [
        _rich(_run(headline, size="Medium", weight="Bolder", color="Good" if report.ok else "Attention")),
    ]
    for i, (label, value) in enumerate(_facts(report)):
        body.append(_rich(_run(f"{label}: ", weight="Bolder"), _run(value), spacing="Small" if i == 0 else "None"))
    bad = _bad(report)
    if bad:
        body.append({"type": "TextBlock", "text": f"Did not end well ({len(bad)})", "weight": "Bolder",
                     "wrap": True, "separator": True})
        for result in bad[:SHOWN]:
            inlines = [_run(cut(one_line(result.tenant), NAME), weight="Bolder"),
                       _run(f" {result.status.value}", color="Attention")]
            if result.error:
                inlines.append(_run(f": {_error(result)}", isSubtle=True))
            body.append(_rich(*inlines, spacing="Small"))
        if len(bad) > SHOWN:
            body.append(_rich(_run(_more(len(bad) - SHOWN), italic=True, isSubtle=True), spacing="Small"))
    if note:
        body.append(_rich(_run(cut(one_line(note), 1000), weight="Bolder"), separator=True))
    body.append(_rich(_run(_footer(report), size="Small", isSubtle=True), separator=True))
    return _teams_card(body, headline, link)


def teams_message(text: str, link: str | None = None) -> dict[str, Any]:
    """A plain message as a Teams card (see :func:`slack_message`)."""
    line = cut(one_line(text), 2000)
    return _teams_card([_rich(_run(line, weight="Bolder", color="Attention"))], line, link)


def _teams_card(body: list[dict[str, Any]], fallback: str, link: str | None) -> dict[str, Any]:
    card: dict[str, Any] = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "fallbackText": fallback,
        "body": body,
    }
    if link:  # a button to the CI run: its job summary names every tenant and the resume command
        card["actions"] = [{"type": "Action.OpenUrl", "title": LINK_LABEL, "url": link}]
    return {"type": "message", "attachments": [
        {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card},
    ]}


_PAYLOADS = {"slack": slack_payload, "teams": teams_payload}
_MESSAGES = {"slack": slack_message, "teams": teams_message}


def ci_run_url(environ: Mapping[str, str]) -> str | None:
    """The page of the CI run this process is part of (GitHub Actions), else None."""
    parts = [environ.get(key) for key in ("GITHUB_SERVER_URL", "GITHUB_REPOSITORY", "GITHUB_RUN_ID")]
    if not all(parts):
        return None
    server, repository, run_id = parts
    return f"{server.rstrip('/')}/{repository}/actions/runs/{run_id}"


# ----------------------------------------------------------------------------------------------------- posting


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A 3xx is an answer, not a place to go: see the module docstring."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 (urllib's signature)
        return None


def _opener() -> urllib.request.OpenerDirector:
    # build_opener keeps urllib's ProxyHandler: HTTPS_PROXY / NO_PROXY apply, as they do for pip and curl.
    return urllib.request.build_opener(_NoRedirect)


def _post(target: Target, body: bytes, timeout: float, opener: Any) -> str | None:
    """POST one payload; ``None`` when the webhook took it, else why not (not yet scrubbed)."""
    request = urllib.request.Request(target.url, data=body, method="POST", headers={
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": f"tenants/{__version__}",
    })
    try:
        with opener.open(request, timeout=timeout) as response:
            answer = response.read(_READ).decode("utf-8", errors="replace")
    except HTTPError as err:
        try:
            detail = err.read(_READ).decode("utf-8", errors="replace")
        except Exception:  # noqa: BLE001 (the status is the news; a body that cannot be read adds nothing)
            detail = ""
        finally:
            err.close()
        reason = err.reason or _phrase(err.code)
        return f"HTTP {err.code} {reason}" + (f": {cut(one_line(detail), 200)}" if detail.strip() else "")
    except URLError as err:
        if isinstance(err.reason, TimeoutError):
            return f"no answer within {timeout:g} s"
        return f"could not connect: {err.reason}"
    except TimeoutError:
        return f"no answer within {timeout:g} s"
    except (OSError, http.client.HTTPException) as err:
        return f"connection error: {type(err).__name__}: {err}"
    if target.kind == "teams" and (match := _TEAMS_BODY_ERROR.search(answer)):
        return f"HTTP {match.group(1)} reported in the answer: {cut(one_line(answer), 200)}"
    return None


def _phrase(code: int) -> str:
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return ""


def notify(report: RunReport | str, targets: Iterable[Target], *, timeout: float = 10.0,
           opener: Any = None, link: str | None = None, note: str | None = None) -> list[str]:
    """Post the run's summary to each webhook, in order; return one warning line per webhook that failed.

    Each target gets :func:`slack_payload` or :func:`teams_payload` as JSON, POSTed with urllib (``opener``:
    an object with urllib's ``open(request, timeout=...)``, for tests; default: urllib's, proxies from the
    environment, redirects not followed). ``report`` may be a plain message instead (:func:`slack_message`,
    :func:`teams_message`), for a failure that left no report; ``link`` (the CI run's page) is added to both,
    and ``note`` (one line) to a report's summary.
    ``timeout`` is in seconds, per connection attempt and read.

    Never raises for what a webhook or the network does (refused, timed out, HTTP 4xx/5xx, a 3xx): each
    becomes a warning such as ``notification to slack webhook https://hooks.slack.com/… failed: HTTP 404
    Not Found: no_service``, with the URL masked and any echo of its path scrubbed. The caller prints them;
    the run's outcome does not change.
    """
    if timeout <= 0:
        raise ValueError(f"timeout must be positive, not {timeout!r}")
    if opener is None:
        opener = _opener()
    bodies: dict[str, bytes] = {}
    warnings = []
    for target in targets:
        try:
            if target.kind not in bodies:
                payload = (_MESSAGES[target.kind](report, link) if isinstance(report, str)
                           else _PAYLOADS[target.kind](report, link, note))
                bodies[target.kind] = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
            problem = _post(target, bodies[target.kind], timeout, opener)
        except Exception as err:  # noqa: BLE001
            # Last resort, deliberately broad: the run is over and its report written; a notification must
            # not be what turns it into a crash (the issue: "a failing webhook is a warning, never a failed
            # run"). The type and message are kept so a bug here still gets reported.
            problem = f"unexpected error: {type(err).__name__}: {err}"
        if problem is not None:
            problem = cut(scrub(one_line(problem), webhook_secrets(target.url)), 300)
            warnings.append(f"notification to {target.kind} webhook {target.masked} failed: {problem}")
    return warnings
