"""Azure discovery through the real azure-mgmt-sql client, against a local fake of Azure Resource Manager.

The fake is an azure-core ``HttpTransport``: the SDK's whole pipeline runs (paging, retries, the bearer-token
policy, error mapping); only the HTTP exchange is served from here, with bodies shaped like ARM's
``Microsoft.Sql/servers/databases`` and ``elasticPools`` responses.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlparse

import pytest
import requests
from azure.core import AzureClouds
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError, ServiceRequestError
from azure.core.pipeline.transport import HttpTransport

# What azure-core's own RequestsTransport returns for the SDK's (azure.core.rest) requests.
from azure.core.rest._requests_basic import RestRequestsTransportResponse
from azure.mgmt.core.tools import get_arm_endpoints
from helpers import write_config

from tenants.config import load_settings
from tenants.errors import ConfigError, DiscoveryError
from tenants.model import Skipped
from tenants.sources.azure import (
    MANAGEMENT_ENDPOINTS,
    AzureSource,
    derived_concurrency,
    management_endpoint,
    pool_concurrency,
)

SUB = "00000000-0000-0000-0000-000000000000"
API_VERSION = "2025-01-01"  # azure-mgmt-sql 4.0.0's default
SERVER = f"/subscriptions/{SUB}/resourceGroups/rg/providers/Microsoft.Sql/servers/srv"
POOL_DBS = f"{SERVER}/elasticPools/pool1/databases"
SERVER_DBS = f"{SERVER}/databases"
POOL = f"{SERVER}/elasticPools/pool1"
TOKEN = "tok-not-a-jwt-5f1e9c"  # a token that no JWT pattern would catch: scrubbing must know it was sent


# --- the fake Azure Resource Manager -----------------------------------------------------------------------


class FakeArm(HttpTransport):
    """Serves ``routes``: path -> a list of pages (linked by ``nextLink`` with ``$skipToken``), a JSON body,
    ``(status, body)`` for an error, or an exception to raise. Records every request and every retry sleep
    (without sleeping). A path it does not know fails the test."""

    def __init__(self, routes):
        self.routes = routes
        self.requests: list[SimpleNamespace] = []
        self.sleeps: list[float] = []

    def send(self, request, **kwargs):
        url = urlparse(request.url)
        query = parse_qs(url.query)
        self.requests.append(SimpleNamespace(method=request.method, host=url.netloc, path=url.path, query=query,
                                             authorization=request.headers.get("Authorization")))
        assert url.path in self.routes, f"unexpected request {request.method} {request.url}"
        route = self.routes[url.path]
        if isinstance(route, Exception):
            raise route
        if isinstance(route, tuple):
            status, body = route
            if callable(body):
                body = body(request)
            return _response(request, status, body)
        if isinstance(route, list):
            page = int(query.get("$skipToken", ["0"])[0])
            body = {"value": route[page]}
            if page + 1 < len(route):
                # ARM's nextLink: absolute, on the same host, carrying its own api-version and a skip token.
                body["nextLink"] = (f"https://{url.netloc}{url.path}?api-version=2021-11-01"
                                    f"&$skipToken={page + 1}")
            return _response(request, 200, body)
        return _response(request, 200, route)

    def sleep(self, duration):
        self.sleeps.append(duration)

    def open(self):
        pass

    def close(self):
        pass

    def __exit__(self, *exc):
        pass


def _response(request, status, body):
    raw = requests.Response()
    raw.status_code = status
    raw.reason = {200: "OK", 403: "Forbidden", 404: "Not Found", 500: "Internal Server Error"}.get(status, "")
    raw.headers["Content-Type"] = "application/json; charset=utf-8"
    raw._content = json.dumps(body).encode()
    raw._content_consumed = True
    raw.url = request.url
    return RestRequestsTransportResponse(request=request, internal_response=raw)


class FakeCredential:
    """A TokenCredential that hands out TOKEN and records the scopes asked for."""

    def __init__(self, error: Exception | None = None):
        self.scopes: list[tuple[str, ...]] = []
        self.error = error

    def get_token(self, *scopes, **kwargs):
        self.scopes.append(scopes)
        if self.error:
            raise self.error
        return AccessToken(TOKEN, 4102444800)  # 2100-01-01


def database(name, status="Online", pool="pool1", tags=None):
    """A database as ARM lists it (trimmed to realistic fields)."""
    system = name == "master"
    props = {
        "collation": "SQL_Latin1_General_CP1_CI_AS",
        "maxSizeBytes": 34359738368,
        "status": status,
        "databaseId": "6c764297-577b-470f-9af4-96d3d41e2ba3",
        "creationDate": "2026-01-05T10:00:00Z",
        "currentServiceObjectiveName": "System0" if system else "ElasticPool",
        "requestedBackupStorageRedundancy": "Geo",
    }
    if pool and not system:
        props["elasticPoolId"] = f"{SERVER}/elasticPools/{pool}"
    return {
        "sku": ({"name": "System", "tier": "System", "capacity": 0} if system
                else {"name": "ElasticPool", "tier": "GeneralPurpose", "capacity": 0}),
        "kind": "v12.0,system" if system else "v12.0,user,vcore,pool",
        "managedBy": None,
        "properties": props,
        "location": "westeurope",
        "tags": tags or {},
        "id": f"{SERVER}/databases/{name}",
        "name": name,
        "type": "Microsoft.Sql/servers/databases",
    }


def elastic_pool(sku, per_database_max=None):
    return {
        "sku": sku,
        "kind": "vcore,pool" if "family" in sku else "pool",
        "properties": {
            "state": "Ready",
            "creationDate": "2026-01-05T09:00:00Z",
            "maxSizeBytes": 107374182400,
            "perDatabaseSettings": {"minCapacity": 0, "maxCapacity": per_database_max or sku["capacity"]},
            "zoneRedundant": False,
            "licenseType": "LicenseIncluded",
        },
        "location": "westeurope",
        "id": POOL,
        "name": "pool1",
        "type": "Microsoft.Sql/servers/elasticPools",
    }


def arm_error(status, code, message):
    return (status, {"error": {"code": code, "message": message}})


def azure_env(tmp_path, extra="", source="azure-pool", environ=None):
    pool = 'pool = "pool1"\n' if source == "azure-pool" else ""
    path = write_config(tmp_path / "tenants.toml", f"""\
