"""The engine over psycopg2 (``postgresql+psycopg2://``), against the real PostgreSQL server.

psycopg2 names an error's SQLSTATE ``pgcode`` where psycopg 3 says ``sqlstate``: every classification the engine
makes (new tenant, missing pin table, retry or not) must read it through :func:`tenants.db.sqlstate_of`. The
errors here are real: raised by the server, through the driver, wrapped by SQLAlchemy.
"""

from __future__ import annotations

import threading

import pytest
from helpers import HEAD, PG_URL
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from tenants import api
from tenants.config import load_settings
from tenants.db import Connector, is_transient, sqlstate_of
from tenants.model import State, Status

pytest.importorskip("psycopg2")
pytestmark = pytest.mark.postgres

DRIVERS = {"psycopg": "postgresql+psycopg", "psycopg2": "postgresql+psycopg2"}


def with_driver(url: str, driver: str = "psycopg2") -> str:
    return make_url(url).set(drivername=DRIVERS[driver]).render_as_string(hide_password=False)


def psycopg2_fleet(pg_fleet, n: int, **kw):
    """A throwaway fleet whose environment connects through psycopg2."""
    return to_psycopg2(pg_fleet(n, **kw))


def to_psycopg2(fleet):
    scheme = f"{make_url(PG_URL).drivername}://"
    fleet.config.write_text(fleet.config.read_text().replace(scheme, "postgresql+psycopg2://", 1))
    return fleet


def settings_of(fleet):
    return load_settings(fleet.config, "pg", environ={})


def test_psycopg2_new_tenant_is_new_and_gets_upgraded(pg_fleet):
    fleet = psycopg2_fleet(pg_fleet, 1, source="static")
    status = api.status(settings_of(fleet))
    assert [t.state for t in status.tenants] == [State.NEW], status.tenants[0].error
    report = api.upgrade(settings_of(fleet))
    assert [(r.status, r.from_revision, r.to_revision) for r in report.results] == [
        (Status.UPGRADED, "base", HEAD)], report.results[0].error
    assert fleet.version(fleet.names[0]) == HEAD


def test_psycopg2_fleet_upgrades_through_the_library_and_the_cli(pg_fleet, cli):
    fleet = psycopg2_fleet(pg_fleet, 4)
    first = api.upgrade(settings_of(fleet), "0002", options=api.RunOptions(concurrency=2))
    assert [r.status for r in first.results] == [Status.UPGRADED] * 4, [r.error for r in first.results]
    run = cli("--config", str(fleet.config), "-e", "pg", "upgrade", "-j", "2")
    assert run.code == 0, run.out + run.err
    assert sorted(line.split()[:2] for line in run.out.splitlines()[:4]) == [["upgraded", n] for n in fleet.names]
    assert {fleet.version(n) for n in fleet.names} == {HEAD}
    assert cli("--config", str(fleet.config), "-e", "pg", "status").code == 0


def test_psycopg2_pin_status_upgrade_unpin(pg_fleet, cli):
    fleet = pg_fleet(2, source="static")
    config = ("--config", str(fleet.config), "-e", "pg")
    pinned, other = fleet.names
    assert cli(*config, "upgrade", "0002").code == 0  # version tables, but no pin table yet
    to_psycopg2(fleet)
    status = cli(*config, "status", "--json")
    assert status.code == 1 and "unreachable" not in status.out  # behind, and read (no pin table is no pin)
    assert cli(*config, "pin", "-t", pinned, "--reason", "incident 42").out == f"pinned {pinned}: incident 42\n"
    run = cli(*config, "upgrade", "--keep-going")
    finished = sorted(line.split()[:2] for line in run.out.splitlines()[:2])  # lines come in finish order
    assert finished == sorted([["pinned", pinned], ["upgraded", other]])
    status = cli(*config, "status")
    assert status.code == 1 and "pinned by" in status.out and "incident 42" in status.out
    assert cli(*config, "unpin", "-t", pinned).out == f"unpinned {pinned}\n"
    assert cli(*config, "unpin", "-t", pinned).out == f"{pinned} was not pinned\n"
    assert cli(*config, "upgrade").code == 0
    assert cli(*config, "status").code == 0
    assert {fleet.version(n) for n in fleet.names} == {HEAD}


