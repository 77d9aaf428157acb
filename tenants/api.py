"""The library: one function per CLI verb, each taking one explicit :class:`Settings` and returning data.

Every function validates its whole input (configuration, selection, revision) before it touches any tenant:
bad input raises a :class:`~tenants.errors.TenantsError` and changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from time import monotonic
from typing import TypeVar

from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import ArgumentError

from tenants import __version__
from tenants.config import Settings
from tenants.db import (
    Connector,
    NoVersionTable,
    TenantState,
    autocommit,
    describe_error,
    has_lock,
    missing_file,
    read_state,
    read_version,
    schema_snapshot,
)
from tenants.dialects import dialect_for, placeholder_urls
from tenants.engine import baseline as baseline_module
from tenants.engine import history, pins
from tenants.engine.adopt import AdoptReport, AdoptRow, AdoptState, match
from tenants.engine.check import run as checks
from tenants.engine.check.report import CheckReport
from tenants.engine.expected import Expected, expected_schemas
from tenants.engine.fanout import (
    FAILURES,
    FailurePolicy,
    Noted,
    Strategy,
    choose_strategy,
    noting_signals,
    signal_name,
    start_early,
)
from tenants.engine.pins import TABLE as PIN_TABLE
from tenants.engine.pins import Pin, read_pin
from tenants.engine.pressure import ElasticPoolPressure, PressureGate
from tenants.engine.revisions import Operation, Revisions
from tenants.engine.unit import Job, foreign_tables, own_tables, position_key, unmanaged_reason, version_rows_problem
from tenants.errors import (
    ConfigError,
    ExpectedSchemaError,
    ReportError,
    ReportMismatch,
    RevisionError,
    TenantNotFound,
    TenantsError,
    TenantUnreachable,
    UsageError,
)
from tenants.model import (
    RESUMABLE,
    DriftReport,
    RunReport,
    State,
    Status,
    StatusReport,
    Tenant,
    TenantDrift,
    TenantResult,
    TenantStatus,
    Verdict,
    revision_of,
)
from tenants.output import notify as webhooks
from tenants.runlog import ReadReport, header_of, read_report
from tenants.secrets import mask_url
from tenants.selection import Selection
from tenants.snapshot import Snapshot
from tenants.sources import TenantSource, discover_with_skipped, source_for
from tenants.waves import Wave, assign, empty_waves

T = TypeVar("T")  # what a reading verb makes of one tenant (_read_each)


class FailureLimit(Enum):
    """``RunOptions.max_failures`` when the caller sets none."""

    # Stop starting tenants at the first failure; when the environment declares waves, as each wave's own
    # budget (Wave.budget, the configuration's max_failures) says instead.
    DEFAULT = "default"


@dataclass(frozen=True)
class RunOptions:
    """How to run: each None falls back to the environment's setting."""

    concurrency: int | None = None
    retries: int | None = None
    # Stop starting tenants once this many failed (the CLI's --max-failures); None: keep going through every
    # tenant (--keep-going). With declared waves, a number caps the whole run on top of the waves' budgets,
    # and None runs every tenant of each wave that starts (a wave over its budget still stops the later ones).
    max_failures: int | None | FailureLimit = FailureLimit.DEFAULT
    strategy: Strategy | None = None  # None: serial for one tenant, worker processes otherwise
    run_id: str | None = None  # None: a new one
    wave: int | None = None  # run only this wave (1-based) of the environment's waves
    # Seconds a tenant may run in its worker process before the process is killed and the tenant reported
    # timed-out (its revision in progress rolled back by the server); None: no limit. Always runs tenants in
    # worker processes, even one at a time; an explicit `strategy` takes its own (ProcessStrategy(...)).
    tenant_timeout: float | None = None


def discover(settings: Settings, selection: Selection = Selection(), source: TenantSource | None = None
             ) -> list[Tenant]:
    """The environment's tenants, discovered now, narrowed by ``selection``."""
    return discover_all(settings, selection, source)[0]


def discover_all(settings: Settings, selection: Selection = Selection(), source: TenantSource | None = None
                 ) -> tuple[list[Tenant], list[tuple[str, str]]]:
    """The tenants, narrowed by ``selection``, and the databases the source will not touch (name, why).

    ``source`` replaces the environment's own (:func:`tenants.sources.source_for`), e.g. an
    :class:`~tenants.sources.azure.AzureSource` with a credential of the caller's.
    """
    tenants, skipped, _ = _discover(settings, selection, source)
    return tenants, skipped


def _discover(settings: Settings, selection: Selection, source: TenantSource | None = None,
              offline_named: bool = False) -> tuple[list[Tenant], list[tuple[str, str]], list[tuple[str, str]]]:
    """:func:`discover_all`, and the offline databases the selection would take (``(name, why)``: tenants the
    source cannot read now, e.g. a Paused Azure database). ``offline_named``: an offline database named with
    ``--tenant`` is returned among those (status, verify) instead of raising TenantNotFound (which the
    commands that change tenants want)."""
    env = settings.environment
    tenants, skipped = discover_with_skipped(source or source_for(env))
    offline = selection.offline(skipped)
    reasons = {s.name: s.reason for s in skipped}
    allowed = {s.name for s in offline} if offline_named else set()
    for name in selection.tenants:
        if name in reasons and name not in allowed:  # seen, but not a tenant to touch: say why, not "unknown"
            raise TenantNotFound(f"tenant {name!r} (--tenant) is not migrated: {reasons[name]}")
    named = tuple(name for name in selection.tenants if name not in allowed)
    if selection.tenants and not named:  # every tenant named is offline
        chosen = []
    else:
        chosen = replace(selection, tenants=named).apply(tenants, env.name)
    return chosen, [(s.name, s.reason) for s in skipped], [(s.name, s.reason) for s in offline]


def load_revisions(settings: Settings) -> Revisions:
    return Revisions(settings.alembic_ini(), settings.environment.version_table)


@dataclass(frozen=True)
class TenantRead:
    """What a read-only look at one tenant found: its recorded revision and pin, or why it could not be read.

    ``current`` is () for none recorded; ``tables`` lists the database's own tables when it has no version
    table but tables (an unmanaged database; only looked for when the environment leaves those alone).
    """

    current: tuple[str, ...] = ()
    pin: Pin | None = None
    tables: tuple[str, ...] = ()
    error: str | None = None  # unreachable, password-free
    snapshot: Snapshot | None = None  # its schema, when asked for (read_tenants' ``snapshots``) and it has a revision


def read_tenants(settings: Settings, tenants: list[Tenant], *, snapshots: bool = False) -> list[TenantRead]:
    """Each tenant's :class:`TenantRead`, in order, read in threads: reads with no Alembic context, which is
    what may run in threads (the concurrency rule: :mod:`tenants.engine.fanout.process`). A tenant at a revision
    costs one connection and one statement where the dialect can (:func:`tenants.db.read_state`: version, pin,
    and the tables of a database without a version table). A SQLite file that does not exist yet is a new
    tenant, and is not opened (that would create it). Shared by ``status``, ``verify`` and ``plan``.
    ``snapshots``: a tenant with a recorded revision also gets its schema read (one more query:
    :func:`tenants.db.schema_snapshot`), for the drift check of ``plan``."""
    env = settings.environment

    def one(conn, state: TenantState, own: tuple[str, ...]) -> TenantRead:
        current = state.versions or ()
        tables = foreign_tables(state, own) if state.versions is None and env.unmanaged == "report" else []
        snapshot = schema_snapshot(conn, own) if snapshots and current else None
        return TenantRead(current, Pin.of_row(state.pin), tuple(tables), snapshot=snapshot)

    return _read_each(settings, tenants, one, TenantRead(), lambda error: TenantRead(error=error))


