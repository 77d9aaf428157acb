"""Alembic environment of the tenant schema.

Three ways in:

* ``tenants upgrade`` (and friends) hand in a live connection through ``config.attributes["connection"]``
  (Alembic's "sharing a connection" recipe). It is not inside a transaction, so
  ``transaction_per_migration=True`` gives every revision its own transaction: a failure rolls back only the
  revision in progress, and a rerun resumes there.
* Plain Alembic for one tenant: ``alembic -x tenant=acme upgrade head`` resolves the tenant's URL from the
  environment (``-x env=NAME`` / ``TENANTS_ENV``) of the configuration named by ``-x config=FILE``, else
  ``TENANTS_CONFIG``, else the ``tenants.toml`` beside ``alembic.ini``, else ``./tenants.toml``.
* Offline (``--sql``): the URL only chooses the dialect; nothing connects.
"""

from __future__ import annotations

import os
from logging.config import fileConfig
from pathlib import Path

from alembic.util import CommandError

from alembic import context

config = context.config
target_metadata = None  # revisions are written by hand: autogenerate has no single model to compare against


def _tenant_url() -> str:
    return _tenant()[0]


def _tenant() -> tuple[str, str | None, str]:
    """URL, SQL Server auth and cloud of ``-x tenant=NAME`` (via tenants.toml), else ``sqlalchemy.url``."""
    x = context.get_x_argument(as_dictionary=True)
    if "tenant" in x:
        from tenants import api
        from tenants.config import load_settings
        from tenants.errors import TenantsError
        from tenants.selection import Selection

        # -x config=FILE, then $TENANTS_CONFIG, then the tenants.toml beside alembic.ini, then load_settings'
        # own default (./tenants.toml, else the embedded dev environment).
        config_file = x.get("config")
        if config_file is None and not os.environ.get("TENANTS_CONFIG") and config.config_file_name:
            beside = Path(config.config_file_name).resolve().parent / "tenants.toml"
            config_file = str(beside) if beside.is_file() else None
        try:
            settings = load_settings(config_file, x.get("env"))
            url = api.discover(settings, Selection(tenants=(x["tenant"],)))[0].url
            return url, settings.environment.auth, settings.environment.cloud
        except TenantsError as err:
            raise CommandError(str(err)) from None
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise CommandError("no database: pass -x tenant=NAME (see tenants.toml), or use `tenants upgrade`")
    return url, None, "public"


def _configure(**kw) -> None:
    # `tenants` records each applied revision in the tenant's history table from this callback, which Alembic
    # calls inside the revision's own transaction (see tenants.engine.history).
    on_version_apply = config.attributes.get("on_version_apply")
    context.configure(
        target_metadata=target_metadata,
        transaction_per_migration=True,
        version_table=config.get_main_option("version_table", "alembic_version"),
        on_version_apply=(on_version_apply,) if on_version_apply else (),
        **kw,
    )


def run_migrations_offline() -> None:
    _configure(url=_tenant_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:  # `tenants` holds the tenant's lock already
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return

    # Plain alembic: one tenant, our engine factory (SQLite gets transactional DDL there too), and the same
    # per-tenant lock `tenants` takes, so a hand-run upgrade never races a fleet run on that tenant.
    from tenants.db import Connector, LockNotAcquired, tenant_lock

    if config.config_file_name is not None:
        fileConfig(config.config_file_name)
    url, auth, cloud = _tenant()
    connector = Connector(auth, cloud)  # with auth = "azure-ad", an Entra token per connection
    try:
        with connector.engine(url) as engine, engine.connect() as connection, tenant_lock(connection, timeout=0):
            _configure(connection=connection)
            with context.begin_transaction():
                context.run_migrations()
    except LockNotAcquired:
        raise CommandError("this tenant is locked by another run (tenants upgrade?); try again later") from None
    finally:
        connector.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
