"""Azure SQL discovery: the tenants of an elastic pool (or a server), listed by the management API at run time.

Two sources, both through the real ``azure-mgmt-sql`` client (``SqlManagementClient``):

* ``azure-pool``: ``databases.list_by_elastic_pool(resource_group, server, pool)``, every page (the SDK's
  ``ItemPaged`` follows ``nextLink``);
* ``azure-server``: ``databases.list_by_server(resource_group, server)``, kept when the name matches ``match``
  (a glob) and, if ``pool`` is set, when the database's ``elastic_pool_id`` ends with ``/elasticPools/<pool>``.

``match`` applies to both sources (its default ``*`` keeps everything). A database that passes those filters
but cannot be migrated is *skipped and reported*, never silently dropped: ``master`` (the server's system
database, which ``list_by_server`` includes; no tenant) and any database whose status is not ``Online``
(``Paused``, ``Offline``, ``Creating``, ``Scaling``, ``Copying``, ...: a tenant that cannot be read now,
``offline``, which ``tenants verify`` lists as not verified). :meth:`AzureSource.discover_with_skipped`
returns both lists (:class:`~tenants.sources.Skipped`); :meth:`AzureSource.discover` (the
:class:`~tenants.sources.TenantSource` protocol) returns the tenants only.

Each tenant's tags are the database's Azure resource tags, rendered ``key=value`` (a bare ``key`` when the
value is empty), so ``--tag tier=gold`` selects by a tag set in the portal, and ``--tag canary`` (or a wave's
``tag = "canary"``) takes a database tagged ``canary: true``, or any value but false/0/no/off
(:meth:`tenants.sources.Tenant.has_tag`).

Clouds. The management endpoint and the token scope follow the environment's ``cloud`` (see
:data:`MANAGEMENT_ENDPOINTS`), or ``management_endpoint`` when it is given (scope ``<endpoint>/.default``,
e.g. Azure Stack). The credential defaults to :func:`tenants.dialects.entra.credential_for` of the same cloud.

Errors. A 403 or 404 from the management API is a configuration problem (wrong subscription, resource group,
server or pool name, or an identity without access): :class:`~tenants.errors.ConfigError`, naming the
resource and the role needed. Anything else (5xx after the SDK's own retries, no network, no sign-in) is a
:class:`~tenants.errors.DiscoveryError` (exit 1). Both are one line, scrubbed of the bearer token that was
sent and of every ``${VAR}`` value of the environment.

Default concurrency of an ``azure-pool`` environment (:func:`pool_concurrency`, :func:`derived_concurrency`):
an explicit ``concurrency`` always wins; otherwise, from the pool's SKU (``elastic_pools.get``)::

    unit        = 1 vCore (vCore pools) or 25 eDTU (DTU pools),
                  lowered to the per-database max capacity when that is smaller
    concurrency = clamp(floor((sku.capacity / 2) / unit), 1, 16)

That is: half the pool is left to customer traffic, and each running migration is assumed to take, at its
busiest (an index build, a backfill), one unit of the other half; a database cannot take more than the pool's
per-database max, so a smaller cap means a smaller unit. Examples: 8-vCore pool -> 4; 2-vCore pool -> 1;
64-vCore pool -> 16; 4 vCores with a 0.5-vCore per-database max -> 4; 100-eDTU pool -> 2; 100 eDTU with a
10-eDTU per-database max -> 5. A pool whose capacity is not reported gets 1.

The client library is imported when used, like azure-identity in :mod:`tenants.dialects.entra`: the demo fleet and
PostgreSQL need neither.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from tenants.config import Environment
from tenants.errors import ConfigError, DiscoveryError
from tenants.model import Skipped, Tenant
from tenants.secrets import scrub

if TYPE_CHECKING:  # pragma: no cover - typing only
    from azure.core.credentials import TokenCredential
    from azure.core.pipeline.transport import HttpTransport
    from azure.mgmt.sql import SqlManagementClient

# Azure Resource Manager per cloud: (endpoint, token scope). The same table as azure-mgmt-core's
# `azure.mgmt.core.tools.get_arm_endpoints` (what SqlManagementClient itself uses for `cloud_setting`; a test
# keeps the two in step). US Government's scope is the classic `management.core.usgovcloudapi.net` audience,
# not "<endpoint>/.default": that is the SDK's choice and the Azure CLI's activeDirectoryResourceId there.
MANAGEMENT_ENDPOINTS: dict[str, tuple[str, str]] = {
    "public": ("https://management.azure.com", "https://management.azure.com/.default"),
    "usgov": ("https://management.usgovcloudapi.net", "https://management.core.usgovcloudapi.net/.default"),
    "china": ("https://management.chinacloudapi.cn", "https://management.chinacloudapi.cn/.default"),
}

READER_HINT = "the identity running tenants needs the Reader role on the server (or the resource group)"
ONLINE = "Online"
MAX_POOL_CONCURRENCY = 16
# One migration at its busiest, in the pool's own unit. 1 vCore ~ 100 eDTU in Microsoft's sizing guidance;
# 25 eDTU is deliberately lower because DTU pools hold small databases (Basic ones cannot use more than 5 eDTU,
# S0-S1 10-20), and it keeps a 50-eDTU pool at one migration at a time.
VCORE_UNIT = 1.0
DTU_UNIT = 25.0
VCORE_TIERS = frozenset({"generalpurpose", "businesscritical", "hyperscale"})
_JWT = re.compile(r"eyJ[\w-]+\.[\w-]+\.[\w-]*")


def management_endpoint(env: Environment) -> tuple[str, str]:
    """``(endpoint, scope)`` of the Azure Resource Manager the environment talks to.

    An explicit ``management_endpoint`` wins over ``cloud``; it must be ``https://`` (azure-core's bearer-token
    policy refuses to send a token over plain HTTP).
    """
    if env.management_endpoint:
        endpoint = env.management_endpoint.strip().rstrip("/")
        if not endpoint.lower().startswith("https://"):
            raise ConfigError(
                f"environment {env.name!r}: management_endpoint must be an https:// URL, not {endpoint!r} "
                "(a token is never sent over plain HTTP)"
            )
        return endpoint, endpoint + "/.default"
    try:
        return MANAGEMENT_ENDPOINTS[env.cloud]
    except KeyError:
        raise ConfigError(
            f"environment {env.name!r}: unknown cloud {env.cloud!r}; use one of {', '.join(MANAGEMENT_ENDPOINTS)} "
            "or set management_endpoint"
        ) from None


class AzureSource:
    """The tenants of an ``azure-pool`` or ``azure-server`` environment (see the module docstring).

    ``credential`` defaults to ``tenants.dialects.entra.credential_for(env.cloud)``; ``transport`` (an azure-core
    ``HttpTransport``) defaults to the SDK's own. Both exist for tests and for callers that already hold one.
    Nothing is contacted until :meth:`discover`.
    """

    def __init__(
        self,
        environment: Environment,
        *,
        credential: TokenCredential | None = None,
        transport: HttpTransport | None = None,
    ) -> None:
        if environment.source not in ("azure-pool", "azure-server"):
            raise ConfigError(f"environment {environment.name!r}: source {environment.source!r} is not an Azure source")
        self.environment = environment
        self.credential = credential
        self.transport = transport

    def discover(self) -> list[Tenant]:
        return self.discover_with_skipped()[0]

    def discover_with_skipped(self) -> tuple[list[Tenant], list[Skipped]]:
        """The tenants (sorted by name) and the skipped databases (sorted by name, with the reason)."""
        env = self.environment
        with _management_client(env, self.credential, self.transport) as client, \
                _translated_errors(env, _listing(env)):
            if env.source == "azure-pool":
                pages = client.databases.list_by_elastic_pool(env.resource_group, env.server, env.pool)
            else:
                pages = client.databases.list_by_server(env.resource_group, env.server)
            databases = list(pages)  # iterating fetches the pages: inside the error translation

        tenants: list[Tenant] = []
        skipped: list[Skipped] = []
        for db in databases:
            name = db.name
            if not fnmatch.fnmatchcase(name, env.match):
                continue
            if env.source == "azure-server" and env.pool and not _in_pool(db, env.pool):
                continue
            if _is_system(db):
                skipped.append(Skipped(name, "system database"))
            elif (status := _status(db)) != ONLINE:
                skipped.append(Skipped(name, f"database is {status or 'of unknown status'} (not {ONLINE})",
                                       offline=True, tags=_tags(db)))
            else:
                tenants.append(Tenant(name, env.tenant_url(name), _tags(db), env.secrets))
        return sorted(tenants, key=lambda t: t.name), sorted(skipped)


def pool_concurrency(pool: Any) -> int:
    """The default concurrency for an elastic pool (an ``azure.mgmt.sql.models.ElasticPool``): the rule of the
    module docstring. Pure: reads ``pool.sku`` (``tier``, ``family``, ``capacity``) and
    ``pool.per_database_settings.max_capacity``.

    Why so low: the pool's databases serve customers while we migrate, and a migration's heavy statements
    compete with them for the pool's CPU, IO, log rate and workers (error 10928/10936 when the pool runs out).
    Half the pool stays theirs. The cap of 16 bounds the blast radius of a bad release and the number of
    locks and connections in flight; the fan-out's AIMD halves concurrency anyway when a tenant is throttled,
    so this only has to be a safe start, not the optimum.
    """
    sku = getattr(pool, "sku", None)
    capacity = getattr(sku, "capacity", None)
    if not capacity or capacity <= 0:
        return 1
    tier = (getattr(sku, "tier", None) or "").replace(" ", "").lower()
    # vCore pools name a hardware family (Gen5, ...); an unknown tier without one falls to the DTU rule, which
    # yields fewer workers for the same number.
    unit = VCORE_UNIT if tier in VCORE_TIERS or getattr(sku, "family", None) else DTU_UNIT
    per_database = getattr(getattr(pool, "per_database_settings", None), "max_capacity", None)
    if per_database and per_database > 0:
        unit = min(unit, float(per_database))
    return max(1, min(MAX_POOL_CONCURRENCY, math.floor((capacity / 2) / unit)))


def derived_concurrency(
    env: Environment,
    credential: TokenCredential | None = None,
    transport: HttpTransport | None = None,
) -> int | None:
    """The pool-derived default concurrency of an ``azure-pool`` environment (``elastic_pools.get``, then
    :func:`pool_concurrency`), or None when there is nothing to derive: another source, or ``concurrency``
    set explicitly (it always wins, and then the management API is not even asked)."""
    if env.source != "azure-pool" or env.concurrency_explicit:
        return None
    with _management_client(env, credential, transport) as client, \
            _translated_errors(env, f"read elastic pool {env.pool!r} on server {env.server!r}"):
        pool = client.elastic_pools.get(env.resource_group, env.server, env.pool)
    return pool_concurrency(pool)


# --- helpers -----------------------------------------------------------------------------------------------


@contextmanager
def _management_client(
    env: Environment, credential: TokenCredential | None, transport: HttpTransport | None
) -> Iterator[SqlManagementClient]:
    endpoint, scope = management_endpoint(env)
    try:
        from azure.mgmt.sql import SqlManagementClient
    except ImportError as err:
        raise ConfigError(
            f"environment {env.name!r}: source {env.source!r} needs azure-mgmt-sql: install tenants with the "
            "'azure' extra (pip install 'tenants[azure]')"
        ) from err
    owned = credential is None
    if owned:
        from tenants.dialects.entra import credential_for

        credential = credential_for(env.cloud)
    options: dict[str, Any] = {"base_url": endpoint, "credential_scopes": [scope]}
    if transport is not None:
        options["transport"] = transport
    try:
        with SqlManagementClient(credential, env.subscription, **options) as client:
            yield client
    finally:
        if owned and hasattr(credential, "close"):
            credential.close()


def _listing(env: Environment) -> str:
    if env.source == "azure-pool":
        return f"list the databases of elastic pool {env.pool!r} on server {env.server!r}"
    return f"list the databases of server {env.server!r}"


@contextmanager
def _translated_errors(env: Environment, action: str) -> Iterator[None]:
    """Turn the SDK's exceptions into the tool's: one line each, naming the resource, secret-free.

    ``from None``: the SDK's exception holds the failed request (its Authorization header included) and the
    server's unscrubbed text, so it is not chained onto an error that may be printed with its traceback.
    """
    from azure.core.exceptions import AzureError, ClientAuthenticationError, DeserializationError, HttpResponseError

    endpoint, scope = management_endpoint(env)
    where = (f"(subscription {env.subscription}, resource group {env.resource_group!r}, server {env.server!r}"
             + (f", pool {env.pool!r}" if env.pool else "") + f", at {endpoint})")
    try:
        yield
    except HttpResponseError as err:
        status = err.status_code
        detail = _scrub(_describe(err), env, err)
        if status == 403:
            raise ConfigError(
                f"environment {env.name!r}: the Azure management API refused to {action} {where}: {detail}; "
                f"{READER_HINT}"
            ) from None
        if status == 404:
            raise ConfigError(
                f"environment {env.name!r}: cannot {action} {where}: not found ({detail}); check subscription, "
                f"resource_group, server, pool and cloud in the configuration; {READER_HINT}"
            ) from None
        if isinstance(err, ClientAuthenticationError) and err.response is None:
            # Raised by the credential itself (azure-identity): nobody is signed in for this cloud.
            raise DiscoveryError(
                f"environment {env.name!r}: cannot get a token for {scope} to {action}: {detail}; sign in "
                "(az login, a managed identity, or AZURE_CLIENT_ID/AZURE_TENANT_ID/... for a service principal)"
            ) from None
        raise DiscoveryError(
            f"environment {env.name!r}: the Azure management API failed to {action} {where}: {detail}"
        ) from None
    except DeserializationError as err:  # a ValueError, not an AzureError: e.g. a proxy's HTML page
        raise DiscoveryError(
            f"environment {env.name!r}: the Azure management API's answer to {action} {where} was not what it "
            f"should be: {_scrub(_describe(err), env, err)}; check the endpoint (a proxy in the way?)"
        ) from None
    except AzureError as err:  # ServiceRequestError (no connection), ServiceResponseError (timeout), ...
        raise DiscoveryError(
            f"environment {env.name!r}: cannot reach the Azure management API to {action} {where}: "
            f"{_scrub(_describe(err), env, err)}; check the network and the cloud setting"
        ) from None


def _describe(err: Exception) -> str:
    """``403 AuthorizationFailed: <ARM's message>`` when the response carries an ARM error, else the first line
    of the exception's text; at most 300 characters."""
    status = getattr(err, "status_code", None)
    odata = getattr(err, "error", None)
    code = getattr(odata, "code", None)
    message = getattr(odata, "message", None) if code else None
    if code:
        text = f"{status} {code}: {message}" if message else f"{status} {code}"
    else:
        first = (str(getattr(err, "message", None) or err) or type(err).__name__).strip().splitlines()
        text = first[0] if first else type(err).__name__
        if status and not text.startswith(str(status)):
            text = f"{status} {getattr(err, 'reason', None) or ''}: {text}".replace(" :", ":")
    text = " ".join(text.split()).rstrip(".")  # it is followed by "; <what to do>"
    return text if len(text) <= 300 else text[:297] + "..."


