"""Acceptance: other projects' stock migration folders, driven through `alembic = ...` as a user would.

* optuna (``optuna/storages/_rdb/alembic.ini``, ``script_location = alembic``, an env.py that builds its own
  engine from ``sqlalchemy.url`` and does not pass ``on_version_apply`` on), from empty databases;
* jupyterhub (``jupyterhub/alembic/``; its ``alembic.ini`` is a template that ``jupyterhub.dbutil`` fills in,
  and its env.py calls ``.connect()`` on what it is handed), on databases its own ORM created and stamped, then
  taken three revisions down with plain Alembic;
* MLflow (``mlflow/store/db_migrations``, 70 revisions; its env.py opens a connection of its own from
  ``connection.engine``), on databases holding the initial tables its first revision expects
  (``unmanaged = "upgrade"``): fewer tenants, as each runs 70 revisions.

Each fleet must end with the schema plain ``alembic upgrade head`` gives (tables, columns, indexes, compared
with SQLAlchemy's inspector) and an audit row per revision. Plain Alembic runs in a subprocess: these env.py
files configure the logging of whatever process runs them.

Half the PostgreSQL tenants are reached through psycopg2 URLs (marked ``psycopg2``), the driver most other
projects use.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import PG_URL, ROOT, write_config
from sqlalchemy import create_engine, inspect, pool
from sqlalchemy.engine import make_url

from tenants import api
from tenants.config import load_settings
from tenants.model import Status

optuna = pytest.importorskip("optuna")
jupyterhub = pytest.importorskip("jupyterhub")
pytest.importorskip("mlflow")

OPTUNA_INI = Path(optuna.__file__).parent / "storages" / "_rdb" / "alembic.ini"
N = 10  # SQLite tenants; PostgreSQL gets 5 per driver, 10 in all

DRIVERS = [pytest.param("psycopg", marks=pytest.mark.postgres),
           pytest.param("psycopg2", marks=[pytest.mark.postgres, pytest.mark.psycopg2])]


def plain_alembic(ini: Path, script: str, urls: list[str]) -> None:
    """Run ``script`` (Alembic commands on ``cfg`` for each url) with plain Alembic, in a process of its own."""
    body = textwrap.dedent(f"""
        import sys
        from alembic import command
        from alembic.config import Config
        for url in sys.argv[1:]:
            cfg = Config({str(ini)!r})
            cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    """) + textwrap.indent(textwrap.dedent(script), "    ")
    # From the ini's folder, where Alembic finds a relative script_location (optuna's is `alembic`).
    done = subprocess.run([sys.executable, "-c", body, *urls], capture_output=True, text=True, timeout=300,
                          cwd=ini.parent)
    assert done.returncode == 0, done.stderr[-3000:]


def schema(url: str) -> dict:
    """Tables, columns (name, type, nullable) and indexes (name, columns, unique), less the tool's own table."""
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        found = inspect(engine)
        return {table: ([(c["name"], str(c["type"]), c["nullable"]) for c in found.get_columns(table)],
                        sorted((i["name"], tuple(i["column_names"]), bool(i["unique"]))
                               for i in found.get_indexes(table)))
                for table in sorted(set(found.get_table_names()) - {"tenants_history"})}
    finally:
        engine.dispose()


def versions(url: str) -> list[str]:
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            return [row[0] for row in conn.exec_driver_sql("SELECT version_num FROM alembic_version")]
    finally:
        engine.dispose()


def sqlite_fleet(tmp_path: Path, ini: Path, n: int = N, extra: str = "") -> tuple[Path, list[str], str]:
    """A config for n SQLite tenants on ``ini``, their URLs, and the URL of a reference database beside them."""
    names = [f"t{i:02d}" for i in range(n)]
    config = write_config(tmp_path / "tenants.toml", f"""
        [environments.test]
        url = "sqlite:///db/{{tenant}}.db"
        tenants = [{", ".join(f'"{name}"' for name in names)}]
        alembic = "{ini}"
        retry_backoff = 0.01
        {extra}
    """)
    (tmp_path / "db").mkdir()
    return config, [f"sqlite:///{tmp_path}/db/{name}.db" for name in names], f"sqlite:///{tmp_path}/reference.db"


def pg_fleet_of(pg_fleet, ini: Path, driver: str, n: int = 5, extra: str = ""):
    """n PostgreSQL tenants reached through ``driver``, their URLs, and a reference database's URL."""
    fleet = pg_fleet(n + 1)
    names, reference = fleet.names[:n], fleet.names[n]
    url = make_url(PG_URL).set(drivername=f"postgresql+{driver}")
    template = url.set(database="__tenant__").render_as_string(hide_password=False).replace("__tenant__",
                                                                                            "{tenant}")
    write_config(fleet.config, f"""
        [environments.test]
        url = "{template}"
        tenants = [{", ".join(f'"{name}"' for name in names)}]
        alembic = "{ini}"
        retry_backoff = 0.01
        {extra}
    """)
    urls = [url.set(database=name).render_as_string(hide_password=False) for name in [*names, reference]]
    return fleet.config, urls[:n], urls[n]


def upgrade_and_compare(config: Path, urls: list[str], reference: str, head: str, steps: int) -> None:
    settings = load_settings(config, "test", environ={})
    report = api.upgrade(settings, options=api.RunOptions(concurrency=2))
    assert [(r.status, r.to_revision, len(r.applied), r.error) for r in report.results] == [
        (Status.UPGRADED, head, steps, None)] * len(urls)
    expected = schema(reference)
    assert expected  # the reference is not empty
    for url in urls:
        assert versions(url) == [head]
        assert schema(url) == expected, url
    # Neither env.py passes on_version_apply: the audit trail is written afterwards, a row per revision.
    history = api.tenant_history(settings, report.results[0].tenant)
    assert [(row["outcome"], row["run_id"]) for row in history] == [("applied", report.run_id)] * steps
    assert history[-1]["to_revision"] == head
    again = api.upgrade(settings, options=api.RunOptions(concurrency=2))
    assert {r.status for r in again.results} == {Status.UP_TO_DATE}


