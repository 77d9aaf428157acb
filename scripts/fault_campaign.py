#!/usr/bin/env python3
"""Fault campaign for `tenants upgrade` (issue 11): inject faults into real runs of the CLI and check, after
every scenario, that no tenant was damaged and no report lied.

Throwaway tenants: PostgreSQL databases named fc_<random>_t000.. (dropped at the end) and SQLite files in a
temporary directory. The revisions are the repo's demo revisions (alembic/versions, with the repo's env.py),
copied into a throwaway Alembic project where each upgrade() announces itself (a file in $FC_GATE, so faults
land mid-revision) and sleeps $FC_SLEEP seconds in total, half before and half after its DDL (so a fault often
lands with the DDL done but not committed). Each run is `tenants upgrade` as a subprocess, with a tenants.toml
written into the temporary directory.

Scenarios (each repeated --rounds times, on a fleet reset to empty before each round):

  kill-9              SIGKILL of the CLI mid-run; no process of the run alive 10 s later; rerun to completion
  sigterm             SIGTERM mid-run: exit 143, every tenant has a line, JUnit written, nothing left alive
  sigint              Ctrl-C (SIGINT to the process group; twice in odd rounds): exit 130, same checks
  terminate-backends  pg_terminate_backend of the run's sessions (application_name 'tenants %') mid-revision,
                      a few times: the run retries and finishes (exit 0, every tenant at head)
  server-restart      every backend of the fleet's databases terminated again and again for a few seconds
  concurrent-runs     two runs on the same fleet at once: both exit 0, every tenant at head
  table-lock          a customer holds LOCK TABLE users IN ACCESS EXCLUSIVE MODE on one tenant, and a long read
                      of invoices on another (which the next revision alters), for longer than ddl_lock_timeout:
                      the run does not hang, the tenants are retried; a customer query on invoices never waits
                      longer than ddl_lock_timeout (+1 s) behind the migration
  from-report         --from-report with a report of another target and of another environment: exit 2, one
                      line on stderr, nothing touched

Invariants, on every tenant after every scenario: 0 lost (the version table holds a revision of the graph, or
is absent); 0 half-applied (the schema, read with tenants.db.schema_snapshot, is exactly that of a database
migrated cleanly by plain Alembic to the recorded revision); 0 applied twice (no two `applied` rows of one
operation and to_revision in tenants_history without a downgrade in between; no two version rows); every
report line honest (`upgraded`/`up-to-date` read the target; `to` is where the tenant is; `applied` lists
exactly the revisions whose history rows carry the run's run_id). Processes: every process of a run (found by
its process group and by a token in its environment) must be gone within 10 s of the CLI's end. Hangs: a run
that exceeds --deadline is killed and counted.

    .venv/bin/python scripts/fault_campaign.py                      # every scenario, 2 rounds, ~5 minutes
    .venv/bin/python scripts/fault_campaign.py --scenario terminate-backends --rounds 1 --pg-tenants 4 \\
        --backend pg

Exit 1 if any invariant or expectation broke (each one is listed under the table), 0 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
import sqlalchemy as sa
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from alembic import command
from tenants.db import schema_snapshot
from tenants.engine.unit import own_tables
from tenants.errors import ReportError
from tenants.runlog import read_report
from tenants.snapshot import Snapshot

REPO = Path(__file__).resolve().parent.parent
OWN_TABLES = own_tables("alembic_version", "tenants_history")
DDL_LOCK_TIMEOUT = 2.0
LEFTOVER_GRACE = 10.0  # seconds the processes of a run may outlive its CLI

# Injected into each demo revision: announce the revision (a file in $FC_GATE) and take half of $FC_SLEEP.
PAUSE = '''

import os as _fc_os  # noqa: E402  (fault campaign)
import time as _fc_time  # noqa: E402


def _fc_pause(revision: str, start: bool) -> None:
    gate = _fc_os.environ.get("FC_GATE")
    if start and gate:
        open(_fc_os.path.join(gate, f"{revision}.{_fc_os.getpid()}.{_fc_time.monotonic_ns()}"), "w").close()
    _fc_time.sleep(float(_fc_os.environ.get("FC_SLEEP", "0")) / 2)
'''


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2, help="rounds of each scenario (2)")
    p.add_argument("--scenario", action="append", choices=sorted(SCENARIOS), help="only this one (repeatable)")
    p.add_argument("--backend", action="append", choices=("pg", "sqlite"), help="only this backend (repeatable)")
    p.add_argument("--pg-tenants", type=int, default=8, help="PostgreSQL tenant databases (8)")
    p.add_argument("--sqlite-tenants", type=int, default=6, help="SQLite tenant files (6)")
    p.add_argument("--concurrency", type=int, default=4, help="the fleet's concurrency (4)")
    p.add_argument("--sleep", type=float, default=0.4, help="seconds each revision takes ($FC_SLEEP, 0.4)")
    p.add_argument("--deadline", type=float, default=120.0, help="seconds a run may take before it is a hang")
    p.add_argument("--seed", type=int, default=11, help="random seed: where the faults land (11)")
    p.add_argument("--pg-url", default=os.environ.get(
        "TENANTS_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"),
        help="SQLAlchemy URL of the server's maintenance database ($TENANTS_TEST_PG_URL)")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (and print it)")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.pg_tenants < 2 or args.sqlite_tenants < 1:
        p.error("--rounds >= 1, --pg-tenants >= 2, --sqlite-tenants >= 1")
    return args


# --- the throwaway Alembic project ---------------------------------------------------------------------------

def slow_project(root: Path) -> Path:
    """The repo's alembic/ (env.py, demo revisions) with the pause hook in every upgrade(); its alembic.ini."""
    shutil.copytree(REPO / "alembic", root / "alembic", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "alembic.ini", root / "alembic.ini")
    for path in (root / "alembic" / "versions").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        rev = re.search(r'^revision: str = "([^"]+)"', text, re.M).group(1)
        text = text.replace("\n\ndef upgrade() -> None:\n",
                            f"{PAUSE}\n\ndef upgrade() -> None:\n    _fc_pause({rev!r}, True)\n", 1)
        text = text.replace("\n\n\ndef downgrade", f"\n    _fc_pause({rev!r}, False)\n\n\ndef downgrade", 1)
        assert text.count("_fc_pause(") == 3, path
        path.write_text(text, encoding="utf-8")
    return root / "alembic.ini"


