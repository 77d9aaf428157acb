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

``pinned`` lists the tenants that need work but carry a pin (tenants.engine.pins). Locked tenants are not planned
(the JSON keeps an empty ``locked`` for its readers). A lock
is only held while another run migrates the tenant, so "locked" is a snapshot that is stale by the time the
planned run starts, and probing for it is not free: ``pg_try_advisory_lock`` or ``flock`` would take the
lock for a moment and could make a concurrent run report the tenant ``locked``; a read-only probe
(``pg_locks``, ``APPLOCK_TEST``) needs dialect code that belongs next to :func:`tenants.db.tenant_lock`.
The run itself reports ``locked`` tenants exactly.

This module computes the :class:`Plan`; :mod:`tenants.output.plan` renders it (text, Markdown, JSON).
"""

from __future__ import annotations

from tenants import api
from tenants.config import Settings
from tenants.engine.revisions import Revisions
from tenants.engine.unit import unmanaged_reason, version_rows_problem
from tenants.model import Cohort, Drifted, Plan, Tenant, revision_of
from tenants.selection import Selection
from tenants.snapshot import diff
from tenants.sources import TenantSource
from tenants.waves import assign, empty_waves


def plan(settings: Settings, revision: str = "head", selection: Selection = Selection(), *,
         with_sql: bool = False, source: TenantSource | None = None, schema: bool = False) -> Plan:
    """Group the selected tenants by current revision and say what an upgrade to ``revision`` applies to each.

    Validates the graph, ``revision`` and the selection before reading any tenant; changes nothing. With
    ``schema``, or when the environment sets ``check_schema = true``, each tenant's schema is also read and
    compared with its recorded revision's expected schema (see :func:`_drift`).
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
    check = schema or env.check_schema
    reads = api.read_tenants(settings, tenants, snapshots=check)
    reference, drift = _drift(settings, revisions, tenants, reads, source, check)
    refused = set()
    for tenant, read in zip(tenants, reads, strict=True):
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
        rows = version_rows_problem(current, revisions, env.version_table, tenant.name)
        if rows is not None:  # the upgrade refuses it too: listed with why, never up to date
            unknown.append((tenant.name, f"{','.join(current)} ({rows})"))
            continue
        if current not in pending:
            pending[current] = tuple(revisions.pending_upgrade(current, target))
        if not pending[current]:
            up_to_date.append(tenant.name)
            continue
        if pin is not None:  # would need work, but a fleet upgrade leaves it alone
            pinned.append(tenant.name)
            continue
        if tenant.name in drift and env.check_schema:  # the upgrade would report it `drifted`, untouched
            refused.add(tenant.name)
            continue
        if not current:
            new.append(tenant.name)
        groups.setdefault(current, []).append(tenant.name)

    cohorts = _cohorts(env.tenant_url("tenant"), revisions, target, groups, pending, with_sql)

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
        drifted=tuple(Drifted(name, revision_of(current) or "base", differences, name in refused)
                      for name, (current, differences) in drift.items()),
        schema_reference=reference,
    )


def _cohorts(url: str, revisions: Revisions, target: str | None, groups: dict[tuple[str, ...], list[str]],
             pending: dict[tuple[str, ...], tuple[str, ...]], with_sql: bool) -> list[Cohort]:
    """The cohorts, furthest behind first; with SQL rendered for ``url`` (picks the dialect; nothing connects)."""
    cohorts = []
    for current in sorted(groups, key=lambda cur: (-len(pending[cur]), cur)):  # furthest behind first
        sql = None
        # Several current heads: offline SQL starts from one revision (`tenants sql` refuses them too).
        if with_sql and len(current) <= 1:
            sql = revisions.offline_sql(url, current[0] if current else None, target, "upgrade")
        cohorts.append(Cohort(",".join(current) or "base", tuple(groups[current]), pending[current], sql))
    return cohorts


def _drift(settings: Settings, revisions: Revisions, tenants: list[Tenant], reads: list[api.TenantRead],
           source: TenantSource | None, check: bool
           ) -> tuple[str | None, dict[str, tuple[tuple[str, ...], tuple[str, ...]]]]:
    """The drift check (issue 12): where the expected schemas came from, and each tenant whose schema (read with
    its revision, one more query) differs from its recorded revision's expected schema, with that revision and
    the differences, in selection order.
    A tenant at base, or at a position without an expected schema (not in the graph, a consensus tie), is not
    compared: the upgrade does not check it either (:mod:`tenants.engine.unit`). Nothing when not ``check``."""
    if not check:
        return None, {}
    expected = api.schema_reference(settings, revisions, source)
    drift = {}
    for tenant, read in zip(tenants, reads, strict=True):
        want = expected.at(read.current) if read.snapshot is not None else None
        differences = diff(want, read.snapshot) if want is not None and read.snapshot is not None else []
        if differences:
            drift[tenant.name] = (read.current, tuple(differences))
    return expected.source, drift


def _message(revisions: Revisions, rev: str) -> str:
    doc = revisions.script.get_revision(rev).doc or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""
