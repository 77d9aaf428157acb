#!/usr/bin/env python3
"""Benchmark `tenants upgrade` against the obvious alternatives, on throwaway PostgreSQL tenant databases.

Creates N empty databases named PREFIX0000.., then times, on the same tenants and the same revisions:
`tenants upgrade` (empty -> head); `tenants upgrade` again (all at head: the no-op pass); a shell loop of
`alembic -x tenant=T upgrade head`; a sequential in-process loop of `alembic.command.upgrade` (empty -> head,
then its no-op); and `xargs -P C psql -f` running the same offline SQL (the raw C-client near-limit).

Every tenant is reset to an empty schema before each method that starts from empty, and every method is
checked afterwards: each tenant must record the head revision and have the same schema as
after the first `tenants upgrade`.
Only the ratios within one run mean anything; never compare absolute times across runs or machines.
Targets (concurrency 4, 2 cores): tenants/psql <= 1.0, shell/tenants >= 20, in-process no-op/tenants no-op >= 5.
The no-op ratio is printed twice: with the CLI (its interpreter start-up included, measured on its own as
`tenants --help`) and with the library called in-process, as the in-process alembic loop is.

    /work/venv/bin/python scripts/bench.py --tenants 10       # quick check
    /work/venv/bin/python scripts/bench.py                    # 200 tenants, a few minutes
    /work/venv/bin/python scripts/bench.py --tenants 40 --delay-ms 10   # through a 10 ms each-way link

--delay-ms D puts scripts/latency_proxy.py (loopback; netem is not available on the dev machines) between the
clients and the server, delaying every chunk by D ms each way, and compares, side by side: `tenants upgrade`
with `xargs -P C psql -f` of the offline SQL, and the no-op pass with a raw one-query probe (psycopg: connect,
SELECT version_num FROM alembic_version, close; C threads). For each it prints, from the proxy's counters (reset
before each method): logins, client -> server round trips and frontend messages per tenant, and the latency
floor those round trips imply (round trips x 2 D / C). The shell and in-process loops are not run then.
Setup, resets and checks go to the server directly, never through the proxy.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import io
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

import psycopg
from alembic.config import Config
from alembic.script import ScriptDirectory
from latency_proxy import LatencyProxy  # scripts/latency_proxy.py: this script's directory is on sys.path
from sqlalchemy.engine import make_url

from alembic import command

REPO = Path(__file__).resolve().parent.parent
ALEMBIC_INI = REPO / "alembic.ini"
BIN = Path(sys.executable).parent  # the venv's `alembic` executable lives next to its python
DB_WORKERS = 8  # threads for setup chores (create, reset, verify, drop); never part of a timed section

# One fingerprint of a tenant's end state: recorded revision + columns, indexes and constraints of `public`,
# leaving out the tool's own bookkeeping (its audit trail and pin tables), which the offline SQL has not.
FINGERPRINT_SQL = """
SELECT (SELECT string_agg(version_num, ',') FROM alembic_version),
       md5(concat_ws('|',
         (SELECT string_agg(concat_ws(' ', table_name, column_name, data_type, is_nullable, column_default), ','
                            ORDER BY table_name, column_name)
            FROM information_schema.columns WHERE table_schema = 'public'
             AND table_name NOT IN ('tenants_history', 'tenants_pin')),
         (SELECT string_agg(indexdef, ',' ORDER BY indexname) FROM pg_indexes WHERE schemaname = 'public'
             AND tablename NOT IN ('tenants_history', 'tenants_pin')),
         (SELECT string_agg(conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid), ','
                            ORDER BY conname)
            FROM pg_constraint WHERE connamespace = 'public'::regnamespace
             AND conrelid::regclass::text NOT IN ('tenants_history', 'tenants_pin'))))
