"""A full disk or an unwritable file is not a failed fleet (issue 11, item 6): report (streamed and final), JUnit
and summary writes that fail are one warning on stderr, the fan-out runs every tenant, and the exit code is the
run's, except that a run that ended well exits 1 saying so and naming the file it could not write.

/dev/full is a real full device: every write to it fails with ENOSPC (no root needed)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from helpers import HEAD, version

from tenants.model import RunReport, Status, TenantResult
from tenants.runlog import ReportWriter, read_report

FULL = Path("/dev/full")
NOSPC = "No space left on device"
pytestmark = pytest.mark.skipif(not FULL.exists(), reason="needs /dev/full")


@pytest.fixture(autouse=True)
def _dev_full_stays_a_device():
    yield
    assert stat.S_ISCHR(FULL.stat().st_mode), "a write must never rename a file over /dev/full"
    assert not Path("/dev/full.tmp").exists()


def _all_at_head(tmp_path, names=("acme", "globex", "initech")) -> bool:
    return all(version(tmp_path / "db" / f"{name}.db") == HEAD for name in names)


@pytest.mark.parametrize("flag", ["--junit", "--summary-markdown", "--report"])
def test_a_good_run_that_cannot_write_a_file_it_was_asked_for_exits_1_saying_the_run_was_good(
        sqlite_config, tmp_path, cli, flag):
    run = cli("--config", str(sqlite_config()), "--env", "test", "upgrade", "-j", "2", flag, str(FULL))
    assert run.code == 1
    assert _all_at_head(tmp_path), "the fan-out was not stopped"
    assert run.out.count("upgraded") >= 3
    errors = [line for line in run.err.splitlines() if line.startswith("tenants: ")]
    assert errors == [f"tenants: warning: {flag} {FULL}: cannot write it: {NOSPC}; the run goes on",
                      f"tenants: error: the run ended well (3 upgraded) but {flag} {FULL} could not be written: "
                      f"{NOSPC}"]
    assert "internal error" not in run.err and "report written to" not in run.err


def test_a_failed_run_keeps_its_own_exit_code_and_only_warns(sqlite_config, tmp_path, cli):
    config = str(sqlite_config())
    cli("--config", config, "--env", "test", "upgrade", "0001_users")
    (tmp_path / "db" / "globex.db").write_bytes(b"not a database at all, and long enough to be read as one" * 20)
    run = cli("--config", config, "--env", "test", "upgrade", "--keep-going", "--junit", str(FULL),
              "--report", str(FULL))
    assert run.code == 1
    assert _all_at_head(tmp_path, ("acme", "initech"))
    errors = [line for line in run.err.splitlines() if line.startswith("tenants: ")]
    assert errors == [f"tenants: warning: --report {FULL}: cannot write it: {NOSPC}; the run goes on",
                      f"tenants: warning: --junit {FULL}: cannot write it: {NOSPC}; the run goes on"]


def test_the_report_writer_never_raises_and_keeps_the_first_error():
    writer = ReportWriter(FULL, {"run_id": "r", "environment": "test"})
    for name in ("a", "b"):
        writer.add(TenantResult(name, Status.UPGRADED))
    assert isinstance(writer.error, OSError) and writer.error.strerror == NOSPC
    writer.close(RunReport("r", "test", "upgrade", HEAD, HEAD, 1, "", "", 0.0))
    assert writer.error is not None and writer.error.strerror == NOSPC


def test_a_final_write_that_works_after_a_streamed_one_failed_clears_the_error(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    writer = ReportWriter(path, {"run_id": "r", "environment": "test"})
    writer.error = OSError(28, NOSPC)  # the disk was full while the run went
    writer.add(TenantResult("a", Status.UPGRADED))
    writer.close(RunReport("r", "test", "upgrade", HEAD, HEAD, 1, "", "", 0.0, (TenantResult("a", Status.UPGRADED),)))
    assert writer.error is None and read_report(path).statuses() == {"a": "upgraded"}


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory anyway")
def test_a_read_only_directory_keeps_the_streamed_report_and_warns(sqlite_config, tmp_path, cli):
    out = tmp_path / "out"
    out.mkdir()
    report = out / "r.json"
    report.write_text("")  # writable file, in a directory that becomes read-only: the atomic replace fails
    out.chmod(0o555)
    try:
        run = cli("--config", str(sqlite_config()), "--env", "test", "upgrade", "--report", str(report))
    finally:
        out.chmod(0o755)
    assert run.code == 1 and _all_at_head(tmp_path)
    assert (f"tenants: error: the run ended well (3 upgraded) but --report {report} could not be written: "
            "Permission denied") in run.err
    assert read_report(report).statuses() == {n: "upgraded" for n in ("acme", "globex", "initech")}


def test_stamp_with_its_report_on_a_full_disk_still_stamps_and_says_the_run_was_good(sqlite_config, tmp_path, cli):
    run = cli("--config", str(sqlite_config()), "--env", "test", "stamp", "0001_users", "-t", "acme",
              "--report", str(FULL))
    assert run.code == 1 and version(tmp_path / "db" / "acme.db") == "0001_users"
    assert run.err.splitlines()[-1] == (f"tenants: error: the run ended well (1 stamped) but --report {FULL} could "
                                        f"not be written: {NOSPC}")


def test_report_merge_to_a_full_disk_is_one_line_not_an_internal_error(sqlite_config, tmp_path, cli):
    config = str(sqlite_config())
    cli("--config", config, "--env", "test", "upgrade", "--report", str(tmp_path / "r.json"))
    run = cli("report", "merge", str(tmp_path / "r.json"), "--output", str(FULL))
    assert run.code == 1 and "internal error" not in run.err
    assert run.err.splitlines()[-1] == (f"tenants: error: the run ended well (3 upgraded) but --output {FULL} could "
                                        f"not be written: {NOSPC}")


def test_verify_of_a_good_fleet_with_its_junit_on_a_full_disk_says_the_fleet_verified(sqlite_config, cli):
    config = str(sqlite_config())
    cli("--config", config, "--env", "test", "upgrade")
    run = cli("--config", config, "--env", "test", "verify", "--junit", str(FULL))
    assert run.code == 1 and "internal error" not in run.err
    assert run.err.splitlines() == [
        f"tenants: warning: --junit {FULL}: cannot write it: {NOSPC}; the run goes on",
        f"tenants: error: the fleet verified well but --junit {FULL} could not be written: {NOSPC}"]
