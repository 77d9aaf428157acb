"""What the CLI prints to a terminal or a CI log: one line per finished tenant, rich tables, summary and
verify lines, JSON. Pure functions from results to text or a :class:`rich.table.Table`; no I/O here (the CLI
prints them). The files for CI (JUnit, the job summary) are :mod:`tenants.output.junit` and
:mod:`tenants.output.job_summary`; chat messages are :mod:`tenants.output.notify`."""

from __future__ import annotations

import json

from rich import box
from rich.table import Table

from tenants.model import RunReport, State, Status, StatusReport, Tenant, TenantResult
from tenants.output.format import fold, heads, plural, rev

_STYLE = {
    Status.UPGRADED: "green", Status.DOWNGRADED: "green", Status.STAMPED: "green", Status.UP_TO_DATE: "green",
    Status.FAILED: "red", Status.LOCKED: "yellow", Status.SKIPPED: "yellow", Status.UNKNOWN_REVISION: "red",
    Status.THROTTLED: "yellow", Status.TIMED_OUT: "red", Status.PINNED: "yellow", Status.UNMANAGED: "red",
    Status.DRIFTED: "red",
    State.AT_HEAD: "green", State.BEHIND: "yellow", State.NEW: "yellow", State.UNKNOWN_REVISION: "red",
    State.UNREACHABLE: "red", State.UNMANAGED: "red",
}
NOT_VERIFIED = "not-verified"  # an offline database in status and verify: its revision could not be read


def result_line(result: TenantResult) -> str:
    """One line per finished tenant: what CI logs show as the run goes."""
    line = f"{result.status.value:<16} {result.tenant}"
    if result.status is Status.SKIPPED:
        return line
    if result.status is Status.UNMANAGED:
        pass  # no revision to show: it has none recorded, and its tables say why in the error
    elif result.applied or result.from_revision != result.to_revision:
        line += f"  {rev(result.from_revision)} -> {rev(result.to_revision)}"
    else:
        line += f"  at {rev(result.to_revision)}"
    details = []
    if result.applied:
        details.append(plural(len(result.applied), "revision"))
    if result.attempts > 1:
        details.append(f"{result.attempts} attempts")
    details.append(f"{result.duration:.2f}s")
    line += f"  ({', '.join(details)})"
    if result.error:
        line += f"  {result.error}"
    return line


def summary_line(report: RunReport) -> str:
    counts = ", ".join(f"{n} {status}" for status, n in report.counts.items()) or "nothing to do"
    total = len(report.results)
    line = (f"{report.operation} to {rev(report.target)}: {plural(total, 'tenant')}, {counts} "
            f"in {report.duration:.1f}s (concurrency {report.concurrency})")
    if report.throttled:
        lowest = min(n for _, n in report.concurrency_changes)
        line += f"; throttled {report.throttled} time(s), concurrency lowered to {lowest}"
    return line


def summary_table(report: RunReport) -> Table:
    table = Table(box=box.SIMPLE)
    table.add_column("status")
    table.add_column("tenants", justify="right")
    table.add_column("which")
    for status in Status:
        names = [r.tenant for r in report.results if r.status is status]
        if names:
            table.add_row(f"[{_STYLE[status]}]{status.value}[/]", str(len(names)), fold(names))
    return table


def failures(report: RunReport) -> list[str]:
    """The tenants that did not end well, with why: printed after the table so nobody has to hunt.

    Each failure gets its own line; tenants skipped for the same reason share one (folded) line, so a rollout
    stopped after its canary does not print thousands of identical lines."""
    lines, skipped = [], {}
    for r in report.failed:
        if r.status is Status.SKIPPED:
            skipped.setdefault(r.error or "", []).append(r.tenant)
        else:
            lines.append(f"{r.status.value}: {r.tenant}: {r.error or ''}".rstrip(": "))
    for why, names in skipped.items():
        lines.append(f"skipped: {fold(names)}: {why}".rstrip(": ") if len(names) > 1 else
                     f"skipped: {names[0]}: {why}".rstrip(": "))
    return lines


def tenants_table(tenants: list[Tenant]) -> Table:
    table = Table(box=box.SIMPLE)
    table.add_column("tenant")
    table.add_column("url")
    table.add_column("tags")
    for t in tenants:
        table.add_row(t.name, t.masked_url, ",".join(t.tags))
    return table


def tenants_json(tenants: list[Tenant]) -> str:
    return json.dumps([{"tenant": t.name, "url": t.masked_url, "tags": list(t.tags)} for t in tenants], indent=2)


def status_table(report: StatusReport) -> Table:
    table = Table(box=box.SIMPLE)
    table.add_column("tenant")
    table.add_column("revision")
    table.add_column("behind", justify="right")
    table.add_column("state")
    table.add_column("detail")
    for t in report.tenants:
        table.add_row(
            t.tenant,
            "-" if not t.current and t.state in (State.UNREACHABLE, State.UNMANAGED) else heads(t.current),
            "" if t.behind is None else str(t.behind),
            f"[{_STYLE[t.state]}]{t.state.value}[/]" + (" [yellow](pinned)[/]" if t.pin else ""),
            t.error or t.pin or "",
        )
    for name, why in report.offline:
        table.add_row(name, "?", "", f"[red]{NOT_VERIFIED}[/]", why)
    return table


def verify_lines(report: StatusReport, ran: set[str] | None = None, allow_offline: bool = False) -> list[str]:
    """One line per tenant that is not at head, saying why; a tenant the run's report does not know (created
    since the run began) says so too, and a pinned one says it is pinned. Then one line per offline database
    (not read, so not verified), noting when ``--allow-offline`` lets it pass."""
    lines = []
    for t in report.tenants:
        if t.state is State.AT_HEAD:
            continue
        if t.pin is not None:
            lines.append(f"{'pinned':<16} {t.tenant}  at {heads(t.current)}; {t.pin}")
            continue
        why = {
            State.BEHIND: f"at {','.join(t.current)}, {t.behind} revision(s) behind",
            State.NEW: f"no revision recorded, {t.behind} revision(s) behind",
            State.UNKNOWN_REVISION: t.error or f"at {','.join(t.current)}, which is not in the revision graph",
            State.UNREACHABLE: t.error or "unreachable",
            State.UNMANAGED: t.error or "tables but no version table",
        }[t.state]
        if ran is not None and t.tenant not in ran:
            why += " (not in the run's report: created since the run began?)"
        lines.append(f"{t.state.value:<16} {t.tenant}  {why}")
    allowed = " (allowed by --allow-offline)" if allow_offline else ""
    lines += [f"{NOT_VERIFIED:<16} {name}  {why}{allowed}" for name, why in report.offline]
    return lines


def status_line(report: StatusReport) -> str:
    at_head = sum(t.state is State.AT_HEAD for t in report.tenants)
    line = f"{at_head}/{len(report.tenants)} tenants at head {report.head}"
    if report.offline:  # not in the count: their revision is unknown, so they are neither at head nor not
        line += f"; {len(report.offline)} not verified (not online)"
    return line


def to_json(data: dict) -> str:
    return json.dumps(data, indent=2)
