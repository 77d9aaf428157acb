"""check_schema (issue 12, item 4): an upgrade does not start a tenant whose schema differs from the expected schema
of its recorded revision (`drifted`, a failure for the policy), and `plan` lists such tenants first. On SQLite files
and PostgreSQL databases, at the library level and through the CLI (exit code and exact output)."""

from __future__ import annotations

import json
import pickle
import re
import sqlite3
from pathlib import Path

import psycopg
import pytest
from helpers import DEMO_REVISIONS, HEAD, pg_dsn, settings_for, version

from tenants import api
from tenants.api import RunOptions
from tenants.engine.expected import Expected
from tenants.engine.unit import Job, position_key, run_tenant
from tenants.model import Drifted, Plan, RunReport, Status, Tenant, TenantResult
from tenants.output.junit import junit_xml
from tenants.output.plan import plan_json, plan_markdown, plan_text
from tenants.plan import plan
from tenants.snapshot import Snapshot

R1, R2, R3, R4 = DEMO_REVISIONS
DURATION = re.compile(r"\d+\.\d\ds")
DROPPED = "index ux_users_email missing on users"
ERROR = (f"schema differs from the expected schema of its recorded revision {R3}: {DROPPED}; not touched: repair "
         "the schema (`tenants plan --schema` lists every difference), or set check_schema = false to upgrade it "
         "anyway")


def lines(text: str) -> list[str]:
    return [DURATION.sub("T", ln.rstrip()) for ln in text.splitlines() if ln.strip()]


def extra(tmp_path: Path, check: bool) -> str:
    """The expected schemas cached in the test's folder (not the user's ~/.cache); check_schema on or off."""
    return f'schema_cache = "{tmp_path / "cache"}"\n' + ("check_schema = true\n" if check else "")


def drifted_sqlite_fleet(sqlite_config, tmp_path: Path, check: bool):
    """acme, globex, initech at R3; globex's unique index on users.email dropped by hand."""
    config = sqlite_config(extra=extra(tmp_path, check))
    settings = settings_for(config)
    assert api.upgrade(settings, R3).ok
    with sqlite3.connect(tmp_path / "db" / "globex.db") as conn:
        conn.execute("DROP INDEX ux_users_email")
    return config, settings


def by_hand(database: str, sql: str) -> None:
    """A change made outside the tool, on one PostgreSQL tenant."""
    with psycopg.connect(pg_dsn(database), autocommit=True) as conn:
        conn.execute(sql)


def sqlite_indexes(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}


# --- the upgrade -------------------------------------------------------------------------------------------------

def test_sqlite_check_schema_reports_a_drifted_tenant_drifted_and_does_not_touch_it(sqlite_config, tmp_path):
    _, settings = drifted_sqlite_fleet(sqlite_config, tmp_path, check=True)
    report = api.upgrade(settings, options=RunOptions(max_failures=None))
    by_name = {r.tenant: r for r in report.results}
    assert {n: r.status for n, r in by_name.items()} == {
        "acme": Status.UPGRADED, "globex": Status.DRIFTED, "initech": Status.UPGRADED}
    globex = by_name["globex"]
    assert (globex.from_revision, globex.to_revision, globex.applied, globex.error) == (R3, R3, (), ERROR)
    assert not report.ok and report.counts == {"upgraded": 2, "drifted": 1}
    # Not touched: still at R3, its index still missing, and R4's index not created.
    db = tmp_path / "db"
    assert version(db / "globex.db") == R3
    assert sqlite_indexes(db / "globex.db") == set()
    assert version(db / "acme.db") == HEAD
    assert sqlite_indexes(db / "acme.db") == {"ux_users_email", "ix_invoices_user_id_issued_at"}


def test_sqlite_without_check_schema_the_drifted_tenant_is_upgraded_as_today(sqlite_config, tmp_path):
    _, settings = drifted_sqlite_fleet(sqlite_config, tmp_path, check=False)
    report = api.upgrade(settings)
    assert report.ok and report.counts == {"upgraded": 3}
    # The guards skipped nothing here, but nothing repaired the drift either: what check_schema is for.
    assert version(tmp_path / "db" / "globex.db") == HEAD
    assert sqlite_indexes(tmp_path / "db" / "globex.db") == {"ix_invoices_user_id_issued_at"}


def test_the_failure_policy_counts_drifted_as_a_failure(sqlite_config, tmp_path):
    _, settings = drifted_sqlite_fleet(sqlite_config, tmp_path, check=True)
    report = api.upgrade(settings, options=RunOptions(concurrency=1))  # default policy: stop after 1 failure
    assert [(r.tenant, r.status) for r in report.results] == [
        ("acme", Status.UPGRADED), ("globex", Status.DRIFTED), ("initech", Status.SKIPPED)]
    assert version(tmp_path / "db" / "initech.db") == R3


