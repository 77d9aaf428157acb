"""Protecting a shared pool: throttling errors lower the fan-out's concurrency (AIMD), and nothing fails."""

from __future__ import annotations

import json

import pytest
from helpers import Readings, fake_pool_project, fleet_config, settings_for

from tenants import api
from tenants.engine.fanout import ProcessStrategy
from tenants.model import Status


def test_a_fleet_started_at_8_on_a_pool_that_takes_3_finishes_with_nothing_failed(tmp_path):
    pytest.importorskip("pyodbc")
    counter = tmp_path / "pool"
    ini = fake_pool_project(tmp_path / "proj", counter, capacity=3)
    names = [f"t{i:02d}" for i in range(50)]
    config = fleet_config(tmp_path / "t.toml", names, env="pool", alembic=ini, extra="retry_backoff_max = 0.05")
    settings = settings_for(config, "pool")
    report = api.upgrade(settings, options=api.RunOptions(strategy=ProcessStrategy(8)))
    assert report.counts == {"upgraded": 50}, [r for r in report.results if not r.ok][:3]
    assert report.throttled > 0
    lowest = min(n for _, n in report.concurrency_changes)
    assert report.concurrency_changes[0] == (0.0, 8) and lowest <= 3
    in_flight, most, refused = map(int, counter.read_text().split())
    assert in_flight == 0 and most <= 3
    assert refused == report.throttled  # every refusal was seen as throttling, none was retried in place
    # A throttled tenant's attempts add up and its "from" is the revision before its first attempt.
    retried = [r for r in report.results if r.attempts > 1]
    assert retried and all(r.from_revision == "base" and r.applied == ("p1",) for r in retried)
    data = report.to_dict()
    assert data["throttled"] == report.throttled and data["concurrency_changes"][0] == {"at": 0.0, "concurrency": 8}
    json.dumps(data)


def test_a_tenant_throttled_at_concurrency_1_fails_after_its_retries(tmp_path):
    pytest.importorskip("pyodbc")
    counter = tmp_path / "pool"
    ini = fake_pool_project(tmp_path / "proj", counter, capacity=0)  # a pool that never has room
    config = fleet_config(tmp_path / "t.toml", ["a", "b"], env="pool", alembic=ini,
                          extra="retries = 2\nretry_backoff_max = 0.02")
    report = api.upgrade(settings_for(config, "pool"),
                         options=api.RunOptions(strategy=ProcessStrategy(2), max_failures=None))
    assert [r.status for r in report.results] == [Status.FAILED, Status.FAILED]
    assert all("(10928)" in r.error for r in report.results)
    assert report.concurrency_changes[-1][1] == 1


def test_pressure_gate_reads_at_most_every_interval_and_fails_open():
    from tenants.engine.pressure import PressureGate

    now = [0.0]
    source = Readings({"cpu": 95.0, "workers": 10.0}, {"cpu": 40.0, "workers": 85.0},
                      {"cpu": 10.0, "workers": 10.0}, RuntimeError("read timed out"))
    gate = PressureGate(source, limit=80, interval=5, clock=lambda: now[0])
    assert not gate.admit() and gate.reading == {"cpu": 95.0, "workers": 10.0}
    now[0] = 4.9
    assert not gate.admit() and source.reads == 1  # within the interval: the same reading
    now[0] = 5.0
    assert not gate.admit() and gate.reading == {"cpu": 40.0, "workers": 85.0}
    now[0] = 10.0
    assert gate.admit() and gate.admit()  # far below the limit: many starts per reading
    now[0] = 15.0
    # A failed read does not block; the same failure again is counted, not listed again.
    assert gate.admit() and gate.errors == {"cannot read the pool's load, so starts went ahead: RuntimeError: "
                                            "read timed out": 1}
    now[0] = 20.0
    assert gate.admit() and source.reads == 5 and list(gate.errors.values()) == [2]


def test_pressure_gate_admits_one_start_per_reading_near_the_limit():
    from tenants.engine.pressure import PressureGate

    now = [0.0]
    gate = PressureGate(Readings({"cpu": 79.0}), limit=80, interval=5, clock=lambda: now[0])
    assert gate.admit() and not gate.admit() and not gate.admit()  # 79 %: one, then wait for a new reading
    now[0] = 5.0
    assert gate.admit() and not gate.admit()


