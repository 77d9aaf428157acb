"""Sources: discovery turns an environment into tenants.

A :class:`TenantSource` lists the tenants of an environment at run time: ``static`` (the names in the
configuration, :mod:`tenants.sources.static`), ``server`` (every database on the server whose name matches a
glob, so a tenant created yesterday is included today: :mod:`tenants.sources.server`), or an Azure SQL
server or elastic pool (:mod:`tenants.sources.azure`, signing in with :mod:`tenants.dialects.entra`). The
selection that narrows what a source found is :mod:`tenants.selection`.
"""

from __future__ import annotations

from typing import Protocol

from tenants.config import Environment
from tenants.model import Skipped, Tenant


class TenantSource(Protocol):
    def discover(self) -> list[Tenant]: ...


def source_for(environment: Environment) -> TenantSource:
    if environment.source == "server":
        from tenants.sources.server import ServerSource

        return ServerSource(environment)
    if environment.source.startswith("azure-"):
        from tenants.sources.azure import AzureSource  # azure-mgmt-sql is imported only for Azure environments

        return AzureSource(environment)
    from tenants.sources.static import StaticSource

    return StaticSource(environment)


def discover_with_skipped(source: TenantSource) -> tuple[list[Tenant], list[Skipped]]:
    """The tenants, and the databases the source saw but will not touch, with why (Azure: master, not
    Online). Sources without such databases report none; a plain ``(name, reason)`` becomes a Skipped."""
    with_skipped = getattr(source, "discover_with_skipped", None)
    if with_skipped is None:
        return source.discover(), []
    tenants, skipped = with_skipped()
    return tenants, [Skipped(*entry) for entry in skipped]
