"""Secrets: the one place that knows how a password or token is kept out of everything the tool prints.

A secret reaches the tool in a URL's password, inside an ODBC connection string, or as the value of a
``${VAR}`` substituted into the configuration. :func:`url_secrets` lists a URL's secrets in every form they
can be printed in (raw, percent-encoded); :func:`scrub` replaces them in any text; :func:`mask_url` is the
only form of a URL the tool ever prints.
"""

from __future__ import annotations

from urllib.parse import quote, quote_plus

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError


def scrub(message: str, secrets: tuple[str, ...]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):  # longest first: one secret may contain another
        if secret:
            message = message.replace(secret, "***")
    return message


def url_secrets(url: str) -> tuple[str, ...]:
    """The parts of a URL that must never be printed: its password (raw and URL-encoded), and the password
    inside an ``odbc_connect`` string."""
    parsed = make_url(url)
    passwords = [parsed.password] if parsed.password else []
    if "odbc_connect" in parsed.query:
        passwords += _odbc_secrets(parsed.query["odbc_connect"])
    return tuple({form for p in passwords for form in (p, quote_plus(p), quote(p, safe=""))})


def _odbc_secrets(odbc_connect: str) -> list[str]:
    from tenants.dialects.odbc import odbc_secrets

    return odbc_secrets(odbc_connect)


def mask_url(url: str | URL, secrets: tuple[str, ...] = ()) -> str:
    """The URL with its password (and any other known secret, e.g. in the query) replaced by ``***``: the
    only form of a URL the tool ever prints."""
    from tenants.dialects.odbc import mask_odbc

    try:
        parsed = make_url(url)
        if "odbc_connect" in parsed.query:  # the password is inside the ODBC string, not the URL's own field
            parsed = parsed.update_query_dict({"odbc_connect": mask_odbc(parsed.query["odbc_connect"])})
        masked = parsed.render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return "<unparseable URL>"
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            for form in (quote(secret, safe=""), quote_plus(secret), quote(quote(secret, safe=""), safe=""),
                         secret):
                masked = masked.replace(form, "***")
    return masked
