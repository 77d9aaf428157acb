"""The ``static`` source: the tenants named in the configuration (the demo fleet, small fixed fleets)."""

from __future__ import annotations

from dataclasses import dataclass

from tenants.config import Environment
from tenants.model import Tenant


@dataclass(frozen=True)
class StaticSource:
    environment: Environment

    def discover(self) -> list[Tenant]:
        env = self.environment
        return [Tenant(spec.name, env.tenant_url(spec.name), spec.tags, env.secrets) for spec in env.tenants]
