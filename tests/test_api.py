"""The library without the CLI: what `verify`, `upgrade --from-report`, `report merge` and `report notify` do is
one call of :mod:`tenants.api` each, on real SQLite fleets."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
from helpers import HEAD

from tenants import api
from tenants.config import load_settings
from tenants.errors import UsageError
from tenants.model import State, Status
from tenants.output.notify import parse_target
from tenants.runlog import write_json
from tenants.selection import Selection


def _settings(sqlite_config, names=("acme", "globex", "initech"), extra: str = ""):
    return load_settings(sqlite_config(names, extra), "test", environ={})


def _report(path: Path, statuses: dict[str, str], environment: str = "test") -> Path:
    write_json(path, {"schema_version": 1, "environment": environment, "operation": "upgrade", "target": HEAD,
                      "head": HEAD,
                      "tenants": [{"tenant": name, "status": status} for name, status in statuses.items()]})
    return path


def test_verify_after_an_upgrade_is_ok_and_names_the_tenants_the_report_lists(sqlite_config, tmp_path):
    settings = _settings(sqlite_config)
    api.upgrade(settings, options=api.RunOptions(concurrency=1, max_failures=None))
    verdict = api.verify(settings, run_report=_report(tmp_path / "r.json", {"acme": "upgraded"}))
    assert verdict.ok and verdict.ran == {"acme"}
    assert {t.state for t in verdict.status.tenants} == {State.AT_HEAD}
    assert api.verify(settings).ran is None


def test_verify_fails_a_tenant_behind_and_a_pinned_one_only_when_strict(sqlite_config):
    settings = _settings(sqlite_config)
    api.upgrade(settings, selection=Selection(tenants=("acme",)), options=api.RunOptions(concurrency=1))
    assert not api.verify(settings).ok  # globex and initech are new
    api.upgrade(settings, "0002_invoices", Selection(tenants=("globex",)))
    api.upgrade(settings, selection=Selection(tenants=("initech",)))
    api.pin(settings, "globex", "held back for a test")
    assert api.verify(settings).ok  # the pinned tenant behind is listed, not failing
    assert not api.verify(settings, strict=True).ok


def test_resume_from_a_report_prepares_only_the_tenants_left_to_do(sqlite_config, tmp_path):
    settings = _settings(sqlite_config, ("a", "b", "c", "d"))
    report = _report(tmp_path / "r.json", {"a": "upgraded", "b": "failed", "c": "locked"})
    prepared = api.prepare_upgrade(settings, resume_from=report)
    assert [t.name for t in prepared.tenants] == ["b", "c", "d"]  # d: not in the report, so not done
    assert prepared.resumed_from == report and prepared.narrowed
    only_failed = api.prepare_upgrade(settings, resume_from=report, only={"failed"})
    assert [t.name for t in only_failed.tenants] == ["b", "d"]
    with pytest.raises(UsageError, match="--only upgradd: not a status"):
        api.prepare_upgrade(settings, resume_from=report, only={"upgradd"})
    assert not api.prepare_upgrade(settings).narrowed


def test_merge_reports_takes_paths_sorts_by_tenant_and_refuses_overlapping_shards(tmp_path):
    one = _report(tmp_path / "1.json", {"b": "upgraded", "a": "failed"})
    two = _report(tmp_path / "2.json", {"c": "up-to-date"})
    merged = api.merge_reports([one, two])
    assert [(r.tenant, r.status) for r in merged.results] == [
        ("a", Status.FAILED), ("b", Status.UPGRADED), ("c", Status.UP_TO_DATE)]
    assert merged.shards == (str(one), str(two)) and not merged.ok
    with pytest.raises(UsageError, match="shards must not overlap"):
        api.merge_reports([one, _report(tmp_path / "3.json", {"a": "upgraded"})])
    with pytest.raises(UsageError, match="at least one report"):
        api.merge_reports([])


def test_notify_checks_its_input_before_posting_and_a_failing_webhook_is_a_warning(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    target = parse_target(f"slack:http://127.0.0.1:{port}/hook")
    with pytest.raises(UsageError, match="no webhook"):
        api.notify([], message="deploy failed")
    with pytest.raises(UsageError, match="--message when there is none"):
        api.notify([target])
    [warning] = api.notify([target], [_report(tmp_path / "r.json", {"a": "failed"})])
    assert "slack" in warning
    assert len(api.notify([target], message="deploy failed")) == 1


# Waiting for the dialects work (tenants/db.py gets a public name for it); nothing else may join this list.
PRIVATE_IMPORTS_PENDING = {"from tenants.db import _is_missing_table"}


def test_no_module_uses_another_modules_private_names():
    # The boundary itself: the CLI and plan call api's public functions, no module imports another's `_name`.
    for path in Path(api.__file__).parent.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "api._" not in text, path
        private = [line.strip() for line in text.splitlines()
                   if re.match(r"\s*from tenants\S* import _(?!_)", line)]
        assert set(private) <= PRIVATE_IMPORTS_PENDING, path
