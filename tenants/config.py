"""Settings: which environment, read from ``tenants.toml``, validated before any tenant is touched.

A configuration file holds named environments::

    [environments.staging]
    url = "postgresql+psycopg://deploy:${PGPASSWORD}@db.internal/{tenant}"
    source = "server"          # or "static" with tenants = [...]
    match = "tenant_*"
    concurrency = 8

``${VAR}`` is replaced from the process environment when the environment is loaded: it is the only way a
secret gets into a URL, and the file itself holds none. The embedded ``dev`` environment (three SQLite demo
tenants) exists even without a file, so a fresh clone runs ``tenants upgrade`` with no setup.

Everything is resolved into one frozen :class:`Settings` object that is passed explicitly; there is no
module-level state.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from tenants.dialects import DIALECTS, Sessions, dialect_for
from tenants.errors import ConfigError, MissingVariable, UnknownEnvironment
from tenants.secrets import scrub
from tenants.waves import parse_waves

DEFAULT_CONFIG = "tenants.toml"
DEFAULT_ENV = "dev"
SOURCES = ("static", "server", "azure-pool", "azure-server")
AUTHS = ("azure-ad", "sql", "odbc")
UNMANAGED = ("report", "upgrade")  # what an upgrade does with a database that has tables but no version table
# What env.py is handed (tenants.engine.revisions): the migration connection (which also answers connect()), the
# tenant's engine, or only sqlalchemy.url.
ENV_PY = ("connection", "engine", "url")
# Where the expected schema of each revision comes from (tenants.engine.expected, issue 12): built by running the
# graph on a scratch database, or the consensus of the tenants recorded at each revision.
EXPECTED_SCHEMA = ("build", "consensus")
AZURE_KEYS = ("subscription", "resource_group", "server", "pool", "management_endpoint")
# The SQL endpoint suffix of each Azure cloud (the server's host is SERVER.SUFFIX).
SQL_SUFFIX = {"public": "database.windows.net", "usgov": "database.usgovcloudapi.net",
              "china": "database.chinacloudapi.cn"}
AZURE_URL = ("mssql+pyodbc://@{server}.{suffix}:1433/{{tenant}}"
             "?driver=ODBC+Driver+18+for+SQL+Server&Encrypt=yes&TrustServerCertificate=no")

# The embedded default: three demo tenants as SQLite files in a git-ignored folder next to the config file
# (or the current directory when there is no config file). SQLite creates each file on first connect.
DEV_ENVIRONMENT: dict[str, Any] = {
    "url": "sqlite:///.tenants/{tenant}.db",
    "source": "static",
    "tenants": [
        {"name": "acme", "tags": ["canary"]},
        {"name": "globex", "tags": []},
        {"name": "initech", "tags": []},
    ],
}

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


@dataclass(frozen=True)
class TenantSpec:
    """A tenant as declared by a ``static`` source: a name and its tags."""

    name: str
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Environment:
    """One validated ``[environments.NAME]`` table."""

    name: str
    # SQLAlchemy URL template with ``{tenant}``; ``${VAR}`` already substituted, so it may hold a password.
    url: str = field(repr=False)
    source: str = "static"
    tenants: tuple[TenantSpec, ...] = ()
    match: str = "*"
    concurrency: int = 4
    alembic: Path = Path("alembic.ini")
    # No `alembic` key: where alembic.ini was looked for, in order (the current directory, then beside the
    # configuration); () when the key names it.
    alembic_searched: tuple[Path, ...] = ()
    version_table: str = "alembic_version"
    history_table: str = "tenants_history"  # the audit trail next to the version table (tenants.engine.history)
    # A database with tables but no version table: "report" (leave it alone, report it `unmanaged` until it is
    # stamped) or "upgrade" (run the graph from base on it: a graph whose first revision expects tables made
    # outside Alembic, as MLflow's does).
    unmanaged: str = "report"
    env_py: str = "connection"  # what env.py gets in config.attributes["connection"] (tenants.engine.revisions)
    # Issue 12: before upgrading a tenant, compare its schema with the expected schema of its recorded revision
    # (one catalog query, under its lock) and leave a tenant that differs alone, reported `drifted`.
    check_schema: bool = False
    waves: tuple = ()  # tenants.waves.Wave, in order; () is one wave of everything
    retries: int = 3
    retry_backoff: float = 1.0  # seconds before the first retry; doubles up to retry_backoff_max
    retry_backoff_max: float = 30.0
    lock_timeout: float = 0.0  # seconds to wait for a tenant's lock before reporting it `locked`
    # How every connection guards its waits (tenants.dialects.Sessions; seconds, 0: off). ddl_lock_timeout's
    # default is the dialect's (30 s on PostgreSQL and SQL Server, off on SQLite).
    ddl_lock_timeout: float | None = None
    network_timeout: float = 60.0
    idle_in_transaction_timeout: float = 300.0
    statement_timeout: float = 0.0
    read_timeout: float = 30.0
    # PostgreSQL over psycopg 3: a migration's DDL goes with its next statement (tenants.dialects.psycopg_batch).
    batch_statements: bool = True
    maintenance_database: str = "postgres"  # where `source = "server"` lists pg_database
    # The expected schemas (tenants.engine.expected): "build" them on a scratch database (SQL Server: only in
    # `reference_database`, else consensus), or "consensus" of the fleet; cached under `schema_cache` (None:
    # $XDG_CACHE_HOME/tenants, else ~/.cache/tenants).
    expected_schema: str = "build"
    reference_database: str | None = None
    schema_cache: Path | None = None
    # SQL Server / Azure SQL: how connections authenticate (azure-ad: an Entra token per connection; sql:
    # user and password in the URL, from ${VAR}; odbc: `odbc_connect`, a raw ODBC connection string).
    auth: str | None = None
    odbc_connect: str | None = field(default=None, repr=False)
    # Azure: where the pool is (sources azure-pool / azure-server) and which cloud.
    subscription: str | None = None
    resource_group: str | None = None
    server: str | None = None
    pool: str | None = None
    cloud: str = "public"
    management_endpoint: str | None = None
    concurrency_explicit: bool = False  # `concurrency` was set: it wins over the pool-derived default
    pressure_limit: float | None = None  # percent; wait while the pool is busier than this
    pressure_interval: float = 5.0  # seconds between two reads of the pool's load
    secrets: tuple[str, ...] = field(default=(), repr=False)  # every substituted ${VAR} value: never printed
    base_dir: Path = field(default_factory=Path.cwd)  # relative SQLite paths and `alembic` resolve here

    @property
    def sessions(self) -> Sessions:
        """The connection settings of this environment, as plain data for the engines of every process."""
        return Sessions(self.ddl_lock_timeout, self.network_timeout, self.idle_in_transaction_timeout,
                        self.statement_timeout, self.read_timeout, batch_statements=self.batch_statements)

    @property
    def dialect(self) -> str:
        return make_url(self.tenant_url("x")).get_backend_name()

    def tenant_url(self, tenant: str) -> str:
        """The tenant's URL as a string, password included: for connecting, never for printing."""
        if self.odbc_connect is not None:
            from tenants.dialects.odbc import odbc_value

            return URL.create("mssql+pyodbc", query={
                "odbc_connect": self.odbc_connect.replace("{tenant}", odbc_value(tenant)),
            }).render_as_string(hide_password=False)
        probe = make_url(self.url.replace("{tenant}", "__tenant__"))
        if probe.database == "__tenant__":
            # The usual case, {tenant} as the database: set it as data, so a name with URL characters
            # (Azure allows '#', ';', spaces) cannot change the host, query or anything else.
            url = make_url(self.url.replace("{tenant}", "__tenant__")).set(database=tenant)
        else:
            url = make_url(self.url.replace("{tenant}", tenant))
        url = dialect_for(url).with_base_dir(url, self.base_dir)  # SQLite: a relative file path
        return url.render_as_string(hide_password=False)


