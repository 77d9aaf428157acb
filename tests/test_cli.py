"""The CLI: exit codes and exact output, through the real console-script entry point."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer.main
from helpers import HEAD, ROOT, failing_project, make_project

from tenants.cli import app
from tenants.model import Status, TenantResult
from tenants.output.terminal import result_line

DURATION = re.compile(r"\d+\.\d\ds")


def lines(text: str) -> list[str]:
    return [DURATION.sub("T", ln.rstrip()) for ln in text.splitlines() if ln.strip()]


def test_upgrade_status_and_noop_on_a_fleet(cli, sqlite_config):
    config = str(sqlite_config())
    run = cli("--config", config, "--env", "test", "upgrade", "--concurrency", "2")
    assert run.code == 0, run.err
    out = lines(run.out)
    # Lines stream in completion order.
    assert sorted(out[:3]) == [f"upgraded         {name}  base -> {HEAD}  (4 revisions, T)" for name in
                               ("acme", "globex", "initech")]
    assert out[-1].startswith(f"upgrade to {HEAD}: 3 tenants, 3 upgraded in ")
    assert out[-1].endswith("(concurrency 2)")
    assert "upgraded         3   acme, globex, initech" in "\n".join(out)

    status = cli("--config", config, "--env", "test", "status")
    assert status.code == 0
    assert lines(status.out)[-1] == f"3/3 tenants at head {HEAD}"

    again = cli("--config", config, "--env", "test", "upgrade")
    assert again.code == 0
    assert sorted(lines(again.out)[:3]) == [f"up-to-date       {name}  at {HEAD}  (T)" for name in
                                            ("acme", "globex", "initech")]


def test_status_exits_1_when_a_tenant_is_behind_and_json_is_data(cli, sqlite_config):
    config = str(sqlite_config())
    assert cli("--config", config, "-e", "test", "upgrade", "0002", "--tenant", "acme").code == 0
    run = cli("--config", config, "-e", "test", "status", "--json")
    assert run.code == 1
    data = json.loads(run.out)
    assert data["head"] == HEAD and data["ok"] is False
    assert data["summary"] == {"behind": 1, "new": 2}
    assert data["tenants"][0] == {"tenant": "acme", "state": "behind", "current": "0002_invoices", "behind": 2,
                                  "error": None, "pin": None}


def test_report_file_fields(cli, sqlite_config, tmp_path):
    config = str(sqlite_config())
    report = tmp_path / "run.json"
    run = cli("--config", config, "-e", "test", "upgrade", "--report", str(report), "-t", "globex")
    assert run.code == 0 and run.err.strip() == f"report written to {report}"
    data = json.loads(report.read_text())
    assert set(data) == {"schema_version", "tool_version", "run_id", "environment", "operation", "target", "head",
                         "concurrency", "throttled", "concurrency_changes", "pressure_wait", "pressure_errors",
                         "skipped_databases", "waves",
                         "started_at", "finished_at", "duration", "ok", "summary", "tenants"}
    assert (data["throttled"], data["concurrency_changes"], data["pressure_wait"]) == (0, [], 0.0)
    assert (data["environment"], data["operation"], data["target"], data["ok"]) == ("test", "upgrade", HEAD, True)
    assert data["summary"] == {"upgraded": 1}
    (tenant,) = data["tenants"]
    assert set(tenant) == {"tenant", "status", "from", "to", "applied", "attempts", "duration", "error"}
    assert (tenant["tenant"], tenant["from"], tenant["to"], tenant["attempts"]) == ("globex", "base", HEAD, 1)


def test_failed_tenant_exit_1_and_names_it(cli, sqlite_config, tmp_path):
    config = str(sqlite_config(["bad1", "ok1"], alembic=failing_project(tmp_path / "proj")))
    run = cli("--config", config, "-e", "test", "upgrade", "-j", "1")
    assert run.code == 1
    out = lines(run.out)
    assert out[0].startswith("failed           bad1  base -> r1  (1 revision, T)  OperationalError: no such table")
    assert out[1] == "skipped          ok1"
    assert out[-2].startswith("failed: bad1: OperationalError: no such table: no_such_table")
    assert out[-1] == "skipped: ok1: not started: the failure policy stopped the run"


@pytest.mark.parametrize("args, message", [
    (["--config", "missing.toml", "list"],
     "tenants: error: missing.toml: configuration file not found (check --config / TENANTS_CONFIG)"),
    (["--env", "prod", "list"],
     "tenants: error: {config}: unknown environment 'prod' (--env / TENANTS_ENV); known: dev, test"),
    (["list", "--tenant", "nobody"],
     "tenants: error: unknown tenant 'nobody' (--tenant) in environment 'test'; `tenants list` shows the tenants "
     "found"),
    (["upgrade", "nope"], None),
    (["downgrade", "base", "-t", "acme", "-t", "globex"],
     "tenants: error: downgrade takes exactly one --tenant NAME (got 2): downgrades are per-tenant operations, "
     "never fleet-wide"),
    (["downgrade", "base"],
     "tenants: error: downgrade takes exactly one --tenant NAME: downgrades are per-tenant operations, never "
     "fleet-wide"),
    (["upgrade", "--keep-going", "--max-failures", "2"],
     "tenants: error: --keep-going and --max-failures contradict each other: use one"),
    (["upgrade", "--concurrency", "0"], None),
    (["upgrade", "--zzzz"], "tenants: error: No such option: --zzzz (see `tenants upgrade --help`)"),
    (["stamp", "head"], "tenants: error: stamp needs --tenant NAME, --tag TAG or --all: it records a revision "
                        "without running its migrations, so it never picks its tenants by default"),
    (["stamp", "head", "--all"], "tenants: error: refusing to stamp 3 tenant(s) chosen by --all/--tag/--exclude "
                                 "without confirmation: stdin is not a terminal; see them with `tenants status` "
                                 "(with the same --tag/--exclude), then pass --yes"),
    (["upgrade", "--report", "/no/such/dir/r.json"],
     "tenants: error: --report /no/such/dir/r.json: folder /no/such/dir does not exist"),
])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(cli, sqlite_config, tmp_path, monkeypatch, args, message):
    config = sqlite_config()
    monkeypatch.chdir(tmp_path)
    if args[0] != "--config":
        args = ["--config", str(config), "--env", "test", *args] if args[0] != "--env" else \
            ["--config", str(config), *args]
    run = cli(*args)
    assert run.code == 2
    assert run.out == ""
    assert len(run.err.splitlines()) == 1 and "Traceback" not in run.err
    assert run.err.startswith("tenants: error: ")
    if message is not None:
        assert run.err.strip() == message.format(config=config)
    assert not (tmp_path / "db").exists(), "bad input must not touch any tenant"


def test_unknown_revision_message(cli, sqlite_config):
    run = cli("--config", str(sqlite_config()), "--env", "test", "upgrade", "nope")
    assert run.code == 2
    assert run.err.startswith("tenants: error: unknown revision 'nope' in ")
    assert run.err.rstrip().endswith("see `alembic history`")


def test_unset_variable_is_named_and_password_never_printed(cli, tmp_path, monkeypatch):
    config = tmp_path / "t.toml"
    config.write_text('[environments.x]\nurl = "postgresql+psycopg://app:${APP_PW}@127.0.0.1:1/{tenant}"\n'
                      f'tenants = ["acme"]\nretries = 0\nalembic = "{ROOT / "alembic.ini"}"\n')
    run = cli("--config", str(config), "--env", "x", "list")
    assert run.code == 2
    assert run.err.strip() == (f"tenants: error: {config}:2: environments.x: url uses ${{APP_PW}} but the environment "
                               "variable APP_PW is not set; export it and retry")
    monkeypatch.setenv("APP_PW", "hunter2-secret")
    listed = cli("--config", str(config), "--env", "x", "list", "--json")
    assert json.loads(listed.out) == [{"tenant": "acme", "url": "postgresql+psycopg://app:***@127.0.0.1:1/acme",
                                       "tags": []}]
    report = tmp_path / "r.json"
    up = cli("--config", str(config), "--env", "x", "upgrade", "--report", str(report))
    assert up.code == 1
    for text in (listed.out, listed.err, up.out, up.err, report.read_text()):
        assert "hunter2-secret" not in text
    assert "failed           acme" in up.out


def test_downgrade_asks_unless_yes_and_refuses_without_a_terminal(cli, sqlite_config, tmp_path):
    config = str(sqlite_config())
    assert cli("--config", config, "-e", "test", "upgrade").code == 0
    refused = cli("--config", config, "-e", "test", "downgrade", "0002", "-t", "acme")
    assert refused.code == 2
    assert lines(refused.out) == [
        f"downgrade acme (test) from {HEAD} to 0002_invoices, undoing 2 revision(s):",
        f"  - {HEAD}: index invoices by user and issue date",
        "  - 0003_invoice_status: add invoices.status with a default, backfilled from paid_at",
    ]
    assert refused.err.strip() == ("tenants: error: refusing to downgrade without confirmation: stdin is not a "
                                   "terminal; pass --yes")
    done = cli("--config", config, "-e", "test", "downgrade", "0002", "-t", "acme", "--yes")
    assert done.code == 0
    assert f"downgraded       acme  {HEAD} -> 0002_invoices  (2 revisions, T)" in lines(done.out)
    nothing = cli("--config", config, "-e", "test", "downgrade", "0002", "-t", "acme", "--yes")
    assert (nothing.code, nothing.out.strip()) == (0, "tenant acme is already at 0002_invoices: nothing to undo")


def test_list_and_sql(cli, sqlite_config, tmp_path):
    config = str(sqlite_config())
    listed = cli("--config", config, "-e", "test", "list", "--tag", "nope")
    assert listed.code == 0
    run = cli("--config", config, "-e", "test", "list", "--json", "--exclude", "g*")
    assert [t["tenant"] for t in json.loads(run.out)] == ["acme", "initech"]
    sql = cli("--config", config, "-e", "test", "sql", "0003:head")
    assert sql.code == 0
    assert "CREATE INDEX ix_invoices_user_id_issued_at ON invoices (user_id, issued_at);" in sql.out
    assert not (tmp_path / "db").exists(), "offline SQL connects to nothing"


def test_result_line_is_exact():
    result = TenantResult("acme", Status.UPGRADED, "0001", "0003", ("0002", "0003"), attempts=2, duration=1.234)
    assert result_line(result) == "upgraded         acme  0001 -> 0003  (2 revisions, 2 attempts, 1.23s)"
    locked = TenantResult("b", Status.LOCKED, "0001", "0001", attempts=1, duration=0.5, error="held")
    assert result_line(locked) == "locked           b  at 0001  (0.50s)  held"


def command_paths(command: click.Command, path: tuple[str, ...] = ()) -> dict[str, click.Command]:
    """Every command and group under ``command``, by its words after ``tenants`` ("report merge")."""
    found: dict[str, click.Command] = {}
    for name, sub in getattr(command, "commands", {}).items():
        found[" ".join((*path, name))] = sub
        found |= command_paths(sub, (*path, name))
    return found


def test_every_command_has_help_and_is_in_the_readme():
    readme = (ROOT / "README.md").read_text()
    commands = command_paths(typer.main.get_command(app))
    assert {"upgrade", "report", "report merge", "report notify"} <= set(commands)  # the walk reaches sub-commands
    for name, command in commands.items():
        assert command.help, f"tenants {name} has no help text"
        assert f"tenants {name}" in readme, f"`tenants {name}` is not documented in README.md"


def test_python_dash_m_and_help():
    run = subprocess.run([sys.executable, "-m", "tenants", "--help"], capture_output=True, text=True)
    assert run.returncode == 0
    for name in ("list", "status", "upgrade", "downgrade", "stamp", "sql"):
        assert name in run.stdout


def test_unreachable_server_source_is_one_line_exit_1_after_retries(cli, tmp_path):
    config = tmp_path / "t.toml"
    config.write_text('[environments.x]\nurl = "postgresql+psycopg://app:pw-123@127.0.0.1:1/{tenant}"\n'
                      'source = "server"\nmatch = "t_*"\nretries = 1\nretry_backoff = 0.01\n')
    run = cli("--config", str(config), "--env", "x", "list")
    assert run.code == 1 and run.out == "" and len(run.err.splitlines()) == 1
    assert run.err.startswith("tenants: error: environment 'x': cannot list the databases on "
                              "postgresql+psycopg://app:***@127.0.0.1:1/postgres: OperationalError: ")
    assert run.err.rstrip().endswith("check the url and that the server is up")
    assert "pw-123" not in run.err


def one_line_exit_2(run) -> str:
    assert run.code == 2, (run.out, run.err)
    assert run.out == "" and len(run.err.splitlines()) == 1 and "Traceback" not in run.err
    return run.err.strip()


def test_malformed_config_and_unknown_key_at_the_cli(cli, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[environments.x]\nurl = "sqlite:///{tenant}.db\n')
    assert one_line_exit_2(cli("--config", str(bad), "list")).startswith(
        f"tenants: error: {bad}: malformed TOML: ")
    typo = tmp_path / "typo.toml"
    typo.write_text('[environments.x]\nurl = "sqlite:///{tenant}.db"\ntenants = ["a"]\nretry = 2\n')
    assert one_line_exit_2(cli("--config", str(typo), "-e", "x", "list")).startswith(
        f"tenants: error: {typo}:4: environments.x: unknown key 'retry' (known keys: ")


def test_several_heads_at_the_cli(cli, sqlite_config, tmp_path):
    ini = make_project(tmp_path / "proj", {"r1": "pass"})
    (tmp_path / "proj" / "migrations" / "versions" / "b.py").write_text(
        "revision = 'r2'\ndown_revision = None\nbranch_labels = None\ndepends_on = None\n"
        "def upgrade(): pass\ndef downgrade(): pass\n")
    message = one_line_exit_2(cli("--config", str(sqlite_config(alembic=ini)), "-e", "test", "upgrade"))
    assert message.endswith("the revision graph has 2 heads (r1, r2); merge them with `alembic merge heads`")
    assert not (tmp_path / "db").exists()


def test_unwritable_report_is_refused_before_the_run(cli, sqlite_config, tmp_path):
    # /proc/version cannot be written, not even by root (the tests may run as root: chmod would not do).
    message = one_line_exit_2(cli("--config", str(sqlite_config()), "-e", "test", "upgrade",
                                  "--report", "/proc/version"))
    assert message.startswith("tenants: error: --report /proc/version: cannot write it: ")
    assert not (tmp_path / "db").exists()


def test_unknown_revision_tenant_refuses_relative_downgrade_and_sql(cli, sqlite_config, tmp_path):
    import sqlite3

    config = str(sqlite_config())
    assert cli("--config", config, "-e", "test", "upgrade").code == 0
    with sqlite3.connect(tmp_path / "db" / "acme.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'handmade'")
    expected = ("tenants: error: tenant 'acme' is at handmade, which is not in the revision graph; fix its "
                "version table by hand first (e.g. `alembic -x tenant=acme stamp --purge REVISION`)")
    assert one_line_exit_2(cli("--config", config, "-e", "test", "downgrade", "-t", "acme", "--yes", "--",
                               "-1")) == expected
    assert one_line_exit_2(cli("--config", config, "-e", "test", "sql", "-t", "acme")) == expected


def test_selection_and_policy_options(cli, sqlite_config, tmp_path):
    config = sqlite_config(names=())
    config.write_text(config.read_text().replace(
        "tenants = []", 'tenants = [{name = "bad1", tags = ["canary"]}, "bad2", {name = "c", tags = ["canary"]}, "d"]'
    ).replace(str(ROOT / "alembic.ini"), str(failing_project(tmp_path / "proj"))))
    only_canary = cli("--config", str(config), "-e", "test", "upgrade", "--tag", "canary", "--keep-going", "-j", "1")
    assert only_canary.code == 1
    assert [ln.split()[:2] for ln in lines(only_canary.out)[:2]] == [["failed", "bad1"], ["upgraded", "c"]]
    two = cli("--config", str(config), "-e", "test", "upgrade", "--max-failures", "2", "--retries", "0", "-j", "1")
    assert [ln.split()[:2] for ln in lines(two.out)[:4]] == [
        ["failed", "bad1"], ["failed", "bad2"], ["skipped", "c"], ["skipped", "d"]]


def test_stamp_and_sql_for_a_tenant(cli, sqlite_config):
    config = str(sqlite_config())
    run = cli("--config", config, "-e", "test", "stamp", "-t", "initech", "0003")
    assert run.code == 0
    assert lines(run.out)[:3] == [
        "stamp 0003_invoice_status on 1 tenant(s) of test, recording it without running any migration:",
        "  from base (none recorded): initech",
        "stamped          initech  base -> 0003_invoice_status  (T)"]
    sql = cli("--config", config, "-e", "test", "sql", "-t", "initech")
    assert sql.code == 0
    assert "-- Running upgrade 0003_invoice_status -> 0004_invoice_user_index" in sql.out
    assert "CREATE TABLE" not in sql.out


def test_sql_server_environment_renders_t_sql(cli, tmp_path):
    config = tmp_path / "t.toml"
    config.write_text('[environments.prod]\nurl = "mssql+pyodbc://@srv.database.windows.net/{tenant}'
                      '?driver=ODBC+Driver+18+for+SQL+Server"\ntenants = ["acme"]\n'
                      f'alembic = "{ROOT / "alembic.ini"}"\n')
    sql = cli("--config", str(config), "-e", "prod", "sql", "head:0002")
    assert sql.code == 0
    assert "\nGO\n" in sql.out and "BEGIN TRANSACTION;" in sql.out
    assert "sys.default_constraints" in sql.out  # the default constraint goes before the column
    assert "DROP COLUMN status" in sql.out


def test_unreachable_sql_server_tenant_fails_after_transient_retries(cli, tmp_path, monkeypatch):
    pytest.importorskip("pyodbc")
    config = tmp_path / "t.toml"
    config.write_text('[environments.prod]\nurl = "mssql+pyodbc://deploy:${SQL_PW}@127.0.0.1:1/{tenant}'
                      '?driver=FreeTDS&TDS_Version=7.4"\nauth = "sql"\ntenants = ["acme"]\nretries = 1\n'
                      'retry_backoff = 0.01\n'
                      f'alembic = "{ROOT / "alembic.ini"}"\n')
    monkeypatch.setenv("SQL_PW", "odbc-Secret-9")
    run = cli("--config", str(config), "-e", "prod", "upgrade")
    assert run.code == 1
    first = lines(run.out)[0]
    assert first.startswith("failed           acme  at ?  (2 attempts, T)  OperationalError: ")
    assert "odbc-Secret-9" not in run.out + run.err


def test_sql_dialect_flag_renders_t_sql_from_the_demo_environment(cli, sqlite_config, tmp_path):
    config = str(sqlite_config())
    run = cli("--config", config, "-e", "test", "sql", "--dialect", "mssql")
    assert run.code == 0
    assert "IF OBJECT_ID(N'users', N'U') IS NULL" in run.out and "\nGO\n" in run.out
    assert one_line_exit_2(cli("--config", config, "-e", "test", "sql", "--dialect", "oracle")) == (
        "tenants: error: --dialect oracle: unknown; use one of mssql, postgresql, sqlite")
    assert not (tmp_path / "db").exists()


def test_plan_then_upgrade_with_junit_and_summaries(cli, sqlite_config, tmp_path, monkeypatch):
    import xml.etree.ElementTree as ET

    config = str(sqlite_config())
    assert cli("--config", config, "-e", "test", "upgrade", "0002", "-t", "acme").code == 0
    plan = cli("--config", config, "-e", "test", "plan", "--format", "json")
    assert plan.code == 0
    data = json.loads(plan.out)
    assert [(c["current"], c["tenants"], c["revisions"]) for c in data["cohorts"]] == [
        ("base", ["globex", "initech"], ["0001_users", "0002_invoices", "0003_invoice_status", HEAD]),
        ("0002_invoices", ["acme"], ["0003_invoice_status", HEAD]),
    ]
    markdown = cli("--config", config, "-e", "test", "plan", "--sql", "--format", "markdown")
    assert markdown.code == 0 and "```sql" in markdown.out
    step = tmp_path / "step.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step))
    run = cli("--config", config, "-e", "test", "upgrade", "--junit", str(tmp_path / "j.xml"),
              "--summary-markdown", str(tmp_path / "s.md"))
    assert run.code == 0
    cases = ET.parse(tmp_path / "j.xml").getroot().iter("testcase")
    assert sorted(c.get("name") for c in cases) == ["acme", "globex", "initech"]
    summary = (tmp_path / "s.md").read_text()
    assert summary.startswith("## ✅ tenants upgrade on test: all 3 tenants ended well")
    assert step.read_text() == summary + "\n"
    bad = cli("--config", config, "-e", "test", "plan", "--format", "yaml")
    assert bad.code == 2 and bad.err.strip() == "tenants: error: --format yaml: use text, markdown or json"


def test_verify_names_every_tenant_not_at_head_including_new_ones(cli, sqlite_config, tmp_path):
    import sqlite3
    import xml.etree.ElementTree as ET

    config = sqlite_config(["acme", "globex"])
    report = tmp_path / "run.json"
    assert cli("--config", str(config), "-e", "test", "upgrade", "--report", str(report)).code == 0
    assert cli("--config", str(config), "-e", "test", "verify", "--report", str(report)).out.strip() == (
        f"2/2 tenants at head {HEAD}")
    # A tenant created during the deploy, and one changed by hand.
    config.write_text(config.read_text().replace('tenants = ["acme", "globex"]',
                                                 'tenants = ["acme", "globex", "newco"]'))
    with sqlite3.connect(tmp_path / "db" / "globex.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'handmade'")
    run = cli("--config", str(config), "-e", "test", "verify", "--report", str(report), "--junit",
              str(tmp_path / "v.xml"))
    assert run.code == 1
    assert lines(run.out) == [
        "unknown-revision globex  at handmade, which is not in the revision graph",
        "new              newco  no revision recorded, 4 revision(s) behind (not in the run's report: created "
        "since the run began?)",
        f"1/3 tenants at head {HEAD}",
    ]
    failures = [c.get("name") for c in ET.parse(tmp_path / "v.xml").getroot().iter("testcase")
                if c.find("failure") is not None]
    assert failures == ["globex", "newco"]
    assert not (tmp_path / "db" / "newco.db").exists(), "verify reads only"


def test_notify_posts_to_the_webhook_and_a_dead_one_is_only_a_warning(cli, sqlite_config, webhook):
    config = str(sqlite_config())
    run = cli("--config", config, "-e", "test", "upgrade", "--notify", "slack:" + webhook.url("/T0/SECRET"),
              "--notify", "teams:http://127.0.0.1:1/dead/SECRET2")
    received = [(path, json.loads(body)) for path, _, body in webhook.received]
    assert run.code == 0
    assert len(received) == 1 and received[0][0] == "/T0/SECRET" and "blocks" in received[0][1]
    warnings = [ln for ln in run.err.splitlines() if ln.startswith("tenants: warning: ")]
    assert len(warnings) == 1 and "SECRET" not in run.err + run.out
    bad = cli("--config", config, "-e", "test", "upgrade", "--notify", "https://example.com/hook")
    assert bad.code == 2 and len(bad.err.splitlines()) == 1 and "prefix it with slack: or teams:" in bad.err


def test_tenant_timeout_flag(cli, sqlite_config, tmp_path):
    ini = make_project(tmp_path / "proj", {"z1": """
        from alembic import context
        if 'slow' in context.config.get_main_option('sqlalchemy.url'):
            time.sleep(30)
        op.create_table('one', sa.Column('id', sa.Integer, primary_key=True))
    """}, env_py=(ROOT / "alembic" / "env.py").read_text())
    config = str(sqlite_config(["slow", "quick"], alembic=ini))
    started = __import__("time").monotonic()
    run = cli("--config", config, "-e", "test", "upgrade", "--tenant-timeout", "2", "--keep-going")
    assert __import__("time").monotonic() - started < 20
    assert run.code == 1
    statuses = {ln.split()[1]: ln.split()[0] for ln in lines(run.out)[:2]}
    assert statuses == {"slow": "timed-out", "quick": "upgraded"}
    bad = cli("--config", config, "-e", "test", "upgrade", "--tenant-timeout", "0")
    assert bad.code == 2 and "--tenant-timeout 0" in bad.err


def test_pin_keeps_a_tenant_out_of_fleet_upgrades_until_unpinned(cli, sqlite_config, monkeypatch):
    monkeypatch.setenv("GITHUB_ACTOR", "oncall")
    config = str(sqlite_config())
    assert cli("--config", config, "-e", "test", "upgrade").code == 0
    down = cli("--config", config, "-e", "test", "downgrade", "0002", "-t", "globex", "--yes",
               "--pin", "INC-42: customer export running")
    assert down.code == 0
    assert "pinned globex: INC-42: customer export running (release with `tenants unpin -t globex`)" in down.out
    up = cli("--config", config, "-e", "test", "upgrade")
    assert up.code == 0  # held back on purpose: not a failure
    line = next(ln for ln in lines(up.out) if " globex " in ln)
    assert line.startswith("pinned           globex  at 0002_invoices  (T)  pinned by oncall on ")
    assert line.endswith("UTC: INC-42: customer export running")
    status = cli("--config", config, "-e", "test", "status", "--json")
    assert status.code == 1 and json.loads(status.out)["tenants"][1]["pin"].endswith("INC-42: customer export running")
    plan = json.loads(cli("--config", config, "-e", "test", "plan", "--format", "json").out)
    assert plan["pinned"] == ["globex"] and plan["cohorts"] == []
    verify = cli("--config", config, "-e", "test", "verify")
    assert verify.code == 0 and lines(verify.out)[0].startswith("pinned           globex  at 0002_invoices; ")
    assert cli("--config", config, "-e", "test", "verify", "--strict").code == 1
    assert cli("--config", config, "-e", "test", "unpin", "-t", "globex").out.strip() == "unpinned globex"
    again = cli("--config", config, "-e", "test", "upgrade")
    assert any(ln.startswith("upgraded         globex  0002_invoices -> ") for ln in lines(again.out))
    assert cli("--config", config, "-e", "test", "unpin", "-t", "globex").out.strip() == "globex was not pinned"
    empty = cli("--config", config, "-e", "test", "pin", "-t", "acme", "--reason", " ")
    assert empty.code == 2 and "pin needs --reason" in empty.err


def test_downgrade_workflow_sequence_sql_then_pin_first_downgrade(cli, sqlite_config, monkeypatch):
    # downgrade.yml: `sql --tenant T -- -1` shows the approvers the SQL that `downgrade --tenant T -- -1` then
    # runs, counted from the tenant's own revision (not from head). `--pin` pins before the downgrade
    # (tenants.api.downgrade_and_pin), and takes the pin off again when nothing was undone.
    monkeypatch.setenv("GITHUB_ACTOR", "oncall")
    config = str(sqlite_config())
    assert cli("--config", config, "-e", "test", "upgrade", "0003_invoice_status", "-t", "acme").code == 0
    shown = cli("--config", config, "-e", "test", "sql", "--tenant", "acme", "--", "-1")
    assert shown.code == 0
    assert [ln for ln in lines(shown.out) if ln.startswith("-- Running")] == [
        "-- Running downgrade 0003_invoice_status -> 0002_invoices"]
    too_far = cli("--config", config, "-e", "test", "sql", "--tenant", "acme", "--", "-4")
    assert (too_far.code, too_far.err) == (2, "tenants: error: tenant 'acme' has only 3 revisions to undo, not 4\n")
    down = cli("--config", config, "-e", "test", "downgrade", "--tenant", "acme", "--yes", "--pin", "INC-7",
               "--", "-1")
    assert down.code == 0
    assert lines(down.out)[2:4] == [
        "downgraded       acme  0003_invoice_status -> 0002_invoices  (1 revision, T)",
        "pinned acme: INC-7 (release with `tenants unpin -t acme`)"]
    history = json.loads(cli("--config", config, "-e", "test", "history", "-t", "acme", "--json").out)["history"]
    [row] = [row for row in history if row["operation"] == "downgrade"]
    assert (row["from_revision"], row["to_revision"], row["actor"]) == ("0003_invoice_status", "0002_invoices",
                                                                       "oncall")
    # A downgrade that cannot run (another run holds the tenant) undoes nothing: the pin it set comes off.
    assert cli("--config", config, "-e", "test", "upgrade", "-t", "globex").code == 0
    import fcntl
    import os

    fd = os.open(Path(config).parent / "db" / "globex.db.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        held = cli("--config", config, "-e", "test", "downgrade", "--tenant", "globex", "--yes", "--pin", "INC-8",
                   "--", "base")
    finally:
        os.close(fd)
    assert held.code == 1 and any(ln.startswith("locked           globex  at ") for ln in lines(held.out))
    assert "globex: nothing was undone, so the pin set for this downgrade is off again\n" in held.err
    status = json.loads(cli("--config", config, "-e", "test", "status", "-t", "globex", "--json").out)
    assert status["tenants"][0]["pin"] is None and status["tenants"][0]["state"] == "at-head"


def test_shard_partitions_list_status_and_verify(cli, sqlite_config):
    from tenants.selection import shard_of

    names = [f"t{i:02d}" for i in range(12)]
    config = str(sqlite_config(names))
    seen: dict[str, list[str]] = {"list": [], "status": [], "verify": []}
    # Pinned (computed once): a hash salted per process would agree with itself in this one and still split a
    # deploy's shard jobs differently.
    assert {k: [n for n in names if shard_of(n, 3) == k] for k in (1, 2, 3)} == {
        1: ["t00", "t01", "t03", "t04", "t05", "t07", "t08"], 2: ["t06", "t09"], 3: ["t02", "t10", "t11"]}
    for k in (1, 2, 3):
        listed = cli("--config", config, "-e", "test", "list", "--shard", f"{k}/3", "--json")
        status = cli("--config", config, "-e", "test", "status", "--shard", f"{k}/3", "--json")
        verify = cli("--config", config, "-e", "test", "verify", "--shard", f"{k}/3")
        assert (listed.code, status.code, verify.code) == (0, 1, 1), (listed.err, status.err, verify.err)
        shard = {"list": [t["tenant"] for t in json.loads(listed.out)],
                 "status": [t["tenant"] for t in json.loads(status.out)["tenants"]],
                 "verify": [ln.split()[1] for ln in verify.out.splitlines() if ln.startswith("new ")]}
        for command, got in shard.items():
            assert got == [n for n in names if shard_of(n, 3) == k], command
            seen[command] += got
        assert verify.out.splitlines()[-1] == f"0/{len(shard['verify'])} tenants at head {HEAD}"
    assert all(sorted(got) == names for got in seen.values())
    bad = cli("--config", config, "-e", "test", "verify", "--shard", "4/3")
    assert (bad.code, bad.err) == (2, "tenants: error: --shard 4/3: expected K/N with 1 <= K <= N, e.g. --shard 2/4\n")


def test_a_config_kept_elsewhere_upgrades_the_fleet_of_the_project_it_is_run_from(cli, tmp_path, monkeypatch):
    import sqlite3

    project, etc, other = tmp_path / "proj", tmp_path / "etc", tmp_path / "other"
    for folder in (project, etc, other):
        folder.mkdir()
    for name in ("alembic.ini", "alembic"):
        (project / name).symlink_to(ROOT / name)
    config = etc / "prod.toml"  # no `alembic` key: the project's alembic.ini, found in the current directory
    config.write_text('[environments.prod]\nurl = "sqlite:///data/{tenant}.db"\ntenants = ["a", "b", "c"]\n'
                      "retry_backoff = 0.01\n")
    (etc / "data").mkdir()
    monkeypatch.chdir(project)
    run = cli("--config", str(config), "-e", "prod", "upgrade")
    assert run.code == 0, run.err
    for name in ("a", "b", "c"):
        with sqlite3.connect(etc / "data" / f"{name}.db") as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(HEAD,)]
            assert conn.execute("SELECT count(*) FROM invoices").fetchone() == (0,)
    assert cli("--config", str(config), "-e", "prod", "verify").code == 0

    monkeypatch.chdir(other)  # no alembic.ini here nor beside the config: one line, naming both, exit 2
    failed = cli("--config", str(config), "-e", "prod", "status")
    assert failed.code == 2 and failed.out == ""
    assert failed.err == (
        f"tenants: error: no alembic.ini in the current directory ({other.resolve()}) nor beside {config} "
        f"({etc.resolve()}); set `alembic = \"path/to/alembic.ini\"` in environment 'prod' of {config} "
        "(relative to that file), or run from the directory holding alembic.ini\n")


def test_a_failed_report_merge_leaves_no_empty_output_and_names_its_flag(cli, tmp_path):
    out = tmp_path / "merged.json"
    run = cli("report", "merge", str(tmp_path / "missing.json"), "-o", str(out))
    assert run.code == 2 and len(run.err.splitlines()) == 1
    assert not out.exists(), "an empty file would later read as a report cut short"
    bad = cli("report", "merge", str(tmp_path / "missing.json"), "-o", str(tmp_path / "no" / "m.json"))
    assert bad.err.strip() == f"tenants: error: --output {tmp_path / 'no' / 'm.json'}: folder {tmp_path / 'no'} " \
                              "does not exist"
