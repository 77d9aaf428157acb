"""The report model: a report reads back equal to what was written (a single run, a run in waves, a merge of
shard reports, the files the previous version wrote, one cut short); the waves of a run and the parts of a
merge keep every part's figures; and max_failures with waves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import HEAD, failing_project, fake_pool_project, fleet_config, settings_for

from tenants import api
from tenants.api import merge_reports
from tenants.engine.fanout import ProcessStrategy
from tenants.engine.pressure import PressureGate
from tenants.model import RunReport, Status, TenantResult
from tenants.runlog import ReportWriter, header_of, read_report


def round_trip(report: RunReport) -> RunReport:
    return RunReport.from_dict(json.loads(json.dumps(report.to_dict())))


def fleet(tmp_path: Path, names: list[str], tags: dict[str, list[str]], alembic: Path, waves: str = "") -> Path:
    return fleet_config(tmp_path / "t.toml", names, env="w", tags=tags, alembic=alembic,
                        extra="retry_backoff_max = 0.05\n" + (f"waves = {waves}\n" if waves else ""))


def write_report(path: Path, report: RunReport) -> None:
    """As a run writes it: the header, each tenant as it ends, then the whole report."""
    writer = ReportWriter(path, header_of(report.to_dict()))
    for result in reversed(report.results):  # finished in another order than the selection's
        writer.add(result)
    writer.close(report)


def test_a_single_run_reads_back_equal_from_json_and_from_its_report_file(sqlite_config, tmp_path):
    ini = failing_project(tmp_path / "proj")
    settings = settings_for(sqlite_config(["ok1", "bad1", "ok2"], alembic=ini))
    path, writer = tmp_path / "run.json", []
    report = api.prepare_upgrade(settings).run(
        api.RunOptions(concurrency=1, max_failures=None), on_result=lambda result: writer[0].add(result),
        on_start=lambda header: writer.append(ReportWriter(path, header)))
    writer[0].close(report)
    assert [r.status for r in report.results] == [Status.UPGRADED, Status.FAILED, Status.UPGRADED]
    assert round_trip(report) == report
    assert read_report(path).run_report() == report
    assert json.loads(path.read_text()) == report.to_dict()  # the finished file is the whole report


def test_a_run_in_waves_keeps_every_waves_concurrency_changes_and_pressure_errors(tmp_path, monkeypatch):
    pytest.importorskip("pyodbc")
    # A pool with room for one tenant at a time (so each wave of three is throttled), and a pressure probe
    # that fails every read with a line naming the wave it failed in.
    ini = fake_pool_project(tmp_path / "proj", tmp_path / "pool", capacity=1, hold=0.3)
    names = ["c0", "c1", "c2", "t0", "t1", "t2"]
    config = fleet(tmp_path, names, {n: ["canary"] for n in names[:3]}, ini, '[{tag = "canary"}, {rest = true}]')
    wave, finished = [1], []

    class FailingProbe:
        reads = 0

        def read(self):
            self.reads += 1
            raise TimeoutError(f"no reading in wave {wave[0]}")

    def on_result(result: TenantResult) -> None:
        finished.append(result.tenant)
        wave[0] = 1 if len(finished) < 3 else 2

    probe = FailingProbe()
    per_wave: list[RunReport] = []
    run_wave = api._run
    monkeypatch.setattr(api, "_run", lambda *args, **kwargs: per_wave.append(run_wave(*args, **kwargs)) or per_wave[-1])
    report = api.prepare_upgrade(settings_for(config, "w")).run(
        api.RunOptions(strategy=ProcessStrategy(3, gate=PressureGate(probe, limit=80, interval=0))), on_result)

    assert report.counts == {"upgraded": 6}
    first, second = per_wave
    assert first.concurrency_changes and second.concurrency_changes  # both waves were throttled
    assert report.concurrency_changes == first.concurrency_changes + tuple(
        (round(at + first.duration, 3), n) for at, n in second.concurrency_changes)  # seconds into the run
    assert report.throttled == first.throttled + second.throttled > 0
    opened = "cannot read the pool's load, so starts went ahead: TimeoutError: no reading in wave {}"
    assert [line for line, _ in report.pressure_errors] == [opened.format(1), opened.format(2)]
    assert report.pressure_errors == first.pressure_errors + second.pressure_errors
    assert sum(times for _, times in report.pressure_errors) == probe.reads
    assert [(w["wave"], w["ran"], w["summary"]) for w in report.waves] == [
        ("tag canary", True, {"upgraded": 3}), ("rest", True, {"upgraded": 3})]
    assert report.duration == round(first.duration + second.duration, 4)
    assert round_trip(report) == report


# A streamed report as the version before this one wrote it (tenants.runlog at aba126d, its tail at the end),
# with the tenants in the order they finished and a repeated pressure error listed twice.
PREVIOUS_VERSION_REPORT = """\
{
  "schema_version": 1,
  "tool_version": "0.1.0",
  "run_id": "9a1f",
  "environment": "prod",
  "operation": "upgrade",
  "target": "0004_invoice_user_index",
  "head": "0004_invoice_user_index",
  "concurrency": 8,
  "started_at": "2026-11-26T11:02:05+00:00",
  "tenants": [
    {"tenant": "globex", "status": "failed", "from": "0003_invoice_status", "to": "0003_invoice_status", \
"applied": [], "attempts": 1, "duration": 0.5, "error": "OperationalError: boom"},
    {"tenant": "acme", "status": "upgraded", "from": "0003_invoice_status", "to": "0004_invoice_user_index", \
"applied": ["0004_invoice_user_index"], "attempts": 2, "duration": 3.25, "error": null}
  ],
  "summary": {
    "upgraded": 1,
    "failed": 1
  },
  "ok": false,
  "finished_at": "2026-11-26T11:09:41+00:00",
  "duration": 456.2,
  "throttled": 2,
  "concurrency_changes": [
    {
      "at": 0.0,
      "concurrency": 8
    },
    {
      "at": 12.5,
      "concurrency": 4
    }
  ],
  "pressure_wait": 30.25,
  "pressure_errors": [
    "OperationalError: timeout",
    "OperationalError: timeout"
  ],
  "skipped_databases": [
    {
      "database": "master",
      "reason": "system database"
    }
  ],
  "waves": [
    {
      "wave": "tag canary",
      "tenants": 2,
      "ran": true,
      "ok": false,
      "failures": 1,
      "budget": 1,
      "summary": {
        "upgraded": 1,
        "failed": 1
      }
    }
  ]
}
"""

PREVIOUS = RunReport(
    run_id="9a1f", environment="prod", operation="upgrade", target=HEAD, head=HEAD, concurrency=8,
    started_at="2026-11-26T11:02:05+00:00", finished_at="2026-11-26T11:09:41+00:00", duration=456.2,
    tool_version="0.1.0",
    results=(TenantResult("globex", Status.FAILED, "0003_invoice_status", "0003_invoice_status", (), 1, 0.5,
                          "OperationalError: boom"),
             TenantResult("acme", Status.UPGRADED, "0003_invoice_status", HEAD, (HEAD,), 2, 3.25)),
    throttled=2, concurrency_changes=((0.0, 8), (12.5, 4)), pressure_wait=30.25,
    pressure_errors=(("OperationalError: timeout", 2),), skipped_databases=(("master", "system database"),),
    waves=({"wave": "tag canary", "tenants": 2, "ran": True, "ok": False, "failures": 1, "budget": 1,
            "summary": {"upgraded": 1, "failed": 1}},))

DENIED = ("cannot read sys.dm_elastic_pool_resource_stats: the deploy identity lacks VIEW SERVER STATE (SQL "
          "Server error 300; add its login to ##MS_ServerStateReader##, see docs/github-actions.md); the run goes "
          "on without the pressure probe")

SHARD = RunReport(
    run_id="77b0", environment="prod", operation="upgrade", target=HEAD, head=HEAD, concurrency=4,
    started_at="2026-11-26T11:02:00+00:00", finished_at="2026-11-26T11:05:00+00:00", duration=180.0,
    tool_version="0.2.0",
    results=(TenantResult("initech", Status.UPGRADED, "0003_invoice_status", HEAD, (HEAD,), 1, 1.5),
             TenantResult("umbrella", Status.UP_TO_DATE, HEAD, HEAD, (), 1, 0.01)),
    throttled=1, concurrency_changes=((0.0, 4), (3.5, 2)), pressure_wait=2.5,
    pressure_errors=(("OperationalError: timeout", 3), (DENIED, 1)),
    skipped_databases=(("master", "system database"), ("copy_of_acme", "state Copying")),
    waves=({"wave": "tag canary", "tenants": 1, "ran": True, "ok": True, "failures": 0, "budget": 1,
            "summary": {"upgraded": 1}},
           {"wave": "rest", "tenants": 1, "ran": True, "ok": True, "failures": 0, "budget": 0,
            "summary": {"up-to-date": 1}}))


def test_a_report_the_previous_version_wrote_reads_back(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(PREVIOUS_VERSION_REPORT)
    assert read_report(path).run_report() == PREVIOUS
    assert round_trip(PREVIOUS) == PREVIOUS
    # Written again, a repeated error is one line with its count; every other key is as it was.
    written = PREVIOUS.to_dict()
    assert written["pressure_errors"] == ["OperationalError: timeout (2 times)"]
    assert {**json.loads(PREVIOUS_VERSION_REPORT), "tenants": None, "pressure_errors": None} == {
        **written, "tenants": None, "pressure_errors": None}
    # A merged report of the previous version: no fan-out figures, a duration it could not tell, cut short.
    merged = {key: value for key, value in json.loads(PREVIOUS_VERSION_REPORT).items() if key not in (
        "concurrency_changes", "pressure_wait", "pressure_errors", "waves")}
    path.write_text(json.dumps({**merged, "run_id": "9a1f,77b0", "shards": ["a.json", "b.json"], "complete": False,
                                "finished_at": "", "duration": None}))
    back = read_report(path).run_report()
    assert (back.run_id, back.shards, back.complete, back.ok, back.duration, back.pressure_errors) == (
        "9a1f,77b0", ("a.json", "b.json"), False, False, 0.0, ())
    assert back.results == PREVIOUS.results and round_trip(back) == back


def test_report_merge_keeps_every_parts_figures_and_reads_back_equal(cli, tmp_path):
    """A shard report of this version and one of the previous version, merged by the CLI: throttles, the
    concurrency changes, the pressure wait and errors, the skipped databases and the waves of both are in
    the merged report, which reads back equal."""
    write_report(tmp_path / "shard-1.json", SHARD)
    (tmp_path / "shard-2.json").write_text(PREVIOUS_VERSION_REPORT)
    parts = [str(tmp_path / "shard-1.json"), str(tmp_path / "shard-2.json")]
    run = cli("report", "merge", *parts, "-o", str(tmp_path / "all.json"),
              "--summary-markdown", str(tmp_path / "summary.md"))
    assert (run.code, run.out) == (1, "merged 2 report(s), 4 tenants: 2 upgraded, 1 up-to-date, 1 failed\n")
    data = json.loads((tmp_path / "all.json").read_text())
    assert (data["run_id"], data["shards"], data["complete"], data["ok"]) == ("77b0,9a1f", parts, True, False)
    assert [t["tenant"] for t in data["tenants"]] == ["acme", "globex", "initech", "umbrella"]
    assert (data["started_at"], data["finished_at"], data["duration"]) == (
        "2026-11-26T11:02:00+00:00", "2026-11-26T11:09:41+00:00", 461.0)
    assert (data["concurrency"], data["throttled"], data["pressure_wait"]) == (8, 3, 32.75)
    # Seconds into the merged run: the second shard started 5 s after the first.
    assert data["concurrency_changes"] == [{"at": 0.0, "concurrency": 4}, {"at": 3.5, "concurrency": 2},
                                           {"at": 5.0, "concurrency": 8}, {"at": 17.5, "concurrency": 4}]
    assert data["pressure_errors"] == ["OperationalError: timeout (5 times)", DENIED]
    assert data["skipped_databases"] == [{"database": "master", "reason": "system database"},
                                         {"database": "copy_of_acme", "reason": "state Copying"}]
    assert data["waves"] == [
        {"wave": "tag canary", "tenants": 3, "ran": True, "ok": False, "failures": 1, "budget": 1,
         "summary": {"upgraded": 2, "failed": 1}},
        {"wave": "rest", "tenants": 1, "ran": True, "ok": True, "failures": 0, "budget": 0,
         "summary": {"up-to-date": 1}}]
    merged = RunReport.from_dict(data)
    assert merged.to_dict() == data and round_trip(merged) == merged
    assert merge_reports([read_report(Path(p)) for p in parts]) == merged
    # A merged report merged again (a resume of a resume) names the original shards.
    again = cli("report", "merge", str(tmp_path / "all.json"), "-o", str(tmp_path / "again.json"))
    assert again.code == 1 and json.loads((tmp_path / "again.json").read_text()) == data
    summary = (tmp_path / "summary.md").read_text()
    assert "- Pressure probe: OperationalError: timeout (5 times)\n" in summary
    assert "- Pressure probe: cannot read sys.dm\\_elastic\\_pool\\_resource\\_stats: the deploy identity lacks " \
           "VIEW SERVER STATE" in summary


def test_a_report_cut_short_reads_back_as_incomplete(tmp_path):
    path = tmp_path / "killed.json"
    writer = ReportWriter(path, header_of(SHARD.to_dict()))
    writer.add(SHARD.results[1])  # then the run was killed: no end
    try:
        read = read_report(path)
        back = read.run_report()
    finally:
        writer._file.close()
    assert not read.complete
    assert (back.complete, back.ok, back.results, back.finished_at) == (False, False, (SHARD.results[1],), "")
    assert back.to_dict()["complete"] is False and round_trip(back) == back
    merged = merge_reports([read, read_report(_written(tmp_path / "old.json", PREVIOUS_VERSION_REPORT))])
    assert not merged.complete and not merged.ok


def _written(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_combine_refuses_reports_of_different_runs():
    with pytest.raises(ValueError, match="target 'base' differs"):
        RunReport.combine([SHARD, RunReport.from_dict({**SHARD.to_dict(), "target": "base"})])



def test_merged_waves_keep_the_rollout_order_when_a_shard_had_no_canary():
    """A shard whose share holds no canary ran only the later waves; the merge still lists the canary first
    (the order the waves ran in), not after the waves of the first report it read."""
    def wave(name: str, n: int) -> dict:
        return {"wave": name, "tenants": n, "ran": True, "ok": True, "failures": 0, "budget": 0,
                "summary": {"upgraded": n}}

    no_canary = RunReport.from_dict({**SHARD.to_dict(), "waves": [wave("early", 1), wave("rest", 2)]})
    with_canary = RunReport.from_dict({**SHARD.to_dict(), "run_id": "88c1",
                                       "waves": [wave("canary", 1), wave("rest", 3)]})
    no_rest = RunReport.from_dict({**SHARD.to_dict(), "run_id": "99d2", "waves": [wave("canary", 1), wave("early", 1)]})
    fleet_only = RunReport.from_dict({**SHARD.to_dict(), "waves": [wave("rest", 2)]})
    assert [w["wave"] for w in RunReport.combine([fleet_only, with_canary]).waves] == ["canary", "rest"]
    merged = RunReport.combine([no_canary, with_canary, no_rest])
    assert [(w["wave"], w["tenants"]) for w in merged.waves] == [("canary", 2), ("early", 2), ("rest", 5)]
    assert round_trip(merged) == merged


# --- max_failures with waves ---------------------------------------------------------------------------------

NAMES = ["bad_a1", "bad_a2", "ok_a", "ok_b", "bad_b1", "bad_b2", "ok_c", "bad_c"]
TAGS = {"bad_a1": ["one"], "bad_a2": ["one"], "ok_a": ["one"], "ok_b": ["two"], "bad_b1": ["two"], "bad_b2": ["two"]}
WAVES = '[{tag = "one", max_failures = 5}, {tag = "two", max_failures = 5}, {rest = true, max_failures = 5}]'
CAPPED = {"bad_a1": "failed", "bad_a2": "failed", "ok_a": "upgraded", "ok_b": "upgraded", "bad_b1": "failed",
          "bad_b2": "skipped", "ok_c": "skipped", "bad_c": "skipped"}


def test_max_failures_caps_a_run_in_waves_on_top_of_the_wave_budgets(tmp_path):
    ini = failing_project(tmp_path / "proj")
    settings = settings_for(fleet(tmp_path, NAMES, TAGS, ini, WAVES), "w")
    capped = api.upgrade(settings, options=api.RunOptions(concurrency=1, max_failures=3))
    assert {r.tenant: r.status.value for r in capped.results} == CAPPED
    by = {r.tenant: r for r in capped.results}
    assert by["bad_b2"].error == "not started: the failure policy stopped the run"  # within wave two
    assert by["ok_c"].error == "not started: the failure policy stopped the run (3 failed, max failures 3)"
    assert [(w["ran"], w["failures"]) for w in capped.waves] == [(True, 2), (True, 1), (False, 0)]
    # Not given: each wave's own budget (5) decides, so every tenant runs.
    default = api.upgrade(settings, options=api.RunOptions(concurrency=1))
    assert default.counts == {"upgraded": 1, "up-to-date": 2, "failed": 5}
    assert api.upgrade(settings, options=api.RunOptions(concurrency=1, max_failures=None)).counts == {
        "up-to-date": 3, "failed": 5}


def test_max_failures_and_keep_going_flags_with_waves(cli, tmp_path):
    ini = failing_project(tmp_path / "proj")
    runs = {}
    for flags in (("--max-failures", "3"), ("--keep-going",), ()):
        where = tmp_path / (flags[0].strip("-") if flags else "default")
        where.mkdir()
        run = cli("--config", str(fleet(where, NAMES, TAGS, ini, WAVES)), "-e", "w", "upgrade", "-j", "1",
                  "--report", str(where / "r.json"), *flags)
        runs[flags[:1]] = (run.code, {t["tenant"]: t["status"] for t in json.loads((where / "r.json").read_text())
                                      ["tenants"]})
    assert runs[("--max-failures",)] == (1, CAPPED)
    every = {n: "failed" if n.startswith("bad") else "upgraded" for n in NAMES}
    assert runs[("--keep-going",)] == runs[()] == (1, every)


def test_a_wave_over_its_budget_still_stops_the_rollout_under_max_failures(tmp_path):
    ini = failing_project(tmp_path / "proj")
    waves = '[{tag = "one", max_failures = 1}, {rest = true}]'
    settings = settings_for(fleet(tmp_path, NAMES, TAGS, ini, waves), "w")
    report = api.upgrade(settings, options=api.RunOptions(concurrency=1, max_failures=10))
    assert [r.status.value for r in report.results[:3]] == ["failed", "failed", "skipped"]
    assert {r.status for r in report.results[3:]} == {Status.SKIPPED}
    assert report.results[3].error == "not started: wave 1 (tag one) failed 2 tenant(s), over its budget of 1"