def _read_each(settings: Settings, tenants: list[Tenant],
               read: Callable[[Connection, TenantState, tuple[str, ...]], T], new: T,
               unreachable: Callable[[str], T]) -> list[T]:
    """``read(conn, state, own_tables)`` of each tenant, in order, in ``concurrency`` threads: the one way the
    reading verbs (status, verify, plan, drift, adopt) look at a fleet. ``state`` is what
    :func:`tenants.db.read_state` reads first, in autocommit (one statement where the dialect can). Reads with
    no Alembic context are what may run in threads (the concurrency rule: :mod:`tenants.engine.fanout.process`);
    each tenant gets one connection
    with the read deadline on every statement (``Connector.engine(reads=True)``). A SQLite file that does not
    exist yet is ``new`` and is not opened (that would create it); a tenant that cannot be read is
    ``unreachable(why)``, password-free: a state, not a crash."""
    env = settings.environment
    must_exist = _must_exist(settings)
    own = own_tables(env.version_table, env.history_table)
    connector = Connector(env.auth, env.cloud, sessions=env.sessions)

    def one(tenant: Tenant) -> T:
        if not must_exist and missing_file(tenant.url):
            return new
        try:
            with connector.engine(tenant.url, must_exist=must_exist, reads=True) as engine, engine.connect() as conn:
                autocommit(conn)
                return read(conn, read_state(conn, env.version_table, PIN_TABLE, env.history_table), own)
        except Exception as err:  # noqa: BLE001 - an unreachable tenant is a state, not a crash
            return unreachable(describe_error(err, tenant.all_secrets))

    try:
        with ThreadPoolExecutor(max(1, min(env.concurrency, len(tenants) or 1))) as pool:
            return list(pool.map(one, tenants))
    finally:
        connector.dispose()


def status(settings: Settings, selection: Selection = Selection(), source: TenantSource | None = None
           ) -> StatusReport:
    """Each selected tenant's recorded revision against the head, and the offline databases the selection
    would take (their revision cannot be read: ``verify`` must not vouch for them). Reads only
    (:func:`read_tenants`)."""
    env = settings.environment
    revisions = load_revisions(settings)
    head = revisions.head()
    tenants, _, offline = _discover(settings, selection, source, offline_named=True)

    def state(tenant: Tenant, read: TenantRead) -> TenantStatus:
        if read.error is not None:
            return TenantStatus(tenant.name, State.UNREACHABLE, error=read.error)
        note = read.pin.describe() if read.pin is not None else None
        if read.tables:
            return TenantStatus(tenant.name, State.UNMANAGED, (), None, unmanaged_reason(list(read.tables),
                                env.version_table), pin=note)
        current = read.current
        if not current:
            return TenantStatus(tenant.name, State.NEW, (), len(revisions.pending_upgrade((), head)), pin=note)
        if not revisions.is_known(current):
            return TenantStatus(tenant.name, State.UNKNOWN_REVISION, current, pin=note)
        rows = version_rows_problem(current, revisions, env.version_table, tenant.name)
        if rows is not None:  # never at head, whatever the rows say (tenants.engine.unit)
            return TenantStatus(tenant.name, State.UNKNOWN_REVISION, current, error=rows, pin=note)
        behind = len(revisions.pending_upgrade(current, head))
        return TenantStatus(tenant.name, State.AT_HEAD if behind == 0 else State.BEHIND, current, behind, pin=note)

    rows = tuple(state(t, r) for t, r in zip(tenants, read_tenants(settings, tenants), strict=True))
    return StatusReport(env.name, head, rows, tuple(offline))


@dataclass(frozen=True)
class Verification:
    """What :func:`verify` found: the fleet's status read afresh, the tenants the run's report lists (None
    without a report: then none is named as created since the run began), the schema check (``drift``, with
    ``schema``; None without), and the verdict, :attr:`ok`."""

    status: StatusReport
    ran: frozenset[str] | None = None
    strict: bool = False
    allow_offline: bool = False
    drift: DriftReport | None = None

    @property
    def ok(self) -> bool:
        """Every tenant at head (a pinned one may be behind, unless ``strict``), every database online
        (unless ``allow_offline``: an offline one could not be read, so nobody can vouch for it), and with the
        schema check every tenant's schema the expected one of its revision."""
        at_head = self.status.ok if self.strict else self.status.ok_but_pinned
        schemas = self.drift is None or self.drift.schemas_ok
        return at_head and schemas and (self.allow_offline or not self.status.offline)


def verify(settings: Settings, selection: Selection = Selection(), run_report: Path | None = None,
           strict: bool = False, allow_offline: bool = False, source: TenantSource | None = None,
           schema: bool = False) -> Verification:
    """After a deploy: discover the fleet afresh and check every tenant is at head (:func:`status`).

    ``run_report`` is the deploy's report (:mod:`tenants.runlog`), read first: a tenant it does not list was
    created since the run began. ``strict``: pinned tenants not at head fail too. ``allow_offline``: databases
    that are not online are listed but do not fail. ``schema``: each tenant's schema must also be the expected
    one of its recorded revision (:func:`drift`).
    """
    ran = frozenset(read_report(run_report).statuses()) if run_report is not None else None
    checked = drift(settings, selection, source) if schema else None
    return Verification(status(settings, selection, source), ran, strict, allow_offline, checked)


@dataclass(frozen=True)
class SchemaRead:
    """A read-only look at one tenant's schema: its recorded revision and snapshot, or why it could not be
    read. ``versioned`` is False when it has no version table; ``snapshot`` None for a SQLite tenant whose
    file does not exist yet (new, not opened)."""

    current: tuple[str, ...] = ()
    versioned: bool = True
    snapshot: Snapshot | None = None
    error: str | None = None  # unreachable, password-free


def read_schemas(settings: Settings, tenants: list[Tenant]) -> list[SchemaRead]:
    """Each tenant's :class:`SchemaRead`, in order, read in threads as :func:`read_tenants` reads (no Alembic
    context, the read deadline on every statement): one connection and two queries per tenant, the version
    table and the snapshot (one catalog query, :func:`tenants.db.schema_snapshot`)."""

    def one(conn, state: TenantState, own: tuple[str, ...]) -> SchemaRead:
        return SchemaRead(state.versions or (), state.versions is not None, schema_snapshot(conn, own))

    return _read_each(settings, tenants, one, SchemaRead(versioned=False), lambda error: SchemaRead(error=error))


def drift(settings: Settings, selection: Selection = Selection(), source: TenantSource | None = None,
          expected: Expected | None = None) -> DriftReport:
    """Each selected tenant's schema against the expected schema of its recorded revision (issue 12).

    Reads every tenant (:func:`read_schemas`), then takes the expected schemas (``expected``, else
    :func:`tenants.engine.expected.expected_schemas`: the cache, a scratch database, or the consensus of
    what was just read). Reads only; a scratch database is the only thing created (and dropped)."""
    env = settings.environment
    revisions = load_revisions(settings)
    tenants, _, offline = _discover(settings, selection, source, offline_named=True)
    if env.reference_database is not None and any(t.name == env.reference_database for t in tenants):
        raise UsageError(f"reference_database {env.reference_database!r} of environment {env.name!r} is also a "
                         "tenant: the expected schemas are built in it (it is emptied); set aside a database "
                         "that no tenant source finds")
    reads = read_schemas(settings, tenants)
    if expected is None:
        voters = [(r.current, r.snapshot) for r in reads if r.snapshot is not None and r.versioned and r.current
                  and revisions.is_known(r.current)]
        expected = expected_schemas(settings, revisions, consensus_from=voters)
    rows = tuple(_judge(t, r, revisions, expected, env.version_table) for t, r in zip(tenants, reads, strict=True))
    votes = tuple((where, c.agreeing, c.total, c.tied) for where, c in sorted(expected.consensus.items()))
    return DriftReport(env.name, single_head(revisions), expected.source, expected.dialect or env.dialect,
                       len(expected.by_revision), rows, tuple(offline), votes)


