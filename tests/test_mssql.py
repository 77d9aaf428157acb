"""SQL Server / Azure SQL client paths, for real where they can run here: pyodbc over unixODBC + FreeTDS
against loopback stand-ins (a closed port, a socket that hangs up), and T-SQL checked with sqlglot."""

from __future__ import annotations

import os
import socket
import threading

import pytest
import sqlglot
from sqlalchemy import create_engine
from sqlalchemy.exc import DBAPIError

from tenants.db import describe_error, is_throttling, is_transient, sqlstate_of
from tenants.dialects import mssql


@pytest.fixture(scope="module")
def pyodbc():
    try:
        import pyodbc as module
    except ImportError as err:
        if os.environ.get("TENANTS_REQUIRE_ODBC") == "1":
            pytest.fail(f"pyodbc is required here but does not import: {err}")
        pytest.skip(f"pyodbc does not import ({err}); install unixODBC (Debian: unixodbc, tdsodbc)")
    if "FreeTDS" not in module.drivers():
        if os.environ.get("TENANTS_REQUIRE_ODBC") == "1":
            pytest.fail(f"FreeTDS's ODBC driver is required here; drivers: {module.drivers()}")
        pytest.skip("FreeTDS's ODBC driver is not installed (Debian: tdsodbc)")
    return module


