"""ODBC connection strings: the one tokenizer every reader of one goes through.

An ODBC connection string is ``KEY=value`` attributes separated by ``;``. A value in braces may itself hold
``;``, ``=`` and ``{`` (``}}`` is an escaped ``}``), so neither a plain split nor a regex anchored on ``;``
can tell a keyword from text inside a braced value: ``Database={db;PWD=x}`` names a database, not a
password. Every question asked of a connection string (which passwords to keep out of the output, whether it
names a login besides an Entra token, the string without ``Trusted_Connection``) is answered from the
attributes :func:`attributes` yields, so they all agree on where a value starts and ends. Keywords compare
case-insensitively, as ODBC does. An unterminated brace runs to the end of the string: for a password that
means masking too much rather than too little.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

# The keywords whose value is a password.
PASSWORD_KEYWORDS = ("pwd", "password")


@dataclass(frozen=True)
class Attribute:
    """One ``KEY=value`` attribute: ``key`` stripped, and offsets into the connection string.

    ``value_start`` is past the ``=`` and the spaces after it (``None`` for an attribute with no ``=``);
    ``end`` excludes the ``;``. ``braced`` is the value's unescaped text when the value is in braces.
    """

    key: str
    start: int
    value_start: int | None
    end: int
    braced: str | None = None


def attributes(conn_str: str) -> Iterator[Attribute]:
    """Each attribute of ``conn_str``, in order (empty ones included: ``;;`` yields an empty key)."""
    i, n = 0, len(conn_str)
    while i < n:
        eq = conn_str.find("=", i)
        semi = conn_str.find(";", i)
        if eq == -1 or (semi != -1 and semi < eq):  # no '=' in this attribute (e.g. an empty one)
            end = n if semi == -1 else semi
            yield Attribute(conn_str[i:end].strip(), i, None, end)
            i = end + 1
            continue
        j = eq + 1
        while j < n and conn_str[j].isspace():
            j += 1
        value_start, braced = j, None
        if j < n and conn_str[j] == "{":
            j += 1
            chars: list[str] = []
            while j < n:
                if conn_str[j] == "}":
                    if conn_str.startswith("}}", j):
                        chars.append("}")
                        j += 2
                        continue
                    j += 1
                    braced = "".join(chars)
                    break
                chars.append(conn_str[j])
                j += 1
            end = conn_str.find(";", j)
        else:
            end = semi
        end = n if end == -1 else end
        yield Attribute(conn_str[i:eq].strip(), i, value_start, end, braced)
        i = end + 1


def odbc_secrets(conn_str: str) -> tuple[str, ...]:
    """The password values of an ODBC connection string (braced ones with and without their braces)."""
    found: list[str] = []
    for attribute in attributes(conn_str):
        if attribute.value_start is None or attribute.key.lower() not in PASSWORD_KEYWORDS:
            continue
        value = conn_str[attribute.value_start:attribute.end].strip()
        if value:
            found.append(value)
            if attribute.braced is not None and value.startswith("{") and value.endswith("}"):
                found.append(attribute.braced)
    return tuple(found)


def mask_odbc(conn_str: str) -> str:
    """The connection string with every password value replaced by ``***``."""
    masked, last = [], 0
    for attribute in attributes(conn_str):
        if attribute.value_start is not None and attribute.key.lower() in PASSWORD_KEYWORDS:
            masked += [conn_str[last:attribute.value_start], "***"]
            last = attribute.end
    return "".join(masked) + conn_str[last:]


def without(conn_str: str, keyword: str) -> str:
    """The connection string without its ``keyword`` attributes (compared case-insensitively)."""
    kept = [conn_str[a.start:a.end] for a in attributes(conn_str) if a.key.lower() != keyword.lower()]
    return ";".join(kept)


def odbc_value(value: str) -> str:
    """``value`` as an ODBC attribute value: braced (with ``}`` doubled) when it holds ``; { } =``."""
    if any(c in value for c in ";{}="):
        return "{" + value.replace("}", "}}") + "}"
    return value