def _judge(tenant: Tenant, read: SchemaRead, revisions: Revisions, expected: Expected,
           version_table: str) -> TenantDrift:
    """One tenant's verdict (see :class:`~tenants.model.Verdict`)."""
    name, current = tenant.name, read.current
    if read.error is not None:
        return TenantDrift(name, Verdict.UNKNOWN, reason=f"unreachable: {read.error}")
    found = read.snapshot
    if found is None:  # a SQLite file not created yet
        return TenantDrift(name, Verdict.NEW)
    fingerprint = found.fingerprint
    if not read.versioned:
        if not found.tables and not found.views:
            return TenantDrift(name, Verdict.NEW, fingerprint=fingerprint)
        return TenantDrift(name, Verdict.UNKNOWN, fingerprint=fingerprint,
                           reason=f"unmanaged: {len(found.tables) + len(found.views)} table(s) or view(s) but no "
                                  f"{version_table} table: adopt it at the revision its schema matches")
    if not revisions.is_known(current):
        return TenantDrift(name, Verdict.UNKNOWN, current, fingerprint,
                           reason=f"unknown revision: {','.join(current)} is not in the revision graph")
    rows = version_rows_problem(current, revisions, version_table, name)
    if rows is not None:
        return TenantDrift(name, Verdict.UNKNOWN, current, fingerprint, reason=f"unknown revision: {rows}")
    want = expected.at(current)
    if want is None:
        return TenantDrift(name, Verdict.UNKNOWN, current, fingerprint, reason=_no_reference(current, expected))
    differences = tuple(want.diff(found))
    if differences:
        return TenantDrift(name, Verdict.DRIFTED, current, fingerprint, differences)
    return TenantDrift(name, Verdict.MATCH, current, fingerprint)


def _no_reference(current: tuple[str, ...], expected: Expected) -> str:
    """Why a known position has no expected schema, in one line."""
    where = ",".join(sorted(current))
    vote = expected.consensus.get(where)
    if vote is not None and vote.fingerprint is None:
        return (f"no expected schema at {where}: consensus tie between {len(vote.tied)} schemas of "
                f"{vote.agreeing} tenant(s) each ({', '.join(vote.tied)})")
    if len(current) > 1:
        return f"no expected schema at {where}: several heads, not built"
    return f"no expected schema at {where}: no tenant of the fleet to compare with" if expected.source == "consensus" \
        else f"no expected schema at {where}"


@dataclass(frozen=True)
class PreparedRun:
    """A validated run: the revision graph, the resolved target and the tenants, before any is touched."""

    settings: Settings
    revisions: Revisions
    operation: Operation
    target: str | None
    head: str | None
    tenants: tuple[Tenant, ...]
    skipped: tuple[tuple[str, str], ...] = ()  # databases seen but not tenants (name, why)
    concurrency: int | None = None  # derived from the elastic pool, when the environment sets none
    narrowed: bool = False  # the tenants are a selection (options or a resumed report), not the whole fleet
    resumed_from: Path | None = None  # the report a resumed upgrade took its tenants from (--from-report)
    # check_schema = true: the expected schema of each revision, which every tenant with work is held to
    # (tenants.engine.unit's _check_schema); None when the environment does not check schemas.
    expected: Expected | None = None

    def run(self, options: RunOptions = RunOptions(),
            on_result: Callable[[TenantResult], None] | None = None,
            on_start: Callable[[dict], None] | None = None,
            on_warning: Callable[[str], None] | None = None) -> RunReport:
        """Run it. ``on_start`` gets the report's header (run id, environment, target, ...) before the first
        tenant starts, ``on_result`` each tenant's result as it finishes: together, a report written as
        the run goes (:class:`tenants.runlog.ReportWriter`). ``on_warning`` gets a line when something the
        run relies on stops working but the run goes on (the pressure probe, refused); the report has it too.

        The waves run one after another as one run: one pressure probe (one login) for all of them, and one
        report (:meth:`RunReport.combine`)."""
        if options.concurrency is None and self.concurrency is not None:
            options = replace(options, concurrency=self.concurrency)
        waves = self.waves()
        self.check_wave(options.wave)
        if options.wave is not None:
            waves = [waves[options.wave - 1]]
        run_id = options.run_id or uuid.uuid4().hex
        # Signals are only noted from here on (tenants.engine.fanout.noting_signals): one between two waves, or
        # while a wave's fan-out sets itself up, ends the run as one mid-wave does: what was not started is
        # skipped, and the caller gets the whole report.
        with noting_signals() as noted:
            gate = _pressure_gate(self.settings.environment, self.tenants, on_warning) if options.strategy is None \
                else None
            try:
                return self._run_waves(waves, replace(options, run_id=run_id), on_result, on_start, gate, noted)
            finally:
                if gate is not None:
                    gate.close()

    def _run_waves(self, waves, options: RunOptions, on_result, on_start, gate, noted: Noted) -> RunReport:
        declared = self.declares_waves
        # With declared waves, an explicit max_failures caps the whole run, on top of each wave's budget.
        cap = options.max_failures if declared and isinstance(options.max_failures, int) else None
        results: list[TenantResult] = []
        outcomes: list[dict] = []
        reports: list[RunReport] = []
        stopped_by: str | None = None
        failed = 0
        for index, (wave, tenants) in enumerate(waves, 1):
            if stopped_by is not None:
                for tenant in tenants:
                    result = TenantResult(tenant.name, Status.SKIPPED, error=f"not started: {stopped_by}")
                    results.append(result)
                    (on_result or (lambda r: None))(result)
                outcomes.append({"wave": wave.name, "tenants": len(tenants), "ran": False, "ok": False,
                                 "failures": 0, "budget": wave.budget, "summary": {"skipped": len(tenants)}})
                continue
            # Within a declared wave: stop starting tenants once its budget is spent, or the run's cap (or keep
            # going if asked to). Without waves the run's own failure policy applies unchanged.
            if not declared or options.max_failures is None:
                policy = options.max_failures
            else:
                policy = wave.stop_after if cap is None else min(wave.stop_after, cap - failed)
            report = _run(self.settings, self.revisions, self.operation, self.target, self.head, tuple(tenants),
                          replace(options, max_failures=policy), on_result,
                          on_start=on_start if not reports else None, skipped=self.skipped, gate=gate,
                          expected=self.expected)
            reports.append(report)
            results.extend(report.results)
            failures = sum(r.status in FAILURES for r in report.results)
            failed += failures
            over = declared and failures > wave.budget
            outcomes.append({"wave": wave.name, "tenants": len(tenants), "ran": True, "ok": report.ok,
                             "failures": failures, "budget": wave.budget, "summary": report.counts})
            if noted.first is not None:  # during this wave, or since it ended: no later wave starts
                stopped_by = f"interrupted ({signal_name(noted.first)})"
            elif over:
                stopped_by = f"wave {index} ({wave.name}) failed {failures} tenant(s), over its budget of " \
                             f"{wave.budget}"
            elif cap is not None and failed >= cap:
                stopped_by = f"the failure policy stopped the run ({failed} failed, max failures {cap})"
        if not reports:  # nothing selected
            return _run(self.settings, self.revisions, self.operation, self.target, self.head, (), options,
                        on_result, on_start=on_start, skipped=self.skipped, gate=gate, expected=self.expected)
        order = {t.name: i for i, t in enumerate(self.tenants)}
        run = RunReport.combine(reports, sequential=True)  # every wave's figures, in one report
        return replace(run, results=tuple(sorted(results, key=lambda r: order.get(r.tenant, 0))),
                       waves=tuple(outcomes) if len(waves) > 1 or declared else ())

    @property
    def declares_waves(self) -> bool:
        return self.operation == "upgrade" and bool(self.settings.environment.waves)

    def waves(self) -> list[tuple[Wave, list[Tenant]]]:
        """The selection split into the environment's waves (one wave when none are declared, and for any
        operation but an upgrade: waves roll a release out, a stamp or a downgrade names its tenants)."""
        return assign(list(self.tenants), self.settings.environment.waves if self.declares_waves else ())

    def check_wave(self, wave: int | None) -> None:
        """Refuse a ``--wave`` number this selection does not have (an empty wave gets no number)."""
        count = len(self.waves())
        if wave is not None and not 1 <= wave <= count:
            raise UsageError(f"--wave {wave}: this selection has {count} wave(s)")

    def empty_waves(self) -> list[tuple[int, Wave, str]]:
        """The declared waves that take none of these tenants, and why (:func:`tenants.waves.empty_waves`):
        a canary wave that takes nobody is a rollout without a canary, which the caller should say."""
        return empty_waves(list(self.tenants), self.settings.environment.waves, self.narrowed)


