"""Waves: roll a release out to a few tenants first, and stop before the rest if they fail.

An environment may declare waves, in order::

    waves = [
        { tag = "canary" },                    # the tenants tagged canary
        { percent = 10, max_failures = 1 },    # then 10 % of the selection (at least one tenant)
        { rest = true },                       # then everyone else
    ]

Each wave takes its tenants from those no earlier wave took: by ``tag`` (matched as ``--tag`` matches, by
:meth:`tenants.sources.Tenant.has_tag`: ``canary`` takes an Azure tag ``canary: true`` but not
``canary: false``; ``region=eu`` takes exactly that value), by ``percent`` of the whole
selection or a ``count`` (picked by a stable hash of the name, so the same tenants every run and across
shards), or ``rest``. Tenants no wave took form a last wave of their own; with no waves declared the whole
selection is one wave. A wave must end within its failure budget (``max_failures``, default 0) before the
next one starts; past it, the run stops and the later waves' tenants are reported ``skipped``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - typing only (tenants.config imports this module)
    from tenants.model import Tenant


@dataclass(frozen=True)
class Wave:
    name: str
    tag: str | None = None
    percent: float | None = None
    count: int | None = None
    rest: bool = False
    # Failures the wave tolerates: the next wave starts only if at most this many of its tenants failed. The
    # configuration spells it ``max_failures`` (kept: it is the file's key); in the code ``max_failures`` means
    # the other thing, the --max-failures count that stops the run once reached (tenants.engine.fanout).
    budget: int = 0

    @property
    def stop_after(self) -> int:
        """The failure count that stops starting this wave's tenants: one more than it tolerates."""
        return self.budget + 1


WAVE_KEYS = {"name": str, "tag": str, "percent": (int, float), "count": int, "rest": bool, "max_failures": int}


def parse_waves(items: list[Any], fail) -> tuple[Wave, ...]:
    """Validate ``waves`` from the configuration; ``fail(message)`` builds the error to raise."""
    waves = []
    for i, item in enumerate(items, 1):
        if not isinstance(item, dict):
            raise fail(f"waves[{i}] must be a table, e.g. {{ tag = \"canary\" }}")
        for key, value in item.items():
            if key not in WAVE_KEYS:
                raise fail(f"waves[{i}]: unknown key {key!r} (known: {', '.join(WAVE_KEYS)})")
            if not isinstance(value, WAVE_KEYS[key]) or (isinstance(value, bool) and WAVE_KEYS[key] is not bool):
                raise fail(f"waves[{i}]: {key} has the wrong type")
        kinds = [k for k in ("tag", "percent", "count", "rest") if k in item]
        if len(kinds) != 1:
            raise fail(f"waves[{i}] needs exactly one of tag, percent, count, rest")
        if "percent" in item and not 0 < item["percent"] <= 100:
            raise fail(f"waves[{i}]: percent must be more than 0 and at most 100")
        if "count" in item and item["count"] < 1:
            raise fail(f"waves[{i}]: count must be at least 1")
        if item.get("max_failures", 0) < 0:
            raise fail(f"waves[{i}]: max_failures must not be negative")
        if "tag" in item and not item["tag"].partition("=")[0].strip():
            raise fail(f"waves[{i}]: tag needs a tag name, e.g. tag = \"canary\" or tag = \"region=eu\"")
        if item.get("rest") is False:
            raise fail(f"waves[{i}]: rest = false means nothing; leave the wave out")
        default = f"{kinds[0]} {item[kinds[0]]}" if kinds[0] != "rest" else "rest"
        waves.append(Wave(name=item.get("name", default), tag=item.get("tag"), percent=item.get("percent"),
                          count=item.get("count"), rest=bool(item.get("rest")),
                          budget=item.get("max_failures", 0)))
    return tuple(waves)


def _order(name: str) -> bytes:
    return hashlib.sha256(f"wave:{name}".encode()).digest()


def assign(tenants: list[Tenant], waves: tuple[Wave, ...]) -> list[tuple[Wave, list[Tenant]]]:
    """Split the selection into waves (empty ones dropped: :func:`empty_waves` names them); keeps selection
    order within a wave."""
    if not waves:
        return [(Wave("all", rest=True), list(tenants))] if tenants else []
    taken_by = _take(tenants, waves)
    plan = [(wave, taken) for wave, taken in zip(waves, taken_by, strict=True) if taken]
    names = {t.name for taken in taken_by for t in taken}
    left = [t for t in tenants if t.name not in names]
    if left:
        plan.append((Wave("rest", rest=True), left))
    return plan


def empty_waves(tenants: list[Tenant], waves: tuple[Wave, ...], narrowed: bool = False
                ) -> list[tuple[int, Wave, str]]:
    """The declared waves that take no tenant of ``tenants``: (position in ``waves``, counted from 1 as the
    configuration's errors count them, the wave, why), for ``plan`` and ``upgrade`` to say so. A canary wave
    that silently takes nobody is a rollout without a canary.

    An empty wave gets no number: ``upgrade --wave N`` (and the plan) count the waves that have tenants, so
    with the canary empty, wave 1 is the next one. ``narrowed``: ``tenants`` is a selection, not the fleet.
    """
    who = "selected tenant" if narrowed else "tenant"
    numbered = assign(tenants, waves)
    notes = []
    for position, (wave, taken) in enumerate(zip(waves, _take(tenants, waves), strict=True), 1):
        if taken:
            continue
        if wave.tag is not None:
            tagged = any(t.has_tag(wave.tag) for t in tenants)
            why = f"every {who} tagged {wave.tag} is in an earlier wave" if tagged else \
                f"no {who} matches tag {wave.tag}"
        else:
            why = f"no {who} is left for it" if tenants else f"there is no {who}"
        if position == 1:
            why += " — this rollout has no canary" + (f" (wave 1 is {numbered[0][0].name})" if numbered else "")
        notes.append((position, wave, why))
    return notes


def _take(tenants: list[Tenant], waves: tuple[Wave, ...]) -> list[list[Tenant]]:
    """What each declared wave takes, in order, from the tenants no earlier wave took (empty lists kept)."""
    left = list(tenants)
    total = len(tenants)
    taken_by: list[list[Tenant]] = []
    for wave in waves:
        if wave.tag is not None:
            taken = [t for t in left if t.has_tag(wave.tag)]
        elif wave.rest:
            taken = list(left)
        else:
            size = wave.count if wave.count is not None else math.ceil(total * (wave.percent or 0) / 100)
            chosen = {t.name for t in sorted(left, key=lambda t: _order(t.name))[:size]}
            taken = [t for t in left if t.name in chosen]
        names = {t.name for t in taken}
        left = [t for t in left if t.name not in names]
        taken_by.append(taken)
    return taken_by
