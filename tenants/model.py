"""Results are data: one :class:`TenantResult` per tenant, gathered into a :class:`RunReport`.

Both write themselves as the JSON report (``to_dict``) and read themselves back from it (``from_dict``)
without loss: a report read back equals the one written. They hold their figures at the precision the JSON
keeps (durations to 0.1 ms, seconds into the run to 1 ms), so equal means equal. ``from_dict`` also reads
every earlier form of the report (a key it lacks takes its default).

:meth:`RunReport.combine` is the one place where reports become one report: the waves of one run
(:mod:`tenants.api`), and the shard and canary reports of a deploy merged afterwards (:mod:`tenants.runlog`,
``tenants report merge``). Rendering (tables, lines, JSON) lives in :mod:`tenants.output` as pure functions
over these objects.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, NamedTuple

from tenants.secrets import mask_url, url_secrets

# A tag with one of these values is off: `canary=false` is not a canary (tenants.sources.Tenant.has_tag).
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


def revision_of(heads: tuple[str, ...] | None) -> str | None:
    """A tenant's recorded revisions as a report holds them: ``a,b`` for several heads, ``base`` for none
    recorded (a new database), None for unknown (never read, or unreadable after a failure)."""
    return None if heads is None else ",".join(heads) or "base"


class Status(str, Enum):
    """How a run left one tenant (a :class:`TenantResult`): what it did, or why it did nothing."""

    UPGRADED = "upgraded"
    DOWNGRADED = "downgraded"
    STAMPED = "stamped"
    UP_TO_DATE = "up-to-date"
    FAILED = "failed"
    # Still running when the run's tenant timeout (--tenant-timeout) ran out: its worker process was killed and
    # the server rolled the revision in progress back, so the tenant is at its last completed revision. Not
    # good (exit 1), and a failure for the failure policy (--max-failures): see tenants.engine.fanout.
    TIMED_OUT = "timed-out"
    LOCKED = "locked"
    SKIPPED = "skipped"
    UNKNOWN_REVISION = "unknown-revision"
    # Never final: a worker hit a throttling error (the elastic pool is saturated) and hands the tenant back
    # to the fan-out, which lowers its concurrency and runs the tenant again later.
    THROTTLED = "throttled"
    PINNED = "pinned"  # needs work, but a pin keeps it out of fleet upgrades (tenants.engine.pins)
    # Tables but no version table: a schema Alembic never recorded (an existing customer database). Never
    # touched by an upgrade, not good (exit 1) until a person adopts it with `tenants stamp`.
    UNMANAGED = "unmanaged"
    # check_schema (issue 12): the tenant's schema differs from the expected schema of its recorded revision
    # (an index dropped by hand, a column added by a hotfix), so the upgrade did not start it: the idempotent
    # guards would skip what "already exists" and paper over the drift. Never touched; a failure for the
    # failure policy (--max-failures), like `failed`; the error names the first differences.
    DRIFTED = "drifted"

    def __str__(self) -> str:
        return self.value


# A run is good when every tenant ended in one of these.
GOOD = frozenset({Status.UPGRADED, Status.DOWNGRADED, Status.STAMPED, Status.UP_TO_DATE, Status.PINNED})

# The order in which every output lists the tenants that did not end well (the job summary's table, the chat
# notifications): worst first, so the first lines are the tenants that need a person, not the skipped ones.
SEVERITY = {Status.FAILED: 0, Status.TIMED_OUT: 1, Status.UNKNOWN_REVISION: 2, Status.UNMANAGED: 2,
            Status.DRIFTED: 2, Status.LOCKED: 3, Status.THROTTLED: 4, Status.SKIPPED: 5}


# What ``upgrade --from-report`` runs again by default (``--only``), in this order; ``unknown-revision``,
# ``unmanaged`` and ``drifted`` need a person first (``--only drifted`` once the schema is repaired).
RESUMABLE = (Status.FAILED, Status.TIMED_OUT, Status.SKIPPED, Status.LOCKED)


def worst_first(results: Iterable[TenantResult]) -> list[TenantResult]:
    """``results`` in :data:`SEVERITY` order (a status it does not name last); stable, so ties keep theirs."""
    return sorted(results, key=lambda r: SEVERITY.get(r.status, len(SEVERITY)))


@dataclass(frozen=True)
class TenantResult:
    """What happened to one tenant. Plain data: it crosses back from the worker process."""

    tenant: str
    status: Status
    from_revision: str | None = None  # "base": no revision recorded (a new database); None: unknown
    to_revision: str | None = None  # where the tenant is now (a failed one: where it stopped); None: unknown
    applied: tuple[str, ...] = ()  # revisions applied (upgrade) or undone (downgrade), in order
    attempts: int = 0
    duration: float = 0.0  # seconds
    error: str | None = None  # password-free

    def __post_init__(self) -> None:
        _set(self, applied=tuple(self.applied), duration=round(float(self.duration), 4))

    @property
    def ok(self) -> bool:
        return self.status in GOOD

    def to_dict(self) -> dict:
        return {
            "tenant": self.tenant,
            "status": self.status.value,
            "from": self.from_revision,
            "to": self.to_revision,
            "applied": list(self.applied),
            "attempts": self.attempts,
            "duration": self.duration,
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TenantResult:
        """A tenant's entry of a report, as :meth:`to_dict` writes it (missing keys take their defaults)."""
        return cls(tenant=data["tenant"], status=Status(data["status"]), from_revision=data.get("from"),
                   to_revision=data.get("to"), applied=tuple(data.get("applied") or ()),
                   attempts=data.get("attempts") or 0, duration=data.get("duration") or 0.0,
                   error=data.get("error"))