# A resumed upgrade runs again the tenants its report lists with one of these statuses (`--only`'s default).
RESUME_STATUSES = tuple(status.value for status in RESUMABLE)  # `--only`'s default: what a resume runs again


def prepare_upgrade(settings: Settings, revision: str = "head", selection: Selection = Selection(),
                    source: TenantSource | None = None, concurrency: int | None = None,
                    resume_from: Path | None = None, only: Iterable[str] = RESUME_STATUSES, force: bool = False
                    ) -> PreparedRun:
    """Validate an upgrade (graph, revision, discovery, selection) without touching any tenant.

    An ``azure-pool`` environment without ``concurrency`` gets one derived from the pool's size
    (:func:`tenants.sources.azure.derived_concurrency`), unless ``concurrency`` (the CLI's ``--concurrency``) is
    given: then the pool is not even asked.

    ``resume_from``, the report of an earlier run (finished or cut short), resumes it: of the selection, only
    the tenants it lists with a status in ``only`` and those it does not list (:func:`resume_names`). It must
    be the report of this same upgrade (:func:`check_resume`; ``force`` takes one of another anyway).
    """
    resume = read_report(resume_from) if resume_from is not None else None
    _require_lock(settings)
    revisions = load_revisions(settings)
    head = upgrade_head(revisions, revision)
    target = revisions.resolve(revision)
    if resume is not None:
        check_resume(resume, settings.environment.name, target, head, force)
    # The workers' forkserver starts now, during discovery.
    start_early(concurrency or settings.environment.concurrency,
                dialect_for(settings.environment.dialect).worker_modules)
    tenants, skipped = discover_all(settings, selection, source)
    if (concurrency is None and settings.environment.source == "azure-pool"
            and not settings.environment.concurrency_explicit):
        from tenants.sources.azure import derived_concurrency

        concurrency = derived_concurrency(settings.environment, **_azure_client_args(source))
    if resume is not None:
        names = set(resume_names(resume, set(only), [t.name for t in tenants]))
        tenants = [t for t in tenants if t.name in names]
    expected = schema_reference(settings, revisions, source) if settings.environment.check_schema else None
    return PreparedRun(settings, revisions, "upgrade", target, head, tuple(tenants), tuple(skipped), concurrency,
                       narrowed=selection != Selection() or resume is not None, resumed_from=resume_from,
                       expected=expected)


def upgrade_head(revisions: Revisions, revision: str) -> str | None:
    """The head an upgrade to ``revision`` reports: for ``head``, the one head (several raise
    :class:`~tenants.errors.MultipleHeads`); for a named revision, the one head or None when there are
    several (naming one of them is how such a graph is upgraded)."""
    return revisions.head() if revision == "head" else single_head(revisions)


def single_head(revisions: Revisions) -> str | None:
    """The graph's head, or None when it has several."""
    return revisions.heads[0] if len(revisions.heads) == 1 else None


def check_resume(report: ReadReport, environment: str, target: str | None, head: str | None,
                 force: bool = False) -> None:
    """Refuse to resume from a report of another run than this upgrade: a resume skips the tenants its report
    lists as done, so a report of another environment, of a downgrade or a stamp, of another target or of an
    older revision graph (another head) would leave tenants behind while the run exits 0 (issue 11).
    ``force`` takes such a report anyway (the operator knows better). A report of a run that stopped before
    any tenant ran (:func:`failed_run`) has nothing to resume, with or without ``force``."""
    fields = report.fields
    if fields.get("error"):
        raise ReportMismatch(f"{report.path}: that run stopped before any tenant ran ({fields['error']}); there is "
                             "nothing to resume from it: run the upgrade again without --from-report")
    missing = [key for key in ("environment", "operation", "target", "head") if key not in fields]
    if missing:
        raise ReportError(f"{report.path}: not a report to resume from (no {', '.join(missing)})")
    ours = {"environment": environment, "operation": "upgrade", "target": target or "base", "head": head}
    differ = [f"{key} {fields[key]!r} (this run: {value!r})" for key, value in ours.items() if fields[key] != value]
    if differ and not force:
        raise ReportMismatch(f"{report.path}: a report of another run: {', '.join(differ)}; resume from this "
                             "upgrade's own report, or pass --force to take this one anyway")


def failed_run(settings: Settings | str, operation: Operation, revision: str, error: TenantsError | str
               ) -> RunReport:
    """The report of a run that stopped before any tenant ran (discovery failed, or a signal came first): no
    tenant, ``error`` said, never ``ok`` or ``complete``. Written to ``--report`` so that the file says what
    happened (not an empty or a stale one) and ``--from-report`` refuses it clearly (:func:`check_resume`).
    ``settings``: the environment's, or only its name when the run stopped before they were loaded."""
    now = datetime.now(UTC).isoformat(timespec="seconds")
    environment = settings if isinstance(settings, str) else settings.environment.name
    return RunReport(run_id=uuid.uuid4().hex, environment=environment, operation=operation,
                     target=revision, head=None, concurrency=0, started_at=now, finished_at=now, duration=0.0,
                     tool_version=__version__, complete=False, error=str(error))


def resume_names(report: ReadReport, only: set[str], discovered: list[str]) -> list[str]:
    """The tenants to run again: those whose status in the report is in ``only``, and those (discovered now)
    with no entry in it, which count as not done."""
    unknown = only - {s.value for s in Status}
    if unknown:
        raise UsageError(f"--only {','.join(sorted(unknown))}: not a status; use some of "
                         f"{', '.join(s.value for s in Status if s is not Status.THROTTLED)}")
    statuses = report.statuses()
    return [name for name in discovered if name not in statuses or statuses[name] in only]


def merge_reports(reports: Sequence[Path | ReadReport]) -> RunReport:
    """One report from several shard (or canary) reports of the same environment, operation and target,
    tenants by name (see :meth:`RunReport.combine`); each part is named in ``shards`` by its file. A path is
    read first (:func:`tenants.runlog.read_report`: a report cut short counts, and makes the merge not
    ``complete``)."""
    parts = [r if isinstance(r, ReadReport) else read_report(r) for r in reports]
    if not parts:
        raise UsageError("report merge needs at least one report")
    first = parts[0].fields
    for report in parts[1:]:
        for key in ("environment", "operation", "target"):
            if report.fields.get(key) != first.get(key):
                raise UsageError(f"{report.path}: {key} {report.fields.get(key)!r} differs from "
                                 f"{parts[0].path}'s {first.get(key)!r}; merge reports of one run only")
    seen: dict[str, str] = {}
    for report in parts:
        for tenant in report.tenants:
            if tenant.get("tenant") in seen:
                raise UsageError(f"tenant {tenant['tenant']!r} is in both {seen[tenant['tenant']]} and "
                                 f"{report.path}: shards must not overlap")
            seen[tenant.get("tenant")] = str(report.path)
    runs = []
    for report in parts:
        run = report.run_report()
        runs.append(run if run.shards else replace(run, shards=(str(report.path),)))
    merged = RunReport.combine(runs)
    return replace(merged, results=tuple(sorted(merged.results, key=lambda r: r.tenant)))


