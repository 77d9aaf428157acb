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

from tenants import api
from tenants.config import load_settings
from tenants.errors import ConfigError
from tenants.report import Status

from conftest import make_project

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


# --- PostgreSQL: the tool's shared per-server engine, the advisory lock ------------------------------------

PG_LOCK_PROBE = """
    held = op.get_bind().execute(sa.text(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid() "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")).scalar()
    if held != 1:
        raise RuntimeError("the tenant's lock is not held while env.py runs")
    op.create_table("a", sa.Column("id", sa.Integer, primary_key=True), sa.Column("bind", sa.String(40)))
    op.execute(sa.text("INSERT INTO a (bind) VALUES (:b)").bindparams(b=type(op.get_bind()).__name__))
"""


@pytest.mark.postgres
@pytest.mark.parametrize(("env_py", "key", "bind"), [
    (CONNECT_ON_WHAT_IS_HANDED_IN, None, "MigrationConnection"),
    (ENGINE_ONLY, "engine", "Connection"),
    (URL_ONLY, "url", "Connection"),
], ids=["connect-on-what-is-handed-in", "engine", "url"])
def test_each_recipe_on_postgres(pg_fleet, tmp_path, env_py, key, bind):
    ini = make_project(tmp_path / "proj", {"r1": PG_LOCK_PROBE, "r2": SECOND}, env_py=env_py)
    fleet = pg_fleet(2, alembic=ini, extra=f'env_py = "{key}"' if key else "")
    report = api.upgrade(load_settings(fleet.config, "pg", environ={}), options=api.RunOptions(concurrency=2))
    assert [(r.status, r.applied, r.error) for r in report.results] == [(Status.UPGRADED, ("r1", "r2"), None)] * 2
    for name in fleet.names:
        assert fleet.version(name) == "r2" and fleet.query(name, "SELECT bind FROM a") == [(bind,)]