@dataclass(frozen=True)
class Settings:
    """Everything the library needs to know about where it runs: the chosen environment and its origin."""

    environment: Environment
    config_path: Path | None = None

    @property
    def env_name(self) -> str:
        return self.environment.name

    def alembic_ini(self) -> Path:
        """The environment's ``alembic.ini``; a :class:`ConfigError` naming where it was looked for and the way
        out when it does not exist."""
        env = self.environment
        if env.alembic.is_file():
            return env.alembic
        of = f" of {self.config_path}" if self.config_path is not None else ""
        if not env.alembic_searched:  # named by the `alembic` key
            raise ConfigError(
                f"{env.alembic}: alembic.ini not found; fix `alembic` in environment {env.name!r}{of} (a relative "
                f"path is relative to {env.base_dir})"
            )
        here, *beside = env.alembic_searched
        places = f"in the current directory ({here.parent})" + (
            f" nor beside {self.config_path or 'the configuration'} ({beside[0].parent})" if beside else "")
        if self.config_path is None:
            way_out = ("give --config a configuration whose environment sets `alembic = \"path/to/alembic.ini\"`, "
                       "or run from the directory holding alembic.ini")
        else:
            way_out = (f"set `alembic = \"path/to/alembic.ini\"` in environment {env.name!r} of {self.config_path} "
                       "(relative to that file), or run from the directory holding alembic.ini")
        raise ConfigError(f"no alembic.ini {places}; {way_out}")


