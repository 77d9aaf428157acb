"""``tenants plan [REVISION]``: what an upgrade would do, grouped into cohorts, before anyone runs it.

A fleet rarely sits at one revision: a canary got the last release, a tenant created yesterday has nothing, an
old one missed two releases. Every tenant at the same revision runs the same scripts, so the plan groups the
selected tenants by their current revision into :class:`Cohort` s (tenants with no revision recorded form the
``base`` cohort) and says, per cohort, which revisions it will apply, in order. The tenants the upgrade will
not migrate are listed apart: at or past the target already (``up_to_date``), at a revision outside the graph
(``unknown_revision``; the upgrade refuses them) and unreadable (``unreachable``). ``new`` names the tenants
with no revision recorded yet: they are also in the ``base`` cohort, because an upgrade creates their schema
from scratch, which is what a reviewer should notice.

Reading is :func:`tenants.api.read_tenants`, shared with ``status``: one ``SELECT version_num`` per tenant, in
threads (reads only: see there), and a SQLite file that does not exist yet is ``new`` without being
created. A database with tables but no version table is ``unmanaged`` (an existing customer database that was
never adopted): the upgrade leaves it alone, so the plan lists it apart and is not ``ok``. We do not call
``api.status`` because that compares against head (and fails on a graph with several heads even when REVISION
names one of them).

``with_sql`` renders the offline SQL once per cohort, not per tenant: it depends only on the dialect and the
start and target revisions. It is rendered for the environment's URL with the placeholder tenant ``tenant``
(``tenants sql`` does the same), so a revision that emits different SQL per tenant (it reads the URL or
``-x`` arguments) shows the placeholder tenant's version.

``pinned`` lists the tenants that need work but carry a pin (tenants.engine.pins). ``locked`` is always empty. A lock
is only held while another run migrates the tenant, so "locked" is a snapshot that is stale by the time the
planned run starts, and probing for it is not free: ``pg_try_advisory_lock`` or ``flock`` would take the
lock for a moment and could make a concurrent run report the tenant ``locked``; a read-only probe
(``pg_locks``, ``APPLOCK_TEST``) needs dialect code that belongs next to :func:`tenants.db.tenant_lock`.
The run itself reports ``locked`` tenants exactly.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from dataclasses import dataclass

from tenants import api
from tenants.config import Settings
from tenants.engine.revisions import Revisions
from tenants.engine.unit import unmanaged_reason
from tenants.waves import assign, empty_waves
from tenants.output.text import fold
from tenants.selection import Selection
from tenants.sources import TenantSource


@dataclass(frozen=True)
class Cohort:
    """Tenants at the same revision, and what the upgrade applies to each of them."""

    current: str  # the revision they are at ("base": none recorded; "a,b": several heads)
    tenants: tuple[str, ...]  # in selection order
    revisions: tuple[str, ...]  # to apply, in the order the upgrade applies them
    sql: str | None = None  # the offline SQL for current -> target, with ``with_sql``


@dataclass(frozen=True)
class Plan:
    """What an upgrade to ``target`` would do to each selected tenant; every tenant is in exactly one of
    ``cohorts``, ``up_to_date``, ``unknown_revision``, ``unreachable``, ``unmanaged``, ``pinned`` or
    ``locked``."""

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
    locked: tuple[str, ...] = ()  # always empty: locks are only known at run time (see the module docstring)
    messages: tuple[tuple[str, str], ...] = ()  # (revision, first line of its docstring), each applied one
    with_sql: bool = False
    skipped_databases: tuple[tuple[str, str], ...] = ()  # seen by discovery, not tenants: (name, why)
    # The environment's waves as `upgrade --wave N` numbers them (N = position + 1; empty waves dropped), each
    # with the tenants of the wave that the upgrade changes. Empty when the environment declares no waves.
    waves: tuple[tuple[str, tuple[str, ...]], ...] = ()
    # The declared waves that take no selected tenant, (position in `waves`, 1-based; name; why), so a canary
    # that vanished is said, not silent. They get no number above (tenants.waves.empty_waves).
    empty_waves: tuple[tuple[int, str, str], ...] = ()

    @property
    def tenants(self) -> int:
        """How many tenants were selected (``new`` ones are counted in their cohort)."""
        return (sum(len(c.tenants) for c in self.cohorts) + len(self.up_to_date) + len(self.unknown_revision)
                + len(self.unreachable) + len(self.unmanaged) + len(self.pinned) + len(self.locked))

    @property
    def to_upgrade(self) -> int:
        return sum(len(c.tenants) for c in self.cohorts)

    @property
    def ok(self) -> bool:
        """The plan covers every selected tenant: none is at an unknown revision, unreadable or unmanaged."""
        return not (self.unknown_revision or self.unreachable or self.unmanaged)


def plan(settings: Settings, revision: str = "head", selection: Selection = Selection(), *,
         with_sql: bool = False, source: TenantSource | None = None) -> Plan:
    """Group the selected tenants by current revision and say what an upgrade to ``revision`` applies to each.

    Validates the graph, ``revision`` and the selection before reading any tenant; changes nothing.
    """
    env = settings.environment
    revisions = api.load_revisions(settings)
    head = api.upgrade_head(revisions, revision)
    target = revisions.resolve(revision)
    tenants, skipped = api.discover_all(settings, selection, source)

    groups: dict[tuple[str, ...], list[str]] = {}  # current revisions -> tenants, in selection order
    pending: dict[tuple[str, ...], tuple[str, ...]] = {}
    new, up_to_date, unknown, unreachable, unmanaged = [], [], [], [], []
    pinned = []
    for tenant, read in zip(tenants, api.read_tenants(settings, tenants), strict=True):
        if read.error is not None:
            unreachable.append((tenant.name, read.error))
            continue
        if read.tables:
            unmanaged.append((tenant.name, unmanaged_reason(list(read.tables), env.version_table)))
            continue
        current, pin = read.current, read.pin
        if not revisions.is_known(current):
            unknown.append((tenant.name, ",".join(current)))
            continue
        if current not in pending:
            pending[current] = tuple(revisions.pending_upgrade(current, target))
        if not pending[current]:
            up_to_date.append(tenant.name)
            continue
        if pin is not None:  # would need work, but a fleet upgrade leaves it alone
            pinned.append(tenant.name)
            continue
        if not current:
            new.append(tenant.name)
        groups.setdefault(current, []).append(tenant.name)

    url = env.tenant_url("tenant")  # picks the dialect; nothing connects
    cohorts = []
    for current in sorted(groups, key=lambda cur: (-len(pending[cur]), cur)):  # furthest behind first
        sql = None
        # Several current heads: offline SQL starts from one revision (`tenants sql` refuses them too).
        if with_sql and len(current) <= 1:
            sql = revisions.offline_sql(url, current[0] if current else None, target, "upgrade")
        cohorts.append(Cohort(",".join(current) or "base", tuple(groups[current]), pending[current], sql))

    applied = dict.fromkeys(rev for c in cohorts for rev in c.revisions)
    changed = {name for names in groups.values() for name in names}
    # Numbered over the whole selection, as the run numbers them, so "wave 1" here is `--wave 1` there.
    waves = tuple((wave.name, tuple(t.name for t in members if t.name in changed))
                  for wave, members in assign(tenants, env.waves)) if env.waves else ()
    empty = tuple((position, wave.name, why)
                  for position, wave, why in empty_waves(tenants, env.waves, narrowed=selection != Selection()))
    return Plan(
        environment=env.name,
        target=target if target is not None else "base",
        head=head,
        cohorts=tuple(cohorts),
        new=tuple(new),
        up_to_date=tuple(up_to_date),
        unknown_revision=tuple(unknown),
        unreachable=tuple(unreachable),
        unmanaged=tuple(unmanaged),
        pinned=tuple(pinned),
        messages=tuple((rev, _message(revisions, rev)) for rev in applied),
        with_sql=with_sql,
        skipped_databases=tuple(skipped),
        waves=waves,
        empty_waves=empty,
    )


def _message(revisions: Revisions, rev: str) -> str:
    doc = revisions.script.get_revision(rev).doc or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


# --- rendering: pure functions of a Plan ---------------------------------------------------------------------

def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _headline(plan: Plan) -> str:
    head = "" if plan.head == plan.target else f" (head {plan.head or 'ambiguous: several heads'})"
    return (f"upgrade {plan.environment} to {plan.target}{head}: {_n(plan.tenants, 'tenant')}, "
            f"{plan.to_upgrade} to upgrade in {_n(len(plan.cohorts), 'cohort')}")


# After the cohorts: the tenants the upgrade leaves alone or cannot plan. Long name lists fold; the ones a
# reviewer must act on (unknown revision, unreachable) are listed in full, one per line with why.
_FOLDED = (
    ("up_to_date", "up to date", ""),  # at the target or past it: an upgrade never goes down
    ("new", "new", "no revision recorded: also in the base cohort"),
    ("pinned", "pinned", ""),
    ("locked", "locked", ""),
)
_ITEMIZED = (
    ("unknown_revision", "unknown revision", "not in the graph: the upgrade refuses them"),
    ("unreachable", "unreachable", "cannot be read: the upgrade will fail them"),
    ("unmanaged", "unmanaged", "tables but no version table: the upgrade leaves them alone until stamped"),
    ("skipped_databases", "not migrated", "seen by discovery, not tenants or not online"),
)


def _no_sql(cohort: Cohort) -> str:
    # Alembic's offline mode (and so `tenants sql`) starts from one revision; from either head alone the
    # script would also replay what the other head already applied.
    return f"the cohort is at several heads ({cohort.current}); offline SQL starts from one revision"


EMPTY_WAVE = "an empty wave gets no number (upgrade --wave N counts the waves with tenants)"


def plan_text(plan: Plan) -> str:
    """Plain text for a terminal or a CI log; with SQL, each cohort's script follows it."""
    messages = dict(plan.messages)
    lines = [_headline(plan)]
    for i, (name, names) in enumerate(plan.waves, 1):
        lines.append(f"  wave {i} ({name}): {len(names)} to upgrade{': ' + fold(list(names)) if names else ''}")
    lines += [f"  waves[{position}] ({name}): {why}; {EMPTY_WAVE}" for position, name, why in plan.empty_waves]
    for i, cohort in enumerate(plan.cohorts, 1):
        lines += ["", f"cohort {i}: from {cohort.current}, {_n(len(cohort.tenants), 'tenant')}, "
                      f"{_n(len(cohort.revisions), 'revision')} to apply",
                  f"  tenants: {fold(list(cohort.tenants))}"]
        width = max(len(rev) for rev in cohort.revisions)
        lines += [f"  {n}. {rev:<{width}}  {messages.get(rev, '')}".rstrip()
                  for n, rev in enumerate(cohort.revisions, 1)]
        if plan.with_sql:
            lines += ["", f"-- cohort {i}: {cohort.current} -> {plan.target}",
                      (cohort.sql or f"-- not rendered: {_no_sql(cohort)}").rstrip()]
    lines.append("")
    for field, title, note in _FOLDED:
        names = list(getattr(plan, field))
        if names or field == "up_to_date":
            lines.append(f"{title} ({len(names)}{', ' + note if names and note else ''}): {fold(names) or '-'}")
    for field, title, note in _ITEMIZED:
        entries = getattr(plan, field)
        if entries:
            lines += [f"{title} ({len(entries)}, {note}):"] + [
                f"  {name} at {detail}" if field == "unknown_revision" else f"  {name}: {detail}"
                for name, detail in entries]
    return "\n".join(lines) + "\n"