@dataclass(frozen=True)
class RunReport:
    """One run of one operation over the selected tenants, in selection order; or several such reports made
    one by :meth:`combine` (a merged report names its ``shards``)."""

    run_id: str  # merged shards: their run ids, joined by commas
    environment: str
    operation: str  # upgrade | downgrade | stamp
    target: str  # resolved revision id, or "base"
    head: str | None
    concurrency: int
    started_at: str  # ISO 8601, UTC
    finished_at: str  # "" until the run ends (a report cut short by a killed run has none)
    duration: float
    results: tuple[TenantResult, ...] = ()
    tool_version: str = ""
    throttled: int = 0  # throttling errors the fan-out backed off from
    concurrency_changes: tuple[tuple[float, int], ...] = ()  # (seconds into the run, tenants at once)
    pressure_wait: float = 0.0  # seconds tenant starts were held back by the pressure probe
    # What went wrong reading the pool's load, each line once with how many times (tenants.engine.pressure): the
    # probe let starts in (or, throttled, held them back), or turned itself off for the rest of the run.
    pressure_errors: tuple[tuple[str, int], ...] = ()
    skipped_databases: tuple[tuple[str, str], ...] = ()  # seen by discovery, not tenants: (name, why)
    waves: tuple[dict, ...] = ()  # per wave: name, tenants, summary, failures, budget, ran, ok
    complete: bool = True  # False: read back from a report cut short (a killed run), or merged with one
    shards: tuple[str, ...] = ()  # a merged report: the report files it was merged from
    error: str | None = None  # the run stopped before any tenant ran (discovery failed): why (api.failed_run)

    def __post_init__(self) -> None:
        # Plain tuples and the JSON's precision whatever was passed; a pressure error given as a bare line
        # happened once.
        _set(self, results=tuple(self.results), duration=round(float(self.duration or 0.0), 4),
             concurrency_changes=tuple((round(float(at), 3), int(n)) for at, n in self.concurrency_changes),
             pressure_wait=round(float(self.pressure_wait), 3),
             pressure_errors=_tally((e, 1) if isinstance(e, str) else (e[0], e[1]) for e in self.pressure_errors),
             skipped_databases=tuple((name, why) for name, why in self.skipped_databases),
             waves=tuple(dict(w) for w in self.waves), shards=tuple(self.shards))

    @property
    def ok(self) -> bool:
        return self.complete and self.error is None and all(r.ok for r in self.results)

    @property
    def counts(self) -> dict[str, int]:
        return _counts(r.status.value for r in self.results)

    @property
    def failed(self) -> tuple[TenantResult, ...]:
        return tuple(r for r in self.results if not r.ok)

    def to_dict(self) -> dict:
        data = {
            "schema_version": 1,
            "tool_version": self.tool_version,
            "run_id": self.run_id,
            "environment": self.environment,
            "operation": self.operation,
            "target": self.target,
            "head": self.head,
            "concurrency": self.concurrency,
            "throttled": self.throttled,
            "concurrency_changes": [{"at": at, "concurrency": n} for at, n in self.concurrency_changes],
            "pressure_wait": self.pressure_wait,
            "pressure_errors": [counted(line, times) for line, times in self.pressure_errors],
            "skipped_databases": [{"database": name, "reason": why} for name, why in self.skipped_databases],
            "waves": [dict(w) for w in self.waves],
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "duration": self.duration,
            "ok": self.ok,
            "summary": self.counts,
            "tenants": [r.to_dict() for r in self.results],
        }
        if self.shards:  # a merged report says what it was merged from, and whether each part was whole
            data["shards"] = list(self.shards)
        if self.shards or not self.complete:
            data["complete"] = self.complete
        if self.error is not None:
            data["error"] = self.error
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunReport:
        """A report as :meth:`to_dict` writes it, or as an earlier version wrote it: a single run's, a merged
        one, or the header and tenants of a report cut short (with ``"complete": False``). ``ok`` and
        ``summary`` are not read: they follow from the tenants. Raises KeyError or ValueError on a dict that
        is not a report."""
        return cls(
            run_id=data.get("run_id", "?"), environment=data.get("environment", "?"),
            operation=data.get("operation", "?"), target=data.get("target", "?"), head=data.get("head"),
            concurrency=data.get("concurrency") or 0, started_at=data.get("started_at") or "",
            finished_at=data.get("finished_at") or "", duration=data.get("duration") or 0.0,
            results=tuple(TenantResult.from_dict(t) for t in data.get("tenants") or ()),
            tool_version=data.get("tool_version") or "", throttled=data.get("throttled") or 0,
            concurrency_changes=tuple((c["at"], c["concurrency"]) for c in data.get("concurrency_changes") or ()),
            pressure_wait=data.get("pressure_wait") or 0.0,
            pressure_errors=tuple(uncounted(line) for line in data.get("pressure_errors") or ()),
            skipped_databases=tuple((d["database"], d["reason"]) for d in data.get("skipped_databases") or ()),
            waves=tuple(data.get("waves") or ()), complete=data.get("complete", True),
            shards=tuple(data.get("shards") or ()), error=data.get("error"),
        )

    @classmethod
    def combine(cls, parts: Sequence[RunReport], *, sequential: bool = False) -> RunReport:
        """One report from several of the same environment, operation and target.

        ``sequential``: the parts ran one after another as one run (the waves of :mod:`tenants.api`): the
        run took the sum of their durations, each part's concurrency changes move by the time the parts
        before it took, and their ``waves`` follow one another. Otherwise the parts are separate runs (the
        shards of a deploy, its canary; :func:`tenants.api.merge_reports`): the run took from the first
        start to the last finish, each part's concurrency changes move by how much later than the first it
        started, and the ``waves`` entries of the same wave are added up (the n-th wave of a name in one part
        with the n-th of that name in the others: each shard ran every wave on its share).

        Either way: the results of every part, in the parts' order (the caller orders them); the distinct run
        ids joined by commas; throttles, pressure waits and each pressure error's count added up; every
        skipped database once; the highest concurrency; complete only if every part is; the parts' ``shards``.
        """
        if not parts:
            raise ValueError("combine needs at least one report")
        first = parts[0]
        for part in parts[1:]:
            for key in ("environment", "operation", "target"):
                if getattr(part, key) != getattr(first, key):
                    raise ValueError(f"{key} {getattr(part, key)!r} differs from {getattr(first, key)!r}: "
                                     "combine reports of one run only")
        started = min((p.started_at for p in parts if p.started_at), default="")
        finished = max((p.finished_at for p in parts if p.finished_at), default="")
        if sequential:
            offsets, elapsed = [], 0.0
            for part in parts:
                offsets.append(elapsed)
                elapsed += part.duration
            duration, waves = elapsed, tuple(w for p in parts for w in p.waves)
        else:
            offsets = [_seconds_between(started, p.started_at) or 0.0 for p in parts]
            wall = _seconds_between(started, finished)
            duration = wall if wall is not None else max(p.duration for p in parts)
            waves = _add_waves(p.waves for p in parts)
        changes = [(offset + at, n) for part, offset in zip(parts, offsets, strict=True)
                   for at, n in part.concurrency_changes]
        return cls(
            run_id=",".join(dict.fromkeys(p.run_id for p in parts)), environment=first.environment,
            operation=first.operation, target=first.target, head=first.head,
            concurrency=max(p.concurrency for p in parts), started_at=started, finished_at=finished,
            duration=duration, results=tuple(r for p in parts for r in p.results), tool_version=first.tool_version,
            throttled=sum(p.throttled for p in parts),
            concurrency_changes=tuple(changes if sequential else sorted(changes, key=lambda c: c[0])),
            pressure_wait=sum(p.pressure_wait for p in parts),
            pressure_errors=_tally(e for p in parts for e in p.pressure_errors),
            skipped_databases=tuple(dict.fromkeys(d for p in parts for d in p.skipped_databases)),
            waves=waves, complete=all(p.complete for p in parts), shards=tuple(s for p in parts for s in p.shards),
            error="; ".join(dict.fromkeys(p.error for p in parts if p.error)) or None,
        )


