"""The ``server`` source: every database on a PostgreSQL server (or every SQLite file in a folder) whose name
matches the environment's ``match`` glob, listed at run time."""

from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from tenants.config import Environment
from tenants.db import describe_error, is_transient, make_engine
from tenants.errors import ConfigError, DiscoveryError
from tenants.model import Tenant
from tenants.secrets import mask_url, url_secrets


@dataclass(frozen=True)
class ServerSource:
    """Every database on the environment's server whose name matches ``match``."""

    environment: Environment

    def discover(self) -> list[Tenant]:
        env = self.environment
        if env.dialect == "sqlite":
            names = self._sqlite_names()
        else:
            names = self._postgres_names()
        names = sorted(n for n in names if fnmatch.fnmatchcase(n, env.match))
        return [Tenant(name, env.tenant_url(name), (), env.secrets) for name in names]

    def _postgres_names(self) -> list[str]:
        env = self.environment
        url = env.tenant_url(env.maintenance_database)
        engine = make_engine(url)
        attempt = 0
        try:
            while True:
                try:
                    with engine.connect() as conn:
                        rows = conn.execute(text(
                            "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate"
                        )).scalars().all()
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

    def _sqlite_names(self) -> list[str]:
        env = self.environment
        template = Path(make_url(env.tenant_url("{tenant}")).database or "")
        if "{tenant}" in str(template.parent):
            raise ConfigError(
                f"environment {env.name!r}: with source 'server', {{tenant}} must be in the SQLite file name, "
                "not in its folder"
            )
        folder = template.parent
        prefix, _, suffix = template.name.partition("{tenant}")
        if not folder.is_dir():
            raise ConfigError(
                f"environment {env.name!r}: folder {folder} does not exist; create it or fix the url"
            )
        names = []
        for path in folder.iterdir():
            file = path.name
            if path.is_file() and file.startswith(prefix) and file.endswith(suffix) and \
                    len(file) > len(prefix) + len(suffix) and not file.endswith(_SQLITE_SIDECARS):
                names.append(file[len(prefix):len(file) - len(suffix)])
        return names


# Files SQLite (and our lock) keep next to a database: never tenants, even with a template without a suffix.
_SQLITE_SIDECARS = (".lock", "-journal", "-wal", "-shm")