@dataclass(frozen=True)
class Key:
    """One key of an ``[environments.NAME]`` table: its type, its default, the values it may take, and the
    bound a number must respect. The checks that involve several keys are the ``_check_*`` functions below."""

    types: type | tuple[type, ...]
    default: Any = None
    choices: tuple[str, ...] = ()  # the only values allowed (a str key)
    minimum: float | None = None  # a number: at least this ("must be at least 1")
    not_negative: bool = False


# Every key an environment may have, in the order `unknown key` lists them (sorted). Defaults that depend on
# other keys (retry backoff by dialect, the alembic.ini looked up, the URL of an Azure source) are resolved
# by the checks, not here.
KEYS: dict[str, Key] = {
    "url": Key(str),
    "source": Key(str, "static", choices=SOURCES),
    "tenants": Key(list, []),
    "match": Key(str, "*"),
    "concurrency": Key(int, 4, minimum=1),
    "alembic": Key(str),
    "version_table": Key(str, "alembic_version"),
    "history_table": Key(str, "tenants_history"),
    "unmanaged": Key(str, "report", choices=UNMANAGED),
    "env_py": Key(str, "connection", choices=ENV_PY),
    "check_schema": Key(bool, False),
    "waves": Key(list, []),
    "retries": Key(int, 3, not_negative=True),
    "retry_backoff": Key((int, float), not_negative=True),
    "retry_backoff_max": Key((int, float), not_negative=True),
    "lock_timeout": Key((int, float), 0.0, not_negative=True),
    "ddl_lock_timeout": Key((int, float), not_negative=True),
    "network_timeout": Key((int, float), 60.0, not_negative=True),
    "idle_in_transaction_timeout": Key((int, float), 300.0, not_negative=True),
    "statement_timeout": Key((int, float), 0.0, not_negative=True),
    "read_timeout": Key((int, float), 30.0, not_negative=True),
    "batch_statements": Key(bool, True),
    "maintenance_database": Key(str, "postgres"),
    "expected_schema": Key(str, "build", choices=EXPECTED_SCHEMA),
    "reference_database": Key(str),
    "schema_cache": Key(str),
    "auth": Key(str, choices=AUTHS),
    "odbc_connect": Key(str),
    "subscription": Key(str),
    "resource_group": Key(str),
    "server": Key(str),
    "pool": Key(str),
    "cloud": Key(str, "public", choices=tuple(SQL_SUFFIX)),
    "management_endpoint": Key(str),
    "pressure_limit": Key((int, float)),
    "pressure_interval": Key((int, float), 5.0),
}
_SESSION_KEYS = ("network_timeout", "idle_in_transaction_timeout", "statement_timeout", "read_timeout")
# A choice's message where the bare list would not say what the values mean.
_CHOICE_HELP = {
    "unmanaged": 'unmanaged must be "report" (leave databases with tables but no version table alone) or '
                 '"upgrade" (run the graph from base on them), not {value!r}',
    "expected_schema": 'expected_schema must be "build" (run the revisions on a scratch database) or '
                       '"consensus" (the largest group of tenants at each revision), not {value!r}',
}


