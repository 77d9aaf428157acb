"""Configuration: environments, ${VAR}, validation with file and line, masked URLs."""

import re
from pathlib import Path

import pytest
from helpers import write_config

from tenants.config import load_settings
from tenants.errors import ConfigError, MissingVariable, UnknownEnvironment
from tenants.secrets import mask_url


def test_embedded_dev_environment_without_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings(environ={})
    env = settings.environment
    assert settings.config_path is None
    assert env.name == "dev" and env.source == "static"
    assert [t.name for t in env.tenants] == ["acme", "globex", "initech"]
    assert env.tenant_url("acme") == f"sqlite:///{tmp_path.resolve()}/.tenants/acme.db"


def test_env_and_config_from_environment_variables(tmp_path, monkeypatch):
    (tmp_path / "alembic.ini").touch()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # no alembic.ini here: the one beside the config is used
    path = write_config(tmp_path / "other.toml", """
        [environments.staging]
        url = "postgresql+psycopg://app:${PGPASS}@db.internal/{tenant}"
        source = "server"
        match = "t_*"
        concurrency = 8
    """)
    settings = load_settings(environ={"TENANTS_CONFIG": str(path), "TENANTS_ENV": "staging", "PGPASS": "s3cret"})
    env = settings.environment
    assert (env.name, env.source, env.match, env.concurrency) == ("staging", "server", "t_*", 8)
    assert env.tenant_url("t_1") == "postgresql+psycopg://app:s3cret@db.internal/t_1"
    assert mask_url(env.tenant_url("t_1")) == "postgresql+psycopg://app:***@db.internal/t_1"
    assert env.alembic == tmp_path.resolve() / "alembic.ini"


