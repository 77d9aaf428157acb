"""Other projects' Alembic graphs through the CLI: offline SQL that env.py rendered for the wrong database or
could not render at all, a graph with no revisions, and the log lines an env.py's ``fileConfig`` turns on."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from helpers import make_project, write_config

# An env.py that ignores the URL Alembic gives it: offline, it renders for its own (SQLite) database.
OWN_URL_ENV_PY = """
    import os
    from alembic import context

    if context.is_offline_mode():
        context.configure(url=os.environ.get("MYAPP_DATABASE_URL", "sqlite:///myapp.db"), literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
"""
# The offline half of alembic's generic template, without its fileConfig.
OFFLINE_ENV_PY = """
    from alembic import context

    context.configure(url=context.config.get_main_option("sqlalchemy.url"), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
"""


def pg_environment(tmp_path: Path, ini: Path) -> Path:
    """A PostgreSQL environment; `tenants sql` without --tenant connects to nothing, so no server is needed."""
    return write_config(tmp_path / "tenants.toml", f"""
        [environments.pg]
        url = "postgresql+psycopg://deploy:Pg-s3cret@db.example/{{tenant}}"
        tenants = ["acme"]
        alembic = "{ini}"
    """)


def one_error_line(run) -> str:
    assert run.code == 2, (run.code, run.out, run.err)
    assert run.out == "" and "Traceback" not in run.err
    lines = run.err.splitlines()
    assert len(lines) == 1, run.err
    return lines[0]


def test_sql_refuses_sql_that_env_py_rendered_for_another_dialect(cli, tmp_path):
    ini = make_project(tmp_path / "proj", {"a1": "op.create_table('t', sa.Column('id', sa.Integer))"},
                       env_py=OWN_URL_ENV_PY)
    config = pg_environment(tmp_path, ini)
    env_py = tmp_path / "proj" / "migrations" / "env.py"
    assert one_error_line(cli("--config", str(config), "-e", "pg", "sql")) == (
        f"tenants: error: {env_py}: rendered sqlite SQL, not postgresql: env.py must render with the URL Alembic "
        "gives it (`context.configure(url=config.get_main_option(\"sqlalchemy.url\"))`), not one of its own")
    assert one_error_line(cli("--config", str(config), "-e", "pg", "sql", "--dialect", "mssql")).startswith(
        f"tenants: error: {env_py}: rendered sqlite SQL, not mssql: ")
    assert not (tmp_path / "myapp.db").exists()


def test_sql_names_the_revision_that_cannot_render_offline(cli, tmp_path):
    ini = make_project(tmp_path / "proj", {
        "a1": "op.create_table('t', sa.Column('id', sa.Integer))",
        "b2": "if not sa.inspect(op.get_bind()).has_table('u'):\n    op.create_table('u', sa.Column('id', sa.Integer))",
    }, env_py=OFFLINE_ENV_PY)
    config = pg_environment(tmp_path, ini)
    revision = tmp_path / "proj" / "migrations" / "versions" / "001_b2.py"
    assert one_error_line(cli("--config", str(config), "-e", "pg", "sql")) == (
        f"tenants: error: {revision}: cannot render revision b2 (upgrade a1 -> b2) offline: NoInspectionAvailable: "
        "No inspection system is available for object of type <class 'sqlalchemy.engine.mock.MockConnection'>; "
        "if it reads the database: offline nothing is connected, so guard that with `context.is_offline_mode()`")
    assert cli("--config", str(config), "-e", "pg", "sql", "a1").code == 0  # the range before it renders


def test_sql_env_py_that_raises_offline_is_one_line_without_secrets(cli, tmp_path):
    ini = make_project(tmp_path / "proj", {"a1": "pass"}, env_py="""
        from alembic import context

        raise RuntimeError("cannot use " + context.config.get_main_option("sqlalchemy.url") + "\\nsecond line")
    """)
    config = pg_environment(tmp_path, ini)
    env_py = tmp_path / "proj" / "migrations" / "env.py"
    assert one_error_line(cli("--config", str(config), "-e", "pg", "sql")) == (
        f"tenants: error: {env_py}: cannot render base:a1 offline: env.py raised RuntimeError: cannot use "
        "postgresql+psycopg://deploy:***@db.example/tenant")


def test_sql_env_py_that_renders_nothing_offline_says_so(cli, tmp_path):
    ini = make_project(tmp_path / "proj", {"a1": "pass"}, env_py="""
        from alembic import context

        if not context.is_offline_mode():
            raise SystemExit("online only")
    """)
    config = pg_environment(tmp_path, ini)
    env_py = tmp_path / "proj" / "migrations" / "env.py"
    assert one_error_line(cli("--config", str(config), "-e", "pg", "sql")) == (
        f"tenants: error: {env_py}: rendered nothing for base:a1: in offline (--sql) mode env.py must call "
        "`context.configure(url=...)` and `context.run_migrations()`")


def test_a_graph_without_revisions_says_so(cli, sqlite_config, tmp_path):
    ini = make_project(tmp_path / "proj", {})
    config = str(sqlite_config(alembic=ini))
    versions = tmp_path / "proj" / "migrations" / "versions"
    expected = (f"tenants: error: {ini}: no revisions found in {versions}; create the first one with "
                f"`alembic -c {ini} revision -m \"...\"` (or check script_location)")
    for command in (("upgrade",), ("status",), ("plan",), ("sql",)):
        assert one_error_line(cli("--config", config, "-e", "test", *command)) == expected, command
    assert not (tmp_path / "db").exists()


def run_tenants(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The real console script in a process of its own: its workers are real processes too."""
    return subprocess.run([sys.executable, "-m", "tenants", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120, env={**os.environ, "COLUMNS": "120"})


def test_alembic_log_lines_from_env_py_file_config_only_with_verbose(sqlite_config, tmp_path):
    """alembic init's env.py calls fileConfig(alembic.ini), whose [logger_alembic] is at INFO: without -v those
    lines stay out of the output, in the CLI's process (one tenant, `sql`) and in its worker processes."""
    ini = make_project(tmp_path / "proj", {"a1": "op.create_table('t', sa.Column('id', sa.Integer))",
                                           "b2": "op.create_table('u', sa.Column('id', sa.Integer))"})
    assert "[logger_alembic]\nlevel = INFO" in ini.read_text()  # the stock logging section
    config = str(sqlite_config(names=("acme", "globex", "initech", "umbrella"), alembic=ini))
    base = ("--config", config, "-e", "test")
    runs = [run_tenants(*base, "upgrade", "a1", "-t", "acme", cwd=tmp_path),  # serial: env.py in the CLI process
            run_tenants(*base, "upgrade", "a1", "-j", "2", cwd=tmp_path),  # worker processes
            run_tenants(*base, "sql", cwd=tmp_path)]
    for run in runs:
        assert run.returncode == 0, run.stderr
        assert "INFO  [alembic" not in run.stdout + run.stderr, run.args
    assert runs[1].stderr == ""
    assert [line.split()[0] for line in runs[1].stdout.splitlines()[:4]] == ["up-to-date"] + ["upgraded"] * 3

    loud = [run_tenants("-v", *base, "upgrade", "-j", "2", cwd=tmp_path),
            run_tenants("--verbose", *base, "sql", cwd=tmp_path)]
    for run in loud:
        assert run.returncode == 0, run.stderr
    assert [line.split()[0] for line in loud[0].stdout.splitlines()[:4]] == ["upgraded"] * 4
    assert loud[0].stderr.count("INFO  [alembic.runtime.migration] Running upgrade a1 -> b2") == 4
    assert "INFO  [alembic.runtime.migration] Running upgrade  -> a1" in loud[1].stderr


def test_an_internal_error_is_one_line_with_anything_shaped_like_a_secret_masked(cli, sqlite_config, monkeypatch):
    """The last resort knows no secret (the settings may not have loaded): what has the shape of one (a URL's
    password, a PWD= value, a token) is masked in its one line, and there is no traceback."""
    from tenants import api

    def broken(*_args, **_kwargs):
        raise RuntimeError("cannot reach postgresql+psycopg://app:hunter2@db.example.com/t1 (PWD=p@ss; "
                           "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2ln)\nsecond line")

    monkeypatch.setattr(api, "status", broken)
    run = cli("--config", str(sqlite_config(["acme"])), "-e", "test", "status")
    assert run.code == 1
    assert run.err == ("tenants: internal error: RuntimeError: cannot reach postgresql+psycopg://app:***@db.example.com"
                       "/t1 (PWD=***; Bearer ***) (please report it)\n")