"""


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tenants", type=int, default=200, metavar="N", help="tenant databases to create (200)")
    p.add_argument("--concurrency", type=int, default=4, help="parallelism of tenants and of xargs -P (4)")
    p.add_argument("--pg-url", default=os.environ.get(
        "TENANTS_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"),
        help="SQLAlchemy URL of the server's maintenance database ($TENANTS_BENCH_PG_URL)")
    p.add_argument("--prefix", default="bench_t_", help="name prefix of the databases created (bench_t_)")
    p.add_argument("--keep", action="store_true", help="keep the databases afterwards (default: drop them)")
    p.add_argument("--shell-sample", type=int, metavar="K",
                   help="time the shell loop on only K tenants and extrapolate linearly (default: all N)")
    p.add_argument("--skip-shell-loop", action="store_true", help="do not run the shell loop at all")
    p.add_argument("--delay-ms", type=float, default=0.0, metavar="D",
                   help="run the compared methods through a loopback proxy adding D ms each way (0: direct)")
    p.add_argument("--repeat", type=int, default=3, metavar="R",
                   help="repetitions of the fast methods (tenants, psql), interleaved; medians are compared (3)")
    args = p.parse_args()
    if args.delay_ms < 0:
        p.error("--delay-ms must not be negative")
    if args.tenants < 1 or args.concurrency < 1:
        p.error("--tenants and --concurrency must be at least 1")
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", args.prefix):  # it is pasted into SQL and into a glob
        p.error("--prefix may only use lowercase letters, digits and '_'")
    if args.shell_sample is not None and not 1 <= args.shell_sample <= args.tenants:
        p.error("--shell-sample must be between 1 and --tenants")
    if make_url(args.pg_url).get_backend_name() != "postgresql":
        p.error("--pg-url must be a postgresql URL")
    return args


class Server:
    """The PostgreSQL server, reached with plain psycopg (autocommit) for setup and checks."""

    def __init__(self, sa_url: str) -> None:
        self.url = make_url(sa_url)

    def conninfo(self, db: str | None = None) -> str:
        url = self.url.set(drivername="postgresql", database=db or self.url.database)
        return url.render_as_string(hide_password=False)

    def sa_url(self, db: str) -> str:
        """A SQLAlchemy URL for `db` (with the driver and password of --pg-url), as alembic/tenants use it."""
        return self.url.set(database=db).render_as_string(hide_password=False)

    def execute(self, sql: str, params=(), db: str | None = None) -> list[tuple]:
        with psycopg.connect(self.conninfo(db), autocommit=True) as conn:
            cur = conn.execute(sql, params)
            return cur.fetchall() if cur.description else []

    def each(self, dbs: list[str], fn) -> list:
        with ThreadPoolExecutor(DB_WORKERS) as pool:
            return list(pool.map(fn, dbs))

    def create(self, db: str) -> None:
        # From template0 (always empty). A dedicated empty template database measured no faster here.
        self.execute(f'CREATE DATABASE "{db}" TEMPLATE template0')

    def drop(self, db: str) -> None:
        self.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')  # FORCE ends leftover sessions (PG 13+)

    def reset(self, dbs: list[str]) -> None:
        """Every tenant back to empty (alembic_version lives in public too), then a checkpoint so the reset's
        writes are not flushed during the next timed section."""
        self.each(dbs, lambda db: self.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public", db=db))
        with contextlib.suppress(psycopg.errors.InsufficientPrivilege):
            self.execute("CHECKPOINT")

    def fingerprints(self, dbs: list[str]) -> dict[str, tuple]:
        def one(db):
            try:
                return self.execute(FINGERPRINT_SQL, db=db)[0]
            except psycopg.Error as err:
                return (f"unreadable: {type(err).__name__}: {str(err).strip().splitlines()[0]}", None)
        return dict(zip(dbs, self.each(dbs, one), strict=True))


class Bench:
    def __init__(self, args: argparse.Namespace, server: Server, tmp: Path, names: list[str],
                 proxy: LatencyProxy | None = None) -> None:
        self.args, self.server, self.tmp, self.names, self.proxy = args, server, tmp, names, proxy
        # What the timed methods connect to: the server, or the latency proxy in front of it (same credentials).
        self.target = Server(server.url.set(host="127.0.0.1", port=proxy.port).render_as_string(
            hide_password=False)) if proxy else server
        self.head = ScriptDirectory.from_config(Config(str(ALEMBIC_INI))).get_current_head()
        self.reference: str | None = None  # schema fingerprint after the first `tenants upgrade`
        self.samples: dict[str, list[float]] = {}  # label -> seconds of each repetition
        self.counts: dict[str, list[dict]] = {}  # label -> the proxy's counters of each repetition
        # The temporary directory is private (mkdtemp: mode 0700), so a password in this file stays local.
        url = self.target.sa_url("TENANT").replace("/TENANT", "/{tenant}")  # render first: '{' would be escaped
        self.toml = tmp / "tenants.toml"
        self.toml.write_text(  # json.dumps: a JSON string is a valid TOML basic string
            "[environments.bench]\n"
            f"url = {json.dumps(url)}\nsource = \"server\"\nmatch = {json.dumps(args.prefix + '*')}\n"
            f"concurrency = {args.concurrency}\nalembic = {json.dumps(str(ALEMBIC_INI))}\n"
            f"maintenance_database = {json.dumps(server.url.database or 'postgres')}\n", encoding="utf-8")

    @property
    def times(self) -> dict[str, float]:
        """The median of each method's repetitions: this machine is noisy, one sample can be off by 30%."""
        return {label: statistics.median(values) for label, values in self.samples.items()}

    def timed(self, label: str, fn) -> None:
        print(f"  {label} ...", end="", flush=True)
        if self.proxy:
            self.proxy.reset()
        started = time.perf_counter()
        fn()
        self.samples.setdefault(label, []).append(time.perf_counter() - started)
        print(f" {self.samples[label][-1]:.2f}s", end="", flush=True)
        if self.proxy:
            counts = self.settled_counts()
            self.counts.setdefault(label, []).append(counts)
            n = len(self.names)
            print(f"  ({counts['tenant_logins'] / n:.3f} logins, {counts['round_trips'] / n:.1f} round trips, "
                  f"{counts['messages'] / n:.1f} messages per tenant; {counts['other_logins']} other logins)", end="")
        print(flush=True)

    def settled_counts(self) -> dict:
        """The proxy's counters once the method's last connections have closed (their Terminate goes through
        the proxy's delay after the client has returned); not part of the timed section."""
        deadline = time.monotonic() + 10
        while (counts := self.proxy.stats())["open_connections"] and time.monotonic() < deadline:
            time.sleep(0.01)
        # Logins to the tenants' databases, and the others (discovery's, to the maintenance database).
        tenants = set(self.names)
        counts["tenant_logins"] = sum(k for db, k in counts["logins_by_database"].items() if db in tenants)
        counts["other_logins"] = counts["connections"] - counts["tenant_logins"]
        return counts

    def verify(self, label: str, dbs: list[str]) -> None:
        """Fail loudly unless every tenant records the head and has the same schema as every other method."""
        bad = []
        for db, (rev, schema) in self.server.fingerprints(dbs).items():
            self.reference = self.reference or schema
            if rev != self.head or schema != self.reference:
                bad.append(f"{db}: revision {rev!r}" + ("" if schema == self.reference else ", schema differs"))
        if bad:
            raise SystemExit(f"bench: {label}: {len(bad)} of {len(dbs)} tenants not at head {self.head}:\n  "
                             + "\n  ".join(bad[:10]))

    def run(self, cmd: list[str], label: str, **kw) -> str:
        proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)
        if proc.returncode != 0:
            tail = "\n".join(proc.stdout.splitlines()[-20:])
            raise SystemExit(f"bench: {label}: exit code {proc.returncode}; last output:\n{tail}")
        return proc.stdout

    def tenants_cli(self, *argv: str) -> list[str]:
        # The console script, what an operator types (not `python -m tenants`: each worker process re-imports
        # a main script, not a `__main__` module, so only the script shows that cost).
        script = BIN / "tenants"
        if script.is_file() and "tenants.__main__" not in script.read_text(errors="replace"):
            raise SystemExit(f"bench: {script} is an older console script (not tenants.__main__:main); "
                             "reinstall the project (pip install -e .) before timing it")
        command = [str(script)] if script.is_file() else [sys.executable, "-m", "tenants"]
        return [*command, "--config", str(self.toml), "--env", "bench", *argv]

    # --- the methods -------------------------------------------------------------------------------------------

    def tenants_upgrade(self, label: str) -> None:
        upgrade = self.tenants_cli("upgrade", "--concurrency", str(self.args.concurrency))
        self.timed(label, lambda: self.run(upgrade, label))
        self.verify(label, self.names)

    def library_noop(self, label: str) -> None:
        """The no-op pass without interpreter start-up: `api.upgrade` called in this process, as the in-process
        alembic loop is. Compared with that loop's no-op, it measures the pass itself, apples to apples."""
        from tenants import api
        from tenants.config import load_settings

        settings = load_settings(self.toml, "bench", environ={})
        options = api.RunOptions(concurrency=self.args.concurrency)
        self.timed(label, lambda: api.upgrade(settings, options=options))
        self.verify(label, self.names)

    def startup(self, label: str) -> None:
        """What every CLI run pays before touching a tenant: interpreter start and imports."""
        self.timed(label, lambda: self.run(self.tenants_cli("--help"), label))

    def shell_loop(self, label: str, dbs: list[str]) -> None:
        # Tenant names are passed as arguments ("$@"), not pasted into the script. set -e: stop at a failure.
        script = ('set -e; for t in "$@"; do "$ALEMBIC" -c "$INI" -x tenant="$t" -x config="$TOML" -x env=bench '
                  'upgrade head; done')
        env = {**os.environ, "ALEMBIC": str(BIN / "alembic"), "INI": str(ALEMBIC_INI), "TOML": str(self.toml)}
        self.timed(label, lambda: self.run(["bash", "-c", script, "bash", *dbs], label, env=env))
        self.verify(label, dbs)

    def in_process_loop(self, label: str) -> None:
        def loop():
            path = list(sys.path)  # alembic prepends `prepend_sys_path` to sys.path on every call
            # env.py re-reads alembic.ini's logging config per call, with a handler on the then-current stderr:
            # send that to /dev/null rather than flood the table (the logging cost stays in the measurement).
            with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):
                for db in self.names:
                    cfg = Config(str(ALEMBIC_INI), stdout=io.StringIO())
                    cfg.set_main_option("sqlalchemy.url", self.server.sa_url(db).replace("%", "%%"))
                    command.upgrade(cfg, "head")
            sys.path[:] = path
        self.timed(label, loop)
        self.verify(label, self.names)

    def psql_fanout(self, label: str) -> None:
        sql_file = self.tmp / "upgrade.sql"  # rendered once, outside the timed section
        if not sql_file.exists():
            sql_file.write_text(self.run(self.tenants_cli("sql", "base:head"), "tenants sql"), encoding="utf-8")
        url = self.target.url
        psql = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", url.host or "127.0.0.1",
                "-p", str(url.port or 5432), "-U", url.username or "postgres", "-d", "{}", "-f", str(sql_file)]
        env = {**os.environ, **({"PGPASSWORD": url.password} if url.password else {})}
        xargs = ["xargs", f"-P{self.args.concurrency}", "-I{}", *psql]
        self.timed(label, lambda: self.run(xargs, label, input="\n".join(self.names) + "\n", env=env))
        self.verify(label, self.names)


    def psql_probe(self, label: str) -> None:
        """The shell's raw no-op pass, what an operator would type: per tenant a psql process, one login and one
        query, C at a time (xargs -P). Every tenant must answer the head."""
        url = self.target.url
        psql = ["psql", "-X", "-q", "-At", "-h", url.host or "127.0.0.1", "-p", str(url.port or 5432),
                "-U", url.username or "postgres", "-d", "{}", "-c", "SELECT version_num FROM alembic_version"]
        env = {**os.environ, **({"PGPASSWORD": url.password} if url.password else {})}
        xargs = ["xargs", f"-P{self.args.concurrency}", "-I{}", *psql]

        def probe_all() -> None:
            out = self.run(xargs, label, input="\n".join(self.names) + "\n", env=env).split()
            if out != [self.head] * len(self.names):
                raise SystemExit(f"bench: {label}: not every tenant answered {self.head}")
        self.timed(label, probe_all)

    def probe(self, label: str) -> None:
        """The raw floor of a no-op pass: per tenant one login and one query (the recorded revision), C at a
        time, in this process. Every tenant must answer the head."""
        def one(db: str) -> str:
            with psycopg.connect(self.target.conninfo(db), autocommit=True) as conn:
                return conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]

        def probe_all() -> None:
            with ThreadPoolExecutor(self.args.concurrency) as pool:
                bad = [db for db, rev in zip(self.names, pool.map(one, self.names), strict=True) if rev != self.head]
            if bad:
                raise SystemExit(f"bench: {label}: {len(bad)} tenants not at head {self.head}, e.g. {bad[0]}")
        self.timed(label, probe_all)


