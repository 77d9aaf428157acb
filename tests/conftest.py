"""Fixtures: real SQLite files, throwaway PostgreSQL databases, throwaway Alembic projects.

PostgreSQL: ``TENANTS_TEST_PG_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``). When
the server is unreachable the PostgreSQL tests skip with the reason, unless ``TENANTS_REQUIRE_PG=1`` (set by
``.ci/run``), which turns the skip into a failure.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from tenants.cli import main

ROOT = Path(__file__).resolve().parent.parent
ALEMBIC_INI = ROOT / "alembic.ini"
HEAD = "0004_invoice_user_index"
DEMO_REVISIONS = ["0001_users", "0002_invoices", "0003_invoice_status", "0004_invoice_user_index"]
PG_URL = os.environ.get("TENANTS_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def write_config(path: Path, body: str) -> Path:
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


@pytest.fixture
def sqlite_config(tmp_path: Path):
    """A config with a static fleet of SQLite tenants in tmp_path, driving the project's own revisions."""

    def make(names=("acme", "globex", "initech"), extra: str = "", alembic: Path = ALEMBIC_INI) -> Path:
        tenants = ", ".join(f'"{n}"' for n in names)
        return write_config(tmp_path / "tenants.toml", f"""
            [environments.test]
            url = "sqlite:///db/{{tenant}}.db"
            tenants = [{tenants}]
            alembic = "{alembic}"
            retry_backoff = 0.01
            {extra}
        """)

    return make


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

def _pg_dsn(dbname: str = "postgres") -> str:
    url = make_url(PG_URL).set(drivername="postgresql", database=dbname)
    return url.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_available() -> None:
    try:
        with psycopg.connect(_pg_dsn(), connect_timeout=3):
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
        with psycopg.connect(_pg_dsn(name), autocommit=True) as conn:
            return conn.execute(sql).fetchall()

    def version(self, name: str) -> str | None:
        try:
            rows = self.query(name, "SELECT version_num FROM alembic_version")
        except psycopg.errors.UndefinedTable:
            return None
        return rows[0][0] if rows else None


def admin(sql: str) -> None:
    with psycopg.connect(_pg_dsn(), autocommit=True) as conn:
        conn.execute(sql)


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
        if source == "server":
            where = f'source = "server"\nmatch = "{prefix}*"'
        else:
            listed = static_names if static_names is not None else names
            where = "tenants = [" + ", ".join(f'"{x}"' for x in listed) + "]"
        config = write_config(tmp_path / f"{prefix}.toml", f"""
[environments.pg]
url = "{url}"
{where}
alembic = "{alembic}"
retry_backoff = 0.01
{extra}
""")
        return PgFleet(prefix, names, config)

    yield make
    for name in created:
        admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- throwaway Alembic projects ----------------------------------------------------------------------------

def make_project(root: Path, revisions: dict[str, str], env_py: str | None = None) -> Path:
    """An Alembic project of its own (not ours): ``alembic init``'s generic template, plus revisions.

    ``revisions`` maps a revision id to the body of its upgrade() (the downgrade is ``pass``); they chain
    in the given order. The generated env.py only knows ``sqlalchemy.url`` and builds its own engine, which
    is exactly the "any Alembic project" case the engine must drive.
    """
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run([Path(sys.executable).parent / "alembic", "init", "migrations"], cwd=root, check=True,
                   capture_output=True)
    if env_py is not None:
        (root / "migrations" / "env.py").write_text(textwrap.dedent(env_py), encoding="utf-8")
    down = None
    for i, (rev, body) in enumerate(revisions.items()):
        (root / "migrations" / "versions" / f"{i:03d}_{rev}.py").write_text(
            "import os, time\nimport sqlalchemy as sa\nfrom alembic import op\n\n"
            f"revision = {rev!r}\ndown_revision = {down!r}\nbranch_labels = None\ndepends_on = None\n\n"
            f"def upgrade():\n{textwrap.indent(textwrap.dedent(body).strip() or 'pass', '    ')}\n\n"
            "def downgrade():\n    pass\n",
            encoding="utf-8",
        )
        down = rev
    return root / "alembic.ini"


def guard_probe_project(root: Path, out: Path) -> Path:
    """A project whose one revision asks every guard about the demo schema and writes the answers to ``out``."""
    return make_project(root, {"probe": f"""
        import json
        from tenants import guards
        answers = {{
            "table": guards.has_table("users"), "no_table": guards.has_table("nope"),
            "column": guards.has_column("users", "email"), "no_column": guards.has_column("users", "nope"),
            "column_of_missing_table": guards.has_column("nope", "email"),
            "index": guards.has_index("users", "ux_users_email"), "no_index": guards.has_index("users", "nope"),
            "fk": guards.has_foreign_key("invoices", "fk_invoices_user_id_users"),
            "no_fk": guards.has_foreign_key("invoices", "nope"),
            "unique": guards.has_unique_constraint("invoices", "uq_invoices_number"),
        }}
        open({str(out)!r}, "w").write(json.dumps(answers))
    """}, env_py=(ROOT / "alembic" / "env.py").read_text())


GUARD_ANSWERS = {"table": True, "no_table": False, "column": True, "no_column": False,
                 "column_of_missing_table": False, "index": True, "no_index": False, "fk": True, "no_fk": False,
                 "unique": True}