[environments.prod]
source = "{source}"
subscription = "{SUB}"
resource_group = "rg"
server = "srv"
{pool}{extra}
""")
    return load_settings(path, "prod", environ=environ or {}).environment


THREE_PAGES = [
    [database("tenant_a", tags={"tier": "gold", "canary": ""}), database("tenant_b")],
    [database("tenant_c"), database("tenant_paused", status="Paused")],
    [database("tenant_d", tags={"region": "eu"})],
]


# --- discovery ---------------------------------------------------------------------------------------------


def test_pool_discovery_reads_every_page(tmp_path):
    env = azure_env(tmp_path)
    arm, cred = FakeArm({POOL_DBS: THREE_PAGES}), FakeCredential()
    tenants = AzureSource(env, credential=cred, transport=arm).discover()

    assert [t.name for t in tenants] == ["tenant_a", "tenant_b", "tenant_c", "tenant_d"]
    assert tenants[0].url == env.tenant_url("tenant_a")
    assert tenants[0].url.startswith("mssql+pyodbc://@srv.database.windows.net:1433/tenant_a?")
    assert tenants[0].tags == ("canary", "tier=gold")
    assert tenants[3].tags == ("region=eu",)
    assert [(r.method, r.host, r.path) for r in arm.requests] == [("GET", "management.azure.com", POOL_DBS)] * 3
    # Every page with the client's api-version (the SDK replaces nextLink's), the later ones with their token.
    assert [r.query["api-version"] for r in arm.requests] == [[API_VERSION]] * 3
    assert [r.query.get("$skipToken") for r in arm.requests] == [None, ["1"], ["2"]]
    assert all(r.authorization == f"Bearer {TOKEN}" for r in arm.requests)
    assert cred.scopes == [("https://management.azure.com/.default",)]  # one token for the three pages


def test_azure_tags_select_as_a_user_means_with_tag_and_waves(tmp_path):
    """Azure tags arrive as key=value: `--tag canary` and a wave's `tag = "canary"` take canary: true (any
    value but false/0/no/off), and `region=eu` takes exactly that value."""
    from tenants.selection import Selection
    from tenants.waves import Wave, assign

    env = azure_env(tmp_path)
    arm = FakeArm({POOL_DBS: [[
        database("t_true", tags={"canary": "true"}), database("t_false", tags={"canary": "false"}),
        database("t_empty", tags={"canary": ""}), database("t_no", tags={"Canary": "No"}),
        database("t_eu", tags={"Canary": "eu", "region": "eu"}), database("t_none"),
    ]]})
    tenants = AzureSource(env, credential=FakeCredential(), transport=arm).discover()
    assert {t.name: t.tags for t in tenants}["t_true"] == ("canary=true",)
    assert [t.name for t in Selection(tags=("canary",)).apply(tenants)] == ["t_empty", "t_eu", "t_true"]
    assert [t.name for t in Selection(tags=("region=eu",)).apply(tenants)] == ["t_eu"]
    assert [t.name for t in Selection(tags=("canary=false",)).apply(tenants)] == ["t_false"]
    waves = assign(tenants, (Wave("canary", tag="canary"), Wave("fleet", rest=True)))
    assert [(w.name, [t.name for t in ts]) for w, ts in waves] == [
        ("canary", ["t_empty", "t_eu", "t_true"]), ("fleet", ["t_false", "t_no", "t_none"])]


def test_pool_discovery_reports_master_and_databases_not_online(tmp_path):
    env = azure_env(tmp_path)
    arm = FakeArm({POOL_DBS: [
        [database("master"), database("tenant_a")],
        [database("tenant_off", status="Offline"), database("tenant_paused", status="Paused")],
        [database("tenant_b"), database("tenant_new", status="SomethingNewInTheApi")],
    ]})
    tenants, skipped = AzureSource(env, credential=FakeCredential(), transport=arm).discover_with_skipped()

    assert [t.name for t in tenants] == ["tenant_a", "tenant_b"]
    assert skipped == [
        Skipped("master", "system database"),  # no tenant
        # Tenants that cannot be read now: `verify` lists them as not verified.
        Skipped("tenant_new", "database is SomethingNewInTheApi (not Online)", offline=True),
        Skipped("tenant_off", "database is Offline (not Online)", offline=True),
        Skipped("tenant_paused", "database is Paused (not Online)", offline=True),
    ]


def test_pool_discovery_applies_match(tmp_path):
    env = azure_env(tmp_path, 'match = "tenant_[ab]"')
    arm = FakeArm({POOL_DBS: THREE_PAGES})
    assert [t.name for t in AzureSource(env, credential=FakeCredential(), transport=arm).discover()] == [
        "tenant_a", "tenant_b"]


def test_server_discovery_filters_by_match_and_pool(tmp_path):
    env = azure_env(tmp_path, 'match = "tenant_*"\npool = "pool1"', source="azure-server")
    arm = FakeArm({SERVER_DBS: [
        [database("master"), database("tenant_a"), database("tenant_other_pool", pool="pool2")],
        [database("tenant_single", pool=None), database("reporting"), database("tenant_b")],
        [database("tenant_paused", status="Paused"), database("tenant_c", pool="POOL1")],
    ]})
    tenants, skipped = AzureSource(env, credential=FakeCredential(), transport=arm).discover_with_skipped()

    assert [t.name for t in tenants] == ["tenant_a", "tenant_b", "tenant_c"]  # pool ids compare case-blind
    # Only candidates are reported: master and reporting do not match, the others are in no or another pool.
    assert skipped == [Skipped("tenant_paused", "database is Paused (not Online)", offline=True)]
    assert [r.path for r in arm.requests] == [SERVER_DBS] * 3


def test_server_discovery_without_pool_reports_master(tmp_path):
    env = azure_env(tmp_path, source="azure-server")
    arm = FakeArm({SERVER_DBS: [
        [database("master"), database("tenant_a")],
        [database("tenant_single", pool=None)],
        [database("tenant_other_pool", pool="pool2")],
    ]})
    tenants, skipped = AzureSource(env, credential=FakeCredential(), transport=arm).discover_with_skipped()
    assert [t.name for t in tenants] == ["tenant_a", "tenant_other_pool", "tenant_single"]
    assert skipped == [Skipped("master", "system database")]


@pytest.mark.parametrize(("cloud", "host", "scope", "sql_host"), [
    ("usgov", "management.usgovcloudapi.net", "https://management.core.usgovcloudapi.net/.default",
     "srv.database.usgovcloudapi.net"),
    ("china", "management.chinacloudapi.cn", "https://management.chinacloudapi.cn/.default",
     "srv.database.chinacloudapi.cn"),
])
def test_sovereign_clouds_use_their_endpoint_and_scope(tmp_path, cloud, host, scope, sql_host):
    env = azure_env(tmp_path, f'cloud = "{cloud}"')
    arm, cred = FakeArm({POOL_DBS: THREE_PAGES}), FakeCredential()
    tenants = AzureSource(env, credential=cred, transport=arm).discover()

    assert {r.host for r in arm.requests} == {host}
    assert len(arm.requests) == 3
    assert cred.scopes == [(scope,)]
    assert f"@{sql_host}:1433/" in tenants[0].url


def test_endpoint_table_matches_azure_mgmt_core():
    clouds = {"public": AzureClouds.AZURE_PUBLIC_CLOUD, "usgov": AzureClouds.AZURE_US_GOVERNMENT,
              "china": AzureClouds.AZURE_CHINA_CLOUD}
    for name, cloud in clouds.items():
        arm = get_arm_endpoints(cloud)
        assert MANAGEMENT_ENDPOINTS[name] == (arm["resource_manager"].rstrip("/"), arm["credential_scopes"][0])


def test_explicit_management_endpoint_wins(tmp_path):
    env = azure_env(tmp_path, 'cloud = "china"\nmanagement_endpoint = "https://management.local.azurestack.external/"')
    assert management_endpoint(env) == ("https://management.local.azurestack.external",
                                        "https://management.local.azurestack.external/.default")
    arm, cred = FakeArm({POOL_DBS: THREE_PAGES}), FakeCredential()
    AzureSource(env, credential=cred, transport=arm).discover()
    assert {r.host for r in arm.requests} == {"management.local.azurestack.external"}
    assert cred.scopes == [("https://management.local.azurestack.external/.default",)]


def test_plain_http_management_endpoint_is_refused(tmp_path):
    env = azure_env(tmp_path, 'management_endpoint = "http://127.0.0.1:8080"')
    arm = FakeArm({})
    with pytest.raises(ConfigError, match=r"management_endpoint must be an https:// URL"):
        AzureSource(env, credential=FakeCredential(), transport=arm).discover()
    assert arm.requests == []


# --- errors ------------------------------------------------------------------------------------------------


def _echo(request):
    """An error body that echoes what the request carried (a worst case for secret scrubbing)."""
    return {"error": {"code": "Echo", "message": f"got {request.headers.get('Authorization')} for s3cr3t-pw"}}


def test_403_is_a_config_error_naming_the_role_and_the_resource(tmp_path):
    env = azure_env(tmp_path)
    arm = FakeArm({POOL_DBS: arm_error(403, "AuthorizationFailed",
        "The client 'deploy@contoso.com' with object id '1111' does not have authorization to perform action "
        "'Microsoft.Sql/servers/elasticPools/databases/read' over scope '/subscriptions/...' or the scope is "
        "invalid.")})
    with pytest.raises(ConfigError) as err:
        AzureSource(env, credential=FakeCredential(), transport=arm).discover()
    message = str(err.value)
    assert err.value.exit_code == 2
    assert "\n" not in message
    assert message.startswith("environment 'prod': the Azure management API refused to list the databases of "
                              "elastic pool 'pool1' on server 'srv' (subscription " + SUB)
    assert "resource group 'rg'" in message and "at https://management.azure.com" in message
    assert "403 AuthorizationFailed: The client 'deploy@contoso.com'" in message
    assert message.endswith("needs the Reader role on the server (or the resource group)")
    assert len(arm.requests) == 1  # a 403 is not retried


def test_404_is_a_config_error_naming_the_resource(tmp_path):
    env = azure_env(tmp_path)
    arm = FakeArm({POOL_DBS: arm_error(404, "ParentResourceNotFound",
        "Can not perform requested operation on nested resource. Parent resource 'srv/pool1' not found.")})
    with pytest.raises(ConfigError) as err:
        AzureSource(env, credential=FakeCredential(), transport=arm).discover()
    message = str(err.value)
    assert "elastic pool 'pool1' on server 'srv'" in message and "resource group 'rg'" in message
    assert f"subscription {SUB}" in message
    assert "not found (404 ParentResourceNotFound: Can not perform requested operation" in message
    assert "check subscription, resource_group, server, pool and cloud" in message
    assert "needs the Reader role on the server (or the resource group)" in message
    assert "\n" not in message


def test_500_is_a_discovery_error_after_the_sdk_retries(tmp_path):
    env = azure_env(tmp_path)
    arm = FakeArm({POOL_DBS: arm_error(500, "InternalServerError", "An unexpected error occured.")})
    with pytest.raises(DiscoveryError) as err:
        AzureSource(env, credential=FakeCredential(), transport=arm).discover()
    message = str(err.value)
    assert err.value.exit_code == 1
    assert message == (
        "environment 'prod': the Azure management API failed to list the databases of elastic pool 'pool1' on "
        f"server 'srv' (subscription {SUB}, resource group 'rg', server 'srv', pool 'pool1', at "
        "https://management.azure.com): 500 InternalServerError: An unexpected error occured"
    )
    # azure-core's status retries (3 by default), backing off through the transport (recorded, not slept).
    assert len(arm.requests) == 4
    assert arm.sleeps and all(s > 0 for s in arm.sleeps)


def test_a_500_on_a_later_page_fails_the_whole_discovery(tmp_path):
    env = azure_env(tmp_path)

    class Flaky(FakeArm):
        def send(self, request, **kwargs):
            if "$skipToken=2" in request.url:
                self.routes = {POOL_DBS: arm_error(503, "ServiceUnavailable", "Try again later.")}
            return super().send(request, **kwargs)

    arm = Flaky({POOL_DBS: THREE_PAGES})
    with pytest.raises(DiscoveryError, match=r"503 ServiceUnavailable: Try again later$"):
        AzureSource(env, credential=FakeCredential(), transport=arm).discover()


def test_errors_never_carry_the_token_or_a_secret(tmp_path):
    env = azure_env(
        tmp_path,
        'auth = "sql"\nurl = "mssql+pyodbc://deploy:${SQL_PASSWORD}@srv.database.windows.net/{tenant}'
        '?driver=ODBC+Driver+18+for+SQL+Server"',
        environ={"SQL_PASSWORD": "s3cr3t-pw"},
    )
    assert "s3cr3t-pw" in env.secrets
    for status, kind in ((403, ConfigError), (404, ConfigError), (500, DiscoveryError)):
        arm = FakeArm({POOL_DBS: (status, _echo)})
        with pytest.raises(kind) as err:
            AzureSource(env, credential=FakeCredential(), transport=arm).discover()
        message = str(err.value)
        assert "Echo: got *** for ***" in message
        assert TOKEN not in message and "s3cr3t-pw" not in message, message
        assert err.value.__cause__ is None and err.value.__suppress_context__  # no SDK traceback attached


def test_jwt_shaped_text_is_scrubbed(tmp_path):
    env = azure_env(tmp_path)
    jwt = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL21hbmFnZW1lbnQifQ.c2lnbmF0dXJl"
    arm = FakeArm({POOL_DBS: arm_error(403, "AuthorizationFailed", f"token {jwt} lacks access")})
    with pytest.raises(ConfigError) as err:
        AzureSource(env, credential=FakeCredential(), transport=arm).discover()
    assert jwt not in str(err.value) and "token *** lacks access" in str(err.value)


def test_unreachable_management_api_is_a_discovery_error(tmp_path):
    env = azure_env(tmp_path, 'cloud = "usgov"')
    arm = FakeArm({POOL_DBS: ServiceRequestError("Failed to resolve 'management.usgovcloudapi.net'\nmore")})
    with pytest.raises(DiscoveryError) as err:
        AzureSource(env, credential=FakeCredential(), transport=arm).discover()
    message = str(err.value)
    assert message.startswith("environment 'prod': cannot reach the Azure management API to list the databases")
    assert "at https://management.usgovcloudapi.net): Failed to resolve 'management.usgovcloudapi.net';" in message
    assert "\n" not in message


def test_no_sign_in_is_a_discovery_error(tmp_path):
    env = azure_env(tmp_path)
    cred = FakeCredential(ClientAuthenticationError(
        "DefaultAzureCredential failed to retrieve a token from the included credentials.\nAttempted ..."))
    arm = FakeArm({POOL_DBS: THREE_PAGES})
    with pytest.raises(DiscoveryError) as err:
        AzureSource(env, credential=cred, transport=arm).discover()
    assert str(err.value) == (
        "environment 'prod': cannot get a token for https://management.azure.com/.default to list the databases "
        "of elastic pool 'pool1' on server 'srv': DefaultAzureCredential failed to retrieve a token from the "
        "included credentials; sign in (az login, a managed identity, or AZURE_CLIENT_ID/AZURE_TENANT_ID/... "
        "for a service principal)"
    )
    assert arm.requests == []


def test_a_non_azure_environment_is_refused(tmp_path):
    path = write_config(tmp_path / "tenants.toml", """\
        [environments.local]
        url = "sqlite:///{tenant}.db"
        tenants = ["a"]
    """)
    env = load_settings(path, "local", environ={}).environment
    with pytest.raises(ConfigError, match=r"source 'static' is not an Azure source"):
        AzureSource(env)
    assert derived_concurrency(env) is None


# --- concurrency from the pool -----------------------------------------------------------------------------


def _pool_model(sku, per_database_max=None):
    from azure.mgmt.sql.models import ElasticPool

    return ElasticPool(elastic_pool(sku, per_database_max))


@pytest.mark.parametrize(("capacity", "per_db", "expected"), [
    (2, None, 1),     # 2 vCores: half is 1 vCore -> 1 migration
    (4, None, 2),
    (8, None, 4),
    (8, 8, 4),        # a per-database max equal to the pool changes nothing
    (10, 2, 5),       # a per-database max above one vCore does not raise the unit
    (4, 0.5, 4),      # each database can use at most 0.5 vCore: 2 vCores hold 4 migrations
    (4, 0.25, 8),
    (64, None, 16),   # capped
    (80, 0.5, 16),
])
def test_pool_concurrency_vcore(capacity, per_db, expected):
    sku = {"name": "GP_Gen5", "tier": "GeneralPurpose", "family": "Gen5", "capacity": capacity}
    assert pool_concurrency(_pool_model(sku, per_db)) == expected


@pytest.mark.parametrize(("tier", "capacity", "per_db", "expected"), [
    ("Basic", 50, 5, 5),          # Basic databases use at most 5 eDTU each: 25 eDTU hold 5
    ("Standard", 50, None, 1),
    ("Standard", 100, None, 2),
    ("Standard", 100, 10, 5),     # S0-sized tenants
    ("Standard", 400, 100, 8),
    ("Premium", 1000, 250, 16),   # capped
    ("Standard", 3000, 3000, 16),
])
def test_pool_concurrency_dtu(tier, capacity, per_db, expected):
    sku = {"name": f"{tier}Pool", "tier": tier, "capacity": capacity}
    assert pool_concurrency(_pool_model(sku, per_db)) == expected


def test_pool_concurrency_without_capacity_is_one():
    assert pool_concurrency(SimpleNamespace(sku=None, per_database_settings=None)) == 1
    assert pool_concurrency(SimpleNamespace(sku=SimpleNamespace(capacity=None, tier="GeneralPurpose"))) == 1


def test_derived_concurrency_reads_the_pool(tmp_path):
    env = azure_env(tmp_path, 'cloud = "china"')
    arm, cred = FakeArm({POOL: elastic_pool(
        {"name": "GP_Gen5", "tier": "GeneralPurpose", "family": "Gen5", "capacity": 12}, 2)}), FakeCredential()
    assert derived_concurrency(env, credential=cred, transport=arm) == 6
    assert [(r.host, r.path, r.query["api-version"]) for r in arm.requests] == [
        ("management.chinacloudapi.cn", POOL, [API_VERSION])]
    assert cred.scopes == [("https://management.chinacloudapi.cn/.default",)]


def test_explicit_concurrency_wins_without_asking_azure(tmp_path):
    env = azure_env(tmp_path, "concurrency = 12")
    assert env.concurrency_explicit
    arm = FakeArm({})
    assert derived_concurrency(env, credential=FakeCredential(), transport=arm) is None
    assert arm.requests == []


def test_derived_concurrency_is_only_for_azure_pool(tmp_path):
    env = azure_env(tmp_path, 'pool = "pool1"', source="azure-server")
    arm = FakeArm({})
    assert derived_concurrency(env, credential=FakeCredential(), transport=arm) is None
    assert arm.requests == []


def test_derived_concurrency_missing_pool_is_a_config_error(tmp_path):
    env = azure_env(tmp_path)
    arm = FakeArm({POOL: arm_error(404, "ResourceNotFound",
        "The Resource 'Microsoft.Sql/servers/srv/elasticPools/pool1' under resource group 'rg' was not found.")})
    with pytest.raises(ConfigError) as err:
        derived_concurrency(env, credential=FakeCredential(), transport=arm)
    message = str(err.value)
    assert message.startswith("environment 'prod': cannot read elastic pool 'pool1' on server 'srv' (subscription")
    assert "404 ResourceNotFound" in message and "Reader role" in message


def test_prepare_upgrade_uses_the_pool_discovery_and_its_derived_concurrency(tmp_path):
    """The engine's view of an azure-pool environment: tenants, databases left alone, concurrency from the pool."""
    from tenants import api
    from tenants.config import Settings

    env = azure_env(tmp_path, extra=f'alembic = "{Path(__file__).resolve().parent.parent / "alembic.ini"}"\n')
    pages = [[database("master", pool=None), database("tenant_a")], [database("tenant_b", status="Offline")]]
    sku = {"name": "GP_Gen5", "tier": "GeneralPurpose", "family": "Gen5", "capacity": 8}
    arm = FakeArm({POOL_DBS: pages, POOL: elastic_pool(sku)})
    source = AzureSource(env, credential=FakeCredential(), transport=arm)
    prepared = api.prepare_upgrade(Settings(env), source=source)
    assert [t.name for t in prepared.tenants] == ["tenant_a"]
    assert prepared.skipped == (("master", "system database"), ("tenant_b", "database is Offline (not Online)"))
    assert prepared.concurrency == pool_concurrency(SimpleNamespace(
        sku=SimpleNamespace(**sku), per_database_settings=SimpleNamespace(min_capacity=0, max_capacity=8)))
    assert prepared.concurrency == 4


