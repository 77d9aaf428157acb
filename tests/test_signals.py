"""Signals with real processes (issue 11): SIGTERM is handled like Ctrl-C and still writes the report, JUnit and
summary; a second signal stops the tenants in flight and reports where they are; Ctrl-C while the forkserver
still imports skips every tenant; no process of a run survives a SIGKILL of the parent; `downgrade --pin`
interrupted leaves no pin."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import ROOT, fleet_config, make_project, settings_for, version

from tenants import api
from tenants.selection import Selection

# A revision that announces itself (a file named after its worker's pid) and then takes its time.
SLOW = """
    open({gate!r} + str(os.getpid()), 'w').close()
    time.sleep(float(os.environ.get('TENANTS_TEST_SLEEP', '30')))
    op.create_table('one', sa.Column('id', sa.Integer, primary_key=True))
"""


def _slow_fleet(sqlite_config, tmp_path: Path, n: int = 4) -> Path:
    ini = make_project(tmp_path / "proj", {"s1": SLOW.format(gate=str(tmp_path / "gate"))},
                       env_py=(ROOT / "alembic" / "env.py").read_text())
    return sqlite_config([f"t{i}" for i in range(n)], alembic=ini)


def _start(config: Path, *args: str, env: dict | None = None, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tenants", "--config", str(config), "--env", "test", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, **(env or {})},
                            # A suite started in the background runs with SIGINT ignored, and Python keeps a
                            # signal that was ignored at startup ignored: give the child a terminal's.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kwargs)


def _wait_for(tmp_path: Path, pattern: str, count: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while len(list(tmp_path.glob(pattern))) < count:
        assert time.monotonic() < deadline and proc.poll() is None, "the tenants never started"
        time.sleep(0.05)


def _by_status(report: Path) -> tuple[list[dict], list[dict]]:
    """The report's tenants that failed, and those skipped (nothing else)."""
    tenants = json.loads(report.read_text())["tenants"]
    assert {t["status"] for t in tenants} <= {"failed", "skipped"}, tenants
    return [t for t in tenants if t["status"] == "failed"], [t for t in tenants if t["status"] == "skipped"]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie is dead, only not reaped (a container's init)


def _descendants(root: int) -> set[int]:
    """Every live process below ``root``, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _all_gone(pids: set[int], within: float = 10.0) -> set[int]:
    deadline = time.monotonic() + within
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return {pid for pid in pids if _alive(pid)}


def test_sigterm_drains_within_the_grace_then_stops_the_tenants_in_flight_and_writes_everything(sqlite_config,
                                                                                                 tmp_path):
    config = _slow_fleet(sqlite_config, tmp_path)
    report, junit, summary = tmp_path / "r.json", tmp_path / "junit.xml", tmp_path / "summary.md"
    proc = _start(config, "upgrade", "-j", "2", "--report", str(report), "--junit", str(junit),
                  "--summary-markdown", str(summary), env={"TENANTS_DRAIN_GRACE": "1"})
    _wait_for(tmp_path, "gate*", 2, proc)
    workers = {int(p.name[len("gate"):]) for p in tmp_path.glob("gate*")}
    run = _descendants(proc.pid)
    assert workers <= run
    started = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)  # the parent only, as `kill` does
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - started < 8, "not within GitHub's 7.5 s before SIGKILL"
    assert proc.returncode == 143, (out, err)
    assert "Traceback" not in err
    stopped, skipped = _by_status(report)
    assert len(stopped) == len(skipped) == 2  # which two started first depends on the parent's reads
    assert all(t["error"].startswith("interrupted (SIGTERM) while migrating") for t in stopped)
    assert {t["to"] for t in stopped} == {"base"}  # read back: its revision rolled back
    assert {t["error"] for t in skipped} == {"not started: interrupted (SIGTERM)"}
    assert "interrupted (SIGTERM)" in junit.read_text() and summary.read_text()
    assert all(version(tmp_path / "db" / f"t{i}.db") is None for i in range(4))
    assert not _all_gone(run), "a process of the run outlived it"


def test_a_second_ctrl_c_stops_the_tenants_in_flight_and_a_third_is_harmless(sqlite_config, tmp_path):
    config = _slow_fleet(sqlite_config, tmp_path)
    report = tmp_path / "r.json"
    proc = _start(config, "upgrade", "-j", "2", "--report", str(report))
    _wait_for(tmp_path, "gate*", 2, proc)
    run = _descendants(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole process group
    time.sleep(0.5)
    assert proc.poll() is None  # the first one drains: the tenants in flight go on
    started = time.monotonic()
    for _ in range(2):
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.05)
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - started < 5
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err
    stopped, skipped = _by_status(report)
    assert len(stopped) == len(skipped) == 2
    assert all(t["error"].startswith("interrupted (Ctrl-C) while migrating") for t in stopped)
    assert {t["to"] for t in stopped} == {"base"}
    assert not _all_gone(run)


def test_ctrl_c_while_the_forkserver_still_imports_skips_every_tenant(sqlite_config, tmp_path):
    """The first second of a run: the forkserver is importing, no worker is up."""
    config = _slow_fleet(sqlite_config, tmp_path)
    site = tmp_path / "site"
    site.mkdir()
    # Holds the forkserver in its imports (it runs `-c "from multiprocessing.forkserver import main ..."`).
    (site / "sitecustomize.py").write_text(
        "import os, sys, time\n"
        "if any('multiprocessing.forkserver' in a for a in sys.orig_argv):\n"
        f"    open({str(tmp_path / 'forkserver')!r} + str(os.getpid()), 'w').close()\n"
        "    time.sleep(2)\n")
    report = tmp_path / "r.json"
    pythonpath = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    # A worker that comes up right as the signal lands may have started its tenant: that one drains (finishes its
    # revision, 3 s here) as on any first Ctrl-C; every other tenant is skipped.
    proc = _start(config, "upgrade", "-j", "2", "--report", str(report),
                  env={"PYTHONPATH": pythonpath, "TENANTS_TEST_SLEEP": "3"})
    _wait_for(tmp_path, "forkserver*", 1, proc)
    # The parent ignores signals for the few milliseconds of the forkserver's fork and exec (see
    # tenants.engine.fanout.process._start_forkserver): a signal then is lost. Send it once the parent is surely
    # past that, still within the forkserver's 2 s of imports.
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "worker pool broke" not in out
    tenants = json.loads(report.read_text())["tenants"]
    started = len(list(tmp_path.glob("gate*")))
    assert sorted(t["status"] for t in tenants) == ["skipped"] * (4 - started) + ["upgraded"] * started
    assert started <= 2  # at most the two workers' first tenants
    assert {t["error"] for t in tenants if t["status"] == "skipped"} == {"not started: interrupted (Ctrl-C)"}


def test_no_process_of_the_run_survives_a_sigkill_of_the_parent(sqlite_config, tmp_path):
    config = _slow_fleet(sqlite_config, tmp_path)
    proc = _start(config, "upgrade", "-j", "2")
    _wait_for(tmp_path, "gate*", 2, proc)
    run = _descendants(proc.pid)
    workers = {int(p.name[len("gate"):]) for p in tmp_path.glob("gate*")}
    assert workers <= run and len(run) >= 3  # the forkserver, the workers (and a resource tracker)
    os.kill(proc.pid, signal.SIGKILL)  # the parent alone
    proc.wait()
    assert not _all_gone(run), "processes of the run outlived the parent"


def test_downgrade_pin_interrupted_by_sigterm_leaves_no_pin_on_a_tenant_it_did_not_downgrade(sqlite_config,
                                                                                             tmp_path):


    gate = tmp_path / "undoing"
    ini = make_project(tmp_path / "proj", {
        "d1": "op.create_table('one', sa.Column('id', sa.Integer, primary_key=True))",
        "d2": "op.create_table('two', sa.Column('id', sa.Integer, primary_key=True))",
    }, env_py=(ROOT / "alembic" / "env.py").read_text())
    d2 = next((tmp_path / "proj" / "migrations" / "versions").glob("001_d2.py"))
    d2.write_text(d2.read_text().replace("def downgrade():\n    pass",
                                         f"def downgrade():\n    open({str(gate)!r}, 'w').close()\n"
                                         "    time.sleep(30)\n    op.drop_table('two')"))
    config = sqlite_config(["acme"], alembic=ini)
    settings = settings_for(config)
    assert api.upgrade(settings).ok
    proc = _start(config, "downgrade", "-t", "acme", "--yes", "--pin", "INC-9", "--", "-1")
    _wait_for(tmp_path, "undoing", 1, proc)
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, (out, err)
    assert "Traceback" not in err
    assert "nothing was undone, so the pin set for this downgrade is off again" in err
    assert "interrupted (SIGTERM) while migrating" in out  # a serial run: the signal lands in the revision
    assert version(tmp_path / "db" / "acme.db") == "d2"
    assert api.status(settings, Selection(tenants=("acme",))).tenants[0].pin is None


def test_ctrl_c_in_a_wave_starts_no_later_wave(sqlite_config, tmp_path):
    ini = make_project(tmp_path / "proj", {"s1": SLOW.format(gate=str(tmp_path / "gate"))},
                       env_py=(ROOT / "alembic" / "env.py").read_text())
    config = fleet_config(tmp_path / "t.toml", ["c1", "c2", "t0", "t1", "t2"],
                          tags={"c1": ["canary"], "c2": ["canary"]}, alembic=ini,
                          extra='waves = [{tag = "canary"}, {rest = true}]')
    report = tmp_path / "r.json"
    proc = _start(config, "upgrade", "-j", "2", "--report", str(report), env={"TENANTS_TEST_SLEEP": "1.5"})
    _wait_for(tmp_path, "gate*", 2, proc)  # the canaries
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    tenants = {t["tenant"]: t for t in json.loads(report.read_text())["tenants"]}
    assert tenants["c1"]["status"] == tenants["c2"]["status"] == "upgraded"  # drained: the wave went well
    assert {tenants[f"t{i}"]["error"] for i in range(3)} == {"not started: interrupted (Ctrl-C)"}
    assert len(list(tmp_path.glob("gate*"))) == 2


def test_a_cancelled_github_job_is_reported_before_the_runners_sigterm(sqlite_config, tmp_path):
    """GitHub cancels a job with SIGINT, then SIGTERM about 7.5 s later, then SIGKILL: in Actions the tenants in
    flight get a shorter grace, so the run is stopped, read back and written up before the SIGTERM."""
    config = _slow_fleet(sqlite_config, tmp_path)
    report, step_summary = tmp_path / "r.json", tmp_path / "step_summary.md"
    env = {"GITHUB_ACTIONS": "true", "GITHUB_STEP_SUMMARY": str(step_summary), "TENANTS_DRAIN_GRACE": ""}
    proc = _start(config, "upgrade", "-j", "2", "--report", str(report), env=env)
    _wait_for(tmp_path, "gate*", 2, proc)
    started = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - started < 7.5
    assert proc.returncode == 130, (out, err)
    stopped, skipped = _by_status(report)
    assert len(stopped) == len(skipped) == 2
    assert "interrupted (Ctrl-C)" in step_summary.read_text()