def notify(targets: Sequence[webhooks.Target], reports: Sequence[Path | ReadReport] = (),
           message: str | None = None, link: str | None = None) -> list[str]:
    """Post a run's summary (its ``reports`` merged, with ``message`` as a note) or ``message`` alone (a deploy
    that failed before any tenant ran) to the webhooks; ``link`` is the CI run's page. Returns one warning per
    webhook that failed: a failing webhook never fails the caller."""
    if not targets:
        raise UsageError("report notify: no webhook; give --notify URL or set TENANTS_NOTIFY_URL")
    if not reports and not message:
        raise UsageError("report notify: give the run's report(s), or --message when there is none")
    subject = merge_reports(reports) if reports else message
    return webhooks.notify(subject, targets, link=link, note=message if reports else None)


# --- check_schema (issue 12): the expected schemas an upgrade and a plan hold tenants to ----------------------

def schema_reference(settings: Settings, revisions: Revisions, source: TenantSource | None = None) -> Expected:
    """The expected schema of each revision for ``settings``' environment: the one call of
    :func:`tenants.engine.expected.expected_schemas` for ``upgrade`` and ``plan`` (from its cache, or built on a
    scratch database). Where neither is allowed it falls back to the consensus of the fleet: only then, and
    lazily, is every tenant of the environment (not only the selection: one tenant would always agree with
    itself) read, one catalog query each."""
    def fleet() -> Iterator[tuple[tuple[str, ...], Snapshot]]:
        tenants, _ = discover_all(settings, Selection(), source)
        for read in read_tenants(settings, tenants, snapshots=True):
            if read.snapshot is not None:
                yield read.current, read.snapshot

    return expected_schemas(settings, revisions, consensus_from=fleet())


def job_schemas(expected: Expected) -> dict[str, Snapshot]:
    """What crosses to the worker processes (:attr:`tenants.engine.unit.Job.expected`): plain data, each
    position's expected schema keyed by :func:`tenants.engine.unit.position_key`."""
    schemas = dict(expected.by_revision)
    schemas.update((position_key(position), snapshot) for position, snapshot in expected.positions.items())
    return schemas


def _azure_client_args(source) -> dict:
    """Reuse an injected AzureSource's credential and transport for the pool lookup."""
    return {key: getattr(source, key) for key in ("credential", "transport") if getattr(source, key, None)}


def upgrade(
    settings: Settings,
    revision: str = "head",
    selection: Selection = Selection(),
    options: RunOptions = RunOptions(),
    on_result: Callable[[TenantResult], None] | None = None,
) -> RunReport:
    """Bring every selected tenant to ``revision`` (default head), in parallel; see :mod:`tenants.engine.fanout`."""
    return prepare_upgrade(settings, revision, selection).run(options, on_result)


@dataclass(frozen=True)
class DowngradePlan:
    """What a single-tenant downgrade will do, shown to the operator before it happens."""

    tenant: Tenant
    current: tuple[str, ...]
    target: str | None
    undo: tuple[str, ...]  # newest first
    descriptions: tuple[str, ...]  # one "rev: message" line per revision undone


def plan_downgrade(settings: Settings, tenant: str, revision: str) -> DowngradePlan:
    """Read the tenant's revision and list the revisions a downgrade to ``revision`` would undo."""
    revisions = load_revisions(settings)
    chosen = _one_tenant(settings, tenant)
    current = _known_current(revisions, chosen, settings)
    target = _resolve_down(revisions, revision, chosen.name, current)
    undo = revisions.pending_downgrade(current, target)
    descriptions = tuple(f"{rev}: {revisions.script.get_revision(rev).doc}" for rev in undo)
    return DowngradePlan(chosen, current, target, tuple(undo), descriptions)


def downgrade(settings: Settings, plan: DowngradePlan, options: RunOptions = RunOptions()) -> RunReport:
    """Downgrade exactly the one tenant of ``plan`` (made by :func:`plan_downgrade`).

    The tenant must still be where the plan saw it: if it moved since, it fails with nothing undone.
    """
    revisions = load_revisions(settings)
    head = single_head(revisions)
    return _run(settings, revisions, "downgrade", plan.target, head, [plan.tenant], options, None,
                planned_from=plan.current)


def downgrade_and_pin(settings: Settings, plan: DowngradePlan, reason: str, options: RunOptions = RunOptions()
                      ) -> tuple[RunReport, str]:
    """Downgrade the plan's tenant and pin it with ``reason``, so fleet upgrades leave it where it went.

    The order is the point. A tenant not pinned yet is pinned *first*: fleet upgrades read the pin under the
    tenant's lock, so from then on none can take it back up between the downgrade and the pin (a deploy may
    be running beside an operator's downgrade). If the downgrade then undoes nothing (the tenant was locked
    or moved since the plan), the pin comes off again: a tenant nobody downgraded must not silently stop
    getting releases. A tenant pinned already is kept out of fleet upgrades by that pin; its reason is
    replaced only once the downgrade ended well.

    Returns the report and what became of the pin: ``"pinned"`` (the downgrade ended well), ``"released"``
    (nothing was undone, so the new pin is off again), ``"kept"`` (it stopped half-way: pinned where it
    stopped), ``"unchanged"`` (pinned before, the downgrade failed: the old pin stands).
    """
    if not reason.strip():
        raise UsageError("--pin needs a reason: the next person must know why the tenant is held back")
    _require_lock(settings)  # before the pin: a dialect that cannot be downgraded must not be left pinned

    def read(engine):
        with engine.connect() as conn:
            return read_pin(conn)

    pinned_before = _on_tenant(settings, plan.tenant, read, "cannot read its pin") is not None
    if pinned_before:
        report = downgrade(settings, plan, options)
        if report.ok:
            _set_pin(settings, plan.tenant, reason)
        return report, "pinned" if report.ok else "unchanged"
    _set_pin(settings, plan.tenant, reason)
    report = None
    try:
        report = downgrade(settings, plan, options)
    finally:
        # Also when it was interrupted (Ctrl-C, SIGTERM: KeyboardInterrupt, issue 11), whatever it had got to:
        # a tenant nothing was undone on must not stay pinned.
        if (report is None or not report.ok) and _nothing_undone(settings, plan, report):
            _clear_pin(settings, plan.tenant)
            released = True
        else:
            released = False
    if report.ok:
        return report, "pinned"
    return report, "released" if released else "kept"


def _nothing_undone(settings: Settings, plan: DowngradePlan, report: RunReport | None) -> bool:
    """Whether the downgrade undid nothing. A tenant stopped mid-way (interrupted, timed out: its revisions are
    unknown to the report) is read back: nothing if it is still where the plan saw it; unreadable: something."""
    if report is not None:
        if any(result.applied for result in report.results):
            return False
        if not any(r.status is Status.TIMED_OUT or (r.error or "").startswith("interrupted") for r in report.results):
            return True  # it ran to its end (locked, or the tenant moved since the plan): it undid nothing
    try:
        return _current(plan.tenant, settings) == plan.current
    except TenantsError:
        return False


@dataclass(frozen=True)
class StampPlan:
    """What a stamp will record, shown before it happens: the run, and where each tenant is now (``from``:
    ``unmanaged``, ``base`` for none recorded, ``?`` unreadable, or the revision(s) recorded)."""

    run: PreparedRun
    current: tuple[tuple[str, str], ...]  # (tenant, where it is now), in selection order

    @property
    def tenants(self) -> tuple[Tenant, ...]:
        return self.run.tenants

    def groups(self) -> dict[str, list[str]]:
        """Tenants grouped by where they are now, in first-seen order."""
        out: dict[str, list[str]] = {}
        for name, where in self.current:
            out.setdefault(where, []).append(name)
        return out