def test_a_skipped_database_named_with_tenant_says_why_and_explicit_concurrency_skips_the_pool(tmp_path):
    from tenants import api
    from tenants.config import Settings
    from tenants.errors import TenantNotFound
    from tenants.selection import Selection

    env = azure_env(tmp_path, extra=f'alembic = "{Path(__file__).resolve().parent.parent / "alembic.ini"}"\n')
    arm = FakeArm({POOL_DBS: [[database("tenant_a"), database("tenant_p", status="Paused")]]})
    source = AzureSource(env, credential=FakeCredential(), transport=arm)
    with pytest.raises(TenantNotFound,
                       match=r"tenant 'tenant_p' \(--tenant\) is not migrated: database is Paused \(not Online\)"):
        api.prepare_upgrade(Settings(env), selection=Selection(tenants=("tenant_p",)), source=source)
    prepared = api.prepare_upgrade(Settings(env), source=source, concurrency=3)
    assert prepared.concurrency == 3
    assert all(r.path != POOL for r in arm.requests)  # the pool was never asked


# --- verify: the databases discovery could not read --------------------------------------------------------


class OnSqlite:
    """Azure's listing (the fake ARM), with each tenant a SQLite file of ``env``: what verify reads is real,
    what it is told the pool holds comes from the management API."""

    def __init__(self, azure: AzureSource, env):
        self.azure, self.env = azure, env

    def discover_with_skipped(self):
        from tenants.model import Tenant

        tenants, skipped = self.azure.discover_with_skipped()
        return [Tenant(t.name, self.env.tenant_url(t.name), t.tags) for t in tenants], skipped

    def discover(self):
        return self.discover_with_skipped()[0]