# --- processes -----------------------------------------------------------------------------------------------

def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def processes_of(token: str, group: int) -> set[int]:
    """Live processes of one run: in its process group, or carrying its token in their environment (which
    every process it starts inherits: the forkserver, the resource tracker, the workers)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is None or stat[0] == "Z":  # a zombie is dead, only not reaped
            continue
        try:
            mine = stat[2] == str(group) or f"FC_RUN={token}".encode() in (entry / "environ").read_bytes()
        except OSError:
            continue
        if mine:
            found.add(int(entry.name))
    return found


# --- the server and the fleets -------------------------------------------------------------------------------

class Server:
    def __init__(self, sa_url: str) -> None:
        self.url = make_url(sa_url)

    def dsn(self, db: str | None = None) -> str:
        return self.url.set(drivername="postgresql", database=db or self.url.database).render_as_string(
            hide_password=False)

    def sa_url(self, db: str) -> str:
        return self.url.set(database=db).render_as_string(hide_password=False)

    def execute(self, sql: str, params: tuple = (), db: str | None = None) -> list[tuple]:
        with psycopg.connect(self.dsn(db), autocommit=True, connect_timeout=10) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def terminate(self, prefix: str, tagged: bool) -> int:
        """End the backends of the fleet's databases (only the tool's sessions when ``tagged``): how many."""
        sql = ("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
               "WHERE left(datname, length(%s)) = %s AND pid <> pg_backend_pid()"
               + (" AND application_name LIKE 'tenants %%'" if tagged else ""))
        return self.execute(sql, (prefix, prefix))[0][0]


@dataclass
class Fleet:
    kind: str  # "pg" | "sqlite"
    env: str  # its environment in the campaign's tenants.toml
    names: list[str]
    url_of: Callable[[str], str]
    reset_one: Callable[[str], None]
    prefix: str = ""  # pg: the databases' name prefix
    references: dict[str, Snapshot] = field(default_factory=dict)  # revision -> the clean schema

    def reset(self) -> None:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(self.reset_one, self.names))


@dataclass
class TenantState:
    versions: tuple[str, ...] = ()
    history: list[tuple] = field(default_factory=list)  # (id, run_id, operation, from, to, outcome)
    snapshot: Snapshot | None = None
    error: str | None = None

    @property
    def revision(self) -> str | None:
        return None if len(self.versions) > 1 else (self.versions[0] if self.versions else "base")

    def key(self) -> tuple:
        """What `nothing touched` compares."""
        return self.versions, len(self.history), self.snapshot.fingerprint if self.snapshot else None


def read_state(url: str) -> TenantState:
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            names = set(sa.inspect(conn).get_table_names())
            state = TenantState()
            if "alembic_version" in names:
                state.versions = tuple(r[0] for r in conn.execute(sa.text("SELECT version_num FROM alembic_version")))
            if "tenants_history" in names:
                state.history = [tuple(r) for r in conn.execute(sa.text(
                    "SELECT id, run_id, operation, from_revision, to_revision, outcome FROM tenants_history "
                    "ORDER BY id"))]
            conn.rollback()
            state.snapshot = schema_snapshot(conn, OWN_TABLES)
            return state
    except sa.exc.SQLAlchemyError as err:
        return TenantState(error=f"{type(err).__name__}: {str(err).splitlines()[0]}")
    finally:
        engine.dispose()


# --- one run of the CLI --------------------------------------------------------------------------------------

@dataclass
class Run:
    proc: subprocess.Popen
    token: str
    report: Path
    junit: Path
    out: Path
    err: Path
    started: float
    hung: bool = False
    alive: int = 0

    @property
    def rc(self) -> int | None:
        return self.proc.returncode

    def stderr(self) -> str:
        return self.err.read_text(errors="replace") if self.err.exists() else ""


@dataclass
class Tally:
    scenario: str
    tenants: int
    rounds: int = 0
    faults: int = 0
    lost: int = 0
    half: int = 0
    twice: int = 0
    dishonest: int = 0
    hangs: int = 0
    alive: int = 0
    other: int = 0  # broken expectations: exit codes, incomplete outputs, customer waits, resumes that ran
    failures: list[str] = field(default_factory=list)  # every problem, in words
    notes: list[str] = field(default_factory=list)  # what happened, for the reader

    def fail(self, kind: str, n: int, what: str) -> None:
        """``n`` problems of ``kind`` (a counted column: lost, half, twice, dishonest, hangs, alive, other)."""
        setattr(self, kind, getattr(self, kind) + n)
        self.failures.append(f"round {self.rounds}: [{kind}] {what}")

    def note(self, what: str) -> None:
        self.notes.append(f"round {self.rounds}: {what}")

    @property
    def broken(self) -> int:
        return self.lost + self.half + self.twice + self.dishonest + self.hangs + self.alive + self.other


class Campaign:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args, self.tmp = args, tmp
        self.rng = random.Random(args.seed)
        self.server = Server(args.pg_url)
        self.ini = slow_project(tmp / "project")
        script = ScriptDirectory.from_config(Config(str(self.ini)))
        self.revisions = [r.revision for r in reversed(list(script.walk_revisions()))]
        self.head = self.revisions[-1]
        self.graph = set(self.revisions)
        self.created: list[str] = []
        self.fleets: dict[str, Fleet] = {}
        self.other: Fleet | None = None
        self.toml = tmp / "tenants.toml"
        self.runs = 0

    # --- setup ---------------------------------------------------------------------------------------------

    def setup(self, backends: set[str]) -> None:
        if "pg" in backends:
            self.fleets["pg"] = self.pg_fleet()
        if "sqlite" in backends:
            self.fleets["sqlite"] = self.sqlite_fleet("sqlite", "sqlite", "s", self.args.sqlite_tenants)
        self.other = self.sqlite_fleet("other", "other", "elsewhere", 1)
        self.write_config()

    def pg_fleet(self) -> Fleet:
        prefix = f"fc_{uuid.uuid4().hex[:8]}_"
        names = [f"{prefix}t{i:03d}" for i in range(self.args.pg_tenants)]
        ref = f"{prefix}ref"
        for name in [*names, ref]:
            self.server.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
            self.created.append(name)

        def reset(name: str) -> None:
            self.server.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public", db=name)

        fleet = Fleet("pg", "pg", names, self.server.sa_url, reset, prefix)
        fleet.references = self.references(self.server.sa_url(ref))
        return fleet

    def sqlite_fleet(self, env: str, folder: str, stem: str, n: int) -> Fleet:
        root = self.tmp / folder
        root.mkdir()
        names = [f"{stem}{i:02d}" for i in range(n)] if n > 1 else [stem]

        def url(name: str) -> str:
            return f"sqlite:///{root / name}.db"

        def reset(name: str) -> None:
            for path in root.glob(f"{name}.db*"):
                path.unlink()

        fleet = Fleet("sqlite", env, names, url, reset)
        fleet.references = self.references(f"sqlite:///{root / 'reference'}.db")
        return fleet

    def references(self, url: str) -> dict[str, Snapshot]:
        """The schema of a database migrated by plain Alembic (in this process, no pause) to each revision."""
        config = Config()
        config.set_main_option("script_location", str(self.ini.parent / "alembic"))
        config.set_main_option("sqlalchemy.url", url)
        refs = {"base": read_state(url).snapshot}
        for rev in self.revisions:
            command.upgrade(config, rev)
            state = read_state(url)
            assert state.error is None and state.versions == (rev,), state
            refs[rev] = state.snapshot
        return refs

    def write_config(self) -> None:
        common = (f"alembic = {json.dumps(str(self.ini))}\nconcurrency = {self.args.concurrency}\n"
                  "retries = 5\nretry_backoff = 0.2\nretry_backoff_max = 2\nlock_timeout = 20\n")
        text = ""
        if "pg" in self.fleets:
            url = self.server.url.set(database="TENANT").render_as_string(hide_password=False)
            url = url.replace("/TENANT", "/{tenant}")
            text += (f"[environments.pg]\nurl = {json.dumps(url)}\nsource = \"server\"\n"
                     f"match = {json.dumps(self.fleets['pg'].prefix + 't*')}\n"
                     f"maintenance_database = {json.dumps(self.server.url.database or 'postgres')}\n"
                     f"ddl_lock_timeout = {DDL_LOCK_TIMEOUT}\n{common}\n")
        for fleet in [self.fleets.get("sqlite"), self.other]:
            if fleet is not None:
                template = fleet.url_of("{tenant}")
                text += (f"[environments.{fleet.env}]\nurl = {json.dumps(template)}\n"
                         f"tenants = {json.dumps(fleet.names)}\n{common}\n")
        self.toml.write_text(text, encoding="utf-8")

    def cleanup(self) -> None:
        for name in self.created:
            with contextlib.suppress(psycopg.Error):
                self.server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    # --- running the CLI -------------------------------------------------------------------------------------

    def start(self, fleet: Fleet, *args: str, tag: str, sleep: float | None = None, gate: Path | None = None,
              env: dict[str, str] | None = None) -> Run:
        self.runs += 1
        token = uuid.uuid4().hex
        base = self.tmp / "runs" / f"{self.runs:04d}-{fleet.env}-{tag}"
        base.parent.mkdir(exist_ok=True)
        report, junit = base.with_suffix(".json"), base.with_suffix(".xml")
        out, err = base.with_suffix(".out"), base.with_suffix(".err")
        cmd = [sys.executable, "-m", "tenants", "--config", str(self.toml), "--env", fleet.env, "upgrade",
               "--report", str(report), "--junit", str(junit), *args]
        penv = {**os.environ, "FC_RUN": token, "FC_SLEEP": str(self.args.sleep if sleep is None else sleep),
                **(env or {})}
        penv.pop("GITHUB_ACTIONS", None)
        if gate is not None:
            gate.mkdir(parents=True, exist_ok=True)
            penv["FC_GATE"] = str(gate)
        with out.open("w") as stdout, err.open("w") as stderr:
            proc = subprocess.Popen(cmd, cwd=self.tmp, stdout=stdout, stderr=stderr, env=penv,
                                    start_new_session=True, stdin=subprocess.DEVNULL,
                                    # a campaign started in the background has SIGINT ignored: a terminal's
                                    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        return Run(proc, token, report, junit, out, err, time.monotonic())

    def finish(self, run: Run, tally: Tally, expect: int | None = None, what: str = "run") -> Run:
        """Wait for the run (a hang past the deadline is killed and counted), then for its processes."""
        try:
            run.proc.wait(timeout=max(0.0, run.started + self.args.deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            run.hung = True
            tally.fail("hangs", 1, f"{what} still running after {self.args.deadline:.0f} s (killed); see {run.err}")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.proc.pid, signal.SIGKILL)
            run.proc.wait()
        left = self.leftovers(run)
        if left:
            run.alive = len(left)
            tally.fail("alive", len(left), f"{what}: {len(left)} process(es) alive {LEFTOVER_GRACE:.0f} s after "
                       "the CLI ended: " + "; ".join(describe_process(pid) for pid in sorted(left)))
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if expect is not None and not run.hung and run.rc != expect:
            tally.fail("other", 1, f"{what}: exit {run.rc}, {expect} expected; stderr: {tail(run.stderr())}")
        if "Traceback" in run.stderr():
            tally.fail("other", 1, f"{what}: a traceback on stderr: {tail(run.stderr(), 6)}")
        return run

    def leftovers(self, run: Run) -> set[int]:
        deadline = time.monotonic() + LEFTOVER_GRACE
        while (left := processes_of(run.token, run.proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        return left

    def wait_gate(self, run: Run, gate: Path, count: int) -> bool:
        """Until ``count`` revisions have started (True), or the run ended first (False)."""
        while run.proc.poll() is None and time.monotonic() < run.started + self.args.deadline:
            if sum(1 for _ in gate.iterdir()) >= count:
                return True
            time.sleep(0.02)
        return False

    def gate(self, fleet: Fleet, name: str) -> Path:
        return self.tmp / "gates" / f"{self.runs + 1:04d}-{fleet.env}-{name}"

    # --- the invariants --------------------------------------------------------------------------------------

    def check(self, fleet: Fleet, tally: Tally, runs: list[Run], single: bool = True) -> dict[str, TenantState]:
        with ThreadPoolExecutor(8) as pool:
            states = dict(zip(fleet.names, pool.map(lambda n: read_state(fleet.url_of(n)), fleet.names),
                              strict=True))
        for name, state in states.items():
            self.check_tenant(fleet, tally, name, state)
        for run in runs:
            self.check_report(tally, run, states, single)
        return states

    def check_tenant(self, fleet: Fleet, tally: Tally, name: str, state: TenantState) -> None:
        if state.error is not None:
            tally.fail("lost", 1, f"{name}: unreadable: {state.error}")
            return
        if set(state.versions) - self.graph:
            tally.fail("lost", 1, f"{name}: version table holds {state.versions}, not revisions of the graph")
            return
        if len(state.versions) > 1:
            tally.fail("twice", 1, f"{name}: {len(state.versions)} rows in alembic_version: {state.versions}")
            return
        expected = fleet.references[state.revision]
        if state.snapshot != expected:
            tally.fail("half", 1, f"{name}: at {state.revision} but its schema differs: "
                       + "; ".join(expected.diff(state.snapshot)[:4]))
        for rev in applied_twice(state.history):
            tally.fail("twice", 1, f"{name}: {rev} has two `applied` history rows without a downgrade in between")

    def check_report(self, tally: Tally, run: Run, states: dict[str, TenantState], single: bool) -> None:
        if not run.report.exists():
            return
        try:
            report = read_report(run.report)
        except ReportError as err:
            tally.fail("dishonest", 1, f"report unreadable: {err}")
            return
        run_id, target = report.fields.get("run_id"), report.fields.get("target")
        for line in report.tenants:
            state = states.get(line["tenant"])
            if state is None or state.error is not None:
                continue
            mine = [row[4] for row in state.history if row[1] == run_id and row[5] == "applied"]
            for problem in dishonesty(line, state, mine, target, single):
                tally.fail("dishonest", 1,
                           f"{line['tenant']}: report {run.report.name} says {compact(line)}; {problem}")

    def all_at_head(self, fleet: Fleet, tally: Tally, states: dict[str, TenantState], what: str) -> None:
        behind = {n: s.revision for n, s in states.items() if s.revision != self.head}
        if behind:
            tally.fail("other", 1, f"{what}: not every tenant at head: {behind}")

    def outputs_complete(self, fleet: Fleet, tally: Tally, run: Run, what: str) -> None:
        """The run was interrupted: every tenant has a line in the report, and a test case in the JUnit file."""
        try:
            report = read_report(run.report)
            lines = {t["tenant"] for t in report.tenants}
            if not report.complete or lines != set(fleet.names):
                tally.fail("other", 1, f"{what}: report incomplete ({len(lines)} of {len(fleet.names)} tenants, "
                           f"complete={report.complete})")
        except ReportError as err:
            tally.fail("other", 1, f"{what}: no usable report: {err}")
        try:
            cases = ET.parse(run.junit).getroot().iter("testcase")
            if sum(1 for _ in cases) != len(fleet.names):
                tally.fail("other", 1, f"{what}: JUnit file does not have one test case per tenant")
        except (OSError, ET.ParseError) as err:
            tally.fail("other", 1, f"{what}: no usable JUnit file: {err}")

    def rerun(self, fleet: Fleet, tally: Tally) -> None:
        """Run again to completion (no pause): exit 0, every tenant at head, the invariants."""
        run = self.finish(self.start(fleet, tag="rerun", sleep=0), tally, expect=0, what="rerun")
        self.all_at_head(fleet, tally, self.check(fleet, tally, [run]), "rerun")

    # --- the scenarios ---------------------------------------------------------------------------------------

    def interrupted(self, fleet: Fleet, tally: Tally, name: str, send: Callable[[Run], int], code: int,
                    env: dict[str, str] | None = None) -> None:
        """One signal scenario: start, ``send`` the fault mid-revision, expect ``code``, check, rerun."""
        gate = self.gate(fleet, name)
        run = self.start(fleet, tag=name, gate=gate, env=env)
        injected = 0
        if self.wait_gate(run, gate, self.rng.randint(1, 2 * len(fleet.names))):
            time.sleep(self.rng.uniform(0, self.args.sleep / 2))
            running = len(processes_of(run.token, run.proc.pid))  # evidence that the leftover check sees them
            injected = send(run)
            tally.note(f"{name}: {running} processes of the run when the fault landed")
            tally.faults += injected
        else:
            tally.note("the run ended before the fault")
        self.finish(run, tally, expect=code if injected else 0, what=name)
        tally.note(f"{name}: exit {run.rc}, {sum(1 for _ in gate.iterdir())} revisions started")
        if injected and code != -9:
            self.outputs_complete(fleet, tally, run, name)
        self.check(fleet, tally, [run])
        self.rerun(fleet, tally)

    def kill_9(self, fleet: Fleet, tally: Tally, rnd: int) -> None:
        def send(run: Run) -> int:
            os.kill(run.proc.pid, signal.SIGKILL)  # the parent alone
            return 1
        self.interrupted(fleet, tally, "kill-9", send, -9)

    def sigterm(self, fleet: Fleet, tally: Tally, rnd: int) -> None:
        def send(run: Run) -> int:
            os.kill(run.proc.pid, signal.SIGTERM)  # the parent alone, as `kill` and a CI runner do
            return 1
        # Odd rounds: a short drain grace, so the tenants in flight are stopped (and read back) too.
        self.interrupted(fleet, tally, "sigterm", send, 143, env={"TENANTS_DRAIN_GRACE": "0.3"} if rnd % 2 else None)

    def sigint(self, fleet: Fleet, tally: Tally, rnd: int) -> None:
        def send(run: Run) -> int:
            os.killpg(run.proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole process group
            if not rnd % 2:
                return 1
            time.sleep(0.3)  # odd rounds: a second Ctrl-C stops the tenants in flight
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.proc.pid, signal.SIGINT)
            return 2
        self.interrupted(fleet, tally, "sigint", send, 130)

    def terminate_backends(self, fleet: Fleet, tally: Tally, rnd: int) -> None:
        gate = self.gate(fleet, "terminate")
        run = self.start(fleet, tag="terminate", gate=gate)
        ended = 0
        if self.wait_gate(run, gate, self.rng.randint(1, len(fleet.names))):
            for _ in range(3):
                ended += self.server.terminate(fleet.prefix, tagged=True)
                time.sleep(self.rng.uniform(0.3, 0.9))
                if run.proc.poll() is not None:
                    break
        tally.faults += ended
        if not ended:
            tally.fail("other", 1, "no session with application_name 'tenants %' to terminate")
        self.finish(run, tally, expect=0, what="terminate-backends")
        tally.note(f"{ended} backends terminated; exit {run.rc}; attempts: {attempts(run)}")
        self.all_at_head(fleet, tally, self.check(fleet, tally, [run]), "terminate-backends")

    def server_restart(self, fleet: Fleet, tally: Tally, rnd: int) -> None:
        gate = self.gate(fleet, "restart")
        run = self.start(fleet, tag="restart", gate=gate)
        ended = 0
        if self.wait_gate(run, gate, self.rng.randint(1, len(fleet.names))):
            until = time.monotonic() + self.rng.uniform(2.0, 4.0)
            while time.monotonic() < until:
                ended += self.server.terminate(fleet.prefix, tagged=False)
                time.sleep(0.2)
        tally.faults += ended
        self.finish(run, tally, what="server-restart")
        tally.note(f"{ended} backends terminated over the 'restart'; exit {run.rc}; attempts: {attempts(run)}")
        self.check(fleet, tally, [run])
        self.rerun(fleet, tally)

    def concurrent_runs(self, fleet: Fleet, tally: Tally, rnd: int) -> None:
        first = self.start(fleet, tag="concurrent-a")
        second = self.start(fleet, tag="concurrent-b")
        tally.faults += 1
        self.finish(first, tally, expect=0, what="first run")
        self.finish(second, tally, expect=0, what="second run")
        states = self.check(fleet, tally, [first, second], single=False)
        self.all_at_head(fleet, tally, states, "concurrent runs")
        tally.note(f"first: {statuses(first)}; second: {statuses(second)}")

    def table_lock(self, fleet: Fleet, tally: Tally, rnd: int) -> None:
        held, read = fleet.names[0], fleet.names[1]
        self.finish(self.start(fleet, "0001_users", tag="to-0001", sleep=0), tally, expect=0, what="set-up")
        self.finish(self.start(fleet, "0002_invoices", "--tenant", read, tag="to-0002", sleep=0), tally, expect=0,
                    what="set-up")
        hold = self.rng.uniform(2.5, 4.0) * DDL_LOCK_TIMEOUT
        with (psycopg.connect(self.server.dsn(held)) as locker, psycopg.connect(self.server.dsn(read)) as reader,
              Prober(self.server.dsn(read), "SELECT count(*) FROM invoices") as prober):
            locker.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")  # opens the customer's transaction
            reader.execute("SELECT count(*) FROM invoices")  # a long read: ACCESS SHARE on invoices until rollback
            tally.faults += 2
            run = self.start(fleet, tag="table-lock", sleep=0)
            time.sleep(hold)
            locker.rollback()
            reader.rollback()
            self.finish(run, tally, what="table-lock")
        lines = {t["tenant"]: t for t in _lines(run)}
        for name in (held, read):
            line = lines.get(name, {})
            if line.get("status") not in ("upgraded", "failed") or line.get("attempts", 0) < 2:
                tally.fail("other", 1, f"{name} (lock held {hold:.1f} s): {compact(line)}: "
                           "retried, then upgraded or failed, expected")
        if prober.worst > DDL_LOCK_TIMEOUT + 1.0:
            tally.fail("other", 1, f"a customer query waited {prober.worst:.2f} s behind the migration "
                       f"(ddl_lock_timeout {DDL_LOCK_TIMEOUT} s)")
        tally.note(f"lock held {hold:.1f} s; exit {run.rc}; {held}: {compact(lines.get(held, {}))}; "
                   f"{read}: {compact(lines.get(read, {}))}; worst customer wait {prober.worst:.2f} s "
                   f"over {prober.count} queries")
        self.check(fleet, tally, [run])
        if run.rc != 0:
            self.rerun(fleet, tally)

    def from_report(self, fleet: Fleet, tally: Tally, rnd: int) -> None:
        target = self.finish(self.start(fleet, "0002_invoices", tag="to-0002", sleep=0), tally, expect=0,
                             what="set-up")
        self.other.reset()
        other = self.finish(self.start(self.other, tag="other-env", sleep=0), tally, expect=0, what="set-up")
        before = {n: s.key() for n, s in self.check(fleet, tally, [target]).items()}
        for why, source in (("another target", target), ("another environment", other)):
            run = self.finish(self.start(fleet, "--from-report", str(source.report), tag="resume", sleep=0), tally,
                              expect=2, what=f"--from-report with a report of {why}")
            tally.faults += 1
            lines = [line for line in run.stderr().splitlines() if line.strip()]
            if len(lines) != 1:
                tally.fail("other", 1, f"--from-report ({why}): {len(lines)} lines on stderr, one expected: "
                           f"{tail(run.stderr())}")
            tally.note(f"{why}: exit {run.rc}: {tail(run.stderr(), 1)}")
        after = {n: s.key() for n, s in self.check(fleet, tally, []).items()}
        touched = [n for n in fleet.names if before[n] != after[n]]
        if touched:
            tally.fail("other", 1, f"--from-report refused, yet tenants were touched: {touched}")

    # --- the campaign ----------------------------------------------------------------------------------------

    def run(self, plan: list[tuple[str, str]]) -> list[Tally]:
        tallies = []
        for scenario, backend in plan:
            fleet = self.fleets[backend]
            tally = Tally(f"{scenario} ({backend})", len(fleet.names))
            method = getattr(self, scenario.replace("-", "_"))
            started = time.monotonic()
            for rnd in range(self.args.rounds):
                tally.rounds = rnd + 1
                fleet.reset()
                method(fleet, tally, rnd)
            print(f"  {tally.scenario}: {time.monotonic() - started:.0f} s, "
                  f"{'ok' if not tally.broken else f'{tally.broken} problem(s)'}", flush=True)
            tallies.append(tally)
        return tallies


class Prober(threading.Thread):
    """A customer: runs ``sql`` again and again on its own connection (no timeout of its own), timing each."""

    def __init__(self, dsn: str, sql: str) -> None:
        super().__init__(daemon=True)
        self.dsn, self.sql = dsn, sql
        self.stop = threading.Event()
        self.worst, self.count = 0.0, 0

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self.stop.is_set():
                started = time.monotonic()
                conn.execute(self.sql)
                self.worst = max(self.worst, time.monotonic() - started)
                self.count += 1
                time.sleep(0.1)

    def __enter__(self) -> Prober:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.join(timeout=30)


# --- pure helpers --------------------------------------------------------------------------------------------

def applied_twice(history: list[tuple]) -> list[str]:
    """Revisions with two `applied` rows (same operation and to_revision) and no downgrade in between."""
    seen: set[tuple[str, str]] = set()
    twice = []
    for _id, _run, operation, source, dest, outcome in history:
        if outcome != "applied":
            continue
        if operation == "downgrade":
            seen.discard(("upgrade", source))
        if (operation, dest) in seen:
            twice.append(dest)
        seen.add((operation, dest))
    return twice


def dishonesty(line: dict, state: TenantState, mine: list[str], target: str | None, single: bool) -> list[str]:
    """What one report line claims that the tenant's database contradicts (``mine``: the to_revision of each
    `applied` history row carrying the run's run_id)."""
    problems = []
    status, current = line.get("status"), state.revision
    if status in ("upgraded", "up-to-date") and current != target:
        problems.append(f"the tenant is at {current}, not the target {target}")
    if single and line.get("to") is not None and line["to"] != current:
        problems.append(f"the tenant is at {current}")
    applied = list(line.get("applied") or ())
    if set(applied) - set(mine):
        problems.append(f"no history row of this run for {sorted(set(applied) - set(mine))}")
    if set(mine) - set(applied):
        problems.append(f"this run's history rows also record {sorted(set(mine) - set(applied))}")
    if status == "upgraded" and not applied:
        problems.append("`upgraded` with nothing applied")
    if status == "up-to-date" and mine:
        problems.append("`up-to-date` although this run applied revisions")
    return problems


