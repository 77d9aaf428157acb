"""Microsoft Entra ID access tokens for Azure SQL through SQLAlchemy + pyodbc.

Azure SQL accepts an Entra access token as the ODBC pre-connection attribute ``SQL_COPT_SS_ACCESS_TOKEN``
(SQLAlchemy's mssql+pyodbc docs, "Connecting to databases with access tokens"). The pieces here:

* :func:`token_struct` packs a token the way the ODBC driver expects it;
* :class:`TokenCache` asks a credential for a token once per token lifetime, shared by every connection (and
  every thread) of the process: ``AzureCliCredential`` runs ``az`` on every ``get_token``, and a fleet run opens
  several connections per tenant;
* :func:`install_token_hook` hands each new DBAPI connection of an engine a fresh-enough token;
* :func:`credential_for` and :func:`database_scope` pick the Entra authority and the SQL scope of a cloud.

Tokens are secrets: nothing here logs, reprs or puts them in an error message. Importing this module needs
neither pyodbc nor azure-identity (the demo fleet and PostgreSQL need neither); both are imported when used.
"""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, make_url

from tenants.dialects import odbc
from tenants.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from azure.core.credentials import AccessToken
    from azure.identity import DefaultAzureCredential

# The connection attribute for access tokens, as defined in Microsoft's msodbcsql.h.
SQL_COPT_SS_ACCESS_TOKEN = 1256

# The ".default" scope of Azure SQL's resource ID in each cloud (Microsoft's table of resource IDs for
# managed identities: "Azure SQL": database.windows.net, database.usgovcloudapi.net, database.chinacloudapi.cn).
_SQL_SCOPES = {
    "public": "https://database.windows.net/.default",
    "usgov": "https://database.usgovcloudapi.net/.default",
    "china": "https://database.chinacloudapi.cn/.default",
}
# The Entra authority of each cloud, by its attribute name on azure.identity.AzureAuthorityHosts (read when a
# credential is made, so that azure-identity stays an optional import).
_AUTHORITY_HOSTS = {
    "public": "AZURE_PUBLIC_CLOUD",
    "usgov": "AZURE_GOVERNMENT",
    "china": "AZURE_CHINA",
}
CLOUDS = tuple(_SQL_SCOPES)
DEFAULT_SCOPE = _SQL_SCOPES["public"]

# With a token in attrs_before, the driver refuses a connection string that also names another way to log in
# (Microsoft: "the connection string must not contain UID, PWD, Authentication or Trusted_Connection").
_CREDENTIAL_KEYWORDS = ("uid", "pwd", "authentication", "trusted_connection")


def token_struct(token: str) -> bytes:
    """The ``SQL_COPT_SS_ACCESS_TOKEN`` value for ``token``.

    The driver reads a C ``ACCESSTOKEN`` struct: a 4-byte little-endian unsigned length followed by that many
    bytes of token, which is the token's text in UTF-16-LE (what older recipes build by hand by putting a zero
    byte after each ASCII byte), with no terminator.
    """
    raw = token.encode("utf-16-le")
    return struct.pack(f"<I{len(raw)}s", len(raw), raw)


