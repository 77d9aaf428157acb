"""Secrets: the one place that knows how a password or token is kept out of everything the tool prints.

A secret reaches the tool in a database URL's password, inside an ODBC connection string, as the value of a
``${VAR}`` substituted into the configuration, or as a chat webhook's URL (whoever has it can post).

- :func:`scrub` replaces known secrets in any text with ``***``: every message built from a driver's, a
  server's or a library's text goes through it where it is made, with the secrets known there.
- :func:`url_secrets` lists a database URL's secrets in every form they can be printed in (raw,
  percent-encoded); :func:`mask_url` is the only form of a database URL the tool ever prints.
- :func:`webhook_secrets` lists what of a webhook URL a server might echo back; :func:`mask_webhook` is the
  only form of a webhook URL the tool ever prints (scheme and host).
- :func:`scrub_shapes` is the last resort where no secret is known (the CLI's internal-error line): it masks
  whatever has the shape of one (a URL's password, ``password=``/``PWD=`` values, a bearer token or JWT).

The renderers in :mod:`tenants.output` print report data that was scrubbed when it was made: they never see a
secret, so they have nothing to scrub.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlsplit

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
    # In the URL a secret may be percent-encoded once (as SQLAlchemy renders it) or twice (an encoded secret
    # inside odbc_connect, itself encoded in the query).
    return scrub(masked, tuple(form for secret in secrets if secret for form in (
        secret, quote(secret, safe=""), quote_plus(secret), quote(quote(secret, safe=""), safe=""))))


def mask_webhook(url: str) -> str:
    """A webhook URL as it may be shown: scheme and host (and a port, if any), the rest replaced by ``…``
    (Slack's token and Teams' ``sig`` are in the path and query)."""
    try:
        parts = urlsplit(url.strip())
        host, port = parts.hostname, parts.port
    except ValueError:
        return "<webhook URL>"
    if not parts.scheme or not host:
        return "<webhook URL>"
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme.lower()}://{host}{f':{port}' if port else ''}/…"


def webhook_secrets(url: str) -> tuple[str, ...]:
    """Everything of a webhook URL past its host, in the forms a server might echo it back: for :func:`scrub`."""
    parts = urlsplit(url)
    found = {url, parts.path, parts.query, f"{parts.path}?{parts.query}"}
    found |= {segment for segment in parts.path.split("/") if len(segment) >= 8}
    found |= {value for _, value in parse_qsl(parts.query) if len(value) >= 8}
    found |= {form for text in list(found) for form in (unquote(text), quote(text, safe=""))}
    return tuple(text for text in found if len(text) > 1)


# What a secret looks like where none is known: a URL's password (scheme://user:PASSWORD@), a key=value password
# (libpq's DSN, ODBC's PWD=, "password": in JSON), a bearer token, a JWT (Entra access tokens are JWTs).
_SHAPES = (
    (re.compile(r"(\w[\w+.-]*://[^\s:/@]*:)[^\s@]+(@)"), r"\1***\2"),
    (re.compile(r"((?:password|passwd|pwd|secret|token|access_token|client_secret)[\"']?\s*[=:]\s*[\"']?)"
                r"[^\s;,'\"}]+", re.IGNORECASE), r"\1***"),
    (re.compile(r"(bearer\s+)[\w.~+/=-]+", re.IGNORECASE), r"\1***"),
    (re.compile(r"eyJ[\w-]{8,}\.[\w-]{8,}\.[\w-]+"), "***"),
)


def scrub_shapes(message: str) -> str:
    """``message`` with everything shaped like a secret masked: for text whose secrets are not known where it is
    printed (an unexpected error's message). Known secrets go through :func:`scrub` where they are known."""
    for pattern, replacement in _SHAPES:
        message = pattern.sub(replacement, message)
    return message
