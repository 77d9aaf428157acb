"""Issue 13: a migration connection's statements with no answer travel with the next one that has one
(tenants.dialects.psycopg_batch), against a real PostgreSQL, counted by the latency proxy (no delay).

What must not change is what a migration sees: every statement runs, in order, in its transaction; a failing
one fails the transaction (at the next statement that needs an answer, with the database's own error); a
rollback undoes what was held back; outside a transaction, and after a SAVEPOINT, each statement is sent at once."""

from __future__ import annotations

import time

import psycopg
import pytest
from helpers import PG_URL, ROOT, make_project, pg_dsn
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ProgrammingError

from tenants.db import Connector, Sessions
from tenants.dialects import psycopg_batch
from tenants.engine.revisions import Revisions
from tenants.engine.unit import Job, run_tenant
from tenants.model import Status, Tenant

pytestmark = pytest.mark.postgres


@pytest.fixture
def tenant_db(pg_database):
    return pg_database()


def _url(pg_proxy, name: str) -> str:
    return make_url(PG_URL).set(host="127.0.0.1", port=pg_proxy.port, database=name,
                                query={"sslmode": "disable"}).render_as_string(hide_password=False)


def _settled(pg_proxy) -> dict:
    deadline = time.monotonic() + 5
    while pg_proxy.stats()["open_connections"] and time.monotonic() < deadline:
        time.sleep(0.01)
    return pg_proxy.stats()


def _tables(name: str) -> set[str]:
    with psycopg.connect(pg_dsn(name)) as conn:
        return {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


@pytest.fixture
def migration(pg_proxy, tenant_db):
    """A migration connection of the tool's (batching on), to the tenant through the proxy, and the proxy."""
    connector = Connector(sessions=Sessions(batch_statements=True))
    with connector.engine(_url(pg_proxy, tenant_db)) as engine, engine.connect() as conn:
        conn.rollback()  # the engine's first connect initialised the dialect: not what is counted
        assert isinstance(conn.connection.dbapi_connection, psycopg_batch.Connection)
        pg_proxy.reset()
        yield conn
    connector.dispose()


def test_ddl_travels_with_the_next_statement_that_needs_an_answer(migration, pg_proxy, tenant_db):
    migration.execute(text("CREATE TABLE a (id int primary key)"))
    migration.execute(text("CREATE INDEX a_id ON a (id)"))
    migration.execute(text("COMMENT ON TABLE a IS 'held back'"))
    assert pg_proxy.stats()["round_trips"] == 0  # nothing sent yet: not even the BEGIN
    assert migration.execute(text("SELECT count(*) FROM a")).scalar() == 0
    assert pg_proxy.stats()["round_trips"] == 1
    migration.execute(text("CREATE TABLE b (id int)"))
    migration.commit()
    assert pg_proxy.stats()["round_trips"] == 2  # CREATE TABLE b went with the COMMIT
    assert _tables(tenant_db) == {"a", "b"}


def test_a_failing_held_back_statement_fails_its_transaction_with_the_databases_error(migration, tenant_db):
    migration.execute(text("CREATE TABLE a (id int)"))
    migration.commit()
    migration.execute(text("CREATE TABLE c (id int)"))
    migration.execute(text("CREATE TABLE a (id int)"))  # already there: fails, but only when sent
    with pytest.raises(ProgrammingError) as caught:
        migration.execute(text("SELECT 1"))
    assert isinstance(caught.value.orig, psycopg.errors.DuplicateTable)
    assert 'relation "a" already exists' in str(caught.value.orig)
    assert any("one sent ahead of it" in note and "CREATE TABLE a" in note
               for note in getattr(caught.value.orig, "__notes__", []))
    migration.rollback()
    assert _tables(tenant_db) == {"a"}  # c rolled back with the transaction
    assert migration.execute(text("SELECT 2")).scalar() == 2  # the connection goes on


def test_a_rollback_drops_what_was_held_back_and_a_commit_sends_it(migration, tenant_db):
    migration.execute(text("CREATE TABLE gone (id int)"))
    migration.rollback()
    migration.execute(text("CREATE TABLE kept (id int)"))
    migration.commit()
    assert _tables(tenant_db) == {"kept"}


def test_autocommit_statements_are_sent_at_once(migration, pg_proxy, tenant_db):
    migration.execute(text("CREATE TABLE t (id int)"))
    migration.commit()
    pg_proxy.reset()
    auto = migration.execution_options(isolation_level="AUTOCOMMIT")
    auto.execute(text("CREATE INDEX CONCURRENTLY t_id ON t (id)"))  # refused inside a transaction block
    assert pg_proxy.stats()["round_trips"] >= 1
    with psycopg.connect(pg_dsn(tenant_db)) as conn:
        assert conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 't'").fetchall() == [("t_id",)]
    migration.commit()  # ends SQLAlchemy's autobegun transaction (nothing on the server in autocommit)
    migration.execution_options(isolation_level=migration.default_isolation_level)
    migration.execute(text("CREATE TABLE u (id int)"))
    migration.rollback()
    assert "u" not in _tables(tenant_db)  # back in transactions: held back, then rolled back


def test_after_a_savepoint_a_statements_error_is_raised_at_that_statement(migration, tenant_db):
    migration.execute(text("CREATE TABLE a (id int)"))
    migration.commit()
    with migration.begin():
        try:
            with migration.begin_nested():
                migration.execute(text("CREATE TABLE a (id int)"))
        except ProgrammingError:
            pass  # the pattern some migrations use: try, and go on behind the savepoint
        migration.execute(text("CREATE TABLE after_savepoint (id int)"))
    assert _tables(tenant_db) == {"a", "after_savepoint"}


def test_executemany_and_server_side_cursors_see_what_was_held_back(migration, tenant_db):
    migration.execute(text("CREATE TABLE rows (id int)"))
    migration.execute(text("INSERT INTO rows (id) VALUES (:id)"), [{"id": i} for i in range(5)])
    streamed = migration.execution_options(stream_results=True).execute(text("SELECT id FROM rows ORDER BY id"))
    assert [r[0] for r in streamed] == [0, 1, 2, 3, 4]
    migration.commit()


def test_the_switch_turns_it_off(pg_proxy, tenant_db):
    connector = Connector(sessions=Sessions(batch_statements=False))
    with connector.engine(_url(pg_proxy, tenant_db)) as engine, engine.connect() as conn:
        assert not isinstance(conn.connection.dbapi_connection, psycopg_batch.Connection)
    connector.dispose()
    batching = Connector(sessions=Sessions(batch_statements=True))
    with batching.engine(_url(pg_proxy, tenant_db), reads=True) as engine, engine.connect() as conn:
        assert not isinstance(conn.connection.dbapi_connection, psycopg_batch.Connection)  # reads: never


def test_a_migration_with_an_autocommit_block_and_a_failing_ddl(pg_proxy, tenant_db, tmp_path):
    """Through the unit of work and Alembic: r1 builds an index CONCURRENTLY in autocommit_block(), r2 creates
    a table and then one that already exists. r1 commits; r2 fails and rolls back, its table with it; the
    history says so."""
    ini = make_project(tmp_path / "project", {
        "r1": """
            op.create_table('one', sa.Column('id', sa.Integer, primary_key=True))
            with op.get_context().autocommit_block():
                op.execute('CREATE INDEX CONCURRENTLY one_id ON one (id)')
        """,
        "r2": """
            op.create_table('two', sa.Column('id', sa.Integer, primary_key=True))
            op.execute('CREATE TABLE one (id int)')
        """,
    }, env_py=(ROOT / "alembic" / "env.py").read_text())
    revisions = Revisions(ini)
    job = Job(operation="upgrade", target=revisions.head(), alembic_ini=str(ini), run_id="batch", retries=0)
    batching = Connector(sessions=Sessions(batch_statements=True))
    result = run_tenant(Tenant(tenant_db, _url(pg_proxy, tenant_db)), job, revisions, batching, read_first=False)
    assert result.status is Status.FAILED and list(result.applied) == ["r1"]
    assert 'relation "one" already exists' in result.error
    assert _tables(tenant_db) == {"alembic_version", "one", "tenants_history"}
    with psycopg.connect(pg_dsn(tenant_db)) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("r1",)]
        assert conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'one' ORDER BY 1").fetchall() \
            == [("one_id",), ("one_pkey",)]
        assert conn.execute("SELECT to_revision, outcome FROM tenants_history ORDER BY id").fetchall() \
            == [("r1", "applied"), ("r2", "failed")]


