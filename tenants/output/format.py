"""Plain-text pieces every output shares: the terminal, the CI files (JUnit, job summary) and the chat
notifications. No markup here (:mod:`tenants.output.markdown` owns GitHub-flavoured Markdown; Slack's mrkdwn
and Teams' cards stay in :mod:`tenants.output.notify`, the only place that writes them), and no I/O.

Each helper has one behaviour; a caller that wants something else composes them (``cut(one_line(text), 60)``)
rather than growing a copy with a twist.
"""

from __future__ import annotations

import re

from tenants.model import RunReport, revision_of

FOLD = 10  # tenant names listed per line before folding into "... and N more"

# C0 and C1 control characters (what is left of them once one_line has turned whitespace into spaces): a driver's
# error text can carry a NUL or a terminal escape sequence, which no reader of a summary or a chat message wants.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def rev(revision: str | None) -> str:
    """A revision for people: ``base`` is none recorded; ``?`` is unknown (never read, or unreadable)."""
    return "?" if revision is None else revision


def heads(current: tuple[str, ...] | list[str]) -> str:
    """A tenant's current revisions for people: ``a,b`` for several heads, ``base`` for none recorded."""
    return revision_of(tuple(current)) or "base"


def one_line(text: str) -> str:
    """``text`` on one line: every run of whitespace one space, control characters shown as U+FFFD."""
    return CONTROL.sub("\ufffd", " ".join(text.split()))


def cut(text: str, width: int) -> str:
    """``text`` at most ``width`` characters, its end replaced by "…" when it is cut."""
    return text if len(text) <= width else text[: width - 1] + "…"


def plural(n: int, word: str) -> str:
    """``1 tenant``, ``2 tenants``: the regular English plural, which is all the tool's nouns need."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def fold(names: list[str], limit: int = FOLD) -> str:
    """Names joined with commas, the ones past ``limit`` folded into "... and N more"."""
    if len(names) <= limit:
        return ", ".join(names)
    return f"{', '.join(names[:limit])} ... and {len(names) - limit} more"


def outcome(report: RunReport) -> tuple[str, str]:
    """How a run ended, as the job summary's heading and the notifications' headline say it: ✅ or ❌, and
    ``no tenants selected`` / ``all 3 tenants ended well`` / ``1 of 3 tenants did not end well``."""
    total, bad = len(report.results), len(report.failed)
    if not total:
        return "✅", "no tenants selected"
    if not bad:
        return "✅", f"{'the tenant' if total == 1 else f'all {total} tenants'} ended well"
    return "❌", f"{bad} of {plural(total, 'tenant')} did not end well"