def prepare_stamp(settings: Settings, revision: str, selection: Selection = Selection(), everyone: bool = False,
                  source: TenantSource | None = None) -> StampPlan:
    """Validate a stamp (revision, selection) and read where each selected tenant is, touching nothing.

    Stamping records a revision without running any migration: it adopts databases whose schema already is
    that revision (an existing fleet, or unmanaged databases). It never happens to a whole fleet by
    accident: the selection must name tenants, tags, or ``everyone`` (``--all``).
    """
    if not (selection.tenants or selection.tags or everyone):
        raise UsageError("stamp needs --tenant NAME, --tag TAG or --all: it records a revision without running "
                         "its migrations, so it never picks its tenants by default")
    _require_lock(settings)
    revisions = load_revisions(settings)
    target = revisions.resolve(revision)
    tenants, skipped = discover_all(settings, selection, source)
    current = []
    for tenant, read in zip(tenants, read_tenants(settings, tenants), strict=True):
        where = "?" if read.error is not None else "unmanaged" if read.tables else ",".join(read.current) or "base"
        current.append((tenant.name, where))
    run = PreparedRun(settings, revisions, "stamp", target, single_head(revisions), tuple(tenants),
                      tuple(skipped))
    return StampPlan(run, tuple(current))


def stamp(settings: Settings, revision: str, selection: Selection = Selection(), everyone: bool = False,
          options: RunOptions = RunOptions(max_failures=None),
          on_result: Callable[[TenantResult], None] | None = None) -> RunReport:
    """Record ``revision`` in the selected tenants without running any migration (see :func:`prepare_stamp`)."""
    return prepare_stamp(settings, revision, selection, everyone).run.run(options, on_result)


# --- adopt (issue 12): stamp each unmanaged tenant at the revision its schema matches -------------------------

@dataclass(frozen=True)
class _Look:
    """One tenant as adopt sees it: its recorded revision (None: no version table), and its schema's snapshot
    when it has tables but no version table (unmanaged), or why it could not be read."""

    current: tuple[str, ...] | None = None
    snapshot: Snapshot | None = None
    error: str | None = None


def _look(settings: Settings, tenants: list[Tenant]) -> list[_Look]:
    """Each tenant's :class:`_Look`, read in threads (reads only, as :func:`read_tenants`): the version table
    with one query and, without one, the tables with a second and the snapshot with a third (one catalog
    query, :func:`tenants.db.schema_snapshot`). A SQLite file that does not exist yet is not opened."""

    def one(conn, state: TenantState, own: tuple[str, ...]) -> _Look:
        if state.versions is not None:
            return _Look(state.versions)
        return _Look(None, schema_snapshot(conn, own) if foreign_tables(state, own) else None)

    return _read_each(settings, tenants, one, _Look(), lambda error: _Look(error=error))


def _adopt_row(tenant: Tenant, look: _Look, expected: Expected, order: list[str]) -> AdoptRow:
    if look.error is not None:
        return AdoptRow(tenant.name, AdoptState.UNREACHABLE, why=look.error)
    if look.current is not None:
        return AdoptRow(tenant.name, AdoptState.SKIPPED, why=f"managed already: it records {revision_of(look.current)}")
    if look.snapshot is None:
        return AdoptRow(tenant.name, AdoptState.SKIPPED, why="new: no tables (`tenants upgrade` creates its schema)")
    return AdoptRow.of(tenant.name, match(look.snapshot, expected.by_revision, order))


@dataclass(frozen=True)
class AdoptPlan:
    """What ``tenants adopt`` found, before anything is stamped: a row per selected tenant (:class:`AdoptRow`)."""

    settings: Settings
    revisions: Revisions
    tenants: tuple[Tenant, ...]
    rows: tuple[AdoptRow, ...]
    source: str  # where the expected schemas came from (Expected.source)
    fingerprints: dict[str, str]  # revision -> its expected schema's fingerprint, for those matched

    def report(self) -> AdoptReport:
        """The dry run's report: nothing changed."""
        return AdoptReport(self.settings.env_name, self.rows, self.source)

    def run(self, options: RunOptions = RunOptions(max_failures=None),
            on_result: Callable[[TenantResult], None] | None = None) -> AdoptReport:
        """Stamp each matched tenant at its revision, one stamp run per revision (graph order), each tenant under
        its lock, where the unit of work checks again that it has no version table and the same schema
        (:class:`tenants.engine.unit.Job` ``adopt``). Tenants that matched nothing are not in any run."""
        run_id = options.run_id or uuid.uuid4().hex
        options = replace(options, run_id=run_id)
        by_name = {t.name: t for t in self.tenants}
        results: dict[str, TenantResult] = {}
        head = single_head(self.revisions)
        for revision in self.revisions.in_order():
            chosen = [by_name[r.tenant] for r in self.rows if r.state is AdoptState.MATCHED and r.revision == revision]
            if chosen:
                report = _run(self.settings, self.revisions, "stamp", revision, head, chosen, options, on_result,
                              adopt=self.fingerprints[revision])
                results.update((r.tenant, r) for r in report.results)
        rows = tuple(_adopted(row, results.get(row.tenant)) for row in self.rows)
        return AdoptReport(self.settings.env_name, rows, self.source, applied=True, run_id=run_id)


def _adopted(row: AdoptRow, result: TenantResult | None) -> AdoptRow:
    """A matched row after its stamp run: adopted, changed under the lock (skipped, untouched), or failed."""
    if row.state is not AdoptState.MATCHED:
        return row
    if result is None:  # the run stopped before it (Ctrl-C)
        return replace(row, state=AdoptState.FAILED, why="not started")
    if result.status is Status.STAMPED:
        return replace(row, state=AdoptState.ADOPTED)
    state = AdoptState.CHANGED if result.status is Status.SKIPPED else AdoptState.FAILED
    return replace(row, state=state, why=result.error or str(result.status))


def prepare_adopt(settings: Settings, selection: Selection = Selection(), source: TenantSource | None = None,
                  expected: Expected | None = None) -> AdoptPlan:
    """Snapshot each selected unmanaged tenant and match it to a revision (:func:`tenants.engine.adopt.match`),
    touching nothing. ``expected`` (an :class:`tenants.engine.expected.Expected`) defaults to the expected
    schemas of the graph on this environment's dialect (built on a scratch database, or cached)."""
    _require_lock(settings)
    revisions = load_revisions(settings)
    revisions.head()  # a graph without revisions, or with several heads, is bad input here too
    tenants, _ = discover_all(settings, selection, source)
    if expected is None:
        expected = _expected_schemas(settings, revisions)
    order = revisions.in_order()
    rows = tuple(_adopt_row(t, look, expected, order)
                 for t, look in zip(tenants, _look(settings, tenants), strict=True))
    fingerprints = {row.revision: expected.by_revision[row.revision].fingerprint for row in rows
                    if row.state is AdoptState.MATCHED and row.revision is not None}
    return AdoptPlan(settings, revisions, tuple(tenants), rows, expected.source, fingerprints)


def adopt(settings: Settings, selection: Selection = Selection(), yes: bool = False, expected: Expected | None = None,
          options: RunOptions = RunOptions(max_failures=None)) -> AdoptReport:
    """``tenants adopt``: the dry run's report, or with ``yes`` each matched tenant stamped (see
    :class:`AdoptPlan`)."""
    plan = prepare_adopt(settings, selection, expected=expected)
    return plan.run(options) if yes else plan.report()