def test_missing_explicit_file_names_it(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.toml: configuration file not found \(check --config"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_malformed_toml_names_file_and_line(tmp_path):
    path = write_config(tmp_path / "t.toml", '[environments.a]\nurl = "sqlite:///{tenant}.db\ntenants = ["a"]\n')
    with pytest.raises(ConfigError, match=r"t\.toml: malformed TOML: .*line 2"):
        load_settings(path, "a", environ={})


def test_unknown_key_names_file_line_and_known_keys(tmp_path):
    path = write_config(tmp_path / "t.toml", """\
        [environments.a]
        url = "sqlite:///{tenant}.db"
        tenants = ["x"]
        concurency = 3
    """)
    with pytest.raises(ConfigError) as err:
        load_settings(path, "a", environ={})
    assert str(err.value).startswith(f"{path}:4: environments.a: unknown key 'concurency' (known keys: alembic,")


def test_unknown_environment_lists_known_ones(tmp_path):
    path = write_config(tmp_path / "t.toml", '[environments.staging]\nurl = "sqlite:///{tenant}.db"\ntenants=["a"]\n')
    with pytest.raises(UnknownEnvironment, match=r"unknown environment 'prod' \(--env / TENANTS_ENV\); "
                                                 r"known: dev, staging"):
        load_settings(path, "prod", environ={})


def test_unset_variable_is_named(tmp_path):
    path = write_config(tmp_path / "t.toml", """\
        [environments.a]
        url = "postgresql+psycopg://app:${DB_PASSWORD}@h/{tenant}"
        source = "server"
    """)
    with pytest.raises(MissingVariable, match=r"t\.toml:2: environments\.a: url uses \$\{DB_PASSWORD\} but the "
                                              r"environment variable DB_PASSWORD is not set"):
        load_settings(path, "a", environ={})


@pytest.mark.parametrize("body, message", [
    ('tenants = ["a"]', "missing required key 'url'"),
    ('url = "sqlite:///x.db"\ntenants = ["a"]', "url must contain the {tenant} placeholder"),
    ('url = "sqlite:///{tenant}.db"', "source 'static' needs a non-empty 'tenants' list"),
    ('url = "sqlite:///{tenant}.db"\ntenants = ["a"]\nconcurrency = 0', "concurrency must be at least 1"),
    ('url = "sqlite:///{tenant}.db"\ntenants = ["a"]\nconcurrency = "4"', "concurrency must be a int, not str"),
    ('url = "sqlite:///{tenant}.db"\ntenants = ["a", "a"]', "tenant 'a' is listed twice"),
    ('url = "sqlite:///{tenant}.db"\ntenants = ["a b"]', "tenant name 'a b' may only use"),
    ('url = "sqlite:///{tenant}.db"\nsource = "cloud"', "source must be one of static, server"),
    ('url = "sqlite:///{tenant}.db"\ntenants = [{name = "a", tag = ["x"]}]', "unknown key 'tag'"),
])
def test_invalid_environments_are_rejected(tmp_path, body, message):
    path = write_config(tmp_path / "t.toml", f"[environments.a]\n{body}\n")
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}").replace("(", r"\(")):
        load_settings(path, "a", environ={})


def test_unknown_top_level_key(tmp_path):
    path = write_config(tmp_path / "t.toml", 'default = "x"\n')
    with pytest.raises(ConfigError, match=r"t\.toml:1: unknown top-level key 'default'"):
        load_settings(path, environ={})


def test_relative_paths_resolve_next_to_the_config_file(tmp_path, monkeypatch):
    (tmp_path / "sub").mkdir()
    write_config(tmp_path / "sub" / "t.toml", """\
        [environments.a]
        url = "sqlite:///data/{tenant}.db"
        tenants = [{name = "a", tags = ["canary"]}]
        alembic = "../proj/alembic.ini"
    """)
    monkeypatch.chdir(tmp_path)
    env = load_settings(Path("sub/t.toml"), "a", environ={}).environment
    assert env.tenant_url("a") == f"sqlite:///{tmp_path.resolve()}/sub/data/a.db"
    assert env.alembic == tmp_path.resolve() / "sub" / ".." / "proj" / "alembic.ini"
    assert env.tenants[0].tags == ("canary",)


def test_substituted_password_with_url_special_characters_is_encoded_and_masked(tmp_path):
    path = write_config(tmp_path / "t.toml", """\
        [environments.a]
        url = "postgresql+psycopg://deploy:${PW}@db.internal:5432/{tenant}?application_name=${APP}"
        source = "server"
        match = "t_*"
    """)
    secret = "p@ss:w/rd#?%"
    env = load_settings(path, "a", environ={"PW": secret, "APP": "tenants"}).environment
    from sqlalchemy.engine import make_url

    url = make_url(env.tenant_url("t_1"))
    assert (url.password, url.host, url.database) == (secret, "db.internal", "t_1")
    assert mask_url(env.tenant_url("t_1"), env.secrets) == (
        "postgresql+psycopg://deploy:***@db.internal:5432/t_1?application_name=***")


def test_password_in_the_query_string_is_masked(tmp_path):
    path = write_config(tmp_path / "t.toml", """\
        [environments.a]
        url = "postgresql+psycopg://deploy@db/{tenant}?password=${PW}"
        tenants = ["x"]
    """)
    env = load_settings(path, "a", environ={"PW": "hunter2"}).environment
    assert "hunter2" not in mask_url(env.tenant_url("x"), env.secrets)


def test_bad_port_is_a_config_error_naming_the_line(tmp_path):
    path = write_config(tmp_path / "t.toml", """\
        [environments.a]
        url = "postgresql+psycopg://app@db:${PORT}/{tenant}"
        tenants = ["x"]
    """)
    with pytest.raises(ConfigError, match=r"t\.toml:2: environments\.a: url is not a valid SQLAlchemy URL"):
        load_settings(path, "a", environ={"PORT": "x"})


def test_server_source_requires_match(tmp_path):
    path = write_config(tmp_path / "t.toml", '[environments.a]\nurl = "sqlite:///{tenant}.db"\nsource = "server"\n')
    with pytest.raises(ConfigError, match="source 'server' needs 'match'"):
        load_settings(path, "a", environ={})


def test_azure_pool_environment_derives_its_url_per_cloud(tmp_path):
    path = write_config(tmp_path / "t.toml", """\
        [environments.prod]
        source = "azure-pool"
        subscription = "00000000-0000-0000-0000-000000000000"
        resource_group = "rg-tenants"
        server = "sql-prod"
        pool = "pool-1"
        pressure_limit = 80

        [environments.gov]
        source = "azure-server"
        subscription = "s"
        resource_group = "rg"
        server = "sql-gov"
        match = "tenant_*"
        cloud = "usgov"
    """)
    prod = load_settings(path, "prod", environ={}).environment
    assert (prod.auth, prod.dialect, prod.pool, prod.pressure_limit, prod.concurrency_explicit) == (
        "azure-ad", "mssql", "pool-1", 80.0, False)
    from sqlalchemy.engine import make_url

    url = make_url(prod.tenant_url("acme"))
    assert (url.host, url.port, url.database, url.username or None) == (
        "sql-prod.database.windows.net", 1433, "acme", None)
    assert dict(url.query) == {"driver": "ODBC Driver 18 for SQL Server", "Encrypt": "yes",
                               "TrustServerCertificate": "no"}
    gov = load_settings(path, "gov", environ={}).environment
    assert "@sql-gov.database.usgovcloudapi.net:1433/t1?" in gov.tenant_url("t1")


def test_azure_coordinates_come_from_the_environment_as_they_are(tmp_path):
    # One committed tenants.toml for every deployment: GitHub Actions variables fill in the pool's names.
    path = write_config(tmp_path / "t.toml", """\
        [environments.production]
        source = "azure-pool"
        subscription = "${AZURE_SUBSCRIPTION_ID}"
        resource_group = "${RG}"
        server = "${SQL_SERVER}"
        pool = "pool-${POOL_SUFFIX}"
    """)
    environ = {"AZURE_SUBSCRIPTION_ID": "11111111-2222-3333-4444-555555555555", "RG": "rg-saas-prod",
               "SQL_SERVER": "sql-saas-prod", "POOL_SUFFIX": "a+b"}
    env = load_settings(path, "production", environ=environ).environment
    assert (env.subscription, env.resource_group, env.server, env.pool) == (
        "11111111-2222-3333-4444-555555555555", "rg-saas-prod", "sql-saas-prod", "pool-a+b")  # not percent-encoded
    assert "@sql-saas-prod.database.windows.net:1433/acme?" in env.tenant_url("acme")
    assert env.secrets == ()  # names, not secrets: they stay readable in messages
    del environ["RG"]
    with pytest.raises(MissingVariable, match=r"t.toml:4: environments.production: resource_group uses \$\{RG\} "
                                              r"but the environment variable RG is not set"):
        load_settings(path, "production", environ=environ)


def test_odbc_auth_takes_a_raw_connection_string_from_the_environment(tmp_path):
    path = write_config(tmp_path / "t.toml", """\
        [environments.odbc]
        odbc_connect = "${ODBC}"
        tenants = ["acme"]
    """)
    raw = "Driver={ODBC Driver 18 for SQL Server};Server=tcp:h,1433;Database={tenant};UID=u;PWD=p@w;Encrypt=yes"
    env = load_settings(path, "odbc", environ={"ODBC": raw}).environment
    from sqlalchemy.engine import make_url

    assert env.auth == "odbc"
    assert make_url(env.tenant_url("acme")).query["odbc_connect"] == raw.replace("{tenant}", "acme")
    assert "p@w" not in mask_url(env.tenant_url("acme"), env.secrets)


@pytest.mark.parametrize("body, message", [
    ('source = "azure-pool"\nsubscription = "s"\nresource_group = "rg"\nserver = "srv"',
     "source 'azure-pool' needs 'pool'"),
    ('source = "azure-server"\nsubscription = "s"\nserver = "srv"', "source 'azure-server' needs 'resource_group'"),
    ('url = "sqlite:///{tenant}.db"\ntenants = ["a"]\npool = "p"', "'pool' is only for the azure-pool"),
    ('url = "mssql+pyodbc://u:p@h/{tenant}"\ntenants = ["a"]', "auth 'azure-ad' connects with an Entra token"),
    ('url = "mssql+pyodbc://@h/{tenant}"\nauth = "sql"\ntenants = ["a"]', "auth 'sql' needs user and password"),
    ('url = "postgresql://h/{tenant}"\nauth = "sql"\ntenants = ["a"]', "auth is for SQL Server URLs"),
    ('url = "mssql+pyodbc://@h/{tenant}"\nauth = "kerberos"\ntenants = ["a"]', "auth must be one of"),
    ('url = "mssql+pyodbc://@h/{tenant}"\ntenants = ["a"]\ncloud = "mars"', "cloud must be one of public"),
    ('url = "mssql+pyodbc://@h/{tenant}"\ntenants = ["a"]\npressure_limit = 120', "pressure_limit is a percentage"),
    ('odbc_connect = "Driver=x;Database=db"\ntenants = ["a"]', "odbc_connect must contain the {tenant}"),
])
def test_invalid_azure_environments(tmp_path, body, message):
    path = write_config(tmp_path / "t.toml", f"[environments.a]\n{body}\n")
    with pytest.raises(ConfigError, match=message.replace("{", r"\{").replace("}", r"\}").replace("(", r"\(")):
        load_settings(path, "a", environ={})


def test_odbc_password_is_masked_in_list_output_whatever_its_characters(tmp_path):
    from tenants.sources import source_for

    path = write_config(tmp_path / "t.toml", """\
        [environments.odbc]
        odbc_connect = "${TENANTS_ODBC}"
        tenants = ["acme"]
    """)
    raw = "Driver=FreeTDS;Server=h;Database={tenant};UID=u;PWD={a b+c;d}}e}"
    env = load_settings(path, "odbc", environ={"TENANTS_ODBC": raw}).environment
    from sqlalchemy.engine import make_url

    from tenants.model import Tenant

    # A discovered name (Azure allows ';') is brace-quoted into the ODBC string, not injected.
    odd = Tenant("odd;name", env.tenant_url("odd;name"), (), env.secrets)
    assert make_url(odd.url).query["odbc_connect"].split(";")[2:4] == ["Database={odd", "name}"]
    tenants = source_for(env).discover() + [odd]
    for tenant in tenants:
        masked = tenant.masked_url
        assert "PWD%3D%2A%2A%2A" in masked or "PWD=***" in masked, masked
        for form in ("a b+c", "a+b%2Bc", "a%20b", "d}}e", "d}e"):
            assert form not in masked, (form, masked)
        assert "a b+c;d}e" in tenant.all_secrets


def test_tenant_names_with_url_characters_stay_in_the_database_field(tmp_path):
    path = write_config(tmp_path / "t.toml", """\
        [environments.a]
        url = "postgresql+psycopg://app@db:5432/{tenant}?sslmode=require"
        tenants = ["plain"]
    """)
    env = load_settings(path, "a", environ={}).environment
    from sqlalchemy.engine import make_url

    url = make_url(env.tenant_url("we#ird?db"))
    assert (url.host, url.database, dict(url.query)) == ("db", "we#ird?db", {"sslmode": "require"})


@pytest.mark.parametrize("body, message", [
    ('url = "mssql+pyodbc://@h/{tenant}?Trusted_Connection=yes"\ntenants = ["a"]', "auth 'azure-ad': "),
    ('url = "mssql+pyodbc://@h/{tenant}?Authentication=ActiveDirectoryPassword"\ntenants = ["a"]',
     "auth 'azure-ad': "),
    ('url = "mssql+pyodbc://deploy:written-in-the-file@h/{tenant}"\nauth = "sql"\ntenants = ["a"]',
     "the password must come from an environment variable"),
    ('source = "azure-pool"\nsubscription = ""\nresource_group = "rg"\nserver = "s"\npool = "p"',
     "'subscription' is empty"),
    ('url = "sqlite:///{tenant}.db"\ntenants = ["a"]\nserver = "s"', "'server' is only for the azure-pool"),
])
def test_sign_in_holes_are_closed_at_load(tmp_path, body, message):
    path = write_config(tmp_path / "t.toml", f"[environments.a]\n{body}\n")
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_settings(path, "a", environ={})


def test_sql_auth_password_from_the_environment_is_accepted(tmp_path):
    path = write_config(tmp_path / "t.toml", """\
        [environments.a]
        url = "mssql+pyodbc://${SQL_USER}:${SQL_PASSWORD}@h/{tenant}?driver=FreeTDS"
        auth = "sql"
        tenants = ["a"]
    """)
    env = load_settings(path, "a", environ={"SQL_USER": "deploy", "SQL_PASSWORD": "p w"}).environment
    assert env.auth == "sql" and "p w" in env.secrets


# --- where alembic.ini is: a config kept outside the project ------------------------------------------------

PROD = """\
    [environments.prod]
    url = "sqlite:///data/{tenant}.db"
    tenants = ["a"]
"""


def test_alembic_ini_is_the_current_directorys_then_the_one_beside_the_config(tmp_path, monkeypatch):
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "alembic.ini").touch()
    (tmp_path / "etc").mkdir()
    (tmp_path / "other").mkdir()
    config = write_config(tmp_path / "etc" / "prod.toml", PROD)
    monkeypatch.chdir(tmp_path / "proj")  # Alembic's own convention: the current directory's
    settings = load_settings(config, "prod", environ={})
    assert settings.environment.alembic == settings.alembic_ini() == tmp_path.resolve() / "proj" / "alembic.ini"

    monkeypatch.chdir(tmp_path / "other")  # neither: the error names both places and the true ways out
    settings = load_settings(config, "prod", environ={})
    with pytest.raises(ConfigError) as err:
        settings.alembic_ini()
    assert str(err.value) == (
        f"no alembic.ini in the current directory ({tmp_path.resolve() / 'other'}) nor beside {config} "
        f"({tmp_path.resolve() / 'etc'}); set `alembic = \"path/to/alembic.ini\"` in environment 'prod' of "
        f"{config} (relative to that file), or run from the directory holding alembic.ini")

    (tmp_path / "etc" / "alembic.ini").touch()  # then the one beside the configuration
    assert load_settings(config, "prod", environ={}).alembic_ini() == tmp_path.resolve() / "etc" / "alembic.ini"
    monkeypatch.chdir(tmp_path / "proj")  # the current directory's still comes first
    assert load_settings(config, "prod", environ={}).alembic_ini() == tmp_path.resolve() / "proj" / "alembic.ini"


def test_an_explicit_alembic_is_relative_to_the_config_whatever_the_current_directory(tmp_path, monkeypatch):
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "alembic.ini").touch()
    (tmp_path / "etc").mkdir()
    config = write_config(tmp_path / "etc" / "prod.toml", PROD + 'alembic = "../proj/alembic.ini"\n')
    monkeypatch.chdir(tmp_path / "etc")
    assert load_settings(config, "prod", environ={}).alembic_ini().resolve() == tmp_path.resolve() / "proj" / \
        "alembic.ini"
    config.write_text(PROD + 'alembic = "../nope/alembic.ini"\n')
    monkeypatch.chdir(tmp_path / "proj")  # an alembic.ini here does not stand in for the one named
    with pytest.raises(ConfigError) as err:
        load_settings(config, "prod", environ={}).alembic_ini()
    assert str(err.value) == (
        f"{tmp_path.resolve() / 'etc' / '..' / 'nope' / 'alembic.ini'}: alembic.ini not found; fix `alembic` in "
        f"environment 'prod' of {config} (a relative path is relative to {tmp_path.resolve() / 'etc'})")


def test_no_config_and_no_alembic_ini_says_how_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        load_settings(environ={}).alembic_ini()
    assert str(err.value) == (
        f"no alembic.ini in the current directory ({tmp_path.resolve()}); give --config a configuration whose "
        "environment sets `alembic = \"path/to/alembic.ini\"`, or run from the directory holding alembic.ini")


def test_plain_alembic_finds_the_config_by_x_config_then_tenants_config_then_beside_alembic_ini(tmp_path):
    """`alembic -x tenant=T` (alembic/env.py): -x config=, then $TENANTS_CONFIG, then the tenants.toml beside
    alembic.ini. Each configuration here knows a different tenant, so the one used is the one that works."""
    import os
    import sqlite3
    import subprocess
    import sys

    from helpers import HEAD, ROOT

    project = tmp_path / "proj"
    project.mkdir()
    (project / "alembic.ini").write_text((ROOT / "alembic.ini").read_text().replace(
        "script_location = %(here)s/alembic", f"script_location = {ROOT / 'alembic'}"))
    configs = {}
    for where, tenant in (("proj", "beside"), ("env", "from_env"), ("x", "from_x")):
        (tmp_path / where).mkdir(exist_ok=True)
        path = tmp_path / where / ("tenants.toml" if where == "proj" else f"{where}.toml")
        configs[tenant] = write_config(
            path, f'[environments.t]\nurl = "sqlite:///db/{{tenant}}.db"\ntenants = ["{tenant}"]\n')
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TENANTS_")}
    alembic = [Path(sys.executable).parent / "alembic", "-c", str(project / "alembic.ini")]

    def run(tenant, *extra, environ=()):
        return subprocess.run([*alembic, "-x", f"tenant={tenant}", "-x", "env=t", *extra, "upgrade", "head"],
                              cwd=tmp_path, env={**clean, **dict(environ)}, capture_output=True, text=True)

    def version(tenant):
        with sqlite3.connect(configs[tenant].parent / "db" / f"{tenant}.db") as conn:
            return conn.execute("SELECT version_num FROM alembic_version").fetchone()[0]

    with_env = {"TENANTS_CONFIG": str(configs["from_env"])}
    done = run("from_env", environ=with_env)  # TENANTS_CONFIG wins over the tenants.toml beside alembic.ini
    assert done.returncode == 0, done.stderr
    assert version("from_env") == HEAD
    done = run("from_x", "-x", f"config={configs['from_x']}", environ=with_env)  # -x config= wins over both
    assert done.returncode == 0, done.stderr
    assert version("from_x") == HEAD
    done = run("beside")  # neither: the tenants.toml beside alembic.ini
    assert done.returncode == 0, done.stderr
    assert version("beside") == HEAD
    refused = run("beside", environ=with_env)
    assert refused.returncode != 0 and "unknown tenant 'beside'" in refused.stderr