def versions(server: Server) -> str:
    psql = subprocess.run(["psql", "--version"], capture_output=True, text=True).stdout.split()[2]
    pg = server.execute("SHOW server_version")[0][0].split()[0]
    libs = ", ".join(f"{name} {version(name)}" for name in ("tenants", "alembic", "SQLAlchemy", "psycopg"))
    return f"Python {sys.version.split()[0]}, {libs}, psql {psql}, PostgreSQL server {pg}"


def report(bench: Bench, args: argparse.Namespace, shell_label: str | None, shell_factor: float) -> None:
    t, n, c = bench.times, args.tenants, args.concurrency
    print(f"\n{'method (median of the repetitions)':<60}{'seconds':>10}{'ms/tenant':>12}  samples")
    for label, seconds in t.items():
        samples = " ".join(f"{x:.2f}" for x in bench.samples[label]) if len(bench.samples[label]) > 1 else ""
        if label == shell_label and shell_factor != 1:  # a sample: show the extrapolated figure
            seconds *= shell_factor
            label = f"{label}, extrapolated x{shell_factor:.1f}"
        print(f"{label:<60}{seconds:>10.2f}{seconds / n * 1000:>12.1f}  {samples}")
    up, noop = t["tenants upgrade (empty -> head)"], t["tenants upgrade (no-op: all at head)"]
    shell = t[shell_label] * shell_factor if shell_label else None
    ratios = [
        (f"tenants upgrade / xargs -P{c} psql", up / t[f"xargs -P{c} psql -f offline.sql"], "<=", 1.0),
        ("shell loop / tenants upgrade" + (" (extrapolated)" if shell_factor != 1 else ""),
         shell / up if shell else None, ">=", 20.0),
        ("in-process no-op / tenants no-op", t["in-process command.upgrade loop (no-op)"] / noop, ">=", 5.0),
        ("in-process no-op / tenants no-op in-process (both without start-up)",
         t["in-process command.upgrade loop (no-op)"] / t["tenants no-op in-process (api.upgrade)"], ">=", 5.0),
        ("in-process upgrade / tenants upgrade (no target)",
         t["in-process command.upgrade loop (empty -> head)"] / up, None, None),
        ("tenants no-op / psql probe (both CLIs)", noop / t[PSQL_PROBE_LABEL.format(c=c)], "<=", 2.0),
        ("tenants no-op in-process / probe in-process",
         t["tenants no-op in-process (api.upgrade)"] / t[PROBE_LABEL.format(c=c)], "<=", 2.0),
    ]
    _print_ratios(ratios)