def _code(text: str) -> str:
    """An inline code span; a name holding backticks gets a longer fence."""
    ticks = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def _row(*cells: str) -> str:
    # GFM ends a cell at any unescaped pipe, even inside a code span.
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _md(text: str) -> str:
    """Free text (an error, a revision message) in markdown: no HTML, no emphasis, no code spans."""
    return re.sub(r"([\\`*_\[\]|])", r"\\\1", html.escape(text, quote=False))


def _names(names: Iterable[str]) -> str:
    return fold([_code(n) for n in names])


def plan_markdown(plan: Plan) -> str:
    """For a GitHub job summary: the cohort table, then per cohort a ``<details>`` with every tenant, the
    revisions with their messages and, with SQL, the script; then the tenants the upgrade leaves out."""
    messages = dict(plan.messages)
    out = [f"### Migration plan: {_code(plan.environment)} to {_code(plan.target)}", ""]
    if plan.head != plan.target:
        out += [f"Head: {_code(plan.head) if plan.head else 'ambiguous (several heads)'}.", ""]
    counts = [f"{plan.to_upgrade} to upgrade in {_n(len(plan.cohorts), 'cohort')}",
              f"{len(plan.up_to_date)} up to date"]
    counts += [f"{len(names)} {label}" for label, names in (
        ("new", plan.new), ("unknown revision", plan.unknown_revision), ("unreachable", plan.unreachable),
        ("unmanaged", plan.unmanaged), ("pinned", plan.pinned), ("locked", plan.locked)) if names]
    out += [f"{_n(plan.tenants, 'tenant')}: {', '.join(counts)}.", ""]
    if plan.waves:  # the order of the rollout: what a reviewer approves goes to these tenants first
        out += ["| wave | tenants to upgrade |", "|---:|---|"]
        out += [_row(f"{i} {_code(name)}", f"{len(names)}" + (f": {_names(names)}" if names else ""))
                for i, (name, names) in enumerate(plan.waves, 1)]
        out.append("")
    if plan.empty_waves:
        out += [f"- **Empty wave** {_code(f'waves[{position}]')} {_code(name)}: {_md(why)}; {_md(EMPTY_WAVE)}"
                for position, name, why in plan.empty_waves] + [""]
    if plan.cohorts:
        out += ["| cohort | from | tenants | revisions to apply |", "|---:|---|---|---|"]
        for i, cohort in enumerate(plan.cohorts, 1):
            out.append(_row(str(i), _code(cohort.current), f"{len(cohort.tenants)}: {_names(cohort.tenants)}",
                            f"{len(cohort.revisions)}: {' → '.join(_code(rev) for rev in cohort.revisions)}"))
        out.append("")
    for i, cohort in enumerate(plan.cohorts, 1):
        out += [f"<details><summary>Cohort {i}: from <code>{html.escape(cohort.current)}</code>, "
                f"{_n(len(cohort.tenants), 'tenant')}, {_n(len(cohort.revisions), 'revision')}</summary>", "",
                f"Tenants: {', '.join(_code(n) for n in cohort.tenants)}", ""]
        out += [f"{n}. {_code(rev)}" + (f": {_md(messages[rev])}" if messages.get(rev) else "")
                for n, rev in enumerate(cohort.revisions, 1)]
        if plan.with_sql:
            out.append("")
            if cohort.sql is None:
                out.append(f"SQL not rendered: {_md(_no_sql(cohort))}")
            else:
                fence = "`" * max(3, max((len(run) for run in re.findall(r"`+", cohort.sql)), default=0) + 1)
                out += [f"{fence}sql", cohort.sql.rstrip("\n"), fence]
        out += ["", "</details>", ""]
    for field, title, note in _FOLDED:
        names = getattr(plan, field)
        if names or field == "up_to_date":
            out += [f"**{title.capitalize()}** ({len(names)}{', ' + note if names and note else ''}): "
                    f"{_names(names) or '-'}", ""]
    for field, title, note in _ITEMIZED:
        entries = getattr(plan, field)
        if entries:
            out += [f"**{title.capitalize()}** ({len(entries)}, {note}):", ""]
            out += [f"- {_code(name)} at {_code(detail)}" if field == "unknown_revision"
                    else f"- {_code(name)}: {_md(detail)}" for name, detail in entries]
            out.append("")
    return "\n".join(out)