OFFLINE_POOL = [[database("master", pool=None), database("tenant_a"), database("tenant_b")],
                [database("tenant_scaling", status="Scaling", tags={"canary": "true"}),
                 database("tenant_copying", status="Copying")]]
SCALING = ("tenant_scaling", "database is Scaling (not Online)")
COPYING = ("tenant_copying", "database is Copying (not Online)")


def _upgraded_pool(tmp_path, sqlite_config):
    from tenants import api

    config = sqlite_config(("tenant_a", "tenant_b"))
    settings = load_settings(config, "test", environ={})
    assert api.upgrade(settings).ok
    azure = AzureSource(azure_env(tmp_path / "azure"), credential=FakeCredential(),
                        transport=FakeArm({POOL_DBS: OFFLINE_POOL}))
    return config, settings, OnSqlite(azure, settings.environment)


def test_status_lists_databases_that_are_not_online_as_not_verified(tmp_path, sqlite_config):
    from tenants import api
    from tenants.output.junit import status_junit
    from tenants.output.terminal import status_line, verify_lines
    from tenants.selection import Selection, shard_of

    (tmp_path / "azure").mkdir()
    _, settings, source = _upgraded_pool(tmp_path, sqlite_config)
    report = api.status(settings, source=source)
    assert [t.tenant for t in report.tenants] == ["tenant_a", "tenant_b"] and report.ok
    assert report.offline == (COPYING, SCALING)  # master is no tenant: not there
    assert verify_lines(report) == ["not-verified     tenant_copying  database is Copying (not Online)",
                                    "not-verified     tenant_scaling  database is Scaling (not Online)"]
    assert verify_lines(report, allow_offline=True)[0].endswith("(not Online) (allowed by --allow-offline)")
    assert status_line(report).endswith("2/2 tenants at head 0004_invoice_user_index; 2 not verified (not online)")
    assert report.to_dict()["offline"] == [{"tenant": "tenant_copying", "reason": COPYING[1]},
                                           {"tenant": "tenant_scaling", "reason": SCALING[1]}]
    junit = status_junit(report)
    assert 'tests="4" failures="2" errors="0" skipped="0"' in junit
    assert ('<testcase classname="tenants.test" name="tenant_scaling"><failure type="not-verified" '
            'message="not verified: database is Scaling (not Online)">') in junit
    allowed = status_junit(report, allow_offline=True)
    assert 'tests="4" failures="0" errors="0" skipped="2"' in allowed
    assert ('<testcase classname="tenants.test" name="tenant_scaling"><skipped message="not verified: database '
            'is Scaling (not Online)" /></testcase>') in allowed

    # The selection applies to them as to the tenants: by name, glob, tag and shard.
    assert api.status(settings, Selection(exclude=("*copying",)), source).offline == (SCALING,)
    tagged = api.status(settings, Selection(tags=("canary",)), source)
    assert (tagged.tenants, tagged.offline) == ((), (SCALING,))
    named = api.status(settings, Selection(tenants=("tenant_a", "tenant_scaling")), source)
    assert ([t.tenant for t in named.tenants], named.offline) == (["tenant_a"], (SCALING,))
    alone = api.status(settings, Selection(tenants=("tenant_scaling",)), source)
    assert (alone.tenants, alone.offline) == ((), (SCALING,))
    shards = [api.status(settings, Selection(shard=(k, 3)), source) for k in (1, 2, 3)]
    assert sorted(o for s in shards for o in s.offline) == [COPYING, SCALING]
    assert all(shard_of(name, 3) == k for k, s in enumerate(shards, 1) for name, _ in s.offline)


