#!/usr/bin/env python3
"""Measure `tenants drift` against `tenants status` on the same throwaway PostgreSQL fleet (issue 12).

Creates N tenant databases at head (the first built by `tenants upgrade`, the others copied from it with
CREATE DATABASE ... TEMPLATE), changes a handful by hand (an index dropped, a column added, a type widened, a
table dropped, an extra table), then times, alternately and R times each, `status` and `drift` on the whole fleet:
in-process through the library, and as the CLI (interpreter start-up included). The expected schemas are built
once first (the cold figure, printed on its own) so the timed drift runs read the cache, as CI does with
actions/cache. Prints the medians and the ratio drift/status measured in this run (target <= 1.5). Only the
ratio means anything; never compare absolute times across runs or machines. Drops the databases afterwards.

    .venv/bin/python scripts/bench_drift.py --tenants 200
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
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
from tenants.config import load_settings  # noqa: E402

HAND_CHANGES = [
    "DROP INDEX ix_invoices_user_id_issued_at",
    "ALTER TABLE users ADD COLUMN legacy_flag boolean",
    "ALTER TABLE invoices ALTER COLUMN status TYPE varchar(40)",
    "DROP TABLE invoices",
    "CREATE TABLE scratch (id integer PRIMARY KEY)",
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tenants", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--pg-url", default=os.environ.get("TENANTS_TEST_PG_URL",
                                                      "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"))
    args = p.parse_args()
    prefix = f"bench_d_{uuid.uuid4().hex[:6]}_"
    names = [f"{prefix}{i:04d}" for i in range(args.tenants)]
    admin = make_url(args.pg_url).set(drivername="postgresql").render_as_string(hide_password=False)

    def sql(statement: str, db: str | None = None) -> None:
        dsn = make_url(admin).set(database=db).render_as_string(hide_password=False) if db else admin
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(statement)

    with tempfile.TemporaryDirectory() as tmp:
        url = make_url(args.pg_url).set(database="TENANT").render_as_string(hide_password=False)
        config = Path(tmp) / "tenants.toml"
        config.write_text(f'[environments.bench]\nurl = "{url.replace("TENANT", "{tenant}")}"\nsource = "server"\n'
                          f'match = "{prefix}*"\nconcurrency = {args.concurrency}\nalembic = "{ROOT / "alembic.ini"}"\n'
                          f'schema_cache = "{Path(tmp) / "cache"}"\n')
        settings = load_settings(config, "bench", environ={})
        try:
            sql(f'CREATE DATABASE "{names[0]}"')
            assert api.upgrade(settings).ok
            for name in names[1:]:
                sql(f'CREATE DATABASE "{name}" TEMPLATE "{names[0]}"')
            for name, change in zip(names[1::max(1, args.tenants // 6)], HAND_CHANGES, strict=False):
                sql(change, name)
            started = time.perf_counter()
            cold = api.drift(settings)
            cold_s = time.perf_counter() - started
            print(f"{args.tenants} tenants, concurrency {args.concurrency}: drift with the expected schemas built "
                  f"(cold, {cold.reference}): {cold_s:.2f}s; {len(cold.drifted)} drifted, "
                  f"{len(cold.groups())} groups")
            library = {"status": [], "drift": []}
            cli = {"status": [], "drift": []}
            env = {**os.environ, "TENANTS_CONFIG": str(config), "TENANTS_ENV": "bench"}
            tenants = str(Path(sys.executable).parent / "tenants")
            for _ in range(args.repeat):
                for verb, fn in (("status", api.status), ("drift", api.drift)):
                    started = time.perf_counter()
                    fn(settings)
                    library[verb].append(time.perf_counter() - started)
                    started = time.perf_counter()
                    subprocess.run([tenants, verb], env=env, capture_output=True, check=False)
                    cli[verb].append(time.perf_counter() - started)
            for label, times in (("library", library), ("CLI", cli)):
                s, d = statistics.median(times["status"]), statistics.median(times["drift"])
                print(f"{label:<8} status {s:.3f}s  drift {d:.3f}s  drift/status {d / s:.2f}x "
                      f"(median of {args.repeat}; target <= 1.5x)")
        finally:
            for name in names:
                sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return 0


if __name__ == "__main__":
    sys.exit(main())