def report_delayed(bench: Bench, args: argparse.Namespace) -> None:
    """The methods compared through the proxy: time, and what the latency multiplies (the counters' medians)."""
    t, n, c, d = bench.times, args.tenants, args.concurrency, args.delay_ms
    per = {label: {key: statistics.median(run[key] for run in runs) / n
                   for key in ("tenant_logins", "round_trips", "messages")} for label, runs in bench.counts.items()}
    others = {label: statistics.median(run["other_logins"] for run in runs) for label, runs in bench.counts.items()}
    print(f"\nthrough the latency proxy: +{d:g} ms each way (a round trip costs {2 * d:g} ms), concurrency {c}")
    print("(logins/t: logins to the tenants' databases per tenant; other: logins to any other database per run,")
    print(" e.g. the discovery's to the maintenance database)")
    print(f"{'method (median of the repetitions)':<60}{'seconds':>9}{'ms/tenant':>11}{'logins/t':>10}{'other':>7}"
          f"{'round trips/t':>15}{'messages/t':>12}{'latency floor ms/t':>20}  samples")
    for label, seconds in t.items():
        samples = " ".join(f"{x:.2f}" for x in bench.samples[label]) if len(bench.samples[label]) > 1 else ""
        if label in per:
            k = per[label]  # floor: the round trips' latency alone, C tenants at a time
            counted = (f"{k['tenant_logins']:>10.3f}{others[label]:>7g}{k['round_trips']:>15.1f}"
                       f"{k['messages']:>12.1f}{k['round_trips'] * 2 * d / c:>20.1f}")
        else:
            counted = f"{'-':>10}{'-':>7}{'-':>15}{'-':>12}{'-':>20}"
        print(f"{label:<60}{seconds:>9.2f}{seconds / n * 1000:>11.1f}{counted}  {samples}")
    print("\nfrontend messages per tenant, by type (Q query, P/B/D/E/S extended protocol, X terminate; last run)")
    for label, runs in bench.counts.items():
        if not runs[-1]["by_type"]:
            continue  # e.g. the start-up: no connection at all
        types = " ".join(f"{name}={count / n:g}" for name, count in runs[-1]["by_type"].items())
        print(f"  {label}: {types}")
    if any(run["tls_connections"] for runs in bench.counts.values() for run in runs):
        print("  (some connections used TLS: their messages and round trips could not be counted)")

    up, psql = "tenants upgrade (empty -> head)", f"xargs -P{c} psql -f offline.sql"
    noop, probe, startup = ("tenants upgrade (no-op: all at head)", PROBE_LABEL.format(c=c),
                            "tenants start-up (tenants --help)")
    shell_probe, library = PSQL_PROBE_LABEL.format(c=c), "tenants no-op in-process (api.upgrade)"
    ratios = [
        (f"tenants upgrade / xargs -P{c} psql: time", t[up] / t[psql], "<=", 1.0),
        (f"tenants upgrade / xargs -P{c} psql: round trips", _ratio(per[up], per[psql], "round_trips"), None, None),
        ("tenants upgrade: logins per tenant (to tenant databases)", per[up]["tenant_logins"], None, None),
        ("tenants no-op / psql probe (both CLIs): time", t[noop] / t[shell_probe], "<=", 1.5),
        ("tenants no-op in-process / probe in-process: time", t[library] / t[probe], "<=", 1.5),
        ("tenants no-op minus start-up / probe in-process: time", (t[noop] - t[startup]) / t[probe], None, None),
        ("tenants no-op / probe: round trips", _ratio(per[noop], per[probe], "round_trips"), None, None),
        ("tenants no-op: logins per tenant (to tenant databases)", per[noop]["tenant_logins"], None, None),
    ]
    _print_ratios(ratios)


