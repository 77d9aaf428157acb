"""A run cut short: a worker killed mid-revision (its transaction dies with it), Ctrl-C to the process group
(tenants in flight finish, no new one starts), a worker killed while the pool goes on, workers that cannot start."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

from helpers import ROOT, make_project, settings_for, tables, version

from tenants import api
from tenants.engine.fanout import ProcessStrategy
from tenants.model import Status


def test_worker_killed_mid_revision_leaves_previous_revision(sqlite_config, tmp_path):
    """SIGKILL in the middle of a revision: its transaction dies with the process; a rerun resumes."""
    gate = tmp_path / "started"
    ini = make_project(tmp_path / "proj", {
        "k1": "op.create_table('one', sa.Column('id', sa.Integer, primary_key=True))",
        "k2": f"""
            op.create_table('two', sa.Column('id', sa.Integer, primary_key=True))
            open({str(gate)!r}, 'w').close()
            if os.environ.get('TENANTS_TEST_HANG'):
                time.sleep(60)
        """,
    }, env_py=(ROOT / "alembic" / "env.py").read_text())
    config = sqlite_config(["victim"], alembic=ini)
    env = {**os.environ, "TENANTS_TEST_HANG": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tenants", "--config", str(config), "--env", "test", "upgrade"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 30
    while not gate.exists():
        assert time.monotonic() < deadline and proc.poll() is None, "the revision never started"
        time.sleep(0.05)
    os.killpg(proc.pid, 9)
    proc.wait()
    db = tmp_path / "db" / "victim.db"
    assert version(db) == "k1"
    assert "two" not in tables(db)
    report = api.upgrade(settings_for(config))
    assert (report.results[0].status, report.results[0].applied) == (Status.UPGRADED, ("k2",))
    assert version(db) == "k2"


def test_ctrl_c_lets_tenants_in_flight_finish_and_skips_the_rest(sqlite_config, tmp_path):
    """SIGINT to the whole process group, as a terminal sends it: in-flight tenants complete, none start."""
    gate = tmp_path / "gate"
    ini = make_project(tmp_path / "proj", {
        "s1": f"""
            open({str(gate)!r} + str(os.getpid()), 'w').close()
            time.sleep(1.5)
            op.create_table('one', sa.Column('id', sa.Integer, primary_key=True))
        """,
    }, env_py=(ROOT / "alembic" / "env.py").read_text())
    names = [f"t{i}" for i in range(8)]
    config = sqlite_config(names, alembic=ini)
    report = tmp_path / "r.json"
    proc = subprocess.Popen([sys.executable, "-m", "tenants", "--config", str(config), "--env", "test", "upgrade",
                             "-j", "2", "--report", str(report)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            # A suite started in the background (`pytest &`) runs with SIGINT ignored, and Python
                            # keeps a signal that was ignored at startup ignored: give the child a terminal's.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 30
    while len(list(tmp_path.glob("gate*"))) < 2:
        assert time.monotonic() < deadline and proc.poll() is None, "the first tenants never started"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)  # interrupted: 128 + SIGINT, whatever the tenants did
    statuses = [t["status"] for t in json.loads(report.read_text())["tenants"]]
    assert statuses.count("upgraded") == 2, out
    assert statuses.count("skipped") == 6
    skipped_line = next(ln for ln in out.splitlines() if ln.startswith("skipped: ") and "t7" in ln)
    assert skipped_line.endswith(": not started: interrupted (Ctrl-C)")  # one folded line for all six
    upgraded = [t for t in names if version(tmp_path / "db" / f"{t}.db") == "s1"]
    assert len(upgraded) == 2 and all("one" in tables(tmp_path / "db" / f"{t}.db") for t in upgraded)


def test_a_killed_worker_fails_its_tenants_and_the_run_goes_on(sqlite_config, tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    ini = make_project(tmp_path / "proj", {
        "w1": f"""
            from alembic import context
            if 'victim' in context.config.get_main_option('sqlalchemy.url'):
                open({str(pids)!r} + '/' + str(os.getpid()), 'w').close()
                time.sleep(30)
            op.create_table('one', sa.Column('id', sa.Integer, primary_key=True))
        """,
    }, env_py=(ROOT / "alembic" / "env.py").read_text())
    names = ["victim"] + [f"t{i}" for i in range(5)]
    settings = settings_for(sqlite_config(names, alembic=ini))

    def killer():
        deadline = time.monotonic() + 30
        while not list(pids.iterdir()) and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(int(next(pids.iterdir()).name), signal.SIGKILL)

    thread = threading.Thread(target=killer)
    thread.start()
    report = api.upgrade(settings, options=api.RunOptions(strategy=ProcessStrategy(2), max_failures=None))
    thread.join()
    by = {r.tenant: r for r in report.results}
    assert by["victim"].status is Status.FAILED
    assert by["victim"].error.startswith("the worker pool broke (a worker process died")
    # The victim's sibling in flight (if any) went down with the pool; every other tenant reached head.
    others = [by[n].status for n in names[1:]]
    assert others.count(Status.UPGRADED) >= 4 and set(others) <= {Status.UPGRADED, Status.FAILED}
    assert len(report.results) == len(names)
    assert version(tmp_path / "db" / "victim.db") is None


def test_workers_that_cannot_start_fail_the_tenants_cleanly(sqlite_config, tmp_path):
    """A main module that a worker cannot import again (a script piped on stdin) breaks every pool."""
    config = sqlite_config(["a", "b", "c", "d"])
    script = ("from tenants import api\nfrom tenants.config import load_settings\n"
              # Keep going: with the default stop-at-first-failure, how many tenants started before the first
              # failure came back is a race (4 failed, or 2 failed and 2 skipped).
              f"r = api.upgrade(load_settings({str(config)!r}, 'test', environ={{}}),\n"
              "                 options=api.RunOptions(max_failures=None))\n"
              "print(sorted(r.counts.items()), r.results[-1].error)\n")
    run = subprocess.run([sys.executable, "-"], input=script, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("[('failed', 4)] ")
    assert "worker processes could not start" in run.stdout or "the worker pool broke" in run.stdout
