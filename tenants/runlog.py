"""The JSON report, written as the run goes, read back to resume, and merged across shards.

A run that is killed (SIGKILL, a CI timeout) must still leave a report to resume from. So the report file
is written in three parts: the run's header (``{"schema_version": 1, ..., "tenants": [``) when the run
starts, one tenant object per line as each tenant finishes (flushed at once), and the tail (``], "summary":
{...}, "ok": ...}``) at the end. A finished report is one ordinary JSON document; an unfinished one is the
same document cut short, which :func:`read_report` reads anyway: every complete tenant line counts, and a
tenant with no line counts as not done.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from tenants.errors import UsageError
from tenants.report import GOOD, RunReport, Status, TenantResult

SCHEMA_VERSION = 1
_TAIL_KEYS = ("summary", "ok", "finished_at", "duration", "throttled", "concurrency_changes", "pressure_wait",
              "pressure_errors", "skipped_databases", "waves")


class ReportWriter:
    """Writes one run's report to ``path`` as it goes (see the module docstring)."""

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self._file: IO[str] = path.open("w", encoding="utf-8")
        self._first = True
        head = json.dumps({"schema_version": SCHEMA_VERSION, **header}, indent=2)
        self._file.write(head[:-2] + ',\n  "tenants": [')  # the header object, left open at "tenants"
        self._file.flush()

    def add(self, result: TenantResult) -> None:
        self._file.write(("\n" if self._first else ",\n") + "    " + json.dumps(result.to_dict()))
        self._first = False
        self._file.flush()  # the OS keeps it if the process is killed; that is what a resume needs

    def close(self, report: RunReport) -> None:
        data = report.to_dict()
        tail = {key: data[key] for key in _TAIL_KEYS if key in data}
        self._file.write("\n  ],\n" + json.dumps(tail, indent=2)[2:] + "\n")
        self._file.close()


def header_of(report_fields: dict[str, Any]) -> dict[str, Any]:
    """The part of a report known when the run starts."""
    return {key: value for key, value in report_fields.items() if key not in (*_TAIL_KEYS, "tenants")}


@dataclass
class ReadReport:
    """A report as read back: its header fields, and the tenants it has an entry for (in order)."""

    path: Path
    fields: dict[str, Any]
    tenants: list[dict[str, Any]] = field(default_factory=list)
    complete: bool = True

    def statuses(self) -> dict[str, str]:
        return {t["tenant"]: t["status"] for t in self.tenants}


