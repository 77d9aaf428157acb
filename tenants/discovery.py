"""Discovery turns an environment into tenants; selection narrows them.

A :class:`TenantSource` lists the tenants of an environment at run time: ``static`` (the names in the
configuration) or ``server`` (every database on the server whose name matches a glob, so a tenant created
yesterday is included today). Later sources (an Azure elastic pool) implement the same one-method protocol.
"""

from __future__ import annotations

import fnmatch
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from tenants.config import Environment, mask_url
from tenants.db import describe_error, is_transient, make_engine, url_secrets
from tenants.errors import ConfigError, DiscoveryError, TenantNotFound, UsageError


# A tag with one of these values is off: `canary=false` is not a canary (tenants.discovery.Tenant.has_tag).
FALSE_VALUES = frozenset({"false", "0", "no", "off"})


@dataclass(frozen=True)
class Tenant:
    """One tenant database. ``url`` carries the password: it crosses to worker processes, never to output."""

    name: str
    url: str = field(repr=False)
    tags: tuple[str, ...] = ()
    secrets: tuple[str, ...] = field(default=(), repr=False)  # scrubbed from anything printed about it

    def has_tag(self, pattern: str) -> bool:
        """Whether one of the tenant's tags matches ``pattern`` (``--tag``, a wave's ``tag``): the one rule.

        A tag is ``key`` or ``key=value`` (static tags as written; Azure resource tags rendered so, an empty
        value as a bare ``key``). ``canary`` matches a tag named canary whose value does not say no: a bare
        ``canary``, ``canary=true``, ``canary=eu``, ``canary=`` (an empty value: Azure allows one, and
        writing ``canary: ""`` means set), but not ``canary=false``, ``=0``, ``=no`` or ``=off`` (any case).
        ``canary=eu`` matches exactly that value. Names compare case-blind, as Azure's tag names do; values
        (in ``key=value``) exactly, as Azure's do.
        """
        key, exact, value = pattern.partition("=")
        key = key.casefold()
        for tag in self.tags:
            name, _, tag_value = tag.partition("=")
            if name.casefold() != key:
                continue
            if (tag_value == value) if exact else (tag_value.strip().casefold() not in FALSE_VALUES):
                return True
        return False

    @property
    def masked_url(self) -> str:
        return mask_url(self.url, self.secrets)

    @property
    def all_secrets(self) -> tuple[str, ...]:
        """Everything to scrub from text about this tenant: its URL's password and every ${VAR} value."""
        return url_secrets(self.url) + self.secrets


class TenantSource(Protocol):
    def discover(self) -> list[Tenant]: ...


class Skipped(NamedTuple):
    """A database discovery found but will not migrate now, and why (``("master", "system database")``).

    ``offline``: a tenant database the source cannot use right now (Azure: its status is not ``Online``, e.g.
    ``Paused``, ``Scaling``, ``Copying``). It is part of the fleet, so ``verify`` must not vouch for it;
    ``tags`` are its tags, so a selection can tell whether it would have taken it. Otherwise (``master``) it is
    no tenant at all.
    """

    name: str
    reason: str
    offline: bool = False
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class StaticSource:
    environment: Environment

    def discover(self) -> list[Tenant]:
        env = self.environment
        return [Tenant(spec.name, env.tenant_url(spec.name), spec.tags, env.secrets) for spec in env.tenants]


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


def source_for(environment: Environment) -> TenantSource:
    if environment.source == "server":
        return ServerSource(environment)
    if environment.source.startswith("azure-"):
        from tenants.azure import AzureSource  # azure-mgmt-sql is imported only for Azure environments

        return AzureSource(environment)
    return StaticSource(environment)


def discover_with_skipped(source: TenantSource) -> tuple[list[Tenant], list[Skipped]]:
    """The tenants, and the databases the source saw but will not touch, with why (Azure: master, not
    Online). Sources without such databases report none; a plain ``(name, reason)`` becomes a Skipped."""
    with_skipped = getattr(source, "discover_with_skipped", None)
    if with_skipped is None:
        return source.discover(), []
    tenants, skipped = with_skipped()
    return tenants, [Skipped(*entry) for entry in skipped]


@dataclass(frozen=True)
class Selection:
    """``--tenant`` (exact names), ``--exclude`` (globs), ``--tag`` (any of; :meth:`Tenant.has_tag`), then
    ``--shard K/N``.

    A shard is chosen by a hash of the tenant's name, not by position: independent of discovery order
    and of which tenants exist, so N runners with K = 1..N split a fleet with no overlap and no gap, and a
    tenant stays in its shard when others are added or dropped.
    """

    tenants: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    shard: tuple[int, int] | None = None  # (K, N), 1 <= K <= N

    def __post_init__(self) -> None:
        for pattern in self.tags:
            if not pattern.partition("=")[0].strip():
                raise UsageError(f"--tag {pattern!r}: give a tag name, e.g. --tag canary or --tag region=eu")

    def apply(self, tenants: list[Tenant], environment: str = "") -> list[Tenant]:
        by_name = {t.name: t for t in tenants}
        missing = [name for name in self.tenants if name not in by_name]
        if missing:
            where = f" in environment {environment!r}" if environment else ""
            raise TenantNotFound(
                f"unknown tenant {missing[0]!r} (--tenant){where}; `tenants list` shows the tenants found"
            )
        chosen = [by_name[name] for name in dict.fromkeys(self.tenants)] if self.tenants else list(tenants)
        return self._narrow(chosen)

    def offline(self, skipped: list[Skipped]) -> list[Skipped]:
        """The offline databases (:class:`Skipped`) this selection would take if they were online: by the same
        ``--tenant``, ``--exclude``, ``--tag`` and ``--shard`` rules, in the order given."""
        stand_ins = [Tenant(s.name, "", s.tags) for s in skipped
                     if s.offline and (not self.tenants or s.name in self.tenants)]
        kept = {t.name for t in self._narrow(stand_ins)}
        return [s for s in skipped if s.offline and s.name in kept]

    def _narrow(self, chosen: list[Tenant]) -> list[Tenant]:
        if self.exclude:
            chosen = [t for t in chosen if not any(fnmatch.fnmatchcase(t.name, g) for g in self.exclude)]
        if self.tags:
            chosen = [t for t in chosen if any(t.has_tag(pattern) for pattern in self.tags)]
        if self.shard is not None:
            k, n = self.shard
            chosen = [t for t in chosen if shard_of(t.name, n) == k]
        return chosen


def shard_of(name: str, shards: int) -> int:
    """The shard (1..shards) a tenant belongs to: a stable hash of its name (not Python's salted hash())."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % shards + 1


def parse_shard(text: str) -> tuple[int, int]:
    """``K/N`` -> (K, N); one line naming the flag otherwise."""
    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit() and 1 <= int(k) <= int(n)):
        raise UsageError(f"--shard {text}: expected K/N with 1 <= K <= N, e.g. --shard 2/4")
    return int(k), int(n)
