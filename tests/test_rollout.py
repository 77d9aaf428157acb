"""Rollout safety: shards, a report written as the run goes, resume from it, merged shard reports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import HEAD, ROOT, fleet_config, make_project, slack_texts, teams_card, teams_lines

from tenants.api import merge_reports, resume_names
from tenants.errors import UsageError
from tenants.model import Tenant
from tenants.runlog import read_report
from tenants.selection import Selection, shard_of


def test_shards_cover_every_tenant_exactly_once_whatever_the_order():
    names = [f"tenant_{i:04d}" for i in range(1000)]
    tenants = [Tenant(n, f"sqlite:///{n}.db") for n in names]
    shards = [[t.name for t in Selection(shard=(k, 4)).apply(tenants)] for k in range(1, 5)]
    assert sorted(sum(shards, [])) == names
    assert all(150 < len(s) < 350 for s in shards)  # roughly even
    # Independent of discovery order and of which other tenants exist.
    reversed_shards = [[t.name for t in Selection(shard=(k, 4)).apply(tenants[::-1][:500])] for k in range(1, 5)]
    assert all(set(r) <= set(s) for r, s in zip(reversed_shards, shards, strict=False))


# shard_of must give the same answer in every process, on every machine, in every Python (shards of one deploy
# run in separate jobs): pinned values, computed once, catch a salted or changed hash, which comparing
# shard_of with itself in one process cannot.
PINNED_SHARDS = {  # name: its shard for N = 2, 4, 8
    "acme": (1, 1, 1), "globex": (2, 4, 8), "initech": (2, 4, 4), "hooli": (2, 4, 4), "umbrella": (1, 1, 1),
    "tenant_0000": (2, 2, 6), "tenant_0001": (1, 1, 5), "tenant_0999": (1, 1, 1),
}


def test_shard_of_is_a_fixed_function_of_the_name():
    assert {name: tuple(shard_of(name, n) for n in (2, 4, 8)) for name in PINNED_SHARDS} == PINNED_SHARDS


def test_shard_of_is_the_same_in_another_interpreter_with_another_hash_seed():
    code = ("from tenants.selection import shard_of\n"
            f"print([[shard_of(n, k) for k in (2, 4, 8)] for n in {sorted(PINNED_SHARDS)!r}])")
    for seed in ("1", "2"):
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": seed})
        assert json.loads(run.stdout) == [list(PINNED_SHARDS[n]) for n in sorted(PINNED_SHARDS)]


def test_shard_runs_merge_into_what_a_single_run_reports(cli, tmp_path):
    names = [f"t{i:02d}" for i in range(12)]
    single_dir, shard_dir = tmp_path / "single", tmp_path / "shards"
    single_dir.mkdir(), shard_dir.mkdir()
    single = cli("--config", str(fleet_config(single_dir / "t.toml", names, env="f")), "-e", "f", "upgrade", "-j", "2",
                 "--report", str(single_dir / "r.json"))
    assert single.code == 0
    config = str(fleet_config(shard_dir / "t.toml", names, env="f"))
    for k in range(1, 5):
        run = cli("--config", config, "-e", "f", "upgrade", "-j", "2", "--shard", f"{k}/4",
                  "--report", str(shard_dir / f"r{k}.json"))
        assert run.code == 0, run.err
    merged = cli("report", "merge", *(str(shard_dir / f"r{k}.json") for k in range(1, 5)),
                 "-o", str(shard_dir / "all.json"))
    assert merged.code == 0 and merged.out.strip() == "merged 4 report(s), 12 tenants: 12 upgraded"
    one = json.loads((single_dir / "r.json").read_text())
    all_ = json.loads((shard_dir / "all.json").read_text())
    key = lambda t: (t["tenant"], t["status"], t["from"], t["to"], t["applied"])  # noqa: E731
    assert [key(t) for t in all_["tenants"]] == sorted(key(t) for t in one["tenants"])
    assert all_["summary"] == one["summary"] and all_["ok"] is True


def test_bad_shard_and_overlapping_reports_are_refused(cli, tmp_path):
    config = str(fleet_config(tmp_path / "t.toml", ["a", "b"], env="f"))
    run = cli("--config", config, "-e", "f", "upgrade", "--shard", "5/4")
    assert (run.code, run.err.strip()) == (2, "tenants: error: --shard 5/4: expected K/N with 1 <= K <= N, "
                                               "e.g. --shard 2/4")
    assert cli("--config", config, "-e", "f", "upgrade", "--report", str(tmp_path / "r.json")).code == 0
    overlap = cli("report", "merge", str(tmp_path / "r.json"), str(tmp_path / "r.json"), "-o",
                  str(tmp_path / "m.json"))
    assert overlap.code == 2 and "shards must not overlap" in overlap.err


def test_a_killed_run_leaves_a_report_to_resume_from(tmp_path):
    """SIGKILL mid-run: the report has every finished tenant; resuming runs just the rest, to head."""
    gate, hang = tmp_path / "slow-started", tmp_path / "hang"
    hang.touch()
    ini = make_project(tmp_path / "proj", {"s1": f"""
        from alembic import context
        if context.config.get_main_option('sqlalchemy.url').endswith('t09.db') and os.path.exists({str(hang)!r}):
            open({str(gate)!r}, 'w').close()
            time.sleep(60)
        op.create_table('one', sa.Column('id', sa.Integer, primary_key=True))
    """}, env_py=(ROOT / "alembic" / "env.py").read_text())
    names = [f"t{i:02d}" for i in range(16)]
    config = fleet_config(tmp_path / "t.toml", names, env="f", alembic=ini)
    report = tmp_path / "run.json"
    cmd = [sys.executable, "-m", "tenants", "--config", str(config), "-e", "f", "upgrade", "-j", "2"]
    proc = subprocess.Popen([*cmd, "--report", str(report)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while not gate.exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = read_report(report)
    assert not partial.complete
    done = partial.statuses()
    assert 0 < len(done) < 16 and "t09" not in done and set(done.values()) == {"upgraded"}
    hang.unlink()
    resumed = subprocess.run([*cmd, "--from-report", str(report), "--report", str(tmp_path / "resume.json")],
                             capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    again = json.loads((tmp_path / "resume.json").read_text())
    assert sorted(t["tenant"] for t in again["tenants"]) == sorted(set(names) - set(done))
    assert {t["status"] for t in again["tenants"]} == {"upgraded"}
    assert f"resuming from {report}: {16 - len(done)} tenant(s) to run again" in resumed.stderr
    import sqlite3

    for name in names:  # every tenant at head, the killed one included (its transaction rolled back) ...
        with sqlite3.connect(tmp_path / "db" / f"{name}.db") as conn:
            assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("s1",)]
            # ... and exactly one history row for the one revision applied: the killed attempt left none.
            assert conn.execute("SELECT from_revision, to_revision, outcome FROM tenants_history").fetchall() == [
                ("base", "s1", "applied")]


def test_resume_names_and_only_validation(tmp_path):
    report = tmp_path / "r.json"
    report.write_text(json.dumps({"schema_version": 1, "environment": "e", "operation": "upgrade", "target": HEAD,
                                  "tenants": [{"tenant": "a", "status": "upgraded"},
                                              {"tenant": "b", "status": "failed"},
                                              {"tenant": "c", "status": "locked"},
                                              {"tenant": "d", "status": "skipped"}]}))
    read = read_report(report)
    assert resume_names(read, {"failed", "skipped", "locked"}, ["a", "b", "c", "d", "e"]) == ["b", "c", "d", "e"]
    assert resume_names(read, {"failed"}, ["a", "b", "e"]) == ["b", "e"]
    with pytest.raises(UsageError, match="--only upgradd: not a status"):
        resume_names(read, {"upgradd"}, ["a"])
    (tmp_path / "junk.json").write_text("hello")
    with pytest.raises(UsageError, match="not a tenants report"):
        read_report(tmp_path / "junk.json")
    with pytest.raises(UsageError, match="environment 'x' differs"):
        other = tmp_path / "o.json"
        other.write_text(json.dumps({"schema_version": 1, "environment": "x", "operation": "upgrade",
                                     "target": HEAD, "tenants": []}))
        merge_reports([read, read_report(other)])


def test_merged_shards_publish_one_summary_junit_and_notification(cli, tmp_path, monkeypatch, webhook):
    # The deploy's verify and notify jobs: N shard reports become one job summary, one JUnit file and one
    # chat message that names the failed tenant, links to the run and says how to resume.
    names = [f"t{i:02d}" for i in range(6)]
    config = str(fleet_config(tmp_path / "t.toml", names, env="f"))
    (tmp_path / "db").mkdir()
    (tmp_path / "db" / "t03.db").write_bytes(b"this is not a SQLite database" * 100)
    for k in (1, 2):
        cli("--config", config, "-e", "f", "upgrade", "--keep-going", "--shard", f"{k}/2",
            "--report", str(tmp_path / f"r{k}.json"))
    step_summary = tmp_path / "step-summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step_summary))
    merged = cli("report", "merge", str(tmp_path / "r1.json"), str(tmp_path / "r2.json"), "-o",
                 str(tmp_path / "all.json"), "--junit", str(tmp_path / "junit.xml"),
                 "--summary-markdown", str(tmp_path / "summary.md"))
    assert merged.code == 1
    assert merged.out.splitlines()[-1] == "merged 2 report(s), 6 tenants: 5 upgraded, 1 failed"
    summary = (tmp_path / "summary.md").read_text()
    assert step_summary.read_text() == summary + "\n"
    assert "| t03 | failed |" in summary
    assert f"--from-report {tmp_path / 'all.json'} --only failed,timed-out,skipped,locked" in summary
    junit = (tmp_path / "junit.xml").read_text()
    assert junit.count("<testcase ") == 6 and junit.count("<failure ") == 1

    for key, value in (("GITHUB_SERVER_URL", "https://github.com"), ("GITHUB_REPOSITORY", "acme/saas"),
                       ("GITHUB_RUN_ID", "4242")):
        monkeypatch.setenv(key, value)
    run_url = "https://github.com/acme/saas/actions/runs/4242"
    posted = cli("report", "notify", str(tmp_path / "r1.json"), str(tmp_path / "r2.json"),
                 "--notify", "slack:" + webhook.url(), "--message", "failed jobs: apply, verify")
    assert (posted.code, posted.out, posted.err) == (0, "posted to 1 of 1 webhook(s)\n", "")
    text = slack_texts(webhook.payloads()[-1])
    assert "1 of 6 tenants did not end well" in text and "t03" in text and f"<{run_url}|" in text
    assert "failed jobs: apply, verify" in text
    # A deploy that failed before any tenant ran has no report: a message, with the same link.
    monkeypatch.setenv("TENANTS_NOTIFY_URL", "teams:" + webhook.url())
    posted = cli("report", "notify", "--message", "deploy of production failed in job plan")
    assert posted.code == 0
    card = teams_card(webhook.payloads()[-1])
    assert teams_lines(card) == ["deploy of production failed in job plan"]
    assert card["actions"] == [{"type": "Action.OpenUrl", "title": "Open the run: summary, every tenant, "
                                "how to resume", "url": run_url}]
    monkeypatch.delenv("TENANTS_NOTIFY_URL")
    nowhere = cli("report", "notify", "--message", "x")
    assert (nowhere.code, nowhere.err) == (2, "tenants: error: report notify: no webhook; give --notify URL or set "
                                              "TENANTS_NOTIFY_URL\n")
    nothing = cli("report", "notify", "--notify", "slack:https://hooks.slack.com/services/T/B/x")
    assert nothing.code == 2 and "give the run's report(s), or --message" in nothing.err