def read_report(path: Path) -> ReadReport:
    """Read a report, finished or cut short by a killed run. Bad input raises a one-line UsageError."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise UsageError(f"{path}: cannot read the report: {err.strerror}") from None
    try:
        data = json.loads(text)
        complete = True
    except json.JSONDecodeError:
        data, complete = _read_partial(path, text), False
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION or "tenants" not in data:
        raise UsageError(f"{path}: not a tenants report (schema_version {SCHEMA_VERSION} expected)")
    tenants = data.pop("tenants")
    return ReadReport(path, data, tenants, complete)


def _read_partial(path: Path, text: str) -> dict[str, Any]:
    head, marker, rest = text.partition('"tenants": [')
    if not marker:
        raise UsageError(f"{path}: not a tenants report (cut short before any tenant?)")
    try:
        fields = json.loads(head.rstrip().rstrip(",") + "}")
    except json.JSONDecodeError:
        raise UsageError(f"{path}: not a tenants report (its header does not parse)") from None
    tenants = []
    for line in rest.splitlines():
        line = line.strip().rstrip(",")
        if line.startswith("{") and line.endswith("}"):
            try:
                tenants.append(json.loads(line))
            except json.JSONDecodeError:
                break  # the line being written when the run died
    return {**fields, "tenants": tenants}


def resume_names(report: ReadReport, only: set[str], discovered: list[str]) -> list[str]:
    """The tenants to run again: those whose status in the report is in ``only``, and those (discovered now)
    with no entry in it, which count as not done."""
    unknown = only - {s.value for s in Status}
    if unknown:
        raise UsageError(f"--only {','.join(sorted(unknown))}: not a status; use some of "
                         f"{', '.join(s.value for s in Status if s is not Status.THROTTLED)}")
    statuses = report.statuses()
    return [name for name in discovered if name not in statuses or statuses[name] in only]


def merge_reports(reports: list[ReadReport]) -> dict[str, Any]:
    """One report from several shard reports of the same environment, operation and target."""
    if not reports:
        raise UsageError("report merge needs at least one report")
    first = reports[0].fields
    for report in reports[1:]:
        for key in ("environment", "operation", "target"):
            if report.fields.get(key) != first.get(key):
                raise UsageError(f"{report.path}: {key} {report.fields.get(key)!r} differs from "
                                 f"{reports[0].path}'s {first.get(key)!r}; merge reports of one run only")
    seen: dict[str, str] = {}
    tenants: list[dict[str, Any]] = []
    for report in reports:
        for tenant in report.tenants:
            if tenant["tenant"] in seen:
                raise UsageError(f"tenant {tenant['tenant']!r} is in both {seen[tenant['tenant']]} and "
                                 f"{report.path}: shards must not overlap")
            seen[tenant["tenant"]] = str(report.path)
            tenants.append(tenant)
    tenants.sort(key=lambda t: t["tenant"])
    counts = Counter(t["status"] for t in tenants)
    good = {s.value for s in GOOD}
    started = min(r.fields.get("started_at", "") for r in reports)
    finished = max(r.fields.get("finished_at", "") or "" for r in reports)
    return {
        "schema_version": SCHEMA_VERSION,
        **{k: v for k, v in first.items() if k not in ("schema_version", "run_id", *_TAIL_KEYS)},
        "run_id": ",".join(r.fields.get("run_id", "?") for r in reports),
        "shards": [str(r.path) for r in reports],
        "tenants": tenants,
        "summary": {s.value: counts[s.value] for s in Status if counts[s.value]},
        "ok": all(r.complete for r in reports) and all(t["status"] in good for t in tenants),
        "complete": all(r.complete for r in reports),
        "started_at": started,
        "finished_at": finished,
        "duration": _seconds_between(started, finished),
        "throttled": sum(r.fields.get("throttled", 0) or 0 for r in reports),
        "skipped_databases": [{"database": name, "reason": why} for name, why in sorted(
            {(d["database"], d["reason"]) for r in reports for d in r.fields.get("skipped_databases", [])})],
    }


def _seconds_between(started: str, finished: str) -> float | None:
    """Wall time of the merged run: from the first shard's start to the last one's end (None if unknown)."""
    try:
        return round((datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds(), 4)
    except ValueError:
        return None


def run_report_of(data: dict[str, Any]) -> RunReport:
    """A report as read back (one run's, or merged shards') as a :class:`RunReport`, for the renderers:
    the job summary, JUnit and notifications of a merged run are the same as a single run's."""
    def result(t: dict[str, Any]) -> TenantResult:
        return TenantResult(tenant=t["tenant"], status=Status(t["status"]), from_revision=t.get("from"),
                            to_revision=t.get("to"), applied=tuple(t.get("applied") or ()),
                            attempts=t.get("attempts", 0), duration=t.get("duration", 0.0), error=t.get("error"))

    return RunReport(
        run_id=data.get("run_id", "?"), environment=data.get("environment", "?"),
        operation=data.get("operation", "?"), target=data.get("target", "?"), head=data.get("head"),
        concurrency=data.get("concurrency", 0), started_at=data.get("started_at", ""),
        finished_at=data.get("finished_at") or "", duration=data.get("duration") or 0.0,
        results=tuple(result(t) for t in data.get("tenants", [])), tool_version=data.get("tool_version", ""),
        throttled=data.get("throttled", 0) or 0,
        skipped_databases=tuple((d["database"], d["reason"]) for d in data.get("skipped_databases", [])),
    )


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically: a reader never sees half a merged report."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