def compact(line: dict) -> str:
    if not line:
        return "(no line)"
    error = f", error {line['error'][:120]!r}" if line.get("error") else ""
    return (f"{line.get('status')} (to {line.get('to')}, applied {line.get('applied')}, "
            f"attempts {line.get('attempts')}{error})")


def _lines(run: Run) -> list[dict]:
    try:
        return read_report(run.report).tenants
    except (ReportError, FileNotFoundError):
        return []


def attempts(run: Run) -> str:
    counts = sorted(t.get("attempts", 0) for t in _lines(run))
    return ",".join(map(str, counts)) or "-"


def statuses(run: Run) -> str:
    found: dict[str, int] = {}
    for t in _lines(run):
        found[t["status"]] = found.get(t["status"], 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(found.items())) or "no report"


def tail(text: str, n: int = 3) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-n:]) or "(empty)"


def describe_process(pid: int) -> str:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmd = "?"
    stat = _stat(pid) or ["?", "?"]
    return f"pid {pid} (ppid {stat[1]}): {cmd[:100]}"


# --- the plan and the table ----------------------------------------------------------------------------------

SCENARIOS: dict[str, tuple[str, ...]] = {  # name -> the backends it runs on
    "kill-9": ("pg", "sqlite"),
    "sigterm": ("pg", "sqlite"),
    "sigint": ("pg", "sqlite"),
    "terminate-backends": ("pg",),
    "server-restart": ("pg",),
    "concurrent-runs": ("pg", "sqlite"),
    "table-lock": ("pg",),
    "from-report": ("pg", "sqlite"),
}