def baseline(settings: Settings, tenant: str, message: str) -> Path:
    """``tenants baseline --from-tenant NAME -m MESSAGE``: write an Alembic revision that creates ``tenant``'s
    schema (its snapshot, rendered by :mod:`tenants.engine.baseline`), and return its path.

    Alembic writes it (``ScriptDirectory.generate_revision``, through the project's ``script.py.mako``), so its id,
    file name and ``down_revision`` are Alembic's: it goes on the current head, as ``alembic revision`` puts a new
    revision, which makes it the first revision of a project that has none (the case it is for: a fleet whose
    schema predates the graph). A graph with several heads is refused (merge them first).
    """
    if not message.strip():
        raise UsageError("baseline needs -m \"...\": the revision's message (e.g. -m \"baseline\")")
    revisions = load_revisions(settings)
    if len(revisions.heads) > 1:
        revisions.head()  # raises MultipleHeads, naming them and the way out
    chosen = _one_tenant(settings, tenant)
    own = own_tables(settings.environment.version_table, settings.environment.history_table)

    def read(engine):
        with engine.connect() as conn:
            return schema_snapshot(conn, own)

    snapshot = _on_tenant(settings, chosen, read, "cannot read its schema", if_not_created=Snapshot())
    if not snapshot.tables and not snapshot.views:
        raise UsageError(f"tenant {tenant!r} has no tables: nothing to baseline; name a tenant that has the schema")
    return baseline_module.write_revision(revisions.script, snapshot, message.strip(), tenant)


def _expected_schemas(settings: Settings, revisions: Revisions) -> Expected:
    """The reference adopt matches against. Consensus is no reference here: the tenants to adopt record no
    revision to vote with, so an environment without a scratch database cannot adopt by schema."""
    expected = expected_schemas(settings, revisions)
    if not expected.by_revision:
        raise ExpectedSchemaError(
            f"environment {settings.env_name!r}: no expected schema to match against: adopt needs the graph built on "
            "a scratch database (expected_schema = \"build\"; SQL Server: a reference_database), not consensus")
    return expected


DIALECT_URLS = placeholder_urls()  # `tenants sql --dialect NAME`: URLs that only pick the dialect


def pin(settings: Settings, tenant: str, reason: str, actor: str | None = None) -> None:
    """Keep ``tenant`` out of fleet upgrades until :func:`unpin` (the pin lives in its database)."""
    if not reason.strip():
        raise UsageError("pin needs --reason \"...\": the next person must know why the tenant is held back")
    _set_pin(settings, _one_tenant(settings, tenant), reason, actor)


def unpin(settings: Settings, tenant: str) -> bool:
    """Release ``tenant``; False if it was not pinned."""
    return _clear_pin(settings, _one_tenant(settings, tenant))


# On a Tenant already discovered: an azure-pool discovery is a management API call, made once per command.
def _set_pin(settings: Settings, tenant: Tenant, reason: str, actor: str | None = None) -> None:
    _on_tenant(settings, tenant, lambda engine: pins.set_pin(engine, reason.strip(), actor or history.actor()),
               "cannot change its pin")


def _clear_pin(settings: Settings, tenant: Tenant) -> bool:
    return _on_tenant(settings, tenant, pins.clear_pin, "cannot change its pin")


_NOT_CREATED = object()


def _on_tenant(settings: Settings, tenant: Tenant, action, what: str, if_not_created=_NOT_CREATED):
    """Run ``action(engine)`` on one tenant's database with a connector of its own; a failure to reach it is
    one TenantUnreachable line. ``if_not_created`` is returned, without connecting, for a demo tenant whose
    SQLite file does not exist yet (opening it would create it)."""
    if if_not_created is not _NOT_CREATED and not _must_exist(settings) and missing_file(tenant.url):
        return if_not_created
    env = settings.environment
    connector = Connector(env.auth, env.cloud, sessions=env.sessions)
    try:
        with connector.engine(tenant.url, must_exist=_must_exist(settings)) as engine:
            return action(engine)
    except TenantsError:
        raise
    except Exception as err:
        raise TenantUnreachable(f"tenant {tenant.name!r}: {what}: {describe_error(err, tenant.all_secrets)}") \
            from err
    finally:
        connector.dispose()


def _one_tenant(settings: Settings, tenant: str) -> Tenant:
    return discover(settings, Selection(tenants=(tenant,)))[0]


def tenant_history(settings: Settings, tenant: str, limit: int = 200) -> list[dict]:
    """The tenant's audit trail (tenants.engine.history), oldest first; [] before the tool ever changed it."""
    chosen = _one_tenant(settings, tenant)

    def read(engine):
        with engine.connect() as conn:
            return history.read_history(conn, settings.environment.history_table, limit)

    return _on_tenant(settings, chosen, read, "cannot read its history", if_not_created=[])


def sql(settings: Settings, revision_range: str, tenant: str | None = None, dialect: str | None = None) -> str:
    """The offline SQL for ``[FROM:]TO`` in the environment's dialect (or ``dialect``), for review.

    With ``--tenant`` and no FROM, FROM is that tenant's current revision: the SQL it would run now.
    Without either, FROM is base. A TO below FROM renders the downgrade.
    """
    env = settings.environment
    if dialect is not None and dialect not in DIALECT_URLS:
        raise UsageError(f"--dialect {dialect}: unknown; use one of {', '.join(DIALECT_URLS)}")
    if dialect is not None and tenant is not None:
        raise UsageError("--dialect renders for a dialect, --tenant for a tenant's own database: use one")
    revisions = load_revisions(settings)
    start_arg, _, to_arg = revision_range.rpartition(":")
    if tenant is not None:
        chosen = _one_tenant(settings, tenant)
        url = chosen.url
        if start_arg:
            start, target = revisions.resolve(start_arg), revisions.resolve(to_arg or "head")
        else:
            current = _known_current(revisions, chosen, settings)
            start = _single(current, tenant)
            # `-N` counts down from the tenant's revision, as `downgrade -t T -- -N` does: the SQL shown for a
            # tenant is the SQL its downgrade runs.
            target = _resolve_down(revisions, to_arg or "head", chosen.name, current)
    else:
        url = DIALECT_URLS[dialect] if dialect else env.tenant_url("tenant")
        start = revisions.resolve(start_arg) if start_arg else None
        target = revisions.resolve(to_arg or "head")
    if start is not None and target is not None and start == target:
        return ""
    downward = start is not None and (target is None or target in revisions.ancestors(start))
    return revisions.offline_sql(url, start, target, "downgrade" if downward else "upgrade")


# --- check (issue 14) ----------------------------------------------------------------------------------------

def check(settings: Settings, revisions: Sequence[str] = (), *, everything: bool = False,
          base: str | None = None, postgres: str | None = None) -> CheckReport:
    """``tenants check``: prove revisions idempotent, reversible and safe for a busy pool before they are merged
    (:mod:`tenants.engine.check`). ``revisions`` names them; else ``everything``; else the revision files added
    or changed since ``base`` (default ``origin/main``), every revision when git cannot tell. The stairway and
    the reruns run on scratch databases of SQLite, the environment's dialect, and the server of ``postgres``.

    Raises :class:`UsageError` for names together with ``everything``, :class:`RevisionError` for an unknown
    revision, :class:`ConfigError` for a ``postgres`` URL that does not parse."""
    if everything and revisions:
        raise UsageError("name revisions or use --all, not both")
    if base is not None and (everything or revisions):
        raise UsageError("--base chooses the changed revisions: it goes with neither --all nor revision names")
    env = settings.environment
    graph = load_revisions(settings)
    if postgres is not None:
        try:
            make_url(postgres)
        except ArgumentError as err:
            raise ConfigError(f"--postgres {mask_url(postgres)}: not a database URL ({err})") from None
    selected, how = checks.select(graph, revisions, everything, base or checks.DEFAULT_BASE)
    targets, left_out = checks.scratches(env, postgres)
    return checks.run_checks(graph, selected, targets, env_py=env.env_py, left_out=left_out,
                             own=own_tables(env.version_table, env.history_table),
                             notes=[f"checked: {how}" + ("" if selected else " (none)")])