def test_the_key_reaches_every_connection_of_the_environment(tmp_path):
    from helpers import fleet_config, settings_for

    from tenants.errors import ConfigError

    on = settings_for(fleet_config(tmp_path / "on.toml", ["a"]))  # the default
    off = settings_for(fleet_config(tmp_path / "off.toml", ["a"], extra="batch_statements = false"))
    assert on.environment.sessions.batch_statements is True
    assert off.environment.sessions.batch_statements is False
    with pytest.raises(ConfigError, match="batch_statements"):
        settings_for(fleet_config(tmp_path / "bad.toml", ["a"], extra='batch_statements = "no"'))


def test_the_servers_idle_in_transaction_timeout_still_ends_a_silent_session(pg_available, tenant_db):
    """What the fault handling relies on (issue 11): a tool session left idle inside a transaction is ended by
    the server. Held-back statements are sent as one simple-query message, which leaves that timeout armed
    (psycopg's pipeline mode ends with a Flush that would disarm it)."""
    url = make_url(PG_URL).set(database=tenant_db).render_as_string(hide_password=False)
    connector = Connector(sessions=Sessions(idle_in_transaction_timeout=0.5, batch_statements=True))
    with connector.engine(url) as engine, engine.connect() as conn:
        assert isinstance(conn.connection.dbapi_connection, psycopg_batch.Connection)
        conn.execute(text("CREATE TABLE t (id int)"))
        conn.execute(text("SELECT 1"))  # BEGIN, the CREATE and this: one message, a transaction open
        time.sleep(1.5)
        with pytest.raises(Exception, match="idle-in-transaction timeout"):
            conn.execute(text("SELECT 2"))
    connector.dispose()


def test_a_worker_connection_watches_for_a_vanished_client(pg_available):
    """The worker's connections ask the server to check for a vanished client while a statement runs (what
    ends a killed worker's transaction at once, tests/test_timeout.py); a batching connection too."""
    from tenants.dialects import dialect_for

    dialect_for("postgresql").setup_worker(check_client=True)
    connector = Connector(sessions=Sessions(batch_statements=True))
    try:
        with connector.engine(PG_URL) as engine, engine.connect() as conn:
            assert isinstance(conn.connection.dbapi_connection, psycopg_batch.Connection)
            assert conn.execute(text("SHOW client_connection_check_interval")).scalar() == "1s"
    finally:
        from sqlalchemy import event
        from sqlalchemy.pool import Pool

        from tenants.dialects.postgresql import check_client_while_busy

        event.remove(Pool, "connect", check_client_while_busy)
        connector.dispose()
