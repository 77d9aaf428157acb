"""`upgrade --from-report` resumes only the run it was given the report of (issue 11, item 5): a report of another
environment, operation, target or graph head is refused (exit 2, one line naming the file) unless --force; a
malformed one is exit 2 naming the file and what is wrong; --report cannot overwrite the report being resumed;
a run that fails at discovery writes a report saying so, which a resume refuses."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import ALEMBIC_INI, HEAD, settings_for

from tenants import api
from tenants.errors import ReportError, ReportMismatch
from tenants.runlog import write_json


def _report(path: Path, statuses: dict[str, str], **fields) -> Path:
    header = {"environment": "test", "operation": "upgrade", "target": HEAD, "head": HEAD, **fields}
    write_json(path, {"schema_version": 1, **header,
                      "tenants": [{"tenant": name, "status": status} for name, status in statuses.items()]})
    return path


DONE = {"acme": "upgraded", "globex": "upgraded", "initech": "upgraded"}
TAIL = "resume from this upgrade's own report, or pass --force to take this one anyway"


@pytest.mark.parametrize(("fields", "differs"), [
    ({"environment": "prod"}, "environment 'prod' (this run: 'test')"),
    ({"operation": "downgrade", "target": "0001_users"},
     f"operation 'downgrade' (this run: 'upgrade'), target '0001_users' (this run: '{HEAD}')"),
    ({"operation": "stamp"}, "operation 'stamp' (this run: 'upgrade')"),
    ({"target": "0002_invoices"}, f"target '0002_invoices' (this run: '{HEAD}')"),
    ({"head": "0003_invoice_status"}, f"head '0003_invoice_status' (this run: '{HEAD}')"),
])
def test_a_report_of_another_run_is_refused_unless_forced(sqlite_config, tmp_path, fields, differs):
    settings = settings_for(sqlite_config())
    report = _report(tmp_path / "r.json", DONE, **fields)
    with pytest.raises(ReportMismatch) as err:
        api.prepare_upgrade(settings, resume_from=report)
    assert str(err.value) == f"{report}: a report of another run: {differs}; {TAIL}"
    assert api.prepare_upgrade(settings, resume_from=report, force=True).tenants == ()  # all listed as done


def test_the_same_run_resumes_as_before(sqlite_config, tmp_path):
    settings = settings_for(sqlite_config())
    report = _report(tmp_path / "r.json", {"acme": "upgraded", "globex": "failed"})
    assert [t.name for t in api.prepare_upgrade(settings, resume_from=report).tenants] == ["globex", "initech"]


@pytest.mark.parametrize(("content", "problem"), [
    (os.urandom(64) + b"\xff", "not a tenants report (not UTF-8 text)"),
    (b"\x00\x01garbage", "not a tenants report (cut short before any tenant?)"),
    (json.dumps({"schema_version": 1, "environment": "test", "tenants": [{"tenant": "acme"}]}).encode(),
     "not a tenants report (tenants entry 1 has no status)"),
    (json.dumps({"schema_version": 1, "tenants": {"acme": "upgraded"}}).encode(),
     "not a tenants report (tenants is dict, not a list)"),
    (json.dumps({"schema_version": 1, "tenants": ["acme"]}).encode(),
     "not a tenants report (tenants entry 1 is str, not an object)"),
    (json.dumps({"schema_version": 1, "tenants": [{"tenant": "acme", "status": 3}]}).encode(),
     "not a tenants report (tenants entry 1: status is int, not str)"),
    (json.dumps({"schema_version": 1, "tenants": [{"tenant": "acme", "status": "done"}]}).encode(),
     "not a tenants report (tenants entry 1 (acme): status 'done' is not a status)"),
    (json.dumps({"schema_version": 1, "environment": ["test"], "tenants": []}).encode(),
     "not a tenants report (environment is list, not str)"),
    (json.dumps({"schema_version": 1, "environment": "test", "operation": "upgrade", "target": HEAD,
                 "tenants": []}).encode(), "not a report to resume from (no head)"),
])
def test_a_malformed_report_is_one_line_naming_the_file_and_what_is_wrong(sqlite_config, tmp_path, cli, content,
                                                                          problem):
    config = sqlite_config()
    report = tmp_path / "r.json"
    report.write_bytes(content)
    with pytest.raises(ReportError) as err:
        api.prepare_upgrade(settings_for(config), resume_from=report)
    assert str(err.value) == f"{report}: {problem}"
    run = cli("--config", str(config), "--env", "test", "upgrade", "--from-report", str(report))
    assert (run.code, run.out, run.err) == (2, "", f"tenants: error: {report}: {problem}\n")
    assert not (tmp_path / "db").exists()


def test_cli_refuses_another_targets_report_touching_nothing_and_force_takes_it(sqlite_config, tmp_path, cli):
    config = str(sqlite_config())
    report = _report(tmp_path / "r.json", DONE, target="0002_invoices")
    run = cli("--config", config, "--env", "test", "upgrade", "--from-report", str(report))
    assert (run.code, run.out) == (2, "")
    assert run.err == (f"tenants: error: {report}: a report of another run: target '0002_invoices' (this run: "
                       f"'{HEAD}'); {TAIL}\n")
    assert not (tmp_path / "db").exists()
    run = cli("--config", config, "--env", "test", "upgrade", "--from-report", str(report), "--force")
    assert run.code == 0 and "0 tenant(s) to run again" in run.err


def test_the_same_file_for_report_and_from_report_is_refused_before_anything(sqlite_config, tmp_path, cli):
    config = str(sqlite_config())
    report = _report(tmp_path / "r.json", {"acme": "upgraded", "globex": "failed"})
    before = report.read_bytes()
    run = cli("--config", config, "--env", "test", "upgrade", "--from-report", str(report),
              "--report", str(tmp_path / "." / "r.json"))
    assert (run.code, run.out) == (2, "")
    assert run.err == (f"tenants: error: --report {tmp_path / 'r.json'} is the report --from-report resumes: the "
                       "resumed run would overwrite it; write the resumed run's report to another file\n")
    assert report.read_bytes() == before and not (tmp_path / "db").exists()


def test_a_run_that_fails_at_discovery_writes_a_report_saying_so_which_resume_refuses(tmp_path, cli):
    config = tmp_path / "t.toml"
    config.write_text(f'[environments.x]\nurl = "postgresql+psycopg://app:pw@127.0.0.1:1/{{tenant}}"\n'
                      f'alembic = "{ALEMBIC_INI}"\nsource = "server"\nmatch = "t_*"\nretries = 0\n')
    report = tmp_path / "r.json"
    run = cli("--config", str(config), "--env", "x", "upgrade", "--report", str(report))
    assert run.code == 1 and "cannot list the databases" in run.err
    data = json.loads(report.read_text())
    assert data["tenants"] == [] and data["ok"] is False and data["complete"] is False
    assert data["error"].startswith("environment 'x': cannot list the databases on ")
    assert "pw@" not in report.read_text()
    run = cli("--config", str(config), "--env", "x", "upgrade", "--from-report", str(report), "--force")
    assert run.code == 2 and len(run.err.splitlines()) == 1
    assert run.err.startswith(f"tenants: error: {report}: that run stopped before any tenant ran (environment 'x': "
                              "cannot list the databases on ")
    assert run.err.endswith("there is nothing to resume from it: run the upgrade again without --from-report\n")
