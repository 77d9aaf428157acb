"""`tenants check` (issue 14): the demo graph passes every check on SQLite and PostgreSQL; a deliberately bad
revision of each kind is caught by the right check, with the right message, file and line; an acknowledged
finding does not fail; the CLI's GitHub annotations and exit codes; the default selection from git.

Each bad revision sits on top of a copy of the demo graph (tests/helpers.py ``demo_copy``) and is checked alone
(named), on SQLite: a scratch file, so each case takes well under a second.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest
from helpers import DEMO_REVISIONS, PG_URL, demo_copy, fleet_config, settings_for

from tenants import api

BAD = "0005_bad"
FILE = f"alembic/versions/{BAD}.py"


def revision(upgrade: str, downgrade: str, header: str = "") -> str:
    """A revision file on top of the demo head; ``# here`` marks the line a finding must point at."""
    return ('"""a revision under test"""\nimport sqlalchemy as sa\n\n'
            'from alembic import op\nfrom tenants import guards\n'
            f'{header}\nrevision = "{BAD}"\ndown_revision = "0004_invoice_user_index"\nbranch_labels = None\n'
            f"depends_on = None\n\n\ndef upgrade():\n{textwrap.indent(textwrap.dedent(upgrade).strip(), '    ')}\n\n\n"
            f"def downgrade():\n{textwrap.indent(textwrap.dedent(downgrade).strip(), '    ')}\n")


def line_with(source: str, needle: str) -> int:
    return next(n for n, line in enumerate(source.splitlines(), 1) if needle in line)


def check(tmp_path: Path, source: str | None = None, **kwargs):
    ini = demo_copy(tmp_path / "project", {f"{BAD}.py": source} if source else {})
    settings = settings_for(fleet_config(tmp_path / "tenants.toml", ["acme"], alembic=ini))
    if source and "everything" not in kwargs:
        kwargs["revisions"] = [BAD]
    return api.check(settings, **kwargs)


def found(report, column: str, rule: str):
    hits = [f for f in report.findings if f.column == column and f.rule == rule]
    assert hits, f"no {column} {rule} in {[(f.column, f.rule) for f in report.findings]}"
    return hits[0]


# --- the demo graph -------------------------------------------------------------------------------------------

def test_demo_graph_passes_every_check_on_sqlite(tmp_path):
    report = check(tmp_path, everything=True)
    assert [r.revision for r in report.revisions] == DEMO_REVISIONS
    assert report.findings == () and report.ok
    assert report.dialects == {"sqlite": "checked"}
    assert report.columns == ("stairway sqlite", "idempotency sqlite", "t-sql", "pool-safety")
    assert {report.status(r, c) for r in DEMO_REVISIONS for c in report.columns} == {"ok"}
    assert not (tmp_path / "db").exists(), "no tenant database is touched"


@pytest.mark.postgres
def test_demo_graph_passes_on_postgresql_and_its_scratch_databases_are_dropped(tmp_path, pg_available):
    report = check(tmp_path, everything=True, postgres=PG_URL)
    assert report.dialects == {"sqlite": "checked", "postgresql": "checked"} and report.findings == ()
    assert {report.status(r, "stairway postgresql") for r in DEMO_REVISIONS} == {"ok"}
    import psycopg
    from helpers import pg_dsn

    with psycopg.connect(pg_dsn()) as conn:
        left = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'tenants_scratch_%'").fetchall()
    assert left == []


# --- one bad revision per check -----------------------------------------------------------------------------

def test_an_unguarded_create_fails_its_rerun_and_its_t_sql(tmp_path):
    source = revision('op.create_table("widgets", sa.Column("id", sa.Integer, primary_key=True))  # here',
                      'op.drop_table("widgets")')
    report = check(tmp_path, source)
    assert not report.ok
    rerun = found(report, "idempotency sqlite", "rerun-upgrade")
    assert (rerun.line, rerun.severity) == (line_with(source, "# here"), "error") and rerun.file.endswith(FILE)
    assert "run again on a database that already has its change, the upgrade fails" in rerun.message
    assert "widgets already exists" in rerun.message and "tenants.guards" in rerun.fix
    tsql = found(report, "t-sql", "tsql-unguarded")
    assert tsql.line == line_with(source, "# here") and "CREATE TABLE widgets" in tsql.message
    assert "without an existence check" in tsql.message
    assert found(report, "idempotency sqlite", "rerun-downgrade").line == line_with(source, 'op.drop_table')


