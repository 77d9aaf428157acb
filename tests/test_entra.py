"""Entra ID tokens for Azure SQL: the token struct, the token cache, the do_connect hook, clouds.

The hook runs on a real SQLAlchemy engine through real pyodbc, unixODBC and FreeTDS against a closed port:
the connection fails, and a listener registered after ours shows what pyodbc was called with. Only the
credential is fake (getting a real token needs Entra ID and the network).
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading
import time
import traceback

import pytest
from azure.core.credentials import AccessToken
from sqlalchemy import create_engine, event
from sqlalchemy.exc import DBAPIError

from tenants.dialects.entra import (
    CLOUDS,
    SQL_COPT_SS_ACCESS_TOKEN,
    TokenCache,
    check_no_credentials,
    credential_for,
    database_scope,
    install_token_hook,
    token_struct,
)
from tenants.errors import ConfigError

TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.c2VjcmV0LXRva2VuLXBheWxvYWQ.c2lnbmF0dXJl"


def decode_struct(value: bytes) -> str:
    (length,) = struct.unpack_from("<I", value)
    assert len(value) == 4 + length
    return value[4:].decode("utf-16-le")


class FakeCredential:
    """A TokenCredential that counts its calls; tokens are 'token-1', 'token-2', ... (or always ``token``),
    expiring at ``expires_on``."""

    def __init__(self, expires_on: float = 10_000, delay: float = 0.0, token: str | None = None) -> None:
        self.expires_on = expires_on
        self.delay = delay
        self.token = token
        self.calls: list[tuple[str, ...]] = []
        self._lock = threading.Lock()

    def get_token(self, *scopes: str, **kwargs) -> AccessToken:
        with self._lock:
            self.calls.append(scopes)
            n = len(self.calls)
        time.sleep(self.delay)  # widens the window in which concurrent callers would each call us
        return AccessToken(self.token or f"token-{n}", int(self.expires_on))


class FakeClock:
    def __init__(self, now: float = 1_000) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- token_struct ------------------------------------------------------------------------------------------


def test_token_struct_ascii_is_length_prefixed_utf16le():
    value = token_struct(TOKEN)
    assert struct.unpack_from("<I", value)[0] == 2 * len(TOKEN)
    assert value[4:6] == b"e\x00"  # each ASCII byte followed by a zero byte
    assert decode_struct(value) == TOKEN


def test_token_struct_non_ascii_round_trips():
    token = "jéton-токен-🔑"
    value = token_struct(token)
    assert struct.unpack_from("<I", value)[0] == len(token.encode("utf-16-le"))  # bytes, not characters
    assert decode_struct(value) == token


def test_token_struct_constant():
    assert SQL_COPT_SS_ACCESS_TOKEN == 1256


# --- TokenCache --------------------------------------------------------------------------------------------


def test_token_cache_reuses_the_token_within_the_window():
    credential, clock = FakeCredential(expires_on=5_000), FakeClock(1_000)
    cache = TokenCache(credential, refresh_margin=300, clock=clock)
    assert cache.token() == "token-1"
    clock.now = 4_699  # 301 s before expiry: still fresh enough
    assert cache.token() == "token-1"
    assert len(credential.calls) == 1
    assert cache.expires_on == 5_000


def test_token_cache_refreshes_at_expiry_minus_margin():
    credential, clock = FakeCredential(expires_on=5_000), FakeClock(1_000)
    cache = TokenCache(credential, refresh_margin=300, clock=clock)
    assert cache.token() == "token-1"
    credential.expires_on = 9_000
    clock.now = 4_700
    assert cache.token() == "token-2"
    clock.now = 8_699
    assert cache.token() == "token-2"
    clock.now = 8_700
    assert cache.token() == "token-3"
    assert len(credential.calls) == 3


def test_token_cache_keeps_a_short_lived_token_for_half_its_life():
    # 100 s left, margin 300: without the half-life rule every call would fetch a new token.
    credential, clock = FakeCredential(expires_on=1_100), FakeClock(1_000)
    cache = TokenCache(credential, refresh_margin=300, clock=clock)
    assert cache.token() == "token-1"
    clock.now = 1_049
    assert cache.token() == "token-1"
    clock.now = 1_050
    assert cache.token() == "token-2"


def test_token_cache_passes_its_scope_and_defaults_to_azure_sql():
    credential = FakeCredential()
    TokenCache(credential, clock=FakeClock()).token()
    TokenCache(credential, "https://database.usgovcloudapi.net/.default", clock=FakeClock()).token()
    assert credential.calls == [("https://database.windows.net/.default",),
                                ("https://database.usgovcloudapi.net/.default",)]


def test_token_cache_one_call_per_window_with_concurrent_callers():
    credential, clock = FakeCredential(expires_on=5_000, delay=0.05), FakeClock(1_000)
    cache = TokenCache(credential, refresh_margin=300, clock=clock)

    def burst() -> list[str]:
        barrier = threading.Barrier(8)
        results: list[str] = []

        def call() -> None:
            barrier.wait()
            results.append(cache.token())

        threads = [threading.Thread(target=call) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return results

    assert burst() == ["token-1"] * 8
    assert len(credential.calls) == 1
    credential.expires_on = 9_000
    clock.now = 4_800  # past expiry - margin: the next burst shares exactly one new token
    assert burst() == ["token-2"] * 8
    assert len(credential.calls) == 2


def test_token_cache_error_is_not_cached():
    class Flaky(FakeCredential):
        def get_token(self, *scopes, **kwargs):
            if not self.calls:
                self.calls.append(scopes)
                raise RuntimeError("Entra ID unavailable")
            return super().get_token(*scopes, **kwargs)

    cache = TokenCache(Flaky(), clock=FakeClock())
    with pytest.raises(RuntimeError):
        cache.token()
    assert cache.token() == "token-2"


def test_token_cache_repr_has_no_token():
    cache = TokenCache(FakeCredential(), clock=FakeClock())
    assert "token-" not in repr(cache)  # before
    cache.token()
    text = repr(cache)
    assert "token-1" not in text and "token-1" not in str(cache)
    assert "FakeCredential" in text and "database.windows.net" in text


# --- install_token_hook on a real engine -------------------------------------------------------------------


@pytest.fixture
def pyodbc_available():
    try:
        import pyodbc  # noqa: F401
    except ImportError as err:  # pyodbc needs unixODBC's libodbc.so.2 even to import
        if os.environ.get("TENANTS_REQUIRE_ODBC") == "1":
            pytest.fail(f"TENANTS_REQUIRE_ODBC=1 but pyodbc cannot be imported: {err}")
        pytest.skip(f"pyodbc cannot be imported (install unixODBC and FreeTDS): {err}")


def test_install_token_hook_puts_the_token_in_attrs_before(pyodbc_available, caplog):
    caplog.set_level("DEBUG")
    # Closed port: the connection fails fast after pyodbc was called with our arguments.
    engine = create_engine(
        "mssql+pyodbc://@127.0.0.1:1/db?driver=FreeTDS",
        connect_args={"attrs_before": {1234: b"other"}},  # an existing attribute survives the merge
    )
    credential = FakeCredential(expires_on=time.time() + 3600, token=TOKEN)
    install_token_hook(engine, TokenCache(credential))
    seen: list[tuple[list, dict]] = []

    @event.listens_for(engine, "do_connect")
    def _record(_dialect, _record, cargs, cparams):  # registered after ours: sees what pyodbc gets
        seen.append((list(cargs), dict(cparams)))

    for _ in range(2):
        with pytest.raises(DBAPIError) as excinfo:
            engine.connect()
    err = excinfo.value
    import pyodbc

    assert isinstance(err.orig, pyodbc.Error)
    assert len(seen) == 2 and len(credential.calls) == 1  # two connections, one token
    cargs, cparams = seen[0]
    assert cparams["attrs_before"] == {1234: b"other", SQL_COPT_SS_ACCESS_TOKEN: token_struct(TOKEN)}
    assert "trusted_connection" not in cargs[0].lower()  # SQLAlchemy's own addition, removed
    assert cargs[0].startswith("DRIVER={FreeTDS};Server=127.0.0.1,1;Database=db")

    texts = [str(err), repr(err), str(err.orig), repr(err.orig), "".join(traceback.format_exception(err)),
             caplog.text]
    for text in texts:
        assert TOKEN not in text
        assert TOKEN[:20] not in text
        assert TOKEN.encode("utf-16-le")[:40].decode("latin-1") not in text


def test_install_token_hook_refuses_credentials_in_the_url():
    cache = TokenCache(FakeCredential(), clock=FakeClock())
    with pytest.raises(ConfigError, match="UID"):
        install_token_hook(create_engine("mssql+pyodbc://sa@127.0.0.1:1/db?driver=FreeTDS"), cache)
    with pytest.raises(ConfigError, match="mssql\\+pyodbc"):
        install_token_hook(create_engine("sqlite://"), cache)


# --- check_no_credentials ----------------------------------------------------------------------------------


@pytest.mark.parametrize("clean", [
    "Driver={ODBC Driver 18 for SQL Server};Server=tcp:x.database.windows.net,1433;Database=t1;Encrypt=yes",
    "Driver={FreeTDS};Server=h;Database={db;UID=not-a-keyword}",  # inside braces: part of a value
    "DSN=fleet;",
    "mssql+pyodbc://@x.database.windows.net:1433/t1?driver=ODBC+Driver+18+for+SQL+Server&Encrypt=yes",
    "mssql+pyodbc:///?odbc_connect=Driver%3D%7BFreeTDS%7D%3BServer%3Dh%3BDatabase%3Dt1",
])
def test_check_no_credentials_accepts_a_clean_connection(clean):
    check_no_credentials(clean)


@pytest.mark.parametrize("keyword", ["UID", "uid", "PWD", "Pwd", "Authentication", "AUTHENTICATION",
                                     "Trusted_Connection", "trusted_connection"])
def test_check_no_credentials_rejects_each_login_keyword(keyword):
    odbc = f"Driver={{FreeTDS}};Server=h;{keyword}={{s3cr;et}};Database=t1"
    url = f"mssql+pyodbc://@h/t1?driver=FreeTDS&{keyword}=s3cret"
    wrapped = "mssql+pyodbc:///?odbc_connect=" + f"Server%3Dh%3B+{keyword}+%3Ds3cret"
    for connection in (odbc, f"{keyword}=x", url, wrapped):
        with pytest.raises(ConfigError) as excinfo:
            check_no_credentials(connection)
        message = str(excinfo.value)
        assert keyword in message
        assert "s3cr" not in message  # the value may be a password


def test_check_no_credentials_rejects_a_user_or_password_in_the_url():
    with pytest.raises(ConfigError, match="UID"):
        check_no_credentials("mssql+pyodbc://app@h/t1?driver=FreeTDS")
    with pytest.raises(ConfigError, match="UID") as excinfo:
        check_no_credentials("mssql+pyodbc://app:hunter2@h/t1?driver=FreeTDS")
    assert "hunter2" not in str(excinfo.value)


# --- clouds ------------------------------------------------------------------------------------------------


def test_database_scope_per_cloud():
    assert database_scope() == "https://database.windows.net/.default"
    assert database_scope("public") == "https://database.windows.net/.default"
    assert database_scope("usgov") == "https://database.usgovcloudapi.net/.default"
    assert database_scope("china") == "https://database.chinacloudapi.cn/.default"
    assert database_scope("USGov") == "https://database.usgovcloudapi.net/.default"
    assert CLOUDS == ("public", "usgov", "china")


@pytest.mark.parametrize("call", [database_scope, credential_for])
def test_unknown_cloud_lists_the_valid_ones(call):
    with pytest.raises(ConfigError) as excinfo:
        call("germany")
    assert "'germany'" in str(excinfo.value)
    for cloud in CLOUDS:
        assert cloud in str(excinfo.value)


def _environment_authority(credential) -> str:
    # With AZURE_TENANT_ID/CLIENT_ID/CLIENT_SECRET set, DefaultAzureCredential's first link is an
    # EnvironmentCredential wrapping a ClientSecretCredential built with our authority. azure-identity has no
    # public accessor for it: this reads private attributes (checked against azure-identity 1.27).
    environment = credential.credentials[0]
    assert type(environment).__name__ == "EnvironmentCredential"
    return environment._credential._authority


@pytest.mark.parametrize("cloud, host", [
    ("public", "login.microsoftonline.com"),
    ("usgov", "login.microsoftonline.us"),
    ("china", "login.chinacloudapi.cn"),
])
def test_credential_for_uses_the_cloud_authority(cloud, host, monkeypatch):
    from azure.identity import DefaultAzureCredential

    monkeypatch.setenv("AZURE_TENANT_ID", "00000000-0000-0000-0000-000000000000")
    monkeypatch.setenv("AZURE_CLIENT_ID", "00000000-0000-0000-0000-000000000001")
    monkeypatch.setenv("AZURE_CLIENT_SECRET", "not-a-secret")
    monkeypatch.setenv("AZURE_AUTHORITY_HOST", "login.elsewhere.example")  # the cloud wins over the environment
    credential = credential_for(cloud)
    assert isinstance(credential, DefaultAzureCredential)
    assert _environment_authority(credential) == f"https://{host}"
    override = credential_for(cloud, authority="login.private.example")
    assert _environment_authority(override) == "https://login.private.example"


def test_import_needs_neither_pyodbc_nor_azure_identity():
    code = ("import sys, tenants.dialects.entra; "
            "loaded = [m for m in ('pyodbc', 'azure.identity', 'azure.core') if m in sys.modules]; "
            "print(loaded); sys.exit(1 if loaded else 0)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