def test_a_drifted_tenant_at_the_target_is_up_to_date_the_no_op_path_reads_no_schema(sqlite_config, tmp_path):
    _, settings = drifted_sqlite_fleet(sqlite_config, tmp_path, check=True)
    report = api.upgrade(settings, R3)
    assert report.ok and report.counts == {"up-to-date": 3}


def test_new_tenants_are_not_checked_and_a_resume_does_not_rerun_drifted_by_default(sqlite_config, tmp_path):
    settings = settings_for(sqlite_config(extra=extra(tmp_path, check=True)))
    assert api.upgrade(settings).counts == {"upgraded": 3}  # from base: nothing to compare
    assert "drifted" not in api.RESUME_STATUSES  # like unknown-revision and unmanaged: a person first


def test_the_expected_schemas_cross_to_the_worker_as_plain_data_in_the_job(sqlite_config, tmp_path):
    """The unit of work with an Expected made by hand: the tenant is held to whatever the Job carries."""
    _, settings = drifted_sqlite_fleet(sqlite_config, tmp_path, check=True)
    empty = Expected(by_revision={R3: Snapshot()}, source="consensus", base=Snapshot())
    job = Job("upgrade", HEAD, str(settings.environment.alembic), expected=api.job_schemas(empty))
    assert pickle.loads(pickle.dumps(job)).expected == {R3: Snapshot()}
    assert position_key(("b", "a")) == "a,b"
    tenant = Tenant("acme", settings.environment.tenant_url("acme"))
    result = run_tenant(tenant, job, api.load_revisions(settings), job.connector())
    assert result.status is Status.DRIFTED and result.error.startswith(
        f"schema differs from the expected schema of its recorded revision {R3}: extra table invoices; extra "
        "table users; not touched")
    assert version(tmp_path / "db" / "acme.db") == R3


@pytest.mark.postgres
def test_postgresql_check_schema_reports_drifted_and_without_it_upgrades(pg_fleet, tmp_path):
    fleet = pg_fleet(3, extra=extra(tmp_path, check=True))
    settings = settings_for(fleet.config, "pg")
    assert api.upgrade(settings, R3).ok
    drifted = fleet.names[1]
    by_hand(drifted, "DROP INDEX ux_users_email")
    report = api.upgrade(settings, options=RunOptions(max_failures=None))
    assert {r.tenant: r.status for r in report.results} == {
        fleet.names[0]: Status.UPGRADED, drifted: Status.DRIFTED, fleet.names[2]: Status.UPGRADED}
    assert next(r.error for r in report.results if r.tenant == drifted) == ERROR
    assert fleet.version(drifted) == R3
    assert fleet.query(drifted, "SELECT indexname FROM pg_indexes WHERE indexname LIKE 'ix_%' "
                                "OR indexname = 'ux_users_email'") == []

    # The same fleet without check_schema: upgraded as today.
    fleet.config.write_text(fleet.config.read_text().replace("check_schema = true\n", ""))
    report = api.upgrade(settings_for(fleet.config, "pg"))
    assert report.ok and report.counts == {"upgraded": 1, "up-to-date": 2}
    assert fleet.version(drifted) == HEAD


# --- the CLI -----------------------------------------------------------------------------------------------------

def test_cli_upgrade_with_check_schema_exit_1_and_exact_lines(cli, sqlite_config, tmp_path):
    config, _ = drifted_sqlite_fleet(sqlite_config, tmp_path, check=True)
    run = cli("--config", str(config), "-e", "test", "upgrade", "-j", "1")
    assert run.code == 1, run.err
    out = lines(run.out)
    assert out[:3] == [f"upgraded         acme  {R3} -> {HEAD}  (1 revision, T)",
                       f"drifted          globex  at {R3}  (T)  {ERROR}",
                       "skipped          initech"]
    assert out[-2:] == [f"drifted: globex: {ERROR}",
                        "skipped: initech: not started: the failure policy stopped the run"]
    assert re.fullmatch(rf"upgrade to {HEAD}: 3 tenants, 1 upgraded, 1 skipped, 1 drifted in \d+\.\ds "
                        r"\(concurrency 1\)", out[-3])


def test_cli_bad_check_schema_value_is_exit_2_naming_the_file_and_key(cli, sqlite_config):
    config = sqlite_config(extra='check_schema = "yes"')
    run = cli("--config", str(config), "-e", "test", "upgrade")
    assert (run.code, run.out) == (2, "")
    assert run.err.strip() == f"tenants: error: {config}:6: environments.test: check_schema must be a bool, not str"


# --- the plan ----------------------------------------------------------------------------------------------------