def _print_ratios(ratios: list[tuple[str, float | None, str | None, float | None]]) -> None:
    print(f"\n{'ratio':<60}{'value':>10}{'target':>12}  result")
    for label, value, op, target in ratios:
        goal = f"{op} {target:g}" if op else "-"
        if value is None:
            print(f"{label:<60}{'n/a':>10}{goal:>12}  not measured")
        else:
            met = op is None or (value <= target if op == "<=" else value >= target)
            print(f"{label:<60}{value:>10.2f}{goal:>12}  {'' if op is None else 'met' if met else 'NOT MET'}")


def _ratio(a: dict, b: dict, key: str) -> float | None:
    return a[key] / b[key] if b[key] else None


PROBE_LABEL = "probe: psycopg connect + SELECT version_num ({c} threads)"
PSQL_PROBE_LABEL = "probe: xargs -P{c} psql -c 'SELECT version_num ...'"


def repetitions(bench: Bench, args: argparse.Namespace) -> None:
    """The fast methods, repeated, interleaved (compared by their medians), each from the same state."""
    for _ in range(args.repeat):
        # Reset the first time too: its checkpoint flushes the creation of the databases, which would otherwise
        # land in the first timed section (the first `tenants upgrade` ran 20% slower than the others).
        bench.server.reset(bench.names)
        bench.tenants_upgrade("tenants upgrade (empty -> head)")
        bench.tenants_upgrade("tenants upgrade (no-op: all at head)")
        bench.library_noop("tenants no-op in-process (api.upgrade)")
        bench.probe(PROBE_LABEL.format(c=args.concurrency))
        bench.psql_probe(PSQL_PROBE_LABEL.format(c=args.concurrency))
        bench.startup("tenants start-up (tenants --help)")
        bench.server.reset(bench.names)
        bench.psql_fanout(f"xargs -P{args.concurrency} psql -f offline.sql")


