"""The pressure probe as a run uses it: one login for every reading of a run, let go at the end; a deploy
identity without VIEW SERVER STATE said once (stderr and report), then no more reads; other failures counted,
not listed again and again."""

from __future__ import annotations

import json
import time

import pytest
from helpers import Readings, fleet_config, settings_for
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from tenants import api
from tenants.db import Connector
from tenants.engine.pressure import DENIED, DISTINCT, MORE, OPENED, POOL_STATS_SQL, ElasticPoolPressure, PressureGate

# What reading sys.dm_elastic_pool_resource_stats without VIEW SERVER STATE returns (ODBC Driver 18).
NO_VIEW_SERVER_STATE = (
    "[42000] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]VIEW SERVER STATE permission was denied on "
    "object 'server', database 'master'. (300) (SQLExecDirectW); [42000] [Microsoft][ODBC Driver 18 for SQL "
    "Server][SQL Server]The user does not have permission to perform this action. (297)")


def denied_read():
    """The error as SQLAlchemy raises it around pyodbc's."""
    pyodbc = pytest.importorskip("pyodbc")
    return DBAPIError.instance(POOL_STATS_SQL, None, pyodbc.ProgrammingError("42000", NO_VIEW_SERVER_STATE),
                               pyodbc.Error)


class Closing(Readings):
    closed = 0

    def close(self):
        self.closed += 1


def test_a_probe_refused_for_lack_of_permission_says_so_once_and_reads_no_more():
    now, told = [0.0], []
    source = Closing(denied_read(), {"cpu": 99.0})
    gate = PressureGate(source, limit=80, interval=5, clock=lambda: now[0], on_warning=told.append)
    line = DENIED.format(number=300)
    assert gate.admit() and gate.off == line and told == [line]
    assert source.closed == 1  # no more reads: the login goes at once
    for now[0] in (5.0, 10.0, 600.0):
        assert gate.admit() and gate.admit()  # off: every start goes ahead, unread
    assert (source.reads, told, gate.off) == (1, [line], line)
    assert gate.take_errors() == ((line, 1),) and gate.take_errors() == ()
    gate.close()
    assert source.closed == 2


def test_other_failed_reads_are_counted_not_listed_again():
    now = [0.0]
    timeout = TimeoutError("no answer in 30 s")
    gate = PressureGate(Readings(*[timeout] * 30), limit=80, interval=1, clock=lambda: now[0])
    for i in range(30):
        now[0] = float(i)
        assert gate.admit()  # fails open every time
    assert gate.take_errors() == ((OPENED.format(error="TimeoutError: no answer in 30 s"), 30),)
    distinct = PressureGate(Readings(*[TimeoutError(f"read {i}") for i in range(DISTINCT + 5)]), limit=80,
                            interval=1, clock=lambda: now[0])
    for i in range(DISTINCT + 5):
        now[0] = 100.0 + i
        distinct.admit()
    taken = distinct.take_errors()
    assert len(taken) == DISTINCT + 1 and taken[-1] == (MORE, 5) and gate.off is None


def pool_database(pg_fleet, app: str) -> tuple[object, str]:
    fleet = pg_fleet(1)
    url = make_url(fleet.url(fleet.names[0])).update_query_dict({"application_name": app})
    return fleet, url.render_as_string(hide_password=False)


def logins(fleet, app: str) -> list[int]:
    return [pid for (pid,) in fleet.query("postgres", f"SELECT pid FROM pg_stat_activity "
                                                      f"WHERE application_name = '{app}'")]


def gone(fleet, app: str) -> bool:
    deadline = time.monotonic() + 5
    while logins(fleet, app) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not logins(fleet, app)


@pytest.mark.postgres
def test_the_probe_reads_on_one_login_until_it_is_closed(pg_fleet):
    """A real login (PostgreSQL stands in for the pool's database; the query returns the server process)."""
    fleet, url = pool_database(pg_fleet, app := "tenants_probe_one_login")
    probe = ElasticPoolPressure(url, Connector(), sql="SELECT pg_backend_pid(), 1, 2, 3")
    try:
        first = probe.read()
        assert [probe.read() for _ in range(3)] == [first] * 3
        assert logins(fleet, app) == [int(first["cpu"])]  # one connection, between readings too
        fleet.query("postgres", f"SELECT pg_terminate_backend({int(first['cpu'])})")
        with pytest.raises(DBAPIError):
            probe.read()  # the connection died under it: this read fails, ...
        again = probe.read()  # ... and the next one logs in afresh
        assert again["cpu"] != first["cpu"] and logins(fleet, app) == [int(again["cpu"])]
    finally:
        probe.close()
    assert gone(fleet, app)


