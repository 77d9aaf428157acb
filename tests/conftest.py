"""Fixtures: real SQLite files, throwaway PostgreSQL databases, throwaway Alembic projects.

PostgreSQL: ``TENANTS_TEST_PG_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``). When
the server is unreachable the PostgreSQL tests skip with the reason, unless ``TENANTS_REQUIRE_PG=1`` (set by
``.ci/run``), which turns the skip into a failure.
"""

from __future__ import annotations

import importlib.util
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

pytest.register_assert_rewrite("helpers")  # its asserts (payload shapes) explain themselves as a test's do

from helpers import ALEMBIC_INI, PG_URL, ROOT, admin, fleet_config, pg_dsn, serve_webhook  # noqa: E402

from tenants.cli import main  # noqa: E402
from tenants.dialects.postgresql import PostgreSQL  # noqa: E402
from tenants.dialects.sqlite import SQLite  # noqa: E402


@pytest.fixture
def sqlite_config(tmp_path: Path):
    """A config with a static fleet of SQLite tenants in tmp_path, driving the project's own revisions."""

    def make(names=("acme", "globex", "initech"), extra: str = "", alembic: Path = ALEMBIC_INI) -> Path:
        return fleet_config(tmp_path / "tenants.toml", names, alembic=alembic, extra=extra)

    return make


@pytest.fixture
def webhook(monkeypatch):
    """The loopback chat webhook (helpers.Webhook), running for the test; no proxy between it and the client."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with serve_webhook() as server:
        yield server


@pytest.fixture
def scratch_calls(monkeypatch):
    """Counts the scratch databases each dialect is asked for (the public Dialect method, wrapped)."""
    calls: list[str] = []
    for cls in (SQLite, PostgreSQL):
        original = cls.scratch_database

        def counting(self, url, *, _original=original, **kwargs):
            calls.append(self.name)
            return _original(self, url, **kwargs)

        monkeypatch.setattr(cls, "scratch_database", counting)
    return calls



@dataclass
class CliRun:
    code: int
    out: str
    err: str


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run the real console-script entry point in-process; returns exit code, stdout, stderr."""
    monkeypatch.delenv("TENANTS_CONFIG", raising=False)
    monkeypatch.delenv("TENANTS_ENV", raising=False)

    def run(*args: str) -> CliRun:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            main(list(args))
        captured = capsys.readouterr()
        return CliRun(exc.value.code, captured.out, captured.err)

    return run


# --- PostgreSQL ------------------------------------------------------------------------------------------

PG_FIXTURES = {"pg_available", "pg_fleet"}


def pytest_collection_modifyitems(config, items) -> None:
    """A test that reaches PostgreSQL through a fixture must say so (``-m "not postgres"`` deselects it, a
    runner without a server knows what it skips): collection fails on one that does not."""
    unmarked = [item.nodeid for item in items
                if PG_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("postgres") is None]
    if unmarked:
        raise pytest.UsageError("these tests use a PostgreSQL fixture (" + ", ".join(sorted(PG_FIXTURES))
                                + ") without @pytest.mark.postgres:\n  " + "\n  ".join(unmarked))


@pytest.fixture(scope="session")
def pg_available() -> None:
    try:
        with psycopg.connect(pg_dsn(), connect_timeout=3):
            pass
    except psycopg.Error as err:
        if os.environ.get("TENANTS_REQUIRE_PG") == "1":
            pytest.fail(f"PostgreSQL at {make_url(PG_URL).render_as_string()} is required but unreachable: {err}")
        pytest.skip(f"PostgreSQL at {make_url(PG_URL).render_as_string()} unreachable ({err}); "
                    "set TENANTS_TEST_PG_URL or start the server")


@dataclass
class PgFleet:
    prefix: str
    names: list[str]
    config: Path

    def url(self, name: str) -> str:
        return make_url(PG_URL).set(database=name).render_as_string(hide_password=False)

    def query(self, name: str, sql: str):
        with psycopg.connect(pg_dsn(name), autocommit=True) as conn:
            return conn.execute(sql).fetchall()

    def version(self, name: str) -> str | None:
        try:
            rows = self.query(name, "SELECT version_num FROM alembic_version")
        except psycopg.errors.UndefinedTable:
            return None
        return rows[0][0] if rows else None


@pytest.fixture
def pg_fleet(pg_available, tmp_path: Path):
    """Factory: N throwaway PostgreSQL tenant databases and a `server` config matching them; dropped after."""
    created: list[str] = []

    def make(n: int = 3, alembic: Path = ALEMBIC_INI, extra: str = "", source: str = "server",
             static_names: list[str] | None = None) -> PgFleet:
        prefix = f"tt_{uuid.uuid4().hex[:8]}_"
        names = [f"{prefix}{i:03d}" for i in range(n)]
        for name in names:
            admin(f'CREATE DATABASE "{name}"')
            created.append(name)
        url = make_url(PG_URL).set(database="{tenant}").render_as_string(hide_password=False)
        url = url.replace("%7Btenant%7D", "{tenant}")
        path = tmp_path / f"{prefix}.toml"
        if source == "server":
            config = fleet_config(path, None, env="pg", url=url, alembic=alembic,
                                  extra=f'source = "server"\nmatch = "{prefix}*"\n{extra}')
        else:
            listed = static_names if static_names is not None else names
            config = fleet_config(path, listed, env="pg", url=url, alembic=alembic, extra=extra)
        return PgFleet(prefix, names, config)

    yield make
    for name in created:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_proxy(pg_available):
    """scripts/latency_proxy.py in front of the test server, with no delay: its counters of logins, messages
    and round trips (issue 13)."""
    spec = importlib.util.spec_from_file_location("latency_proxy", ROOT / "scripts" / "latency_proxy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    url = make_url(PG_URL)
    with module.LatencyProxy(f"{url.host or '127.0.0.1'}:{url.port or 5432}") as running:
        yield running


@pytest.fixture
def pg_database(pg_available):
    """Factory: a throwaway, empty PostgreSQL database; its name. Dropped afterwards."""
    made = []

    def make(suffix: str = "") -> str:
        name = f"rt_{uuid.uuid4().hex[:8]}{suffix}"
        admin(f'CREATE DATABASE "{name}"')
        made.append(name)
        return name

    yield make
    for name in made:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
