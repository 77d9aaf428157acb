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

import contextlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from tenants.errors import ReportError
from tenants.model import RunReport, Status, TenantResult

SCHEMA_VERSION = 1
# What a report says before its first tenant ends: the streamed file's header.
HEADER_KEYS = ("schema_version", "tool_version", "run_id", "environment", "operation", "target", "head",
               "concurrency", "started_at")


class ReportWriter:
    """Writes one run's report to ``path`` as it goes (see the module docstring).

    It never raises: a full disk or a file that stops being writable must not stop the fan-out mid-run (issue
    11: a report on a full filesystem once aborted the run with 183 tenants never started). The first
    :class:`OSError` is kept in :attr:`error`, streaming stops there, and the caller warns; :meth:`close` still
    tries the whole report once more (space may have been freed), and :attr:`error` says whether it got there.
    """

    def __init__(self, path: Path, header: dict[str, Any]) -> None:
        self.path = path
        self.error: OSError | None = None
        self._file: IO[str] | None = None
        self._first = True
        head = json.dumps({"schema_version": SCHEMA_VERSION, **header}, indent=2)
        self._write(head[:-2] + ',\n  "tenants": [')  # the header object, left open at "tenants"

    def add(self, result: TenantResult) -> None:
        self._write(("\n" if self._first else ",\n") + "    " + json.dumps(result.to_dict()))
        self._first = False

    def close(self, report: RunReport) -> None:
        """The run ended: the whole report replaces the streamed one (which stays if that write fails)."""
        self._close_file()
        try:
            write_json(self.path, report.to_dict())
        except OSError as err:
            self.error = self.error or err
        else:
            self.error = None

    def _write(self, text: str) -> None:
        if self.error is not None:
            return
        try:
            if self._file is None:
                self._file = self.path.open("w", encoding="utf-8")
            self._file.write(text)
            self._file.flush()  # the OS keeps it if the process is killed; that is what a resume needs
        except OSError as err:
            self.error = err
            self._close_file()

    def _close_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):  # a flush that fails again (ENOSPC) on close
                self._file.close()
            self._file = None


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
            raise ReportError(f"{self.path}: not a tenants report ({type(err).__name__}: {err})") from None
        return report if self.complete else replace(report, complete=False)


def read_report(path: Path) -> ReadReport:
    """Read a report, finished or cut short by a killed run. Bad input (unreadable, not UTF-8 or JSON, a field
    missing or of the wrong type) raises a one-line :class:`ReportError` naming the file and what is wrong."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ReportError(f"{path}: cannot read the report: {err.strerror}") from None
    except UnicodeDecodeError:  # random bytes, a binary file given by mistake
        raise ReportError(f"{path}: not a tenants report (not UTF-8 text)") from None
    try:
        data = json.loads(text)
        complete = True
    except json.JSONDecodeError:
        data, complete = _read_partial(path, text), False
    if not isinstance(data, dict) or data.get("schema_version") != SCHEMA_VERSION or "tenants" not in data:
        raise ReportError(f"{path}: not a tenants report (schema_version {SCHEMA_VERSION} expected)")
    tenants = data.pop("tenants")
    problem = _problem(data, tenants)
    if problem is not None:
        raise ReportError(f"{path}: not a tenants report ({problem})")
    return ReadReport(path, data, tenants, complete)


# The header fields every reader relies on, when present, and their JSON types (None: null allowed).
_TYPES: dict[str, tuple[type, ...]] = {"environment": (str,), "operation": (str,), "target": (str,),
                                       "head": (str, type(None)), "run_id": (str,), "error": (str,)}
_STATUSES = frozenset(s.value for s in Status)


def _problem(fields: dict[str, Any], tenants: Any) -> str | None:
    """What makes a parsed report unusable, in a few words; None when nothing does. Checked here, once, so
    that no reader of a report (resume, verify, merge) meets a KeyError or TypeError later (issue 11)."""
    for key, types in _TYPES.items():
        if key in fields and not isinstance(fields[key], types):
            return f"{key} is {type(fields[key]).__name__}, not {types[0].__name__}"
    if not isinstance(tenants, list):
        return f"tenants is {type(tenants).__name__}, not a list"
    for number, entry in enumerate(tenants, 1):
        if not isinstance(entry, dict):
            return f"tenants entry {number} is {type(entry).__name__}, not an object"
        for key in ("tenant", "status"):
            if not isinstance(entry.get(key), str):
                return f"tenants entry {number} has no {key}" if key not in entry else \
                    f"tenants entry {number}: {key} is {type(entry[key]).__name__}, not str"
        if entry["status"] not in _STATUSES:
            return f"tenants entry {number} ({entry['tenant']}): status {entry['status']!r} is not a status"
    return None


def _read_partial(path: Path, text: str) -> dict[str, Any]:
    head, marker, rest = text.partition('"tenants": [')
    if not marker:
        raise ReportError(f"{path}: not a tenants report (cut short before any tenant?)")
    try:
        fields = json.loads(head.rstrip().rstrip(",") + "}")
    except json.JSONDecodeError:
        raise ReportError(f"{path}: not a tenants report (its header does not parse)") from None
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
    """Write atomically: a reader never sees half a merged report. A path that is not a regular file
    (``/dev/stdout``, a FIFO) is written in place: renaming a file over it would replace the device. A write
    that fails leaves no temporary file behind; its OSError is the caller's to report."""
    text = json.dumps(data, indent=2) + "\n"
    if path.exists() and not path.is_file():
        with path.open("w", encoding="utf-8") as out:
            out.write(text)
        return
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