def _set(obj: object, **values: Any) -> None:
    """Normalise fields of a frozen dataclass in its ``__post_init__``."""
    for name, value in values.items():
        object.__setattr__(obj, name, value)


def _counts(statuses: Iterable[str]) -> dict[str, int]:
    counts = Counter(statuses)
    return {s.value: counts[s.value] for s in Status if counts[s.value]}


def _tally(errors: Iterable[tuple[str, int]]) -> tuple[tuple[str, int], ...]:
    """Each line once, with its counts added up, in the order the lines first came."""
    times: dict[str, int] = {}
    for line, n in errors:
        times[line] = times.get(line, 0) + int(n)
    return tuple(times.items())


# A repeated pressure error in the JSON: its line, then " (N times)". A line that happened once is written as
# it is, unless it ends like a count itself: then it gets " (1 times)", so that reading it back is exact.
_TIMES = re.compile(r"(?P<line>.*) \((?P<times>\d+) times\)", re.DOTALL)


def counted(line: str, times: int) -> str:
    """A pressure error as the report writes it: ``line``, with `` (N times)`` when it happened more than once."""
    return line if times == 1 and not _TIMES.fullmatch(line) else f"{line} ({times} times)"


def uncounted(text: str) -> tuple[str, int]:
    """The inverse of :func:`counted`: (line, times)."""
    match = _TIMES.fullmatch(text)
    return (match["line"], int(match["times"])) if match else (text, 1)


