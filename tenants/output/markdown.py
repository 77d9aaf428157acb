"""GitHub-flavoured Markdown: the one escaping rule for everything the tool writes to a GitHub page (the run's
job summary, ``tenants plan --format markdown``), which may share one ``$GITHUB_STEP_SUMMARY``.

Text from a report (tenant names, errors, revision messages) is data, never markup: an error holding ``<!--``
would hide the rest of the page, ``|`` would end a table cell, ``*``/``_``/``~`` would start emphasis or
strikethrough, ``[x](y)`` would be a link. So:

- :func:`text` escapes free text for a paragraph, a list item or a table cell: ``&``, ``<`` and ``>`` as
  HTML entities (which also hold inside the HTML of a ``<details>`` block, where backslash escapes do not),
  and ``\\ ` * _ ~ [ ] |`` with a backslash.
- :func:`code` makes an inline code span that holds any text, backticks included (the fence is longer than
  the longest run of backticks inside).
- :func:`row` makes a table row; GFM ends a cell at any unescaped ``|``, even inside a code span, so it
  escapes each bare one (what :func:`text` escaped already stays as it is).
- :func:`code_block` fences a block (SQL) with more backticks than it holds.
- :func:`html` escapes text placed inside raw HTML (``<summary>``, ``<code>``).
"""

from __future__ import annotations

import html as _html
import re

from tenants.output.format import cut, one_line

# Backslash-escaped: "\" (it escapes what follows), "`" (a code span), "*" "_" "~" (emphasis, strikethrough),
# "[" "]" (a link), "|" (the end of a table cell). "&", "<" and ">" become entities first (see the docstring).
_SPECIAL = re.compile(r"([\\`*_~\[\]|])")
_TICKS = re.compile(r"`+")
_BARE_PIPE = re.compile(r"(\\.)|\|")  # a backslash pair stays as it is; a pipe on its own is escaped


def text(value: str) -> str:
    """Free text shown as it is, in a paragraph, a list item or a table cell."""
    return _SPECIAL.sub(r"\\\1", _html.escape(value, quote=False))


def cell(value: str | None, width: int) -> str:
    """A table cell (or a short note) from text: one line, at most ``width`` characters, escaped."""
    return text(cut(one_line(value or ""), width))


def _longest_ticks(value: str) -> int:
    return max((len(run) for run in _TICKS.findall(value)), default=0)


def code(value: str, width: int | None = None) -> str:
    """An inline code span holding ``value`` as it is, backticks included; with ``width``, ``value`` is put on
    one line and cut to ``width`` characters first."""
    if width is not None:
        value = cut(one_line(value), width)
    fence = "`" * (_longest_ticks(value) + 1)
    pad = " " if value.startswith("`") or value.endswith("`") else ""  # else the fence would swallow them
    return f"{fence}{pad}{value}{pad}{fence}"


def row(*cells: str) -> str:
    """One table row of Markdown cells (code spans, :func:`text`), without its line end."""
    return "| " + " | ".join(_BARE_PIPE.sub(lambda m: m.group(1) or "\\|", c) for c in cells) + " |"


def code_block(body: str, info: str = "") -> list[str]:
    """The lines of a fenced code block holding ``body`` (its final line ends dropped)."""
    fence = "`" * max(3, _longest_ticks(body) + 1)
    return [f"{fence}{info}", body.rstrip("\n"), fence]


def html(value: str) -> str:
    """Text inside raw HTML (a ``<summary>``): entities for ``& < > " '``."""
    return _html.escape(value)