@pytest.fixture
def hang_up_port():
    """A loopback port that accepts connections and closes them at once."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    stop = threading.Event()

    def serve():
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
                conn.close()
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    server.close()


def connect_error(url: str) -> DBAPIError:
    engine = create_engine(url, connect_args={"timeout": 5})
    try:
        with pytest.raises(DBAPIError) as err:
            engine.connect()
    finally:
        engine.dispose()
    return err.value


def test_closed_port_is_transient_and_the_password_stays_out(pyodbc):
    err = connect_error("mssql+pyodbc://deploy:Sup3r-s3cret@127.0.0.1:1/acme?driver=FreeTDS&TDS_Version=7.4")
    assert isinstance(err.orig, pyodbc.Error)
    assert mssql.diagnose(err.orig).sqlstate == "08S01"
    assert sqlstate_of(err) == sqlstate_of(err.orig) == "08S01"  # pyodbc's first arg, wrapped or not
    assert is_transient(err) and not is_throttling(err)
    text = describe_error(err, ("Sup3r-s3cret",))
    assert text.startswith("OperationalError: ") and "Sup3r-s3cret" not in text + str(err.orig)


def test_socket_that_hangs_up_is_transient(pyodbc, hang_up_port):
    err = connect_error(f"mssql+pyodbc://deploy:Hang-up-s3cret@127.0.0.1:{hang_up_port}/acme?driver=FreeTDS"
                        "&TDS_Version=7.4")
    assert mssql.diagnose(err.orig).sqlstate in mssql.TRANSIENT_SQLSTATES
    assert is_transient(err)
    text = describe_error(err, ("Hang-up-s3cret",))
    assert "Hang-up-s3cret" not in text + str(err.orig) + repr(err.orig)


# Real message shapes of ODBC Driver 18 (the driver production uses), raised as real pyodbc exceptions.
def odbc_error(pyodbc, cls: str, sqlstate: str, text: str, number: int):
    message = f"[{sqlstate}] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]{text} ({number}) (SQLExecDirectW)"
    return getattr(pyodbc, cls)(sqlstate, message)


CASES = [
    (40613, "Database 'acme' on server 'srv' is not currently available. Please retry the connection later.",
     mssql.Kind.TRANSIENT),
    (40501, "The service is currently busy. Retry the request after 10 seconds.", mssql.Kind.THROTTLED),
    (40197, "The service has encountered an error processing your request. Please try again.",
     mssql.Kind.TRANSIENT),
    (49918, "Cannot process request. Not enough resources to process request.", mssql.Kind.THROTTLED),
    (49919, "Cannot process create or update request. Too many create or update operations in progress.",
     mssql.Kind.TRANSIENT),
    (49920, "Cannot process request. Too many operations in progress for subscription.", mssql.Kind.TRANSIENT),
    (4060, "Cannot open database \"acme\" requested by the login. The login failed.", mssql.Kind.TRANSIENT),
    (4221, "Login to read-secondary failed due to long wait on 'HADR_DATABASE_WAIT_FOR_TRANSITION_TO_VERSIONING'.",
     mssql.Kind.TRANSIENT),
    (10928, "Resource ID : 1. The request limit for the elastic pool is 210 and has been reached.",
     mssql.Kind.THROTTLED),
    (10929, "Resource ID : 1. The request limit for the database is 30 and has been reached. However, the server is "
            "currently too busy to support requests greater than 30 for this database.", mssql.Kind.THROTTLED),
    (10936, "Resource ID : 1. The request limit for the elastic pool is 210 and has been reached.",
     mssql.Kind.THROTTLED),
    (10053, "A transport-level error has occurred when receiving results from the server.", mssql.Kind.TRANSIENT),
    (10054, "A transport-level error has occurred when sending the request to the server.", mssql.Kind.TRANSIENT),
    (10060, "A network-related or instance-specific error has occurred.", mssql.Kind.TRANSIENT),
    (233, "A connection was successfully established with the server, but then an error occurred during the login "
          "process.", mssql.Kind.TRANSIENT),
    (64, "A connection was successfully established with the server, but then an error occurred during the "
         "pre-login handshake.", mssql.Kind.TRANSIENT),
    (1205, "Transaction (Process ID 52) was deadlocked on lock resources with another process and has been chosen "
           "as the deadlock victim. Rerun the transaction.", mssql.Kind.TRANSIENT),
    (208, "Invalid object name 'invoices'.", mssql.Kind.FAILURE),
    (2714, "There is already an object named 'users' in the database.", mssql.Kind.FAILURE),
    (18456, "Login failed for user '<token-identified principal>'.", mssql.Kind.FAILURE),
]


@pytest.mark.parametrize("number, text, kind", CASES, ids=[str(c[0]) for c in CASES])
def test_classification_by_native_error_number(pyodbc, number, text, kind):
    err = odbc_error(pyodbc, "OperationalError" if kind is not mssql.Kind.FAILURE else "ProgrammingError",
                     "42000", text, number)
    diagnosis = mssql.diagnose(err)
    assert diagnosis.numbers == (number,)
    assert diagnosis.kind is kind
    assert is_transient(err) is (kind is not mssql.Kind.FAILURE)
    assert is_throttling(err) is (kind is mssql.Kind.THROTTLED)


@pytest.mark.parametrize("sqlstate, transient", [("08S01", True), ("08001", True), ("HYT00", True),
                                                 ("42S02", False), ("23000", False)])
def test_classification_by_sqlstate(pyodbc, sqlstate, transient):
    err = pyodbc.Error(sqlstate, f"[{sqlstate}] [Microsoft][ODBC Driver 18 for SQL Server]Some message (0) "
                                 "(SQLDriverConnect)")
    assert is_transient(err) is transient


def test_chained_diagnostics_count_every_number(pyodbc):
    err = pyodbc.OperationalError("42000", (
        "[42000] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]Cannot open database \"acme\" requested by "
        "the login. The login failed. (4060) (SQLDriverConnect); [42000] [Microsoft][ODBC Driver 18 for SQL Server]"
        "[SQL Server]Login failed for user 'deploy'. (18456) (SQLDriverConnect)"))
    assert mssql.diagnose(err).numbers == (4060, 18456)
    # A failed login (the deploy user missing from this database) is not retried, whatever comes with it.
    assert not is_transient(err)
    failover = pyodbc.OperationalError("42000", (
        "[42000] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]Cannot open database \"acme\" requested by "
        "the login. The login failed. (4060) (SQLDriverConnect); [08S01] [Microsoft][ODBC Driver 18 for SQL Server]"
        "TCP Provider: An existing connection was forcibly closed by the remote host. (10054) (SQLDriverConnect)"))
    assert mssql.diagnose(failover).numbers == (4060, 10054) and is_transient(failover)


PERMISSION_CASES = [
    (300, "VIEW SERVER STATE permission was denied on object 'server', database 'master'."),
    (297, "The user does not have permission to perform this action."),
    (262, "VIEW DATABASE STATE permission denied in database 'acme'."),
    (229, "The SELECT permission was denied on the object 'dm_elastic_pool_resource_stats', database "
          "'mssqlsystemresource', schema 'sys'."),
]


@pytest.mark.parametrize("number, text", PERMISSION_CASES, ids=[str(c[0]) for c in PERMISSION_CASES])
def test_permission_denied_is_named_and_never_retried(pyodbc, number, text):
    err = odbc_error(pyodbc, "ProgrammingError", "42000", text, number)
    wrapped = DBAPIError.instance("SELECT TOP 1 avg_cpu_percent FROM sys.dm_elastic_pool_resource_stats", None, err,
                                  pyodbc.Error)  # as SQLAlchemy raises it
    assert mssql.permission_denied(err) == mssql.permission_denied(wrapped) == number
    assert mssql.diagnose(err).kind is mssql.Kind.FAILURE and not is_transient(err) and not is_throttling(err)


def test_permission_denied_in_a_chain_and_not_otherwise(pyodbc):
    # What reading the pool's DMV without VIEW SERVER STATE returns: 300, then 297.
    chained = pyodbc.ProgrammingError("42000", (
        "[42000] [Microsoft][ODBC Driver 18 for SQL Server][SQL Server]VIEW SERVER STATE permission was denied on "
        "object 'server', database 'master'. (300) (SQLExecDirectW); [42000] [Microsoft][ODBC Driver 18 for SQL "
        "Server][SQL Server]The user does not have permission to perform this action. (297)"))
    assert mssql.permission_denied(chained) == 300
    refused = odbc_error(pyodbc, "OperationalError", "42000", CASES[8][1], 10928)
    assert mssql.permission_denied(refused) is None
    assert mssql.permission_denied(RuntimeError("VIEW SERVER STATE permission was denied (300) (SQLExecDirectW)")) \
        is None  # only pyodbc's errors carry SQL Server's numbers


def test_app_lock_statements_are_valid_t_sql():
    get = mssql.GET_APPLOCK.replace(":timeout_ms", "5000")
    kinds = [type(s).__name__ for s in sqlglot.parse(get, read="tsql", error_level=sqlglot.ErrorLevel.RAISE)]
    # Parsed for real, not kept as an opaque Command. NOCOUNT is switched back off before the SELECT: the lock is
    # taken on the migration connection, and Alembic checks the row count of its version-table UPDATE there.
    assert kinds == ["Set", "Declare", "Execute", "Set", "Select"]
    assert [s.sql("tsql") for s in sqlglot.parse(get, read="tsql")][3] == "SET NOCOUNT OFF"
    release = sqlglot.parse(mssql.RELEASE_APPLOCK, read="tsql", error_level=sqlglot.ErrorLevel.RAISE)
    assert [type(s).__name__ for s in release] == ["Execute"]
    assert "@LockOwner = 'Session'" in get and "@LockMode = 'Exclusive'" in get


def test_lock_holder_query_is_valid_t_sql_and_names_the_session_and_its_program():
    """Who holds a tenant's app lock: the session and its program_name (a run of tenants says `tenants <run
    id>`), from the lock DMV joined to the sessions DMV, for this database and this resource only."""
    (parsed,) = sqlglot.parse(mssql.LOCK_HOLDER_SQL, read="tsql", error_level=sqlglot.ErrorLevel.RAISE)
    assert type(parsed).__name__ == "Select"
    assert [c.alias_or_name for c in parsed.expressions] == ["session_id", "program_name", "login_time"]
    tables = {t.name.lower() for t in parsed.find_all(sqlglot.exp.Table)}
    assert tables == {"dm_tran_locks", "dm_exec_sessions"}
    where = parsed.args["where"].sql("tsql")
    assert "DB_ID()" in where and mssql.LOCK_RESOURCE in where and "@@SPID" in where


def test_sql_server_sessions_carry_the_run_as_their_program_name():
    """ODBC's APP keyword (pyodbc adds unknown keyword arguments to the connection string) sets program_name;
    a URL that sets its own keeps it."""
    from sqlalchemy.engine import make_url

    from tenants.dialects import Sessions

    named = Sessions(application_name="tenants 0123abcd")
    dialect = mssql.MSSQL()
    url = make_url("mssql+pyodbc://u:p@server/t1?driver=ODBC+Driver+18+for+SQL+Server")
    assert dialect.connect_args(url, named) == {"timeout": 30, "APP": "tenants 0123abcd"}
    assert dialect.connect_args(url, Sessions()) == {"timeout": 30}
    assert dialect.connect_args(url.update_query_dict({"APP": "mine"}), named) == {"timeout": 30}


def test_connector_gives_sql_server_connections_an_entra_token_from_one_cache(pyodbc):
    """auth = "azure-ad": every new connection of every tenant engine carries the token; one get_token."""
    from azure.core.credentials import AccessToken
    from sqlalchemy import event

    from tenants.db import Connector
    from tenants.dialects.entra import token_struct

    class Credential:
        calls: list[tuple[str, ...]] = []

        def get_token(self, *scopes, **kwargs):
            self.calls.append(scopes)
            return AccessToken("eyJ-fake-token", 4102444800)  # 2100-01-01

    seen = []

    def spy(dialect, record, cargs, cparams):
        seen.append(cparams.get("attrs_before", {}).get(1256))

    connector = Connector("azure-ad", "usgov", credential=Credential())
    try:
        for tenant in ("acme", "globex"):
            with connector.engine(f"mssql+pyodbc://@127.0.0.1:1/{tenant}?driver=FreeTDS") as engine:
                event.listen(engine, "do_connect", spy)  # after the token hook: sees what it set
                with pytest.raises(DBAPIError) as err:
                    engine.connect()
                assert "eyJ-fake-token" not in str(err.value)
    finally:
        connector.dispose()
    assert seen == [token_struct("eyJ-fake-token")] * 2
    assert Credential.calls == [("https://database.usgovcloudapi.net/.default",)]


def test_demo_and_postgresql_paths_need_no_odbc_or_azure_library(tmp_path):
    """With pyodbc and the azure packages unimportable, the demo fleet upgrades and nothing tries them."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    for name in ("alembic.ini", "alembic"):
        (tmp_path / name).symlink_to(root / name)
    blocker = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'pyodbc' or name == 'azure' or name.startswith('azure.'):\n"
        "            raise ImportError(f'{name} is blocked in this test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from tenants.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TENANTS_")}
    for args in (["upgrade"], ["status"], ["sql", "--dialect", "postgresql"]):
        run = subprocess.run([sys.executable, "-c", blocker, *args], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 0, (args, run.stderr)
        assert "blocked" not in run.stderr


def test_the_state_batch_parses_as_t_sql_and_never_selects_from_a_missing_table():
    """Issue 13: the version, the pin and which tool tables exist, in one batch (no SQL Server here: sqlglot).
    The version and pin tables are only ever named inside the dynamic SQL chosen by OBJECT_ID."""
    sql = mssql.state_sql("alembic_version", "tenants_pin", "o'brien_history")
    statements = sqlglot.parse(sql, read="tsql", error_level=sqlglot.ErrorLevel.RAISE)
    assert [type(s).__name__ for s in statements] == ["Set", "Declare", "Declare", "ExecuteSql", "Declare",
                                                      "ExecuteSql", "Select", "Select"]
    outside = {t.name.lower() for s in statements for t in s.find_all(sqlglot.exp.Table)}
    assert not outside & {"alembic_version", "tenants_pin"}
    assert "N'o''brien_history'" in sql
    last = statements[-1]
    assert [e.alias for e in last.expressions] == ["has_version", "versions", "pinned", "reason", "pinned_by",
                                                    "pinned_at", "history", "tables"]


def test_the_state_row_reads_as_a_tenant_state():
    from types import SimpleNamespace

    from tenants.dialects.base import TenantState

    def row(**kw):
        return SimpleNamespace(**{"has_version": 1, "versions": None, "pinned": 0, "reason": None,
                                  "pinned_by": None, "pinned_at": None, "history": 0, "tables": None, **kw})

    assert mssql.state_of(row(has_version=0, tables="users\ndbo2.t")) == TenantState(None, ("users", "dbo2.t"),
                                                                                      None, False)
    assert mssql.state_of(row(versions="b\na", history=1)) == TenantState(("a", "b"), (), None, True)
    assert mssql.state_of(row()) == TenantState((), (), None, False)  # a version table without rows
    assert mssql.state_of(row(versions="a", pinned=1, reason="why", pinned_by="me", pinned_at=1)).pin == (
        "why", "me", 1)