def _scrub(text: str, env: Environment, err: Exception) -> str:
    """Remove the bearer token that was sent with the failed request, anything shaped like a JWT, and every
    ``${VAR}`` value of the environment (an error page may echo what it was given)."""
    secrets = list(env.secrets)
    request = getattr(getattr(err, "response", None), "request", None)
    authorization = (getattr(request, "headers", None) or {}).get("Authorization")
    if authorization:
        secrets += [authorization, authorization.partition(" ")[2]]
    return _JWT.sub("***", scrub(text, tuple(secrets)))


def _is_system(db: Any) -> bool:
    sku_tier = getattr(getattr(db, "sku", None), "tier", None)
    return db.name.lower() == "master" or (sku_tier or "").lower() == "system"


def _status(db: Any) -> str | None:
    status = getattr(db, "status", None)
    return getattr(status, "value", status)  # an enum member, or a plain string for a status the SDK lacks


def _in_pool(db: Any, pool: str) -> bool:
    # Resource IDs are case-insensitive in ARM (and come back in either case).
    pool_id = getattr(db, "elastic_pool_id", None) or ""
    return pool_id.lower().endswith(f"/elasticpools/{pool.lower()}")


def _tags(db: Any) -> tuple[str, ...]:
    tags = getattr(db, "tags", None) or {}
    return tuple(f"{key}={value}" if value else key for key, value in sorted(tags.items()))