COLUMNS = ("scenario", "rounds", "tenants", "faults", "lost", "half-applied", "twice", "dishonest", "hangs",
           "alive", "other")


def plan_of(args: argparse.Namespace) -> list[tuple[str, str]]:
    backends = set(args.backend or ("pg", "sqlite"))
    return [(name, backend) for name, on in SCENARIOS.items() if name in (args.scenario or SCENARIOS)
            for backend in on if backend in backends]


def table(tallies: list[Tally]) -> str:
    rows = [COLUMNS] + [(t.scenario, t.rounds, t.tenants, t.faults, t.lost, t.half, t.twice, t.dishonest,
                         t.hangs, t.alive, t.other) for t in tallies]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(COLUMNS))]
    text = [" | ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w) for i, (v, w) in enumerate(zip(row, widths,
                                                                                                     strict=True)))
            for row in rows]
    text.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(text)


def report(tallies: list[Tally]) -> None:
    print()
    print(table(tallies))
    for tally in tallies:
        if tally.failures:
            print(f"\n{tally.scenario}: what broke")
            print("\n".join(f"  - {line}" for line in tally.failures))
    print("\nWhat happened (notes):")
    for tally in tallies:
        print("\n".join(f"  {tally.scenario}: {line}" for line in tally.notes))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = plan_of(args)
    if not plan:
        print("fault_campaign: nothing to run (--scenario and --backend select no pair)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="fault_campaign_"))
    campaign = Campaign(args, tmp)
    started = time.monotonic()
    try:
        print(f"fault campaign: seed {args.seed}, {args.rounds} round(s), revision sleep {args.sleep} s, in {tmp}",
              flush=True)
        campaign.setup({backend for _, backend in plan})
        tallies = campaign.run(plan)
    finally:
        campaign.cleanup()
    report(tallies)
    broken = sum(t.broken for t in tallies)
    if args.keep or broken:
        print(f"\nruns (commands' output, reports, JUnit) kept in {tmp}/runs")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{time.monotonic() - started:.0f} s; " + ("every invariant held" if not broken
                                                          else f"{broken} problem(s): exit 1"))
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