def test_a_downgrade_that_forgets_an_index_breaks_the_stairway(tmp_path):
    source = revision('''
        guards.add_column("users", sa.Column("nickname", sa.String(40)))
        guards.create_index("ix_users_display_name", "users", ["display_name"], mssql_online=True)
    ''', 'guards.drop_column("users", "nickname")')
    report = check(tmp_path, source)
    finding = found(report, "stairway sqlite", "downgrade-restores")
    assert finding.line == line_with(source, "def downgrade")
    assert "the downgrade does not restore the schema it started from" in finding.message
    assert finding.details == ("extra index ix_users_display_name on users",)
    assert [f.rule for f in report.findings] == ["downgrade-restores"]


@pytest.mark.postgres
def test_the_forgotten_index_is_caught_on_postgresql_too(tmp_path, pg_available):
    source = revision('guards.create_index("ix_users_display_name", "users", ["display_name"], mssql_online=True)',
                      'guards.drop_index("ix_users_email_typo", "users")')
    report = check(tmp_path, source, postgres=PG_URL)
    finding = found(report, "stairway postgresql", "downgrade-restores")
    assert finding.dialect == "postgresql" and finding.details == ("extra index ix_users_display_name on users",)


def test_an_insert_that_duplicates_on_a_rerun_changes_the_data(tmp_path):
    source = revision('''
        guards.create_table("settings", sa.Column("id", sa.Integer, primary_key=True),
                            sa.Column("name", sa.String(40)), sa.Column("value", sa.String(40)))
        op.execute("INSERT INTO settings (name, value) VALUES ('theme', 'dark')")  # here
    ''', 'guards.drop_table("settings")')
    report = check(tmp_path, source)
    finding = found(report, "idempotency sqlite", "rerun-upgrade")
    assert finding.line == line_with(source, "# here")
    assert "the upgrade changes it" in finding.message
    assert finding.details == ("table settings: 1 rows before, 2 after",)
    assert "INSERT ... WHERE NOT EXISTS" in finding.fix


def test_an_update_that_changes_values_again_on_a_rerun_is_caught_on_seeded_rows(tmp_path):
    source = revision('op.execute("UPDATE invoices SET amount_cents = amount_cents + 1 WHERE amount_cents > 0")',
                      'op.execute("UPDATE invoices SET amount_cents = amount_cents - 1 WHERE amount_cents > 0")')
    report = check(tmp_path, source)
    assert found(report, "idempotency sqlite", "rerun-upgrade").details == (
        "table invoices: 3 rows before and after, but their values changed",)


def test_an_unguarded_t_sql_ddl_is_caught_offline_even_when_it_is_idempotent_online(tmp_path):
    source = revision('''
        if not guards.has_index("invoices", "ix_invoices_paid_at"):
            op.create_index("ix_invoices_paid_at", "invoices", ["paid_at"], mssql_online=True)  # here
    ''', '''
        if guards.has_index("invoices", "ix_invoices_paid_at", offline=True):
            op.drop_index("ix_invoices_paid_at", table_name="invoices")
    ''')
    report = check(tmp_path, source)
    assert {f.column for f in report.findings} == {"t-sql"}  # online, the stairway and reruns pass
    create, drop = [f for f in report.findings if f.rule == "tsql-unguarded"]
    assert create.line == line_with(source, "# here") and create.file.endswith(FILE)
    assert create.message.startswith("`CREATE INDEX ix_invoices_paid_at ON invoices(paid_at) WITH (ONLINE=ON)` runs "
                                     "without an existence check in the offline T-SQL of the upgrade")
    assert drop.line == line_with(source, "op.drop_index") and "of the downgrade" in drop.message


