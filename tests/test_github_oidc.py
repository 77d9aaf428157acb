"""The long-run sign-in for GitHub Actions: a fresh GitHub ID token for every Entra assertion."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlparse

import pytest

from tenants.dialects import github_oidc
from tenants.errors import ConfigError


@pytest.fixture
def token_endpoint():
    """A stand-in for GitHub's ID token endpoint on loopback: a new token on every request."""
    seen = []

    class Endpoint(BaseHTTPRequestHandler):
        def do_GET(self):
            seen.append((self.path, self.headers.get("Authorization")))
            body = json.dumps({"value": f"gh-id-token-{len(seen)}"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Endpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/_apis/token?api-version=2.0", seen
    server.shutdown()
    server.server_close()


def environ(url: str) -> dict[str, str]:
    return {"ACTIONS_ID_TOKEN_REQUEST_URL": url, "ACTIONS_ID_TOKEN_REQUEST_TOKEN": "runner-secret",
            "AZURE_CLIENT_ID": "11111111-1111-1111-1111-111111111111",
            "AZURE_TENANT_ID": "22222222-2222-2222-2222-222222222222"}


def test_every_assertion_gets_a_fresh_github_token(token_endpoint):
    url, seen = token_endpoint
    fetch = github_oidc.id_token_fetcher(environ(url))
    assert [fetch(), fetch(), fetch()] == ["gh-id-token-1", "gh-id-token-2", "gh-id-token-3"]
    path, auth = seen[0]
    assert auth == "Bearer runner-secret"
    query = parse_qs(urlparse(path).query)
    assert query == {"api-version": ["2.0"], "audience": ["api://AzureADTokenExchange"]}


def test_credential_for_uses_it_in_actions_and_not_elsewhere(token_endpoint, monkeypatch):
    from azure.identity import ClientAssertionCredential, DefaultAzureCredential

    from tenants.dialects.entra import credential_for

    url, seen = token_endpoint
    for key, value in environ(url).items():
        monkeypatch.setenv(key, value)
    credential = credential_for("public")
    assert isinstance(credential, ClientAssertionCredential)
    # No token is requested from Entra here (no network): building the credential asks GitHub for nothing.
    assert seen == []
    monkeypatch.delenv("ACTIONS_ID_TOKEN_REQUEST_URL")
    assert isinstance(credential_for("public"), DefaultAzureCredential)


def test_missing_permission_is_a_clear_error():
    with pytest.raises(ConfigError, match="permissions: id-token: write"):
        github_oidc.id_token_fetcher({})
    assert not github_oidc.can_use({"ACTIONS_ID_TOKEN_REQUEST_URL": "x"})