def test_plan_with_check_schema_lists_the_drifted_tenant_first_and_apart(cli, sqlite_config, tmp_path):
    config, settings = drifted_sqlite_fleet(sqlite_config, tmp_path, check=True)
    result = plan(settings)
    assert result.drifted == (Drifted("globex", R3, (DROPPED,), refused=True),)
    assert result.schema_reference in ("scratch", "cache")
    assert [c.tenants for c in result.cohorts] == [("acme", "initech")]
    assert (result.tenants, result.to_upgrade, result.ok) == (3, 2, False)

    run = cli("--config", str(config), "-e", "test", "plan")
    assert run.code == 1
    assert run.out == f"""\
upgrade test to {HEAD}: 3 tenants, 2 to upgrade in 1 cohort

Drifted (1): schema differs from its recorded revision (expected schemas: cache)
  globex at {R3}: the upgrade will not start it (check_schema = true)
    - {DROPPED}

cohort 1: from {R3}, 2 tenants, 1 revision to apply
  tenants: acme, initech
  1. {R4}  index invoices by user and issue date

up to date (0): -
"""
    markdown = cli("--config", str(config), "-e", "test", "plan", "--format", "markdown")
    assert markdown.code == 1
    assert markdown.out.startswith(f"""\
### Migration plan: `test` to `{HEAD}`

3 tenants: 2 to upgrade in 1 cohort, 0 up to date, 1 drifted.

#### Drifted (1): schema differs from its recorded revision

Expected schemas: `cache`.

- `globex` at `{R3}`: the upgrade will not start it (check\\_schema = true)
  - index ux\\_users\\_email missing on users

| cohort | from | tenants | revisions to apply |
""")
    data = json.loads(cli("--config", str(config), "-e", "test", "plan", "--format", "json").out)
    assert (data["schema_reference"], data["summary"]["drifted"]) == ("cache", 1)
    assert data["drifted"] == [{"tenant": "globex", "revision": R3, "differences": [DROPPED], "refused": True}]


def test_plan_dash_dash_schema_without_check_schema_shows_drift_but_plans_the_upgrade(cli, sqlite_config, tmp_path):
    config, settings = drifted_sqlite_fleet(sqlite_config, tmp_path, check=False)
    assert plan(settings).schema_reference is None  # not asked: no schema read
    result = plan(settings, schema=True)
    assert result.drifted == (Drifted("globex", R3, (DROPPED,), refused=False),)
    assert [c.tenants for c in result.cohorts] == [("acme", "globex", "initech")] and result.ok

    run = cli("--config", str(config), "-e", "test", "plan", "--schema")
    assert run.code == 0
    assert lines(run.out)[1:4] == [
        "Drifted (1): schema differs from its recorded revision (expected schemas: cache)",
        f"  globex at {R3}: the upgrade runs on it anyway (check_schema is off)",
        f"    - {DROPPED}"]


def test_plan_renders_no_drift_and_long_differences_folded():
    base = dict(environment="e", target=HEAD, head=HEAD, up_to_date=("acme",))
    clean = Plan(**base, schema_reference="scratch")
    assert "Drifted (0): schema differs from its recorded revision (expected schemas: scratch)" in plan_text(clean)
    assert "Expected schemas: `scratch`. Every tenant read matches its revision." in plan_markdown(clean)
    many = Plan(**base, schema_reference="consensus",
                drifted=(Drifted("acme", HEAD, tuple(f"extra table t{i:02d}" for i in range(12))),))
    text = plan_text(many)
    assert "  acme at 0004_invoice_user_index: at the target: the upgrade does not touch it" in text
    assert "    - extra table t09\n    - ... and 2 more\n" in text
    assert plan_json(many)["drifted"][0]["differences"][-1] == "extra table t11"
    assert plan_text(Plan(**base)).count("Drifted") == 0


@pytest.mark.postgres
def test_postgresql_plan_lists_the_drifted_tenant(pg_fleet, tmp_path):
    fleet = pg_fleet(2, extra=extra(tmp_path, check=False))
    settings = settings_for(fleet.config, "pg")
    assert api.upgrade(settings, R3).ok
    by_hand(fleet.names[0], "ALTER TABLE users ADD COLUMN legacy_flag boolean")
    result = plan(settings, schema=True)
    assert result.drifted == (Drifted(fleet.names[0], R3, ("extra column users.legacy_flag",)),)


# --- the report --------------------------------------------------------------------------------------------------

def test_drifted_reads_back_from_the_report_and_is_a_junit_failure():
    result = TenantResult("globex", Status.DRIFTED, R3, R3, attempts=1, duration=0.01, error=ERROR)
    report = RunReport("r", "test", "upgrade", HEAD, HEAD, 1, "2024-01-01T00:00:00+00:00",
                       "2024-01-01T00:00:01+00:00", 1.0, (result,))
    assert RunReport.from_dict(json.loads(json.dumps(report.to_dict()))) == report
    assert report.to_dict()["summary"] == {"drifted": 1} and not report.ok
    assert '<failure type="drifted" message="schema differs' in junit_xml(report)
