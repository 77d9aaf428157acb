"""Selection: ``--tenant``, ``--exclude``, ``--tag`` and ``--shard`` narrow what a source discovered."""

from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import dataclass

from tenants.errors import TenantNotFound, UsageError
from tenants.model import Skipped, Tenant


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