# --- optuna: its stock alembic.ini, from empty databases ---------------------------------------------------

OPTUNA_HEAD = "v3.2.0.a"


def test_optuna_stock_migrations_on_sqlite(tmp_path, monkeypatch):
    # Run from a project directory with an `alembic/` folder of its own: optuna's `script_location = alembic`
    # still means optuna's folder, beside its alembic.ini.
    monkeypatch.chdir(ROOT)
    config, urls, reference = sqlite_fleet(tmp_path, OPTUNA_INI)
    plain_alembic(OPTUNA_INI, 'command.upgrade(cfg, "head")', [reference])
    upgrade_and_compare(config, urls, reference, OPTUNA_HEAD, steps=10)


@pytest.mark.parametrize("driver", DRIVERS)
def test_optuna_stock_migrations_on_postgres(pg_fleet, driver):
    config, urls, reference = pg_fleet_of(pg_fleet, OPTUNA_INI, driver)
    plain_alembic(OPTUNA_INI, 'command.upgrade(cfg, "head")', [reference])
    upgrade_and_compare(config, urls, reference, OPTUNA_HEAD, steps=10)


# --- jupyterhub: databases its ORM made, three revisions down ----------------------------------------------

JUPYTERHUB_HEAD = "f460b0348206"
# What jupyterhub does for a new database (orm.new_session_factory): create_all, then `alembic stamp head`.
# Then plain Alembic takes it three revisions down.
JUPYTERHUB_DATABASE = """
    from jupyterhub import orm
    from sqlalchemy import create_engine, pool
    engine = create_engine(url, poolclass=pool.NullPool)
    orm.Base.metadata.create_all(engine)
    engine.dispose()
    command.stamp(cfg, "head")
    command.downgrade(cfg, "-3")
    if url == sys.argv[-1]:  # the reference database: then plain `alembic upgrade head`
        command.upgrade(cfg, "head")
"""


def jupyterhub_ini(root: Path) -> Path:
    """The alembic.ini jupyterhub writes for itself (its packaged one is a template); the URL is the tool's."""
    from jupyterhub.dbutil import write_alembic_ini

    ini = root / "jupyterhub-alembic.ini"
    write_alembic_ini(str(ini), "sqlite:///set-by-tenants.sqlite")
    return ini


def test_jupyterhub_stock_migrations_on_sqlite(tmp_path):
    ini = jupyterhub_ini(tmp_path)
    config, urls, reference = sqlite_fleet(tmp_path, ini)
    plain_alembic(ini, JUPYTERHUB_DATABASE, [*urls, reference])
    assert versions(urls[0]) != [JUPYTERHUB_HEAD]
    upgrade_and_compare(config, urls, reference, JUPYTERHUB_HEAD, steps=3)


@pytest.mark.parametrize("driver", DRIVERS)
def test_jupyterhub_stock_migrations_on_postgres(pg_fleet, tmp_path, driver):
    ini = jupyterhub_ini(tmp_path)
    config, urls, reference = pg_fleet_of(pg_fleet, ini, driver)
    plain_alembic(ini, JUPYTERHUB_DATABASE, [*urls, reference])
    upgrade_and_compare(config, urls, reference, JUPYTERHUB_HEAD, steps=3)


# --- MLflow: its first revision expects tables made outside Alembic --------------------------------------

MLFLOW_HEAD = "f4a9b2c7d1e6"
# What MLflow does for a new database (mlflow.store.db.utils._initialize_tables): its initial tables, then
# `alembic upgrade heads` (here only for the reference database).
MLFLOW_DATABASE = """
    from mlflow.store.db.utils import InitialBase
    from sqlalchemy import create_engine, pool
    engine = create_engine(url, poolclass=pool.NullPool)
    InitialBase.metadata.create_all(engine)
    engine.dispose()
    if url == sys.argv[-1]:
        command.upgrade(cfg, "head")
"""
# The tables without a version table make these databases unmanaged: this graph is meant to run on them.
MLFLOW_ENV = 'unmanaged = "upgrade"'


def mlflow_ini(root: Path) -> Path:
    """MLflow's own alembic.ini names its folder relative to site-packages: a user writes this one."""
    ini = root / "mlflow-alembic.ini"
    ini.write_text("[alembic]\nscript_location = mlflow.store:db_migrations\n")
    return ini


def test_mlflow_stock_migrations_on_sqlite(tmp_path):
    ini = mlflow_ini(tmp_path)
    config, urls, reference = sqlite_fleet(tmp_path, ini, n=3, extra=MLFLOW_ENV)  # 70 revisions each: few
    plain_alembic(ini, MLFLOW_DATABASE, [*urls, reference])
    upgrade_and_compare(config, urls, reference, MLFLOW_HEAD, steps=70)


@pytest.mark.parametrize("driver", DRIVERS)
def test_mlflow_stock_migrations_on_postgres(pg_fleet, tmp_path, driver):
    ini = mlflow_ini(tmp_path)
    config, urls, reference = pg_fleet_of(pg_fleet, ini, driver, n=2, extra=MLFLOW_ENV)
    plain_alembic(ini, MLFLOW_DATABASE, [*urls, reference])
    upgrade_and_compare(config, urls, reference, MLFLOW_HEAD, steps=70)