def test_pressure_gate_stays_shut_when_the_probe_itself_is_throttled():
    pyodbc = pytest.importorskip("pyodbc")
    from tenants.db import describe_error
    from tenants.engine.pressure import PressureGate

    refused = pyodbc.OperationalError("42000", "[42000] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]The "
                                               "request limit for the elastic pool is 210 and has been reached. "
                                               "(10928) (SQLDriverConnect)")
    gate = PressureGate(Readings(refused), limit=80, interval=5, clock=lambda: 0.0)
    assert not gate.admit() and list(gate.errors) == [
        "the pool refused the probe's read (throttled), so starts waited: " + describe_error(refused)]
    assert "(10928)" in describe_error(refused)


def test_pool_stats_query_is_valid_t_sql():
    import sqlglot

    from tenants.engine.pressure import POOL_STATS_SQL

    (statement,) = sqlglot.parse(POOL_STATS_SQL, read="tsql", error_level=sqlglot.ErrorLevel.RAISE)
    assert type(statement).__name__ == "Select"
    assert statement.args["limit"] is not None  # TOP 1


def test_the_pressure_probe_keeps_a_fleet_under_the_pool_limit(tmp_path):
    """The probe reads the fake pool's worker use (tenants in flight / capacity): starts wait while it is high."""
    pytest.importorskip("pyodbc")
    from tenants.engine.pressure import PressureGate

    counter = tmp_path / "pool"
    ini = fake_pool_project(tmp_path / "proj", counter, capacity=3)

    class FakePool:
        """Customer traffic keeps the workers at 40 %; each migration in flight adds 15 %."""

        def read(self):
            in_flight = int(counter.read_text().split()[0])
            return {"workers": 40.0 + 15.0 * in_flight}

    names = [f"t{i:02d}" for i in range(20)]
    config = fleet_config(tmp_path / "t.toml", names, env="pool", alembic=ini, extra="retry_backoff_max = 0.05")
    gate = PressureGate(FakePool(), limit=60, interval=0.02)
    report = api.upgrade(settings_for(config, "pool"),
                         options=api.RunOptions(strategy=ProcessStrategy(8, gate=gate)))
    assert report.counts == {"upgraded": 20}
    assert report.pressure_wait > 0
    _, most, refused = map(int, counter.read_text().split())
    # The probe holds starts back; what its lagging readings (a real DMV is 15 s behind) still let through,
    # AIMD catches: every refusal is a throttle backed off from, none a failure.
    assert most <= 3 and refused == report.throttled


def test_aimd_halves_on_a_throttle_down_to_its_floor_and_grows_by_one_after_limit_successes():
    from tenants.engine.fanout.aimd import Aimd

    aimd = Aimd(8, started=100.0)
    assert aimd.limit == 8 and aimd.changes == [(0.0, 8)]
    assert aimd.on_throttle(101.0) and aimd.limit == 4
    assert aimd.on_throttle(102.0) and aimd.on_throttle(103.0) and aimd.limit == 1
    assert not aimd.on_throttle(104.0) and aimd.limit == 1  # the floor
    assert aimd.throttled == 4
    assert [aimd.on_success(105.0)] == [True] and aimd.limit == 2  # one success at limit 1
    assert [aimd.on_success(106.0), aimd.on_success(107.0)] == [False, True] and aimd.limit == 3
    assert aimd.changes == [(0.0, 8), (1.0, 4), (2.0, 2), (3.0, 1), (5.0, 2), (7.0, 3)]


def test_aimd_cuts_once_for_throttles_of_tenants_started_before_the_cut():
    from tenants.engine.fanout.aimd import Aimd

    aimd = Aimd(8)
    epoch = aimd.epoch  # three tenants start
    assert aimd.on_throttle(1.0, epoch) and not aimd.on_throttle(1.1, epoch) and not aimd.on_throttle(1.2, epoch)
    assert aimd.limit == 4 and aimd.throttled == 3
    assert aimd.on_throttle(2.0, aimd.epoch) and aimd.limit == 2  # one started after the cut: it reports new load


def test_aimd_never_grows_past_its_ceiling():
    from tenants.engine.fanout.aimd import Aimd

    aimd = Aimd(2)
    assert not any(aimd.on_success(float(t)) for t in range(10))
    assert aimd.limit == 2 and aimd.changes == [(0.0, 2)]
