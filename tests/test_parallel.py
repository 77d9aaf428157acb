"""The process fan-out against the reference, the serial strategy: the same results, tenant for tenant, on a
fleet at mixed revisions and on one with failed, unknown-revision and up-to-date tenants."""

from __future__ import annotations

import sqlite3

from helpers import DEMO_REVISIONS, failing_project, settings_for

from tenants import api
from tenants.engine.fanout import ProcessStrategy, SerialStrategy
from tenants.model import Status
from tenants.selection import Selection


def test_parallel_run_equals_serial_run(sqlite_config, tmp_path):
    names = [f"t{i}" for i in range(8)]
    serial_settings = settings_for(sqlite_config(names))
    # A second, identical fleet for the parallel strategy.
    parallel_cfg = tmp_path / "parallel.toml"
    parallel_cfg.write_text(sqlite_config(names).read_text().replace("sqlite:///db/", "sqlite:///pdb/"))
    parallel_settings = settings_for(parallel_cfg)
    # Start the fleets at different revisions per tenant so the runs are not all alike.
    for i, name in enumerate(names):
        if i % 3:
            for s in (serial_settings, parallel_settings):
                api.upgrade(s, DEMO_REVISIONS[i % 3], Selection(tenants=(name,)))

    serial = api.upgrade(serial_settings, options=api.RunOptions(strategy=SerialStrategy()))
    parallel = api.upgrade(parallel_settings, options=api.RunOptions(strategy=ProcessStrategy(4)))

    def key(report):
        return [(r.tenant, r.status, r.from_revision, r.to_revision, r.applied, r.error) for r in report.results]

    assert key(parallel) == key(serial)
    assert {r.status for r in serial.results} == {Status.UPGRADED}


def test_parallel_equals_serial_on_a_mixed_fleet(sqlite_config, tmp_path):
    """Failed, unknown-revision, up-to-date and more than 2 x concurrency tenants with work, both strategies."""
    ini = failing_project(tmp_path / "proj")
    names = [f"n{i:02d}" for i in range(12)] + ["bad1", "held", "odd"] + [f"z{i}" for i in range(4)]
    results = {}
    for kind, strategy in (("serial", SerialStrategy()), ("parallel", ProcessStrategy(2))):
        config = tmp_path / f"{kind}.toml"
        config.write_text(sqlite_config(names, alembic=ini).read_text().replace("sqlite:///db/", f"sqlite:///{kind}/"))
        settings = settings_for(config)
        api.upgrade(settings, selection=Selection(tenants=("odd", "z0", "z1", "z2", "z3")))
        with sqlite3.connect(tmp_path / kind / "odd.db") as conn:
            conn.execute("UPDATE alembic_version SET version_num = 'elsewhere'")
        report = api.upgrade(settings, options=api.RunOptions(strategy=strategy, max_failures=None))
        results[kind] = [(r.tenant, r.status, r.from_revision, r.to_revision, r.applied, r.error)
                         for r in report.results]
    assert results["parallel"] == results["serial"]
    statuses = {name: status for name, status, *_ in results["serial"]}
    assert statuses["bad1"] is Status.FAILED and statuses["odd"] is Status.UNKNOWN_REVISION
    assert statuses["z0"] is Status.UP_TO_DATE and statuses["n05"] is Status.UPGRADED