def _deadlock(engine) -> DBAPIError:
    """Two transactions that each hold the row the other one wants: the server kills one (40P01)."""
    first, second = engine.connect(), engine.connect()
    raised: list[DBAPIError] = []

    def update(conn, row: int) -> None:
        try:
            conn.execute(text("UPDATE rows SET n = n + 1 WHERE id = :id"), {"id": row})
        except DBAPIError as err:
            raised.append(err)
            conn.rollback()  # the victim's locks go: the other one proceeds

    try:
        update(first, 1)
        update(second, 2)
        waiting = threading.Thread(target=update, args=(first, 2))
        waiting.start()
        update(second, 1)
        waiting.join(30)
    finally:
        first.close()
        second.close()
    assert len(raised) == 1, raised
    return raised[0]


def _lock_timeout(engine) -> DBAPIError:
    """A statement that waits for a lock longer than its ``lock_timeout`` (55P03)."""
    with engine.connect() as holder, engine.connect() as waiter:
        holder.execute(text("LOCK TABLE rows IN ACCESS EXCLUSIVE MODE"))
        waiter.execute(text("SET lock_timeout = '100ms'"))
        with pytest.raises(DBAPIError) as err:
            waiter.execute(text("SELECT * FROM rows"))
        holder.rollback()
    return err.value


@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_deadlock_and_lock_timeout_are_transient_a_syntax_error_is_not(pg_fleet, driver):
    fleet = pg_fleet(1)
    engine = create_engine(with_driver(fleet.url(fleet.names[0]), driver))
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE rows (id int PRIMARY KEY, n int)"))
            conn.execute(text("INSERT INTO rows VALUES (1, 0), (2, 0)"))
        deadlock, timeout = _deadlock(engine), _lock_timeout(engine)
        with pytest.raises(DBAPIError) as syntax, engine.connect() as conn:
            conn.execute(text("SELEC 1"))
    finally:
        engine.dispose()
    assert type(deadlock.orig).__module__.startswith(driver + ".")  # the driver's own error, not a stand-in
    # From SQLAlchemy's wrapper and from the driver's error alike.
    assert [sqlstate_of(deadlock), sqlstate_of(deadlock.orig)] == ["40P01", "40P01"]
    assert [sqlstate_of(timeout), sqlstate_of(timeout.orig)] == ["55P03", "55P03"]
    assert sqlstate_of(syntax.value) == "42601"
    assert is_transient(deadlock) and is_transient(deadlock.orig)
    assert is_transient(timeout) and is_transient(timeout.orig)
    assert not is_transient(syntax.value) and not is_transient(syntax.value.orig)


def test_errors_without_a_sqlstate():
    assert sqlstate_of(ValueError("not a database error")) is None
    with pytest.raises(DBAPIError) as refused:
        create_engine("postgresql+psycopg2://postgres@127.0.0.1:1/x").connect()
    assert sqlstate_of(refused.value) is None  # the server never answered
    assert is_transient(refused.value)  # ...and the text says why it is worth a retry


def test_shared_engine_points_each_psycopg2_connection_at_its_tenant(pg_fleet):
    """The Connector's ``do_connect`` hook sets ``cparams["dbname"]``: psycopg2 takes the same keyword."""
    from concurrent.futures import ThreadPoolExecutor

    fleet = pg_fleet(4)
    connector = Connector()
    engines = set()

    def current_database(name: str) -> tuple[str, str]:
        with connector.engine(with_driver(fleet.url(name))) as engine, engine.connect() as conn:
            engines.add(id(engine))
            return conn.execute(text("SELECT current_database()")).scalar(), type(conn.connection.dbapi_connection
                                                                                  ).__module__

    try:
        with ThreadPoolExecutor(3) as pool:
            seen = list(pool.map(current_database, fleet.names * 3))
    finally:
        connector.dispose()
    assert [name for name, _ in seen] == fleet.names * 3
    assert {module for _, module in seen} == {"psycopg2.extensions"}
    assert len(engines) == 1