def _seconds_between(started: str, finished: str) -> float | None:
    """Seconds from one ISO 8601 time to another (None if either is unknown)."""
    try:
        return (datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds()
    except ValueError:
        return None


def _add_waves(reports: Iterable[tuple[dict, ...]]) -> tuple[dict, ...]:
    """The ``waves`` of separate runs over shares of one fleet, added up wave by wave (see ``combine``), in
    the order they ran. A part lists only the waves that took some of its share (a shard without a canary
    starts at a later wave), so the order is the one every part agrees on: a wave goes after each wave that
    came before it in some part; waves no part orders keep the order they were first met in."""
    merged: dict[tuple[Any, int], dict] = {}
    before: dict[tuple[Any, int], set] = {}  # wave -> the waves some part ran before it
    for waves in reports:
        seen: Counter = Counter()
        earlier: list[tuple[Any, int]] = []
        for wave in waves:
            key = (wave.get("wave"), seen[wave.get("wave")])
            seen[wave.get("wave")] += 1
            before.setdefault(key, set()).update(earlier)
            earlier.append(key)
            if key not in merged:
                merged[key] = dict(wave)
                continue
            into = merged[key]
            summary = Counter(into.get("summary") or {})
            summary.update(wave.get("summary") or {})
            into.update(tenants=into.get("tenants", 0) + wave.get("tenants", 0),
                        failures=into.get("failures", 0) + wave.get("failures", 0),
                        ran=bool(into.get("ran")) or bool(wave.get("ran")),
                        ok=bool(into.get("ok")) and bool(wave.get("ok")),
                        summary={k: summary[k] for k in _status_order(summary)})
    order: list[tuple[Any, int]] = []
    while len(order) < len(merged):
        left = [key for key in merged if key not in order]
        # The first wave met whose predecessors are all placed (or, should parts disagree, the first left).
        order.append(next((key for key in left if before[key] <= set(order)), left[0]))
    return tuple(merged[key] for key in order)


def _status_order(counts: Counter) -> list[str]:
    known = [s.value for s in Status if counts[s.value]]
    return known + [k for k in counts if k not in known and counts[k]]


class State(str, Enum):
    """Where a read-only look (``status``, ``verify``) finds one tenant (a :class:`TenantStatus`).

    ``UNMANAGED`` and ``UNKNOWN_REVISION`` are also :class:`Status` members, with the same values, on purpose:
    the same condition of the same database, found by reading instead of by a run (which ends there without
    touching the tenant), so one word and one JSON value name it whichever command found it. The two enums
    stay apart because the rest differs: a state is never "upgraded", a result never "behind".
    """

    AT_HEAD = "at-head"
    BEHIND = "behind"
    NEW = "new"
    UNMANAGED = "unmanaged"  # tables but no version table: see Status.UNMANAGED
    UNKNOWN_REVISION = "unknown-revision"
    UNREACHABLE = "unreachable"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class TenantStatus:
    tenant: str
    state: State
    current: tuple[str, ...] = ()
    behind: int | None = None  # revisions to apply to reach head; None when unknown
    error: str | None = None
    pin: str | None = None  # the pin's description, when the tenant is pinned

    def to_dict(self) -> dict:
        return {
            "tenant": self.tenant,
            "state": self.state.value,
            "current": (None if self.state in (State.UNREACHABLE, State.UNMANAGED)
                        else ",".join(self.current) or "base"),
            "behind": self.behind,
            "error": self.error,
            "pin": self.pin,
        }


@dataclass(frozen=True)
class StatusReport:
    environment: str
    head: str
    tenants: tuple[TenantStatus, ...] = field(default_factory=tuple)
    # Tenant databases discovery found but could not read (Azure: not Online), (name, why): their revision is
    # unknown, so `verify` lists them as not verified and fails (unless --allow-offline).
    offline: tuple[tuple[str, str], ...] = ()

    @property
    def ok(self) -> bool:
        return all(t.state is State.AT_HEAD for t in self.tenants)

    @property
    def ok_but_pinned(self) -> bool:
        """Every tenant at head, or pinned (deliberately held back)."""
        return all(t.state is State.AT_HEAD or t.pin is not None for t in self.tenants)

    def to_dict(self) -> dict:
        counts = Counter(t.state.value for t in self.tenants)
        return {
            "environment": self.environment,
            "head": self.head,
            "ok": self.ok,
            "summary": {s.value: counts[s.value] for s in State if counts[s.value]},
            "tenants": [t.to_dict() for t in self.tenants],
            "offline": [{"tenant": name, "reason": why} for name, why in self.offline],
        }


# --- the plan of an upgrade (tenants.plan computes it, tenants.output.plan renders it) ---------------------

@dataclass(frozen=True)
class Cohort:
    """Tenants at the same revision, and what the upgrade applies to each of them."""

    current: str  # the revision they are at ("base": none recorded; "a,b": several heads)
    tenants: tuple[str, ...]  # in selection order
    revisions: tuple[str, ...]  # to apply, in the order the upgrade applies them
    sql: str | None = None  # the offline SQL for current -> target, with ``with_sql``


@dataclass(frozen=True)
class Drifted:
    """A tenant whose schema differs from the expected schema of its recorded revision (issue 12), as a plan
    found it: what a reviewer must see before approving."""

    tenant: str
    current: str  # its recorded revision ("a,b": several heads)
    differences: tuple[str, ...]  # tenants.snapshot.diff(expected, found), one line each
    # check_schema = true and the upgrade has work for it: the upgrade will not start it (it reports `drifted`).
    # Otherwise it is also in its cohort (the upgrade runs on it anyway), or up to date, or pinned.
    refused: bool = False


@dataclass(frozen=True)
class Plan:
    """What an upgrade to ``target`` would do to each selected tenant; every tenant is in exactly one of
    ``cohorts``, ``up_to_date``, ``unknown_revision``, ``unreachable``, ``unmanaged``, ``pinned``, or
    ``drifted`` with ``refused`` set."""

    environment: str
    target: str  # resolved revision id, or "base"
    head: str | None  # None: the graph has several heads
    cohorts: tuple[Cohort, ...] = ()  # furthest behind first
    new: tuple[str, ...] = ()  # no revision recorded (also in the "base" cohort)
    up_to_date: tuple[str, ...] = ()  # at the target or past it: the upgrade leaves them alone
    unknown_revision: tuple[tuple[str, str], ...] = ()  # (tenant, revision): not in the graph, refused
    unreachable: tuple[tuple[str, str], ...] = ()  # (tenant, error), password-free
    # (tenant, why): tables but no version table, a schema Alembic never recorded; the upgrade leaves them alone
    # until they are stamped (only with the environment's default unmanaged = "report")
    unmanaged: tuple[tuple[str, str], ...] = ()
    pinned: tuple[str, ...] = ()  # need work, but pinned: a fleet upgrade leaves them alone
    messages: tuple[tuple[str, str], ...] = ()  # (revision, first line of its docstring), each applied one
    with_sql: bool = False
    skipped_databases: tuple[tuple[str, str], ...] = ()  # seen by discovery, not tenants: (name, why)
    # The environment's waves as `upgrade --wave N` numbers them (N = position + 1; empty waves dropped), each
    # with the tenants of the wave that the upgrade changes. Empty when the environment declares no waves.
    waves: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # The declared waves that take no selected tenant, (position in `waves`, 1-based; name; why), so a canary
    # that vanished is said, not silent. They get no number above (tenants.waves.empty_waves).
    empty_waves: tuple[tuple[int, str, str], ...] = ()
    # The schema check (check_schema = true, or `plan --schema`): the tenants whose schema differs from their
    # recorded revision's, in selection order, and where the expected schemas came from ("scratch", "cache",
    # "consensus"); None: schemas were not checked.
    drifted: tuple[Drifted, ...] = ()
    schema_reference: str | None = None

    @property
    def tenants(self) -> int:
        """How many tenants were selected (``new`` ones are counted in their cohort, drifted ones where they
        are unless the upgrade refuses them)."""
        return (sum(len(c.tenants) for c in self.cohorts) + len(self.up_to_date) + len(self.unknown_revision)
                + len(self.unreachable) + len(self.unmanaged) + len(self.pinned) + len(self.refused))

    @property
    def refused(self) -> tuple[Drifted, ...]:
        """The drifted tenants the upgrade will not start (check_schema = true)."""
        return tuple(d for d in self.drifted if d.refused)

    @property
    def to_upgrade(self) -> int:
        return sum(len(c.tenants) for c in self.cohorts)

    @property
    def ok(self) -> bool:
        """The plan covers every selected tenant: none is at an unknown revision, unreadable, unmanaged, or
        drifted where the upgrade will refuse it."""
        return not (self.unknown_revision or self.unreachable or self.unmanaged or self.refused)


# --- schema drift (issue 12: tenants.api.drift computes it, tenants.output.drift renders it) ----------------

class Verdict(str, Enum):
    """What ``tenants drift`` says of one tenant's schema against the expected schema of its recorded revision."""

    MATCH = "match"  # the schema is the expected one
    NEW = "new"  # no revision recorded and no tables: nothing to compare, nothing wrong
    DRIFTED = "drifted"  # the schema differs from the expected one (TenantDrift.differences say how)
    UNKNOWN = "unknown"  # no verdict: unreachable, unmanaged, unknown revision, or no expected schema (reason)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class TenantDrift:
    """One tenant: ``current`` its recorded heads (() none), ``fingerprint`` its schema's (None when not
    read), ``differences`` from the expected schema to the one found (drifted), ``reason`` why there is no
    verdict (unknown), password-free."""

    tenant: str
    verdict: Verdict
    current: tuple[str, ...] = ()
    fingerprint: str | None = None
    differences: tuple[str, ...] = ()
    reason: str | None = None

    def to_dict(self) -> dict:
        return {"tenant": self.tenant, "verdict": self.verdict.value, "revision": ",".join(self.current) or "base",
                "fingerprint": self.fingerprint, "differences": list(self.differences), "reason": self.reason}


@dataclass(frozen=True)
class DriftGroup:
    """Tenants with the same verdict, revision, fingerprint (so the same differences) and reason."""

    verdict: Verdict
    current: tuple[str, ...]
    fingerprint: str | None
    differences: tuple[str, ...]
    reason: str | None
    tenants: tuple[str, ...]

    def to_dict(self) -> dict:
        return {"verdict": self.verdict.value, "revision": ",".join(self.current) or "base",
                "fingerprint": self.fingerprint, "differences": list(self.differences), "reason": self.reason,
                "count": len(self.tenants), "tenants": list(self.tenants)}


@dataclass(frozen=True)
class DriftReport:
    """Every selected tenant's schema against the expected schema of its recorded revision.

    ``reference`` is where the expected schemas came from (``scratch``: built now on a scratch database of
    ``dialect``; ``cache``: built earlier, read back; ``consensus``: the largest group of tenants at each
    revision); ``revisions`` how many revisions have one; ``consensus`` (with that reference) how each
    position was chosen, as ``(position, agreeing, total, tied fingerprints)``: a tie leaves the position
    without an expected schema. ``offline``: databases discovery found but could not read (not verified)."""

    environment: str
    head: str | None
    reference: str
    dialect: str
    revisions: int
    tenants: tuple[TenantDrift, ...] = ()
    offline: tuple[tuple[str, str], ...] = ()
    consensus: tuple[tuple[str, int, int, tuple[str, ...]], ...] = ()

    @property
    def drifted(self) -> list[TenantDrift]:
        return [t for t in self.tenants if t.verdict is Verdict.DRIFTED]

    @property
    def unknown(self) -> list[TenantDrift]:
        return [t for t in self.tenants if t.verdict is Verdict.UNKNOWN]

    @property
    def schemas_ok(self) -> bool:
        """Every tenant read matches its revision's expected schema (or is new)."""
        return all(t.verdict in (Verdict.MATCH, Verdict.NEW) for t in self.tenants)

    @property
    def ok(self) -> bool:
        """:attr:`schemas_ok`, and every database online (an offline one could not be checked)."""
        return self.schemas_ok and not self.offline

    def groups(self) -> list[DriftGroup]:
        """Tenants grouped by (verdict, revision, fingerprint, differences, reason): 300 identical tenants are
        one group. In verdict order (match, new, drifted, unknown), the largest group first, then by revision."""
        found: dict[tuple, list[str]] = {}
        for t in self.tenants:
            found.setdefault((t.verdict, t.current, t.fingerprint, t.differences, t.reason), []).append(t.tenant)
        order = list(Verdict)
        keys = sorted(found, key=lambda k: (order.index(k[0]), -len(found[k]), k[1], k[2] or ""))
        return [DriftGroup(*key, tuple(found[key])) for key in keys]

    def to_dict(self) -> dict:
        counts = Counter(t.verdict.value for t in self.tenants)
        return {
            "environment": self.environment,
            "head": self.head,
            "reference": {"source": self.reference, "dialect": self.dialect, "revisions": self.revisions,
                          "consensus": [{"revision": where, "agreeing": agreeing, "total": total, "tied": list(tied)}
                                        for where, agreeing, total, tied in self.consensus]},
            "ok": self.ok,
            "summary": {v.value: counts[v.value] for v in Verdict if counts[v.value]},
            "groups": [g.to_dict() for g in self.groups()],
            "tenants": [t.to_dict() for t in self.tenants],
            "offline": [{"tenant": name, "reason": why} for name, why in self.offline],
        }
