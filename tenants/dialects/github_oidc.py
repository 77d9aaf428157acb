"""Signing in to Azure from GitHub Actions for runs longer than GitHub's ID token lives.

``azure/login`` with OIDC exchanges one GitHub ID token (valid about 10 minutes) for an Azure CLI session;
once that token has expired, refreshing the CLI session fails (AADSTS700024) and a multi-hour rollout loses
its connections half-way. Instead, :func:`github_credential` builds azure-identity's
``ClientAssertionCredential`` with a function that asks GitHub for a *fresh* ID token each time Entra needs
an assertion, so every token refresh works for as long as the job runs.

It is used automatically (:func:`tenants.dialects.entra.credential_for`) when the job can request ID tokens
(``permissions: id-token: write`` sets ``ACTIONS_ID_TOKEN_REQUEST_URL`` and ``..._TOKEN``) and
``AZURE_CLIENT_ID`` and ``AZURE_TENANT_ID`` name the app with the federated credential.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Callable, Mapping
from urllib.parse import quote

from tenants.errors import ConfigError

AUDIENCE = "api://AzureADTokenExchange"  # what Entra's federated credentials expect from GitHub


def can_use(environ: Mapping[str, str] = os.environ) -> bool:
    return all(environ.get(k) for k in ("ACTIONS_ID_TOKEN_REQUEST_URL", "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
                                        "AZURE_CLIENT_ID", "AZURE_TENANT_ID"))


def id_token_fetcher(environ: Mapping[str, str] = os.environ, audience: str = AUDIENCE,
                     timeout: float = 30.0) -> Callable[[], str]:
    """A function returning a fresh GitHub Actions ID token on every call (GitHub's documented endpoint:
    GET $ACTIONS_ID_TOKEN_REQUEST_URL&audience=... with the request token as a bearer; answer {"value": ...})."""
    url = environ.get("ACTIONS_ID_TOKEN_REQUEST_URL")
    bearer = environ.get("ACTIONS_ID_TOKEN_REQUEST_TOKEN")
    if not url or not bearer:
        raise ConfigError("GitHub OIDC: ACTIONS_ID_TOKEN_REQUEST_URL/_TOKEN are not set; give the job "
                          "`permissions: id-token: write`")
    full = f"{url}{'&' if '?' in url else '?'}audience={quote(audience, safe='')}"

    def fetch() -> str:
        request = urllib.request.Request(full, headers={"Authorization": f"Bearer {bearer}",
                                                        "Accept": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - GitHub's endpoint
            token = json.loads(response.read().decode("utf-8")).get("value")
        if not token:
            raise RuntimeError("GitHub's ID token endpoint answered without a token")
        return token

    return fetch


def github_credential(environ: Mapping[str, str] = os.environ, authority: str | None = None):
    """azure-identity's ClientAssertionCredential, asserting with a fresh GitHub ID token each time."""
    from azure.identity import ClientAssertionCredential

    kwargs = {"authority": authority} if authority else {}
    return ClientAssertionCredential(environ["AZURE_TENANT_ID"], environ["AZURE_CLIENT_ID"],
                                     id_token_fetcher(environ), **kwargs)