def test_cli_verify_fails_on_a_database_it_could_not_read_unless_allowed(tmp_path, sqlite_config, cli, monkeypatch):
    import xml.etree.ElementTree as ET

    from tenants import api

    (tmp_path / "azure").mkdir()
    config, _, source = _upgraded_pool(tmp_path, sqlite_config)
    monkeypatch.setattr(api, "source_for", lambda env: source)
    junit = tmp_path / "verify.xml"
    run = cli("--config", str(config), "-e", "test", "verify", "--junit", str(junit))
    assert run.code == 1, run.err
    assert run.out.splitlines() == [
        "not-verified     tenant_copying  database is Copying (not Online)",
        "not-verified     tenant_scaling  database is Scaling (not Online)",
        "2/2 tenants at head 0004_invoice_user_index; 2 not verified (not online)"]
    cases = {case.get("name"): case for case in ET.parse(junit).getroot().iter("testcase")}
    assert sorted(cases) == ["tenant_a", "tenant_b", "tenant_copying", "tenant_scaling"]
    assert cases["tenant_scaling"].find("failure").get("type") == "not-verified"

    allowed = cli("--config", str(config), "-e", "test", "verify", "--allow-offline", "--junit", str(junit))
    assert allowed.code == 0, allowed.err
    assert allowed.out.splitlines()[1] == ("not-verified     tenant_scaling  database is Scaling (not Online) "
                                           "(allowed by --allow-offline)")
    cases = {case.get("name"): case for case in ET.parse(junit).getroot().iter("testcase")}
    assert cases["tenant_copying"].find("skipped") is not None and cases["tenant_copying"].find("failure") is None

    # A selection that leaves them out verifies; status shows them and keeps its own exit code.
    assert cli("--config", str(config), "-e", "test", "verify", "--exclude", "tenant_[cs]*").code == 0
    status = cli("--config", str(config), "-e", "test", "status", "--json")
    assert status.code == 0 and [o["tenant"] for o in json.loads(status.out)["offline"]] == [
        "tenant_copying", "tenant_scaling"]
    table = cli("--config", str(config), "-e", "test", "status")
    assert "tenant_scaling" in table.out and "not-verified" in table.out
    listed = cli("--config", str(config), "-e", "test", "list")
    assert listed.err.splitlines() == ["not listed: master: system database",
                                       "not listed: tenant_copying: database is Copying (not Online)",
                                       "not listed: tenant_scaling: database is Scaling (not Online)"]
