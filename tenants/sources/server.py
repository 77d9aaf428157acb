"""The ``server`` source: every database on a PostgreSQL server (or every SQLite file in a folder) whose name
matches the environment's ``match`` glob, listed at run time."""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from tenants.config import Environment
from tenants.db import describe_error, is_transient, make_engine
from tenants.dialects import dialect_for
from tenants.errors import ConfigError, DiscoveryError
from tenants.model import Tenant
from tenants.secrets import mask_url, url_secrets


@dataclass(frozen=True)
class ServerSource:
    """Every database on the environment's server whose name matches ``match``.

    The dialect lists the candidates (:meth:`tenants.dialects.Dialect.list_databases`: PostgreSQL asks
    ``pg_database``, SQLite lists a folder); this source adds the retries, the glob and the messages."""

    environment: Environment

    def discover(self) -> list[Tenant]:
        env = self.environment
        try:
            names = dialect_for(env.dialect).list_databases(env.tenant_url("{tenant}"), self._query)
        except ConfigError as err:
            raise ConfigError(f"environment {env.name!r}: {err}") from None
        names = sorted(n for n in names if fnmatch.fnmatchcase(n, env.match))
        return [Tenant(name, env.tenant_url(name), (), env.secrets) for name in names]

    def _query(self, sql: str) -> list[str]:
        """The first column of ``sql`` on the server's maintenance database, without that database."""
        env = self.environment
        url = env.tenant_url(env.maintenance_database)
        # A read of the tool's own: a statement timeout (read_timeout) besides the connect timeout and
        # keepalives, so a stalled server fails discovery instead of hanging the run before it starts.
        engine = make_engine(url, sessions=env.sessions.reading())
        attempt = 0
        try:
            while True:
                try:
                    with engine.connect() as conn:
                        rows = conn.execute(text(sql)).scalars().all()
                    break
                except SQLAlchemyError as err:
                    # A blip while a deploy starts is retried like a tenant's transient error; after that the
                    # run stops before touching any tenant.
                    attempt += 1
                    if is_transient(err) and attempt <= env.retries:
                        time.sleep(min(env.retry_backoff_max, env.retry_backoff * 2 ** (attempt - 1)))
                        continue
                    raise DiscoveryError(
                        f"environment {env.name!r}: cannot list the databases on {mask_url(url, env.secrets)}: "
                        f"{describe_error(err, url_secrets(url) + env.secrets)}; check the url and that the server "
                        "is up"
                    ) from err
        finally:
            engine.dispose()
        # The maintenance database is where we list from, never a tenant.
        return [r for r in rows if r != env.maintenance_database]