@pytest.mark.postgres
def test_a_run_in_waves_reads_the_pool_on_one_login_and_lets_it_go_at_the_end(pg_fleet, tmp_path, monkeypatch):
    fleet, url = pool_database(pg_fleet, app := "tenants_probe_one_run")
    made: list[PressureGate] = []

    def gate_for(env, tenants, on_warning=None):
        made.append(PressureGate(ElasticPoolPressure(url, Connector(), sql="SELECT 0, 0, 0, 0"), limit=80,
                                 interval=0, on_warning=on_warning))
        return made[-1]

    monkeypatch.setattr(api, "_pressure_gate", gate_for)  # an mssql environment's probe, on PostgreSQL
    names = ["c1", "c2", "t1", "t2"]
    config = fleet_config(tmp_path / "t.toml", names, env="w", tags={"c1": ["canary"], "c2": ["canary"]},
                          extra='waves = [{tag = "canary"}, {rest = true}]')
    seen: list[tuple[int, ...]] = []
    report = api.prepare_upgrade(settings_for(config, "w")).run(
        api.RunOptions(concurrency=2), on_result=lambda result: seen.append(tuple(logins(fleet, app))))
    assert report.counts == {"upgraded": 4} and [w["ran"] for w in report.waves] == [True, True]
    assert len(made) == 1  # one probe for the whole run, every wave
    assert len(seen) == 4 and len(set(seen)) == 1 and len(seen[0]) == 1  # one login, the same one throughout
    assert gone(fleet, app)  # let go when the run ended


def test_a_deploy_identity_without_view_server_state_is_told_once(cli, tmp_path, monkeypatch):
    """The CLI over an mssql environment in two waves (its tenants unreachable: a closed port), whose probe is
    refused as Azure SQL refuses it: one warning line on stderr, one line in the report and the summary."""
    refused, reads = denied_read(), []

    def read(self):
        reads.append(self.url)
        raise refused

    monkeypatch.setattr(ElasticPoolPressure, "read", read)  # the one thing SQL Server would do here
    monkeypatch.setenv("SQL_PW", "odbc-Secret-9")
    config = fleet_config(
        tmp_path / "t.toml", ("c1", "c2", "t1", "t2"), env="prod", tags={"c1": ["canary"], "c2": ["canary"]},
        url="mssql+pyodbc://deploy:${SQL_PW}@127.0.0.1:1/{tenant}?driver=FreeTDS&TDS_Version=7.4",
        extra='auth = "sql"\nretries = 0\npressure_limit = 80\npressure_interval = 0.01\n'
              'waves = [{tag = "canary", max_failures = 9}, {rest = true, max_failures = 9}]')
    report, summary = tmp_path / "r.json", tmp_path / "summary.md"
    run = cli("--config", str(config), "-e", "prod", "upgrade", "-j", "2", "--report", str(report),
              "--summary-markdown", str(summary))
    line = DENIED.format(number=300)
    assert run.code == 1  # the tenants themselves are unreachable
    assert [e for e in run.err.splitlines() if "pressure" in e] == [f"tenants: warning: pressure_limit: {line}"]
    assert len(reads) == 1  # off for the rest of the run: the second wave did not read either
    data = json.loads(report.read_text())
    assert data["pressure_errors"] == [line] and [w["ran"] for w in data["waves"]] == [True, True]
    assert "- Pressure probe: cannot read sys.dm\\_elastic\\_pool\\_resource\\_stats: the deploy identity lacks " \
           "VIEW SERVER STATE (SQL Server error 300; add its login to ##MS\\_ServerStateReader##" in summary.read_text()
    assert "odbc-Secret-9" not in run.out + run.err + report.read_text()