def run_direct(bench: Bench, args: argparse.Namespace) -> None:
    """Today's comparison, straight to the server: all the methods, then the report with its targets."""
    names = bench.names
    repetitions(bench, args)

    shell_label, shell_factor = None, 1.0
    if not args.skip_shell_loop:
        k = args.shell_sample or args.tenants
        shell_label, shell_factor = f"shell loop: alembic upgrade head (x{k})", args.tenants / k
        bench.server.reset(names)
        bench.shell_loop(shell_label, names[:k])

    bench.server.reset(names)
    bench.in_process_loop("in-process command.upgrade loop (empty -> head)")
    bench.in_process_loop("in-process command.upgrade loop (no-op)")

    report(bench, args, shell_label, shell_factor)


def run_delayed(bench: Bench, args: argparse.Namespace) -> None:
    """Through the latency proxy: tenants vs psql, the no-op vs the probe, interleaved, repeated."""
    repetitions(bench, args)
    report_delayed(bench, args)


def compile_bytecode() -> None:
    """Byte-compile the project (the package, env.py and the revisions) before timing, as `pip install` does for
    an installed package: in a checkout with PYTHONDONTWRITEBYTECODE set (as on the machines this is developed
    on) every process would otherwise compile them from source on each run, a cost no installed copy pays."""
    for folder in (REPO / "tenants", ALEMBIC_INI.parent / "alembic"):
        compileall.compile_dir(str(folder), quiet=1)


