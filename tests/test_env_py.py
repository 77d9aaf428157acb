"""Other projects' env.py files: the recipes they follow, the database they really migrate, the audit trail.

Alembic documents three ways for a program to give env.py its database: a Connection in
``config.attributes["connection"]`` (the cookbook's "Sharing a Connection"), an Engine there (the older recipe,
whose env.py calls ``connectable.connect()``: jupyterhub's), or ``sqlalchemy.url`` alone (``alembic init``'s
template). The environment's ``env_py`` key chooses; the default serves the first two.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from helpers import make_project

from tenants import api
from tenants.config import load_settings
from tenants.errors import ConfigError
from tenants.model import Status
from tenants.selection import Selection

# The tenant's lock must be held while env.py migrates, whatever it migrates with: the revision looks.
LOCK_PROBE = """
    import fcntl
    from alembic import context
    from sqlalchemy.engine import make_url
    fd = os.open(make_url(context.config.get_main_option("sqlalchemy.url")).database + ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        raise RuntimeError("the tenant's lock is not held while env.py runs")
    except BlockingIOError:
        pass
    finally:
        os.close(fd)
    op.create_table("a", sa.Column("id", sa.Integer, primary_key=True), sa.Column("bind", sa.String(40)))
    op.execute(sa.text("INSERT INTO a (bind) VALUES (:b)").bindparams(b=type(op.get_bind()).__name__))
"""
SECOND = "op.add_column('a', sa.Column('label', sa.String(20)))"

# jupyterhub's recipe: whatever is handed in (or an engine of its own) gets .connect(); no on_version_apply.
CONNECT_ON_WHAT_IS_HANDED_IN = """
    from alembic import context
    from sqlalchemy import engine_from_config, pool

    config = context.config
    connectable = config.attributes.get("connection", None)
    if connectable is None:
        connectable = engine_from_config(config.get_section(config.config_ini_section), prefix="sqlalchemy.",
                                         poolclass=pool.NullPool)
    with connectable.connect() as connection:
        context.configure(connection=connection, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
"""

# Ignores what it is handed: alembic init's template, with a transaction per revision (r1 of a failing run
# stays applied).
OWN_ENGINE_PER_REVISION = CONNECT_ON_WHAT_IS_HANDED_IN.replace('config.attributes.get("connection", None)', "None")
assert OWN_ENGINE_PER_REVISION != CONNECT_ON_WHAT_IS_HANDED_IN

# The cookbook's "Sharing a Connection": what is handed in goes to configure() as it is.
SHARED_CONNECTION = """
    from alembic import context

    connection = context.config.attributes["connection"]
    context.configure(connection=connection, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()
"""

# Needs a real Engine (Engine.begin() does not exist on a Connection).
ENGINE_ONLY = """
    from alembic import context
    from sqlalchemy.engine import Engine

    engine = context.config.attributes["connection"]
    assert isinstance(engine, Engine), f"an Engine, not {type(engine).__name__}"
    with engine.begin() as connection:
        context.configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
"""

# Builds its own engine from sqlalchemy.url and refuses anything handed in.
URL_ONLY = """
    from alembic import context
    from sqlalchemy import create_engine, pool

    config = context.config
    assert "connection" not in config.attributes, "handed a connection"
    engine = create_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
"""


def settings_for(path: Path):
    return load_settings(path, "test", environ={})


def rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def tables(db: Path) -> set[str]:
    return {r[0] for r in rows(db, "SELECT name FROM sqlite_master WHERE type = 'table'")}


@pytest.mark.parametrize(("env_py", "key", "bind"), [
    (CONNECT_ON_WHAT_IS_HANDED_IN, None, "MigrationConnection"),
    (SHARED_CONNECTION, None, "MigrationConnection"),
    (ENGINE_ONLY, "engine", "Connection"),
    (URL_ONLY, "url", "Connection"),
], ids=["connect-on-what-is-handed-in", "shared-connection", "engine", "url"])
def test_each_recipe_migrates_the_tenant_under_its_lock(sqlite_config, tmp_path, env_py, key, bind):
    """The default hands in a Connection that also answers connect(): env.py then migrates on the tool's own
    connection (no second login). `engine` and `url` serve env.py files that need those."""
    ini = make_project(tmp_path / "proj", {"r1": LOCK_PROBE, "r2": SECOND}, env_py=env_py)
    settings = settings_for(sqlite_config(["x", "y"], alembic=ini, extra=f'env_py = "{key}"' if key else ""))
    report = api.upgrade(settings, options=api.RunOptions(concurrency=2))
    assert [(r.status, r.applied, r.error) for r in report.results] == [(Status.UPGRADED, ("r1", "r2"), None)] * 2
    for name in ("x", "y"):
        db = tmp_path / "db" / f"{name}.db"
        assert rows(db, "SELECT version_num FROM alembic_version") == [("r2",)]
        assert rows(db, "SELECT bind FROM a") == [(bind,)]


def test_relative_script_location_is_found_beside_alembic_ini(sqlite_config, tmp_path, monkeypatch):
    """optuna's stock alembic.ini says `script_location = alembic`: relative to the ini, not to the current
    directory (Alembic's own rule), which may hold an `alembic/` folder of another project."""
    ini = make_project(tmp_path / "proj", {"a1": "op.create_table('t1', sa.Column('id', sa.Integer))"})
    text = ini.read_text()
    assert "script_location = %(here)s/migrations" in text
    ini.write_text(text.replace("script_location = %(here)s/migrations", "script_location = migrations"))
    make_project(tmp_path / "elsewhere", {"other": "pass"})
    monkeypatch.chdir(tmp_path / "elsewhere")  # has a `migrations/` folder of its own
    settings = settings_for(sqlite_config(["x"], alembic=ini))
    assert [(r.status, r.applied) for r in api.upgrade(settings).results] == [(Status.UPGRADED, ("a1",))]


def test_env_py_must_name_a_recipe(sqlite_config):
    with pytest.raises(ConfigError, match=r"env_py must be one of connection, engine, url, not 'guess'"):
        settings_for(sqlite_config(extra='env_py = "guess"'))


def other_database_env_py(other: Path) -> str:
    """An env.py that migrates the database in its own settings, whatever it is handed."""
    return f"""
        from alembic import context
        from sqlalchemy import create_engine, pool

        with create_engine("sqlite:///{other}", poolclass=pool.NullPool).connect() as connection:
            context.configure(connection=connection)
            with context.begin_transaction():
                context.run_migrations()
    """


def test_env_py_that_migrates_another_database_fails_the_tenant(sqlite_config, tmp_path, cli):
    other = tmp_path / "settings.db"
    ini = make_project(tmp_path / "proj", {"r1": "op.create_table('t1', sa.Column('id', sa.Integer))"},
                       env_py=other_database_env_py(other))
    config = sqlite_config(["x"], alembic=ini)
    result = api.upgrade(settings_for(config)).results[0]
    assert (result.status, result.from_revision, result.to_revision, result.applied) == (
        Status.FAILED, "base", "base", ())
    assert result.error == (
        "env.py returned but the tenant's version table alembic_version still reads base, not r1: env.py "
        "migrated another database (it must use the connection or URL tenants hands it) or uses another "
        "version_table")
    tenant = tmp_path / "db" / "x.db"
    assert tables(tenant) == {"tenants_history"}  # untouched: only the failure is recorded
    assert rows(tenant, "SELECT outcome, error FROM tenants_history") == [("failed", result.error)]
    assert rows(other, "SELECT version_num FROM alembic_version") == [("r1",)] and "t1" in tables(other)

    other.unlink()
    run = cli("--config", str(config), "-e", "test", "upgrade")
    assert run.code == 1
    assert "x  at base" in run.out and "env.py returned but the tenant's version table alembic_version still " \
        "reads base, not r1" in run.out
    assert "upgraded" not in run.out


def test_wrong_version_table_fails_a_new_tenant(sqlite_config, tmp_path, cli):
    """env.py (alembic init's) keeps alembic_version; the environment says another table. On a new tenant
    both read nothing, so only the read afterwards can tell."""
    ini = make_project(tmp_path / "proj", {"a1": "op.create_table('t1', sa.Column('id', sa.Integer))"})
    config = sqlite_config(["x", "y"], alembic=ini, extra='version_table = "app_version"')
    result = api.upgrade(settings_for(config), selection=Selection(tenants=("x",))).results[0]
    assert (result.status, result.to_revision) == (Status.FAILED, "base")
    assert result.error.startswith(
        "env.py returned but the tenant's version table app_version still reads base, not a1: ")

    run = cli("--config", str(config), "-e", "test", "upgrade", "-t", "y")
    assert run.code == 1 and "env.py returned but the tenant's version table app_version" in run.out


def test_env_py_that_does_not_pass_on_version_apply_still_gets_the_audit_trail(sqlite_config, tmp_path):
    """alembic init's env.py gives Alembic no on_version_apply: the rows are written after it returns."""
    ini = make_project(tmp_path / "proj", {"a1": "op.create_table('t1', sa.Column('id', sa.Integer))",
                                           "a2": "op.create_table('t2', sa.Column('id', sa.Integer))"})
    settings = settings_for(sqlite_config(["x"], alembic=ini))
    report = api.upgrade(settings)
    assert report.results[0].status is Status.UPGRADED
    history = api.tenant_history(settings, "x")
    assert [(r["operation"], r["from_revision"], r["to_revision"], r["outcome"], r["run_id"]) for r in history] == [
        ("upgrade", "base", "a1", "applied", report.run_id), ("upgrade", "a1", "a2", "applied", report.run_id)]

    assert api.downgrade(settings, api.plan_downgrade(settings, "x", "base")).results[0].status is Status.DOWNGRADED
    assert api.stamp(settings, "a2", Selection(tenants=("x",))).results[0].status is Status.STAMPED
    history = api.tenant_history(settings, "x")
    assert [(r["operation"], r["from_revision"], r["to_revision"], r["outcome"]) for r in history[2:]] == [
        ("downgrade", "a2", "a1", "applied"), ("downgrade", "a1", "base", "applied"),
        ("stamp", "base", "a2", "applied")]


def test_audit_trail_of_a_failure_half_way_through_without_on_version_apply(sqlite_config, tmp_path):
    """A revision per transaction, no on_version_apply: r1 commits, r2 fails. History shows both."""
    ini = make_project(tmp_path / "proj", {"r1": "op.create_table('one', sa.Column('id', sa.Integer))",
                                           "r2": "op.execute('SELECT * FROM no_such_table')"},
                       env_py=OWN_ENGINE_PER_REVISION)
    settings = settings_for(sqlite_config(["x"], alembic=ini))
    result = api.upgrade(settings).results[0]
    assert (result.status, result.to_revision, result.applied) == (Status.FAILED, "r1", ("r1",))
    assert [(r["from_revision"], r["to_revision"], r["outcome"]) for r in api.tenant_history(settings, "x")] == [
        ("base", "r1", "applied"), ("r1", "r2", "failed")]


# --- PostgreSQL: the tool's shared per-server engine, the advisory lock ------------------------------------

PG_LOCK_PROBE = """
    held, here = op.get_bind().execute(sa.text(
        "SELECT count(*), bool_or(pid = pg_backend_pid()) FROM pg_locks WHERE locktype = 'advisory' AND granted "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")).one()
    if held != 1:
        raise RuntimeError("the tenant's lock is not held while env.py runs")
    op.create_table("a", sa.Column("id", sa.Integer, primary_key=True), sa.Column("bind", sa.String(40)),
                    sa.Column("locked_here", sa.Boolean))
    op.execute(sa.text("INSERT INTO a (bind, locked_here) VALUES (:b, :h)").bindparams(
        b=type(op.get_bind()).__name__, h=here))
"""


@pytest.mark.postgres
@pytest.mark.parametrize(("env_py", "key", "bind", "locked_here"), [
    (CONNECT_ON_WHAT_IS_HANDED_IN, None, "MigrationConnection", True),
    (ENGINE_ONLY, "engine", "Connection", False),
    (URL_ONLY, "url", "Connection", False),
], ids=["connect-on-what-is-handed-in", "engine", "url"])
def test_each_recipe_on_postgres(pg_fleet, tmp_path, env_py, key, bind, locked_here):
    """The tenant's lock is held while env.py runs, whatever it is handed; on the connection it migrates with
    when it is handed one (issue 11: losing the lock then fails the revision in progress)."""
    ini = make_project(tmp_path / "proj", {"r1": PG_LOCK_PROBE, "r2": SECOND}, env_py=env_py)
    fleet = pg_fleet(2, alembic=ini, extra=f'env_py = "{key}"' if key else "")
    report = api.upgrade(load_settings(fleet.config, "pg", environ={}), options=api.RunOptions(concurrency=2))
    assert [(r.status, r.applied, r.error) for r in report.results] == [(Status.UPGRADED, ("r1", "r2"), None)] * 2
    for name in fleet.names:
        assert fleet.version(name) == "r2" and fleet.query(name, "SELECT bind, locked_here FROM a") == [
            (bind, locked_here)]


@pytest.mark.postgres
def test_env_py_that_migrates_another_postgres_database_fails_the_tenant(pg_fleet, tmp_path):
    fleet = pg_fleet(2)
    tenant, other = fleet.names
    ini = make_project(tmp_path / "proj", {"r1": "op.create_table('t1', sa.Column('id', sa.Integer))"}, env_py=f"""
        from alembic import context
        from sqlalchemy import create_engine, pool

        with create_engine({fleet.url(other)!r}, poolclass=pool.NullPool).connect() as connection:
            context.configure(connection=connection)
            with context.begin_transaction():
                context.run_migrations()
    """)
    fleet = pg_fleet(0, alembic=ini, source="static", static_names=[tenant])
    result = api.upgrade(load_settings(fleet.config, "pg", environ={})).results[0]
    assert (result.tenant, result.status, result.to_revision) == (tenant, Status.FAILED, "base")
    assert "still reads base, not r1: env.py migrated another database" in result.error
    assert fleet.version(tenant) is None and fleet.query(tenant, "SELECT to_regclass('t1')") == [(None,)]
    assert fleet.version(other) == "r1"