class TokenCredential(Protocol):
    """What :class:`TokenCache` needs of a credential: azure-core's ``TokenCredential`` protocol."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken: ...


class TokenCache:
    """One access token for one scope, fetched again shortly before it expires.

    ``token()`` returns the cached token until ``refresh_margin`` seconds before its ``expires_on``, then asks
    the credential for a new one. The margin (5 minutes by default) covers the time between taking a token and
    the server checking it at login, and clock skew; a login that succeeds keeps its session after the token
    expires, so the token only has to be valid when a connection opens. A token that arrives with less than
    twice the margin left is kept for half its remaining life instead, so a short-lived token does not make
    every connection call the credential.

    Thread-safe: the lock is held while the credential is called, so concurrent callers whose token has run
    out wait for the one call in flight instead of each making their own (one ``get_token`` per expiry
    window). An exception from the credential reaches the caller, and the next call tries again.

    ``clock`` must count in the same seconds as ``expires_on``: wall-clock Unix time (``time.time``), not
    ``time.monotonic``. The cache lives in one process and holds a lock: each worker process makes its own.
    """

    def __init__(
        self,
        credential: TokenCredential,
        scope: str = DEFAULT_SCOPE,
        *,
        refresh_margin: float = 300.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if refresh_margin < 0:
            raise ValueError("refresh_margin must be >= 0")
        self.credential = credential
        self.scope = scope
        self.refresh_margin = refresh_margin
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_on = 0.0
        self._refresh_at = 0.0

    def token(self) -> str:
        """A token valid for at least ``refresh_margin`` more seconds (see the class docstring)."""
        with self._lock:
            now = self._clock()
            if self._token is None or now >= self._refresh_at:
                access = self.credential.get_token(self.scope)
                lifetime = max(0.0, access.expires_on - now)
                self._token = access.token
                self._expires_on = float(access.expires_on)
                self._refresh_at = self._expires_on - min(self.refresh_margin, lifetime / 2)
            return self._token

    @property
    def expires_on(self) -> float | None:
        """Unix time at which the cached token expires; None before the first token."""
        return self._expires_on if self._token is not None else None

    def __repr__(self) -> str:  # never the token itself
        return (
            f"{type(self).__name__}(credential={type(self.credential).__name__}, scope={self.scope!r}, "
            f"refresh_margin={self.refresh_margin!r}, expires_on={self.expires_on!r})"
        )


def install_token_hook(engine: Engine, cache: TokenCache) -> None:
    """Log every new DBAPI connection of ``engine`` in with a token from ``cache``.

    A ``do_connect`` listener (SQLAlchemy's documented hook for per-connection arguments) sets
    ``attrs_before[SQL_COPT_SS_ACCESS_TOKEN]``, merged into any ``attrs_before`` given in ``connect_args``. The
    token is taken when the connection opens, not when the engine is made, so a run longer than a token's life
    keeps connecting; the cache makes that one credential call per token lifetime, not one per connection.

    The engine's URL must carry no credentials: no user name or password, and no ``UID``, ``PWD``,
    ``Authentication`` or ``Trusted_Connection`` in its query or ``odbc_connect`` string (checked here, raising
    :class:`~tenants.errors.ConfigError`). SQLAlchemy itself appends ``Trusted_Connection=Yes`` to the
    connection string it builds for a URL without a user name; the listener removes it, as SQLAlchemy's recipe
    does (since the URL was checked, that one is never the user's).
    """
    if not is_pyodbc_engine(engine):
        raise ConfigError(
            f"Entra ID tokens need an mssql+pyodbc URL, not {engine.dialect.name}+{engine.dialect.driver}"
        )
    check_no_credentials(engine.url)

    def _provide_token(_dialect, _record, cargs: list[Any], cparams: dict[str, Any]) -> None:
        if cargs and isinstance(cargs[0], str):
            cargs[0] = odbc.without(cargs[0], "trusted_connection")
        # A new dict: the one from connect_args is shared by every connection of the engine.
        attrs = dict(cparams.get("attrs_before") or {})
        attrs[SQL_COPT_SS_ACCESS_TOKEN] = token_struct(cache.token())
        cparams["attrs_before"] = attrs

    event.listen(engine, "do_connect", _provide_token)


def check_no_credentials(connection: str | URL) -> None:
    """Raise :class:`~tenants.errors.ConfigError` if ``connection`` names a way to log in besides the token.

    ``connection`` is a SQLAlchemy URL (anything with ``://``: its user name, password, query keys and the
    ``odbc_connect`` string inside it are checked) or a raw ODBC connection string (``KEY=value;...``, values
    possibly ``{braced}``). Keywords compare case-insensitively, as ODBC does. The error names the keyword,
    never its value (which may be a password).
    """
    if isinstance(connection, URL) or "://" in connection:
        url = make_url(connection)
        if url.username:
            raise _credential_error("UID", "a user name in the URL")
        if url.password:
            raise _credential_error("PWD", "a password in the URL")
        for key, values in url.query.items():
            if key.lower() in _CREDENTIAL_KEYWORDS:
                raise _credential_error(key, "the URL's query string")
            if key == "odbc_connect":
                for value in (values,) if isinstance(values, str) else values:
                    _check_odbc(value, "the URL's odbc_connect string")
        return
    _check_odbc(connection, "the ODBC connection string")


def database_scope(cloud: str = "public") -> str:
    """The token scope of Azure SQL in ``cloud`` (one of :data:`CLOUDS`)."""
    return _SQL_SCOPES[_known_cloud(cloud)]


def credential_for(cloud: str = "public", authority: str | None = None, **kwargs: Any) -> DefaultAzureCredential:
    """A ``DefaultAzureCredential`` that signs in with the Entra authority of ``cloud``.

    ``authority`` overrides the cloud's authority host (e.g. a private cloud); it otherwise comes from
    ``azure.identity.AzureAuthorityHosts``. Passing it explicitly also means ``AZURE_AUTHORITY_HOST`` in the
    environment does not move a run configured for one cloud to another. Other keyword arguments go to
    ``DefaultAzureCredential`` unchanged (``managed_identity_client_id``, ``exclude_*_credential``, ...).

    Not every credential in the chain uses the authority: ``DefaultAzureCredential`` passes it to its
    environment (service principal) and shared-cache credentials; managed identity lives in one cloud; the
    Azure CLI uses its own ``az cloud set``; workload identity reads ``AZURE_AUTHORITY_HOST``, which its
    webhook sets. Pair the credential with ``database_scope(cloud)``.
    """
    name = _known_cloud(cloud)
    try:
        from azure.identity import AzureAuthorityHosts, DefaultAzureCredential
    except ImportError as err:
        raise ConfigError(
            "Entra ID authentication needs azure-identity: install tenants with the 'azure' extra "
            "(pip install 'tenants[azure]')"
        ) from err
    host = authority or getattr(AzureAuthorityHosts, _AUTHORITY_HOSTS[name])
    from tenants.dialects import github_oidc

    if not kwargs and github_oidc.can_use():
        # In GitHub Actions with id-token: write: a fresh GitHub ID token per Entra assertion, so a run longer
        # than GitHub's ~10-minute token keeps signing in (the CLI session of azure/login would not).
        return github_oidc.github_credential(authority=host)
    return DefaultAzureCredential(authority=host, **kwargs)


# --- helpers -----------------------------------------------------------------------------------------------


def _known_cloud(cloud: str) -> str:
    name = cloud.strip().lower()
    if name not in _SQL_SCOPES:
        raise ConfigError(f"unknown Azure cloud {cloud!r}: use one of {', '.join(CLOUDS)}")
    return name


def _credential_error(keyword: str, where: str) -> ConfigError:
    return ConfigError(
        f"{where} carries {keyword}=, but Entra ID token authentication allows none of "
        "UID, PWD, Authentication, Trusted_Connection: remove it (the token is the login)"
    )


def _check_odbc(conn_str: str, where: str) -> None:
    # Through the one ODBC tokenizer: a keyword inside a braced value (a password holding ";UID=") is text.
    for attribute in odbc.attributes(conn_str):
        if attribute.key.lower() in _CREDENTIAL_KEYWORDS:
            raise _credential_error(attribute.key, where)


def is_pyodbc_engine(engine) -> bool:
    """Whether Entra tokens can be handed to ``engine``'s connections (SQL Server through pyodbc)."""
    return engine.dialect.name == "mssql" and engine.dialect.driver == "pyodbc"
