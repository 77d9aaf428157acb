"""The JSON report file: written as the run goes, and read back (to resume, verify or merge: tenants.api).

A run that is killed (SIGKILL, a CI timeout) must still leave a report to resume from. So the report file
is written as the run goes: the run's header (``{"schema_version": 1, ..., "tenants": [``) when the run
starts, then one tenant object per line as each tenant finishes (flushed at once). When the run ends, the
whole report (:meth:`tenants.model.RunReport.to_dict`, tenants in selection order) replaces that file
atomically. A finished report is one ordinary JSON document; an unfinished one is the streamed document cut
short, which :func:`read_report` reads anyway: every complete tenant line counts, and a tenant with no line
counts as not done. (Earlier versions ended the streamed file with a tail of the remaining keys instead:
also one JSON document, read the same way.)

What is in a report, and how several are made one, is :class:`~tenants.model.RunReport`'s business; this
module only knows files.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from tenants.errors import UsageError
from tenants.model import RunReport, TenantResult

SCHEMA_VERSION = 1
# What a report says before its first tenant ends: the streamed file's header.
HEADER_KEYS = ("schema_version", "tool_version", "run_id", "environment", "operation", "target", "head",
               "concurrency", "started_at")


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
        """The run ended: the whole report replaces the streamed one (which stays if that write fails)."""
        self._file.close()
        write_json(self.path, report.to_dict())


def header_of(report_fields: dict[str, Any]) -> dict[str, Any]:
    """The part of a report known when the run starts."""
    return {key: report_fields[key] for key in HEADER_KEYS if key in report_fields}


@dataclass
class ReadReport:
    """A report as read back: its header fields, and the tenants it has an entry for (in order)."""

    path: Path
    fields: dict[str, Any]
    tenants: list[dict[str, Any]] = field(default_factory=list)
    complete: bool = True

    def statuses(self) -> dict[str, str]:
        return {t["tenant"]: t["status"] for t in self.tenants}

    def run_report(self) -> RunReport:
        """The report as a :class:`RunReport` (one cut short is not ``complete``)."""
        try:
            report = RunReport.from_dict({**self.fields, "tenants": self.tenants})
        except (KeyError, ValueError, TypeError, AttributeError) as err:
            raise UsageError(f"{self.path}: not a tenants report ({type(err).__name__}: {err})") from None
        return report if self.complete else replace(report, complete=False)


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


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically: a reader never sees half a merged report."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