# --- helpers -----------------------------------------------------------------------------------------------

_OWN_GATE = object()  # _run's default: a pressure gate of its own for this call, closed when it returns


def _fan_out(settings, revisions, operation: Operation, target, head, tenants, options: RunOptions, on_result,
             planned_from: tuple[str, ...] | None = None, on_start=None, skipped=(), gate=_OWN_GATE,
             adopt: str | None = None, expected: Expected | None = None):
    if gate is _OWN_GATE:
        gate = _pressure_gate(settings.environment, tenants) if options.strategy is None else None
        try:
            return _fan_out(settings, revisions, operation, target, head, tenants, options, on_result,
                            planned_from=planned_from, on_start=on_start, skipped=skipped, gate=gate, adopt=adopt,
                            expected=expected)
        finally:
            if gate is not None:
                gate.close()
    env = settings.environment
    _require_lock(settings)
    _check_timeout(options)
    concurrency = options.concurrency or env.concurrency
    run_id = options.run_id or uuid.uuid4().hex
    job = Job(
        operation=operation,
        target=target,
        alembic_ini=str(env.alembic),
        version_table=env.version_table,
        env_py=env.env_py,
        # Every session of the run carries its id: an operator sees who holds a tenant (pg_stat_activity,
        # sys.dm_exec_sessions), and a retry tells a stale session of its own from another run's.
        sessions=replace(env.sessions, application_name=f"tenants {run_id}"),
        retries=env.retries if options.retries is None else options.retries,
        retry_backoff=env.retry_backoff,
        retry_backoff_max=env.retry_backoff_max,
        lock_timeout=env.lock_timeout,
        must_exist=_must_exist(settings),
        planned_from=planned_from,
        auth=env.auth,
        cloud=env.cloud,
        run_id=run_id,
        actor=history.actor(),
        git_commit=history.git_commit(env.alembic.parent),
        tool_version=__version__,
        history_table=env.history_table,
        unmanaged=env.unmanaged,
        adopt=adopt,  # tenants adopt: the schema fingerprint to find again under the lock
        expected=job_schemas(expected) if expected is not None and operation == "upgrade" else None,
    )
    strategy = options.strategy or choose_strategy(concurrency, len(tenants), revisions, gate, options.tenant_timeout)
    started_wall, started = datetime.now(UTC), monotonic()

    def report(results=(), fan_out=None) -> RunReport:
        return RunReport(
            run_id=run_id,
            environment=env.name,
            operation=operation,
            target=target if target is not None else "base",
            head=head,
            concurrency=strategy.concurrency,
            started_at=started_wall.isoformat(timespec="seconds"),
            finished_at=datetime.now(UTC).isoformat(timespec="seconds") if fan_out else "",
            duration=monotonic() - started if fan_out else 0.0,
            results=tuple(results),
            tool_version=__version__,
            throttled=fan_out.throttled if fan_out else 0,
            concurrency_changes=fan_out.concurrency_changes if fan_out else (),
            pressure_wait=fan_out.pressure_wait if fan_out else 0.0,
            pressure_errors=fan_out.pressure_errors if fan_out else (),
            skipped_databases=tuple(skipped),
        )

    if on_start is not None:
        on_start(header_of(report().to_dict()))
    limit = 1 if options.max_failures is FailureLimit.DEFAULT else options.max_failures
    fan_out = strategy.run(list(tenants), job, FailurePolicy(limit), on_result or (lambda r: None))
    return report(fan_out.results, fan_out)


def _run(settings, revisions, operation: Operation, target, head, tenants, options: RunOptions, on_result,
         planned_from: tuple[str, ...] | None = None, on_start=None, skipped=(), gate=_OWN_GATE,
         adopt: str | None = None, expected: Expected | None = None):
    """Run ``tenants`` with ``gate``, the run's pressure gate (None: no probe) when the caller owns one.

    Signals are only noted meanwhile (tenants.engine.fanout.noting_signals): one that lands while the fan-out
    is set up (the job, the revisions' commit, the strategy) is acted on by the strategy, which then starts
    nothing; a downgrade so never stops between its pin and its tenant without a report."""
    with noting_signals():
        return _fan_out(settings, revisions, operation, target, head, tenants, options, on_result,
                        planned_from=planned_from, on_start=on_start, skipped=skipped, gate=gate, adopt=adopt,
                        expected=expected)


def _check_timeout(options: RunOptions) -> None:
    timeout = options.tenant_timeout
    if timeout is None:
        return
    if not timeout > 0:  # NaN too
        raise UsageError(f"--tenant-timeout {timeout}: give a number of seconds above 0")
    if options.strategy is not None:
        raise UsageError("a tenant timeout with an explicit strategy: give the strategy its own "
                         "(ProcessStrategy(tenant_timeout=...)); SerialStrategy cannot time a tenant out")


def _pressure_gate(env, tenants, on_warning: Callable[[str], None] | None = None) -> PressureGate | None:
    """With ``pressure_limit`` (Azure SQL), a gate reading the pool's load through the first tenant. The
    caller closes it (its connection) when the run ends."""
    if env.pressure_limit is None or not tenants:
        return None
    source = ElasticPoolPressure(tenants[0].url, Connector(env.auth, env.cloud))
    return PressureGate(source, env.pressure_limit, env.pressure_interval, on_warning=on_warning)


def _require_lock(settings: Settings) -> None:
    """Refuse to change tenants of a dialect we cannot lock: two runs could then apply a revision twice."""
    if not has_lock(settings.environment.dialect):
        raise UsageError(
            f"environment {settings.env_name!r}: no per-tenant lock for dialect "
            f"{settings.environment.dialect!r} yet, so it cannot be migrated safely; `tenants sql` works"
        )


def _must_exist(settings: Settings) -> bool:
    # A `server` source found the files, so a missing one has vanished: fail it rather than recreate it
    # empty. Static tenants (the demo fleet) are created on first use.
    return settings.environment.source == "server"


def _known_current(revisions: Revisions, tenant: Tenant, settings: Settings) -> tuple[str, ...]:
    current = _current(tenant, settings)
    if not revisions.is_known(current):
        raise RevisionError(
            f"tenant {tenant.name!r} is at {','.join(current)}, which is not in the revision graph; fix its "
            f"version table by hand first (e.g. `alembic -x tenant={tenant.name} stamp --purge REVISION`)"
        )
    return current


def _current(tenant: Tenant, settings: Settings) -> tuple[str, ...]:
    def read(engine):
        with engine.connect() as conn:
            try:
                return read_version(conn, settings.environment.version_table)
            except NoVersionTable:
                return ()

    return _on_tenant(settings, tenant, read, "cannot read its revision", if_not_created=())


def _single(current: tuple[str, ...], tenant: str) -> str | None:
    if len(current) > 1:
        raise RevisionError(f"tenant {tenant!r} has several heads ({', '.join(current)}); pass FROM:TO explicitly")
    return current[0] if current else None


def _resolve_down(revisions: Revisions, revision: str, tenant: str, current: tuple[str, ...]) -> str | None:
    """Absolute ids, ``base``, or ``-N`` (N revisions below the tenant's current one)."""
    if revision.startswith("-") and revision[1:].isdigit():
        top = _single(current, tenant)
        chain = [s.revision for s in revisions.script.iterate_revisions(top, "base")] if top else []
        steps = int(revision[1:])
        if steps > len(chain):
            raise RevisionError(f"tenant {tenant!r} has only {len(chain)} revisions to undo, not {steps}")
        return chain[steps] if steps < len(chain) else None
    return revisions.resolve(revision)
