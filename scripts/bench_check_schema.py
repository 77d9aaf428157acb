#!/usr/bin/env python3
"""What `check_schema = true` costs an upgrade (issue 12), on throwaway PostgreSQL tenant databases.

Makes one template database at revision 0003 of the demo graph, then, for each repetition and each mode (the
order alternates), N tenant databases copied from it (each has one revision to apply), and times
`tenants.api.upgrade` on them with check_schema off and on (library, in-process: the same worker processes
as the CLI). The expected schemas are built once beforehand (the cache, as CI keeps it); the cold build is
timed on its own. Every tenant must end at head. Prints the median of each mode and their ratio; only the
ratio within one run means anything.

    .venv/bin/python scripts/bench_check_schema.py                 # 40 tenants, 5 repetitions
    .venv/bin/python scripts/bench_check_schema.py --tenants 10 --repeat 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tenants import api  # noqa: E402
from tenants.api import RunOptions  # noqa: E402
from tenants.config import load_settings  # noqa: E402
from tenants.db import Connector, read_version, schema_snapshot  # noqa: E402
from tenants.engine.expected import expected_schemas  # noqa: E402
from tenants.engine.unit import own_tables  # noqa: E402

PG_URL = os.environ.get("TENANTS_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
START = "0003_invoice_status"


def admin(sql: str) -> None:
    dsn = make_url(PG_URL).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql)


def config(folder: Path, prefix: str, names: list[str], check: bool, concurrency: int) -> Path:
    url = make_url(PG_URL).set(database="{tenant}").render_as_string(hide_password=False).replace("%7Btenant%7D",
                                                                                                  "{tenant}")
    path = folder / f"{prefix}{'on' if check else 'off'}.toml"
    path.write_text(
        f'[environments.bench]\nurl = "{url}"\ntenants = [{", ".join(repr(n) for n in names)}]\n'
        f'alembic = "{ROOT / "alembic.ini"}"\nconcurrency = {concurrency}\nschema_cache = "{folder / "cache"}"\n'
        f"check_schema = {'true' if check else 'false'}\n".replace("'", '"'), encoding="utf-8")
    return path


def snapshot_times(settings, names: list[str]) -> list[float]:
    """Seconds the check's one query takes per tenant (after a warm-up query on the same connection)."""
    env = settings.environment
    own = own_tables(env.version_table, env.history_table)
    connector = Connector(env.auth, env.cloud, sessions=env.sessions)
    seconds = []
    try:
        for name in names:
            with connector.engine(env.tenant_url(name)) as engine, engine.connect() as conn:
                read_version(conn, env.version_table)
                started = time.monotonic()
                schema_snapshot(conn, own)
                seconds.append(time.monotonic() - started)
    finally:
        connector.dispose()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    prefix = f"bcs_{uuid.uuid4().hex[:6]}_"
    template = f"{prefix}template"
    names = [f"{prefix}{i:04d}" for i in range(args.tenants)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        admin(f'CREATE DATABASE "{template}"')
        try:
            one = load_settings(config(folder, prefix + "tpl_", [template], False, 1), "bench", environ={})
            assert api.upgrade(one, START).ok
            settings = {check: load_settings(config(folder, prefix, names, check, args.concurrency), "bench",
                                             environ={}) for check in (False, True)}
            started = time.monotonic()
            expected = expected_schemas(settings[True], api.load_revisions(settings[True]))
            print(f"expected schemas built ({expected.source}, {len(expected.by_revision)} revisions) "
                  f"in {time.monotonic() - started:.2f}s; cached for the runs below")
            times: dict[bool, list[float]] = {False: [], True: []}
            for rep in range(args.repeat):
                for check in ((False, True) if rep % 2 == 0 else (True, False)):
                    for name in names:
                        admin(f'DROP DATABASE IF EXISTS "{name}"')
                        admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
                    started = time.monotonic()
                    report = api.upgrade(settings[check], options=RunOptions(max_failures=None))
                    times[check].append(time.monotonic() - started)
                    assert report.counts == {"upgraded": len(names)}, report.counts
            per_query = snapshot_times(settings[True], names)
            off, on = statistics.median(times[False]), statistics.median(times[True])
            print(f"{len(names)} tenants, 1 revision each, concurrency {args.concurrency}, {args.repeat} runs each")
            print(f"  check_schema = false: median {off:.2f}s  ({', '.join(f'{t:.2f}' for t in times[False])})")
            print(f"  check_schema = true:  median {on:.2f}s  ({', '.join(f'{t:.2f}' for t in times[True])})")
            print(f"  ratio on/off: {on / off:.2f}; per tenant with work: {(on - off) / len(names) * 1000:+.1f} ms")
            print(f"  the check's catalog query alone (schema_snapshot, one connection, {len(per_query)} tenants): "
                  f"median {statistics.median(per_query) * 1000:.1f} ms, max {max(per_query) * 1000:.1f} ms")
        finally:
            for name in [*names, template]:
                admin(f'DROP DATABASE IF EXISTS "{name}"')


if __name__ == "__main__":
    main()