def plan_json(plan: Plan) -> dict:
    """JSON-ready (lists, not tuples): ``json.loads(json.dumps(plan_json(p))) == plan_json(p)``."""
    return {
        "schema_version": 1,
        "environment": plan.environment,
        "target": plan.target,
        "head": plan.head,
        "ok": plan.ok,
        "summary": {
            "tenants": plan.tenants,
            "cohorts": len(plan.cohorts),
            "to_upgrade": plan.to_upgrade,
            "up_to_date": len(plan.up_to_date),
            "new": len(plan.new),
            "unknown_revision": len(plan.unknown_revision),
            "unreachable": len(plan.unreachable),
            "unmanaged": len(plan.unmanaged),
            "pinned": len(plan.pinned),
            "locked": len(plan.locked),
        },
        "cohorts": [
            {"current": c.current, "tenants": list(c.tenants), "revisions": list(c.revisions), "sql": c.sql}
            for c in plan.cohorts
        ],
        "messages": dict(plan.messages),
        "new": list(plan.new),
        "up_to_date": list(plan.up_to_date),
        "unknown_revision": [{"tenant": n, "revision": rev} for n, rev in plan.unknown_revision],
        "unreachable": [{"tenant": n, "error": error} for n, error in plan.unreachable],
        "unmanaged": [{"tenant": n, "reason": why} for n, why in plan.unmanaged],
        "pinned": list(plan.pinned),
        "locked": list(plan.locked),
        "skipped_databases": [{"database": n, "reason": why} for n, why in plan.skipped_databases],
        "waves": [{"wave": i, "name": name, "tenants": list(names)} for i, (name, names) in enumerate(plan.waves, 1)],
        "empty_waves": [{"position": position, "name": name, "note": why}
                        for position, name, why in plan.empty_waves],
    }