def test_a_not_null_column_without_a_default_is_linted_and_fails_on_rows(tmp_path):
    source = revision('guards.add_column("invoices", sa.Column("due_date", sa.Date, nullable=False))  # here',
                      'guards.drop_column("invoices", "due_date")')
    report = check(tmp_path, source)
    lint = found(report, "pool-safety", "not-null-no-default")
    assert (lint.line, lint.severity) == (line_with(source, "# here"), "error")
    assert lint.message.startswith("adds NOT NULL column invoices.due_date without a server default")
    assert "server_default" in lint.fix
    fails = found(report, "stairway sqlite", "upgrade-fails")
    assert fails.line == line_with(source, "# here") and "NOT NULL" in fails.message


def test_an_unmarked_drop_is_an_error_and_a_marked_one_is_acknowledged(tmp_path):
    source = revision('guards.drop_column("invoices", "paid_at")  # here',
                      'guards.add_column("invoices", sa.Column("paid_at", sa.DateTime, nullable=True))')
    report = check(tmp_path / "a", source)
    drop = found(report, "pool-safety", "drop-column")
    assert (drop.line, drop.severity, report.ok) == (line_with(source, "# here"), "error", False)
    assert drop.message.startswith("drops column invoices.paid_at: its values are gone on every tenant")
    assert "# tenants: allow drop-column: <why>" in drop.fix
    marked = source.replace("# here", "# tenants: allow drop-column: paid_at lives in payments since 0003")
    report = check(tmp_path / "b", marked)
    drop = found(report, "pool-safety", "drop-column")
    assert (drop.severity, drop.reason) == ("acknowledged", "paid_at lives in payments since 0003")
    assert report.ok and report.status(BAD, "pool-safety") == "acknowledged"
    reasonless = check(tmp_path / "c", source.replace("# here", "# tenants: allow drop-column"))
    assert found(reasonless, "pool-safety", "drop-column").severity == "error"
    assert "needs a reason" in found(reasonless, "pool-safety", "drop-column").fix


def test_a_drop_table_in_raw_sql_is_caught(tmp_path):
    source = revision('op.execute("DROP TABLE IF EXISTS invoices")  # here',
                      'op.execute("SELECT 1")')
    report = check(tmp_path, source)
    assert found(report, "pool-safety", "drop-table").line == line_with(source, "# here")


def test_an_unbounded_update_is_linted(tmp_path):
    source = revision('op.execute("UPDATE invoices SET currency = \'EUR\'")  # here',
                      'op.execute("UPDATE invoices SET currency = currency WHERE 1 = 0")')
    report = check(tmp_path, source)
    finding = found(report, "pool-safety", "unbounded-dml")
    assert finding.line == line_with(source, "# here")
    assert finding.message.startswith("UPDATE of invoices without a WHERE") and "batches" in finding.fix
    assert [f.rule for f in report.findings] == ["unbounded-dml"]  # idempotent: the rerun changes nothing


def test_a_revision_without_a_downgrade(tmp_path):
    source = revision('guards.add_column("users", sa.Column("nickname", sa.String(40)))', "pass")
    report = check(tmp_path / "a", source)
    lint = found(report, "pool-safety", "no-downgrade")
    assert lint.line == line_with(source, "def downgrade") and lint.message.startswith("no downgrade")
    assert found(report, "stairway sqlite", "downgrade-restores").details == ("extra column users.nickname",)
    # Acknowledged for the whole file: the downgrade is not run, the upgrade's rerun still is.
    allowed = revision('guards.add_column("users", sa.Column("nickname", sa.String(40)))', "pass",
                       header='tenants_allow = {"no-downgrade": "nicknames are kept on purpose"}\n')
    report = check(tmp_path / "b", allowed)
    assert report.ok and [(f.rule, f.severity) for f in report.findings] == [("no-downgrade", "acknowledged")]
    assert report.status(BAD, "stairway sqlite") == "skipped"
    assert report.status(BAD, "idempotency sqlite") == "ok"


def test_an_index_on_an_existing_table_built_offline_is_a_warning(tmp_path):
    source = revision('guards.create_index("ix_invoices_paid_at", "invoices", ["paid_at"])  # here',
                      'guards.drop_index("ix_invoices_paid_at", "invoices")')
    report = check(tmp_path, source)
    finding = found(report, "pool-safety", "online-index")
    assert (finding.severity, finding.line, report.ok) == ("warning", line_with(source, "# here"), True)
    assert "mssql_online=True" in finding.fix