def _interrupt(_signum, _frame) -> None:
    raise KeyboardInterrupt


def main() -> None:
    args = parse_args()
    server = Server(args.pg_url)
    names = [f"{args.prefix}{i:04d}" for i in range(args.tenants)]
    existing = server.execute("SELECT datname FROM pg_database WHERE starts_with(datname, %s)", (args.prefix,))
    if existing:  # never adopt (and later drop) databases this run did not create
        raise SystemExit(f"bench: {len(existing)} database(s) named {args.prefix}* already exist "
                         f"(e.g. {existing[0][0]}); drop them or pick another --prefix")
    # SIGTERM takes the same way out as Ctrl-C, through the `finally` that drops the databases.
    signal.signal(signal.SIGTERM, _interrupt)
    tmp = Path(tempfile.mkdtemp(prefix="tenants-bench-"))
    created: list[str] = []
    started = time.perf_counter()
    stack = contextlib.ExitStack()  # the latency proxy, if any: stopped before the databases are dropped
    proxy: LatencyProxy | None = None
    try:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        print(f"bench: N={args.tenants} tenants, concurrency {args.concurrency}, nproc {cpus}")
        print(f"versions: {versions(server)}")
        print(f"creating {args.tenants} databases {names[0]}..{names[-1]} ...", flush=True)

        def create(db):
            server.create(db)
            created.append(db)  # list.append is atomic: safe from the pool's threads
        server.each(names, create)
        if args.delay_ms:
            proxy = stack.enter_context(LatencyProxy((server.url.host or "127.0.0.1", server.url.port or 5432),
                                                     delay_ms=args.delay_ms))
            print(f"latency proxy: 127.0.0.1:{proxy.port} -> server, +{args.delay_ms:g} ms each way "
                  "(the shell and in-process loops are not run)")
        bench = Bench(args, server, tmp, names, proxy)
        compile_bytecode()
        print(f"head: {bench.head}; timing (each method starts from the same state):")
        (run_delayed if proxy else run_direct)(bench, args)
    except KeyboardInterrupt:
        print("\nbench: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):  # a second Ctrl-C must not leave the databases behind
            signal.signal(sig, signal.SIG_IGN)
        stack.close()
        shutil.rmtree(tmp, ignore_errors=True)
        if args.keep:
            print(f"kept {len(created)} databases {args.prefix}* (--keep)")
        elif created:
            print(f"dropping {len(created)} databases ...", flush=True)
            server.each(created, server.drop)
        print(f"total wall time {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    main()