def load_settings(
    config: str | os.PathLike[str] | None = None,
    env: str | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Read the configuration and resolve one environment into :class:`Settings`.

    ``config`` defaults to ``$TENANTS_CONFIG`` or ``./tenants.toml``; ``env`` to ``$TENANTS_ENV`` or ``dev``.
    A missing default file is not an error (the embedded ``dev`` environment still exists); a missing file
    that was asked for explicitly is.
    """
    environ = dict(os.environ) if environ is None else environ
    explicit = config is not None or bool(environ.get("TENANTS_CONFIG"))
    path = Path(config or environ.get("TENANTS_CONFIG") or DEFAULT_CONFIG)
    env_name = env or environ.get("TENANTS_ENV") or DEFAULT_ENV

    text: str | None = None
    if path.is_file():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"{path}: cannot read the configuration: {err}") from err
    elif explicit:
        raise ConfigError(f"{path}: configuration file not found (check --config / TENANTS_CONFIG)")

    environments: dict[str, Any] = {}
    if text is not None:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path}: malformed TOML: {err}") from err
        for key in data:
            if key != "environments":
                raise ConfigError(
                    f"{path}:{_line_of(text, key)}: unknown top-level key {key!r}; "
                    "environments go in [environments.NAME] tables"
                )
        environments = data.get("environments", {})
        if not isinstance(environments, dict):
            raise ConfigError(f"{path}: 'environments' must be a table of [environments.NAME] tables")

    base_dir = (path.resolve().parent if text is not None else Path.cwd().resolve())
    if env_name not in environments:
        if env_name == DEFAULT_ENV:
            return Settings(
                environment=_environment(DEFAULT_ENV, DEV_ENVIRONMENT, base_dir, path, "", environ),
                config_path=path if text is not None else None,
            )
        known = ", ".join(sorted(set(environments) | {DEFAULT_ENV}))
        where = str(path) if text is not None else f"{path} (not found)"
        raise UnknownEnvironment(
            f"{where}: unknown environment {env_name!r} (--env / TENANTS_ENV); known: {known}"
        )
    table = environments[env_name]
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: environments.{env_name} must be a table")
    return Settings(
        environment=_environment(env_name, table, base_dir, path, text or "", environ),
        config_path=path,
    )


class _Table:
    """One ``[environments.NAME]`` table being checked: its values, and errors that name the file, the line of
    the key and the environment."""

    def __init__(self, name: str, table: dict[str, Any], path: Path, text: str, environ: dict[str, str]):
        self.name, self.values, self.path, self.text, self.environ = name, dict(table), path, text, environ

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def get(self, key: str) -> Any:
        return self.values.get(key, KEYS[key].default)

    def fail(self, message: str, key: str | None = None) -> ConfigError:
        where = f"{self.path}:{_line_of(self.text, f'environments.{self.name}')}" if self.text \
            else f"environment {self.name!r}"
        line = _line_of(self.text, key, after=f"environments.{self.name}") if (self.text and key) else None
        return ConfigError(f"{f'{self.path}:{line}' if line else where}: environments.{self.name}: {message}")

    def substitute(self, key: str, value: str, encode: bool = True) -> tuple[str, tuple[str, ...]]:
        return _substitute(value, lambda var: self.fail(
            f"{key} uses ${{{var}}} but the environment variable {var} is not set; export it and retry", key),
            self.environ, encode=encode)


def _environment(
    name: str, table: dict[str, Any], base_dir: Path, path: Path, text: str, environ: dict[str, str]
) -> Environment:
    t = _Table(name, table, path, text, environ)
    _check_keys(t)
    source, azure = t.get("source"), t.get("source").startswith("azure-")
    _check_azure(t, source, azure)
    url, raw_url, odbc_connect, secrets = _resolve_url(t, azure)
    parsed = _parse_url(t, url, secrets)
    dialect = dialect_for(parsed)
    if azure and not dialect.azure_sql:
        raise t.fail(f"source {source!r} needs an mssql URL, not {parsed.get_backend_name()!r}", "url")
    _check_choice(t, "unmanaged")
    _check_choice(t, "auth")
    # SQL Server's rules (tenants.dialects.mssql.MSSQL.resolve_auth); any other dialect refuses `auth`.
    auth = dialect.resolve_auth(t.get("auth"), url=parsed, raw_url=raw_url if "url" in t else None,
                                odbc_connect=odbc_connect, is_variable=lambda value: bool(_VAR.fullmatch(value)),
                                fail=t.fail)
    _check_choice(t, "env_py")
    _check_expected_schema(t, dialect)
    _check_pressure(t, dialect)
    tenants = _check_source(t, source, parsed.get_backend_name(), dialect)
    _check_bounds(t)
    alembic_path, searched = _alembic_path(t, base_dir)
    return Environment(
        name=name,
        url=url,
        source=source,
        tenants=tenants,
        match=t.get("match"),
        concurrency=t.get("concurrency"),
        alembic=alembic_path,
        alembic_searched=searched,
        version_table=t.get("version_table"),
        history_table=t.get("history_table"),
        unmanaged=t.get("unmanaged"),
        env_py=t.get("env_py"),
        check_schema=t.get("check_schema"),
        waves=parse_waves(t.get("waves"), lambda message: t.fail(message, "waves")),
        retries=t.get("retries"),
        # Azure SQL: Microsoft's guidance, about 5 s before the first retry, backing off to 60 s.
        retry_backoff=float(t.values.get("retry_backoff", dialect.retry_backoff[0])),
        retry_backoff_max=float(t.values.get("retry_backoff_max", dialect.retry_backoff[1])),
        lock_timeout=float(t.get("lock_timeout")),
        ddl_lock_timeout=float(t.values.get("ddl_lock_timeout", dialect.ddl_lock_timeout)),
        **{key: float(t.get(key)) for key in _SESSION_KEYS},
        batch_statements=t.get("batch_statements"),
        maintenance_database=t.get("maintenance_database"),
        expected_schema=t.get("expected_schema"),
        reference_database=t.get("reference_database"),
        schema_cache=base_dir / t.values["schema_cache"] if "schema_cache" in t else None,
        auth=auth,
        odbc_connect=odbc_connect,
        subscription=t.get("subscription"),
        resource_group=t.get("resource_group"),
        server=t.get("server"),
        pool=t.get("pool"),
        cloud=t.get("cloud"),
        management_endpoint=t.get("management_endpoint"),
        concurrency_explicit="concurrency" in t,
        pressure_limit=float(t.get("pressure_limit")) if "pressure_limit" in t else None,
        pressure_interval=float(t.get("pressure_interval")),
        base_dir=base_dir,
        secrets=secrets,
    )


def _check_keys(t: _Table) -> None:
    """What :data:`KEYS` says of each key alone: known and of its type; then the source and cloud, which the
    later checks depend on. (The other checks run in the order they always have, so that of several errors
    the same one is reported first.)"""
    for key, value in t.values.items():
        if key not in KEYS:
            raise t.fail(f"unknown key {key!r} (known keys: {', '.join(sorted(KEYS))})", key)
        expected = KEYS[key].types
        if not isinstance(value, expected) or (isinstance(value, bool) and expected is not bool):
            names = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))
            raise t.fail(f"{key} must be a {names}, not {type(value).__name__}", key)
    for key in ("source", "cloud"):
        _check_choice(t, key)


def _check_bounds(t: _Table) -> None:
    for key, spec in KEYS.items():
        if key in t and spec.minimum is not None and t.values[key] < spec.minimum:
            raise t.fail(f"{key} must be at least {spec.minimum}", key)
        if key in t and spec.not_negative and t.values[key] < 0:
            raise t.fail(f"{key} must not be negative", key)


def _check_choice(t: _Table, key: str) -> None:
    value = t.get(key)
    if value is not None and value not in KEYS[key].choices:
        help_ = _CHOICE_HELP.get(key, f"{key} must be one of {', '.join(KEYS[key].choices)}, not {{value!r}}")
        raise t.fail(help_.format(value=value), key)


def _check_azure(t: _Table, source: str, azure: bool) -> None:
    """The pool's coordinates: required by the Azure sources, refused by the others. They may come from the
    process environment too (GitHub Actions variables), so one committed file serves every deployment; they
    are names, not secrets: substituted as they are and shown in messages."""
    for key in AZURE_KEYS:
        if key in t:
            t.values[key], _ = t.substitute(key, t.values[key], encode=False)
    for key in ("subscription", "resource_group", "server") + (("pool",) if source == "azure-pool" else ()):
        if azure and key not in t:
            raise t.fail(f"source {source!r} needs {key!r} (the Azure {key.replace('_', ' ')})")
    for key in AZURE_KEYS:
        if not azure and key in t:
            raise t.fail(f"{key!r} is only for the azure-pool and azure-server sources", key)
        if key in t and not t.values[key].strip():
            raise t.fail(f"{key!r} is empty", key)


def _resolve_url(t: _Table, azure: bool) -> tuple[str, str, str | None, tuple[str, ...]]:
    """The URL template (``${VAR}`` substituted), the raw one, the ODBC string if any, and the secrets."""
    secrets: tuple[str, ...] = ()
    odbc_connect = None
    if "odbc_connect" in t:
        # Substituted raw (not percent-encoded): it is an ODBC string, not a URL.
        odbc_connect, secrets = t.substitute("odbc_connect", t.values["odbc_connect"], encode=False)
        if "{tenant}" not in odbc_connect:
            raise t.fail("odbc_connect must contain the {tenant} placeholder (Database={tenant})", "odbc_connect")
        if "url" in t:
            raise t.fail("give either 'url' or 'odbc_connect', not both", "odbc_connect")
        raw_url = "mssql+pyodbc:///?odbc_connect={tenant}"
    elif "url" in t:
        raw_url = t.values["url"]
    elif azure:
        raw_url = AZURE_URL.format(server=t.values["server"], suffix=SQL_SUFFIX[t.get("cloud")])
    else:
        raise t.fail("missing required key 'url' (a SQLAlchemy URL template with {tenant})")
    url, more = t.substitute("url", raw_url)
    secrets += more
    if "{tenant}" not in url:
        raise t.fail("url must contain the {tenant} placeholder", "url")
    return url, raw_url, odbc_connect, secrets


def _parse_url(t: _Table, url: str, secrets: tuple[str, ...]) -> URL:
    try:
        parsed = make_url(url.replace("{tenant}", "tenant"))
        parsed.port  # noqa: B018 - a non-numeric port raises here, not at connect time
    except (ArgumentError, ValueError) as err:
        raise t.fail(f"url is not a valid SQLAlchemy URL: {scrub(str(err), secrets)}", "url") from None
    return parsed


def _check_expected_schema(t: _Table, dialect) -> None:
    """The keys of the expected schemas (tenants.engine.expected): a reference database only where the tool
    cannot make its own scratch database, and never an empty name or cache folder."""
    _check_choice(t, "expected_schema")
    for key in ("reference_database", "schema_cache"):
        if key in t and not t.values[key].strip():
            raise t.fail(f"{key!r} is empty", key)
    if "reference_database" in t and not dialect.needs_reference_database:
        raise t.fail("reference_database is for SQL Server, where the tool may not create databases; on this "
                     "dialect it makes (and drops) a scratch database of its own: remove the key",
                     "reference_database")


def _check_pressure(t: _Table, dialect) -> None:
    if "pressure_limit" in t and not dialect.azure_sql:
        raise t.fail("pressure_limit reads an Azure SQL elastic pool's load: it needs an mssql environment",
                     "pressure_limit")
    if "pressure_limit" in t and not 0 < t.values["pressure_limit"] <= 100:
        raise t.fail("pressure_limit is a percentage: more than 0, at most 100", "pressure_limit")
    if "pressure_interval" in t and t.values["pressure_interval"] <= 0:
        raise t.fail("pressure_interval must be positive (seconds)", "pressure_interval")


def _check_source(t: _Table, source: str, backend: str, dialect) -> tuple[TenantSpec, ...]:
    """What each source needs: static a list of tenants, server a `match` and a dialect that lists databases."""
    tenants = tuple(_tenant_specs(t.get("tenants"), lambda m: t.fail(m, "tenants")))
    if source != "static" and "tenants" in t:
        raise t.fail(f"'tenants' is only for source 'static'; source {source!r} uses 'match'", "tenants")
    if source == "static" and not tenants:
        raise t.fail("source 'static' needs a non-empty 'tenants' list", "tenants" if "tenants" in t else None)
    if source == "server" and "match" not in t:
        # No default: "every database on the server" would include other applications' databases.
        raise t.fail("source 'server' needs 'match', a glob over database names (e.g. \"tenant_*\")")
    if source == "server" and not dialect.lists_databases:
        listable = " and ".join(name for name, d in DIALECTS.items() if d.lists_databases)
        raise t.fail(f"source 'server' supports {listable} URLs, not {backend!r}", "source")
    return tenants


def _alembic_path(t: _Table, base_dir: Path) -> tuple[Path, tuple[Path, ...]]:
    """The alembic.ini to drive, and the places looked at when the environment names none."""
    if "alembic" in t:
        path = Path(t.values["alembic"])
        return (path if path.is_absolute() else base_dir / path), ()
    # Alembic's own convention first (alembic.ini in the current directory), then the one beside the
    # configuration: a config kept elsewhere (/etc/tenants/prod.toml) drives the project it is run from.
    searched = tuple(dict.fromkeys((Path.cwd().resolve() / "alembic.ini", base_dir / "alembic.ini")))
    return next((place for place in searched if place.is_file()), searched[0]), searched


def _tenant_specs(items: list[Any], fail) -> list[TenantSpec]:
    specs: list[TenantSpec] = []
    seen: set[str] = set()
    for item in items:
        if isinstance(item, str):
            spec = TenantSpec(item)
        elif isinstance(item, dict) and isinstance(item.get("name"), str):
            extra = set(item) - {"name", "tags"}
            tags = item.get("tags", [])
            if extra:
                raise fail(f"tenant {item['name']!r}: unknown key {sorted(extra)[0]!r} (known: name, tags)")
            if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
                raise fail(f"tenant {item['name']!r}: tags must be a list of strings")
            spec = TenantSpec(item["name"], tuple(tags))
        else:
            raise fail(f"each tenant is a name or a table with name and tags, not {item!r}")
        if not _NAME.match(spec.name):
            raise fail(f"tenant name {spec.name!r} may only use letters, digits, '_', '.', '-'")
        if spec.name in seen:
            raise fail(f"tenant {spec.name!r} is listed twice")
        seen.add(spec.name)
        specs.append(spec)
    return specs


def _substitute(value: str, missing, environ: dict[str, str], encode: bool = True) -> tuple[str, tuple[str, ...]]:
    """Replace each ``${VAR}``; returns the URL and the substituted values (all treated as secrets).

    Values are percent-encoded, so a password with ``@ : / ? # %`` lands in the URL intact (SQLAlchemy
    decodes it again); host names and port numbers are unchanged by the encoding.
    """
    used: list[str] = []

    def repl(m: re.Match[str]) -> str:
        var = m.group(1)
        if var not in environ:
            raise missing(var)
        used.append(environ[var])
        return quote(environ[var], safe="") if encode else environ[var]

    try:
        return _VAR.sub(repl, value), tuple(v for v in used if v)
    except ConfigError as err:
        raise MissingVariable(str(err)) from None


def _line_of(text: str, key: str | None, after: str | None = None) -> int | None:
    """Best-effort line number of ``key`` (a table header or a key) in TOML text, for error messages."""
    if not text or not key:
        return None
    lines = text.splitlines()
    start = 0
    if after:
        header = re.compile(r"^\s*\[\s*" + re.escape(after).replace(r"\.", r"\s*\.\s*") + r"\s*\]")
        for i, line in enumerate(lines):
            if header.match(line):
                start = i + 1
                break
    table = re.compile(r"^\s*\[\s*" + re.escape(key).replace(r"\.", r"\s*\.\s*") + r"\s*\]")
    assign = re.compile(r"^\s*" + re.escape(key) + r"\s*=")
    for i in range(start, len(lines)):
        if after and i > start and lines[i].lstrip().startswith("[") and not lines[i].lstrip().startswith("[["):
            break
        if table.match(lines[i]) or assign.match(lines[i]):
            return i + 1
    return None
