"""The history table: one row per revision applied, written in that revision's transaction (a failure in its
own), read back by the library and by `tenants history`."""

from __future__ import annotations

import json

from helpers import failing_project, settings_for

from tenants import api


def test_history_has_one_row_per_applied_revision_in_its_transaction(sqlite_config, tmp_path, monkeypatch):
    monkeypatch.setenv("GITHUB_ACTOR", "octocat")
    monkeypatch.setenv("GITHUB_SHA", "0123456789abcdef0123456789abcdef01234567")
    ini = failing_project(tmp_path / "proj")
    settings = settings_for(sqlite_config(["ok1", "bad1"], alembic=ini))
    report = api.upgrade(settings, options=api.RunOptions(concurrency=1, max_failures=None))
    ok = api.tenant_history(settings, "ok1")
    assert [(r["operation"], r["from_revision"], r["to_revision"], r["outcome"]) for r in ok] == [
        ("upgrade", "base", "r1", "applied"), ("upgrade", "r1", "r2", "applied")]
    assert {(r["run_id"], r["actor"], r["git_commit"], r["tool_version"]) for r in ok} == {
        (report.run_id, "octocat", "0123456789abcdef0123456789abcdef01234567", report.tool_version)}
    assert all(r["started_at"] <= r["finished_at"] for r in ok)
    bad = api.tenant_history(settings, "bad1")
    # r2 rolled back with its row; the failure is recorded after, in its own transaction.
    assert [(r["from_revision"], r["to_revision"], r["outcome"]) for r in bad] == [
        ("base", "r1", "applied"), ("r1", "r2", "failed")]
    assert bad[1]["error"].startswith("OperationalError: no such table: no_such_table")


def test_history_cli(cli, sqlite_config, monkeypatch):
    monkeypatch.setenv("GITHUB_ACTOR", "octocat")
    config = str(sqlite_config())
    assert cli("--config", config, "-e", "test", "history", "-t", "acme").out.strip() == "acme: no history yet"
    assert cli("--config", config, "-e", "test", "upgrade", "-t", "acme").code == 0
    assert cli("--config", config, "-e", "test", "downgrade", "-t", "acme", "0003", "--yes").code == 0
    run = cli("--config", config, "-e", "test", "history", "-t", "acme")
    assert run.code == 0
    shown = [" ".join(ln.split()[2:6]) for ln in run.out.splitlines()]
    assert shown == ["upgrade applied base ->", "upgrade applied 0001_users ->", "upgrade applied 0002_invoices ->",
                     "upgrade applied 0003_invoice_status ->", "downgrade applied 0004_invoice_user_index ->"]
    assert all("by octocat" in ln for ln in run.out.splitlines())
    data = json.loads(cli("--config", config, "-e", "test", "history", "-t", "acme", "--json").out)
    assert data["history"][-1]["to_revision"] == "0003_invoice_status"