# --- the CLI ------------------------------------------------------------------------------------------------

def test_cli_github_annotations_point_at_the_revision_line_and_exit_1(tmp_path, cli, monkeypatch):
    source = revision('guards.drop_column("invoices", "paid_at")  # here',
                      'guards.add_column("invoices", sa.Column("paid_at", sa.DateTime, nullable=True))')
    ini = demo_copy(tmp_path / "project", {f"{BAD}.py": source})
    config = fleet_config(tmp_path / "tenants.toml", ["acme"], alembic=ini)
    monkeypatch.chdir(tmp_path / "project")
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    run = cli("--config", str(config), "-e", "test", "check", BAD, "--format", "github")
    assert run.code == 1
    line = line_with(source, "# here")
    annotation = next(a for a in run.out.splitlines() if a.startswith("::error "))
    assert annotation.startswith(f"::error file={FILE},line={line},title=tenants check%3A {BAD} pool-safety%3A "
                                 "drop-column::drops column invoices.paid_at: its values are gone")
    assert "%0AWay out: stop using it in one release" in annotation
    assert run.out.rstrip().endswith("check failed: 1 error, 0 warnings in 1 revision")


def test_cli_exit_codes_json_and_the_job_summary(tmp_path, cli, monkeypatch):
    ini = demo_copy(tmp_path / "project")
    config = str(fleet_config(tmp_path / "tenants.toml", ["acme"], alembic=ini))
    summary = tmp_path / "summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    run = cli("--config", config, "-e", "test", "check", "--all", "--format", "json")
    assert run.code == 0
    data = json.loads(run.out)
    assert data["ok"] is True and [r["revision"] for r in data["revisions"]] == DEMO_REVISIONS
    assert "### ✅ tenants check: check passed" in summary.read_text()
    assert cli("--config", config, "-e", "test", "check", "0003").code == 0  # a unique prefix
    for args, message in [(["nope"], "unknown revision 'nope'"), (["--format", "xml"], "--format xml: use text"),
                          (["--all", "0001"], "name revisions or use --all, not both")]:
        bad = cli("--config", config, "-e", "test", "check", *args)
        assert bad.code == 2 and message in bad.err, (args, bad.err)


# --- the default selection: what the branch changed ---------------------------------------------------------

def git(folder: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", "-c", "init.defaultBranch=main",
                    *args], cwd=folder, check=True, capture_output=True)


def test_default_selection_is_what_the_branch_changed_else_everything(tmp_path, monkeypatch):
    ini = demo_copy(tmp_path / "project")
    root = tmp_path / "project"
    git(root, "init")
    git(root, "add", "-A")
    git(root, "commit", "-m", "demo")
    source = revision('guards.add_column("users", sa.Column("nickname", sa.String(40)))',
                      'guards.drop_column("users", "nickname")')
    (root / "alembic" / "versions" / f"{BAD}.py").write_text(source, encoding="utf-8")  # untracked: counts
    settings = settings_for(fleet_config(tmp_path / "tenants.toml", ["acme"], alembic=ini))
    report = api.check(settings, base="main")
    assert [r.revision for r in report.revisions] == [BAD] and report.ok
    assert report.revisions[0].file == FILE  # relative to the repository: what GitHub annotations need
    assert report.notes[0] == "checked: revision files added or changed since main"
    everything = api.check(settings, base="origin/main")  # no such ref here
    assert [r.revision for r in everything.revisions] == [*DEMO_REVISIONS, BAD]
    assert everything.notes[0].startswith("checked: every revision: git does not know the base 'origin/main'")
    git(root, "add", "-A")
    git(root, "commit", "-m", "bad")
    assert [r.revision for r in api.check(settings, base="HEAD").revisions] == []


def test_a_drop_in_batch_mode_names_the_batch_table(tmp_path):
    source = revision('''
        with op.batch_alter_table("users") as batch_op:
            batch_op.drop_column("display_name")  # here
    ''', 'guards.add_column("users", sa.Column("display_name", sa.String(200), nullable=True))')
    report = check(tmp_path, source)
    drop = found(report, "pool-safety", "drop-column")
    assert drop.line == line_with(source, "# here") and drop.message.startswith("drops column users.display_name")
