"""Signals outside a fan-out's own handler (issue 11): between two waves, and while a run sets itself up (before
the fan-out notes signals itself, and before discovery ends). Each ends the run like a signal mid-wave: the
tenants not started are reported skipped, the summary, JUnit and report are written, exit 130 or 143, no
traceback.

Where the signal lands is held open with a real part of the run: the `git rev-parse HEAD` each wave's fan-out
runs to record the revisions' commit (tenants.engine.history.git_commit) is a fake `git` on PATH that says it
started (a file) and then takes its time. Before the run, a revision file that is slow to import holds the
parent while it loads the revision graph.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ROOT, fleet_config, make_project, version

QUICK = "op.create_table('one', sa.Column('id', sa.Integer, primary_key=True))"


def _fake_git(tmp_path: Path, slow_call: int) -> dict[str, str]:
    """A `git` that fails at once (no commit), except its ``slow_call``-th call, which makes a file
    ``git-slow`` and then sleeps 2 s. Returns the environment that puts it first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    count = tmp_path / "git-calls"
    git = bin_dir / "git"
    git.write_text("#!/bin/sh\n"
                   f"echo x >> {count}\n"
                   f"if [ \"$(wc -l < {count})\" -eq {slow_call} ]; then\n"
                   f"  touch {tmp_path / 'git-slow'}\n"
                   "  exec sleep 2\n"
                   "fi\n"
                   "exit 1\n")
    git.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


def _start(config: Path, *args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tenants", "--config", str(config), "--env", "test", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, **env},
                            # A suite started in the background runs with SIGINT ignored: give the child a
                            # terminal's.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while not path.exists():
        assert time.monotonic() < deadline and proc.poll() is None, (path, proc.poll())
        time.sleep(0.02)


def _waves_fleet(tmp_path: Path) -> Path:
    ini = make_project(tmp_path / "proj", {"q1": QUICK}, env_py=(ROOT / "alembic" / "env.py").read_text())
    return fleet_config(tmp_path / "t.toml", ["c1", "c2", "t0", "t1", "t2"],
                        tags={"c1": ["canary"], "c2": ["canary"]}, alembic=ini,
                        extra='waves = [{tag = "canary"}, {rest = true}]')


SIGNALS = [pytest.param(signal.SIGINT, 130, "Ctrl-C", id="sigint"),
           pytest.param(signal.SIGTERM, 143, "SIGTERM", id="sigterm")]


@pytest.mark.parametrize(("signum", "code", "name"), SIGNALS)
@pytest.mark.parametrize("concurrency", ["1", "2"])
def test_a_signal_between_two_waves_skips_the_later_waves_and_writes_everything(tmp_path, signum, code, name,
                                                                               concurrency):
    config = _waves_fleet(tmp_path)
    report, junit, summary = tmp_path / "r.json", tmp_path / "junit.xml", tmp_path / "summary.md"
    # The second wave's fan-out is held in its set-up (the second `git`): the first wave is over by then.
    proc = _start(config, "upgrade", "-j", concurrency, "--report", str(report), "--junit", str(junit),
                  "--summary-markdown", str(summary), env=_fake_git(tmp_path, slow_call=2))
    _wait_for(tmp_path / "git-slow", proc)
    # The parent only: the fake git takes its 2 s; the signal is noted and acted on once it is back.
    os.kill(proc.pid, signum)
    started = time.monotonic()
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - started < 10  # the 2 s git, then the write-up
    assert proc.returncode == code, (out, err)
    assert "Traceback" not in err and "aborted" not in err, err
    tenants = {t["tenant"]: t for t in json.loads(report.read_text())["tenants"]}
    assert tenants["c1"]["status"] == tenants["c2"]["status"] == "upgraded"
    assert {tenants[f"t{i}"]["status"] for i in range(3)} == {"skipped"}
    assert {tenants[f"t{i}"]["error"] for i in range(3)} == {f"not started: interrupted ({name})"}
    assert all(version(tmp_path / "db" / f"t{i}.db") is None for i in range(3))
    assert f"interrupted ({name})" in junit.read_text() and f"interrupted ({name})" in summary.read_text()
    data = json.loads(report.read_text())  # the whole report, not one cut short
    assert data.get("complete", True) and data["finished_at"]
    assert [(w["wave"], w["summary"]) for w in data["waves"]] == [("tag canary", {"upgraded": 2}),
                                                                  ("rest", {"skipped": 3})]


@pytest.mark.parametrize("concurrency", ["1", "3"])
@pytest.mark.parametrize(("signum", "code", "name"), SIGNALS)
def test_a_signal_while_the_fan_out_sets_itself_up_skips_every_tenant(tmp_path, signum, code, name, concurrency):
    """Before the fan-out's handler is installed (the first wave's `git rev-parse`), serial or in processes."""
    ini = make_project(tmp_path / "proj", {"q1": QUICK}, env_py=(ROOT / "alembic" / "env.py").read_text())
    config = fleet_config(tmp_path / "t.toml", ["a", "b", "c"], alembic=ini)
    report, junit = tmp_path / "r.json", tmp_path / "junit.xml"
    proc = _start(config, "upgrade", "-j", concurrency, "--report", str(report), "--junit", str(junit),
                  env=_fake_git(tmp_path, slow_call=1))
    _wait_for(tmp_path / "git-slow", proc)
    os.kill(proc.pid, signum)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == code, (out, err)
    assert "Traceback" not in err, err
    data = json.loads(report.read_text())
    assert data.get("complete", True) and data["finished_at"]
    assert {t["error"] for t in data["tenants"]} == {f"not started: interrupted ({name})"}
    assert len(data["tenants"]) == 3 and f"interrupted ({name})" in junit.read_text()
    assert not list((tmp_path / "db").glob("*.db"))  # nothing touched


@pytest.mark.parametrize(("signum", "code", "name"), SIGNALS)
def test_a_signal_before_the_run_starts_says_so_in_the_report(tmp_path, signum, code, name):
    """While the revision graph loads (a revision that imports something slow), before discovery."""
    ini = make_project(tmp_path / "proj", {"q1": QUICK}, env_py=(ROOT / "alembic" / "env.py").read_text())
    revision = next((tmp_path / "proj" / "migrations" / "versions").glob("000_q1.py"))
    loading = tmp_path / "loading"
    # Slow in the parent only, the first time (a worker loads the graph too).
    revision.write_text(f"import os as _os, time as _time\nif not _os.path.exists({str(loading)!r}):\n"
                        f"    open({str(loading)!r}, 'w').close()\n    _time.sleep(3)\n" + revision.read_text())
    config = fleet_config(tmp_path / "t.toml", ["a", "b"], alembic=ini)
    report = tmp_path / "r.json"
    proc = _start(config, "upgrade", "--report", str(report), env={})
    _wait_for(loading, proc)
    os.kill(proc.pid, signum)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == code, (out, err)
    assert "Traceback" not in err, err
    said = f"interrupted ({name}) before any tenant started; nothing was run"
    assert err.strip().endswith(f"tenants: {said}"), err
    data = json.loads(report.read_text())
    assert (data["error"], data["tenants"], data["environment"]) == (said, [], "test")
    assert not list((tmp_path / "db").glob("*.db"))
