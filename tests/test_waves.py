"""Waves: canary first, then a slice, then the rest; a wave over its failure budget stops the rollout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import ROOT, fleet_config, make_project

from tenants import api
from tenants.config import load_settings
from tenants.errors import ConfigError, UsageError
from tenants.model import Status, Tenant
from tenants.selection import Selection
from tenants.waves import Wave, assign


def test_assign_takes_tag_then_percent_then_rest_stably():
    tenants = [Tenant(f"t{i:02d}", "sqlite:///x", ("canary",) if i in (3, 7) else ()) for i in range(20)]
    waves = (Wave("canary", tag="canary"), Wave("10%", percent=10), Wave("rest", rest=True))
    plan = assign(tenants, waves)
    assert [(w.name, [t.name for t in ts]) for w, ts in plan][0] == ("canary", ["t03", "t07"])
    assert len(plan[1][1]) == 2 and not set(t.name for t in plan[1][1]) & {"t03", "t07"}
    assert sorted(t.name for _, ts in plan for t in ts) == sorted(t.name for t in tenants)
    assert assign(list(reversed(tenants)), waves)[1][1][0].name in {t.name for t in plan[1][1]}  # stable pick
    assert [w.name for w, _ in assign(tenants, (Wave("canary", tag="canary"),))] == ["canary", "rest"]
    assert [w.name for w, _ in assign(tenants, ())] == ["all"]


def waves_config(tmp_path: Path, names, tags, waves: str, alembic: Path) -> Path:
    return fleet_config(tmp_path / "t.toml", names, env="w", tags=tags, alembic=alembic, extra=f"waves = {waves}")


def test_a_failing_canary_wave_stops_the_rollout(tmp_path):
    ini = make_project(tmp_path / "proj", {"w1": """
        from alembic import context
        if 'canary_bad' in context.config.get_main_option('sqlalchemy.url'):
            op.execute('SELECT * FROM no_such_table')
        op.create_table('one', sa.Column('id', sa.Integer, primary_key=True))
    """}, env_py=(ROOT / "alembic" / "env.py").read_text())
    names = ["canary_ok", "canary_bad"] + [f"t{i}" for i in range(6)]
    config = waves_config(tmp_path, names, {"canary_ok": ["canary"], "canary_bad": ["canary"]},
                          '[{tag = "canary"}, {rest = true}]', ini)
    report = api.upgrade(load_settings(config, "w", environ={}), options=api.RunOptions(concurrency=2))
    by = {r.tenant: r for r in report.results}
    assert by["canary_bad"].status is Status.FAILED and by["canary_ok"].status is Status.UPGRADED
    assert all(by[f"t{i}"].status is Status.SKIPPED for i in range(6))
    assert by["t0"].error == "not started: wave 1 (tag canary) failed 1 tenant(s), over its budget of 0"
    assert [(w["wave"], w["ran"], w["failures"]) for w in report.waves] == [("tag canary", True, 1),
                                                                              ("rest", False, 0)]
    assert report.to_dict()["waves"][1]["summary"] == {"skipped": 6}


def test_waves_within_budget_go_on_and_one_wave_can_run_alone(tmp_path):
    names = ["c1"] + [f"t{i}" for i in range(9)]
    config = waves_config(tmp_path, names, {"c1": ["canary"]},
                          '[{tag = "canary"}, {percent = 20, max_failures = 1}, {rest = true}]',
                          ROOT / "alembic.ini")
    settings = load_settings(config, "w", environ={})
    only = api.upgrade(settings, options=api.RunOptions(concurrency=2, wave=1))
    assert [r.tenant for r in only.results] == ["c1"] and only.ok
    report = api.upgrade(settings, options=api.RunOptions(concurrency=2))
    assert report.ok and [w["tenants"] for w in report.waves] == [1, 2, 7]
    assert report.counts == {"upgraded": 9, "up-to-date": 1}


@pytest.mark.parametrize("waves, message", [
    ('[{tag = "canary", percent = 5}]', "needs exactly one of tag, percent, count, rest"),
    ('[{percent = 0}]', "percent must be more than 0"),
    ('[{rest = true, max_failures = -1}]', "max_failures must not be negative"),
    ('["canary"]', "must be a table"),
    ('[{tags = "canary"}]', "unknown key 'tags'"),
])
def test_bad_waves_are_config_errors(tmp_path, waves, message):
    config = waves_config(tmp_path, ["a"], {}, waves, ROOT / "alembic.ini")
    with pytest.raises(ConfigError, match=message):
        load_settings(config, "w", environ={})


# --- tags: one rule for --tag and a wave's tag (Tenant.has_tag) ---------------------------------------------


@pytest.mark.parametrize("tags, pattern, matches", [
    (("canary",), "canary", True),           # a static tag as written
    (("canary=true",), "canary", True),      # Azure's canary: true
    (("canary=True",), "canary", True),
    (("canary=eu",), "canary", True),        # any value that does not say no
    (("canary=",), "canary", True),          # an empty value is set (Azure renders it as a bare "canary")
    (("Canary=yes",), "canary", True),       # Azure tag names are case-blind
    (("canary=false",), "canary", False),
    (("canary=FALSE",), "canary", False),
    (("canary=0",), "canary", False),
    (("canary=no",), "canary", False),
    (("canary=Off",), "canary", False),
    (("canaryish",), "canary", False),
    (("tier=canary",), "canary", False),     # a value is not a name
    ((), "canary", False),
    (("region=eu",), "region=eu", True),     # key=value: exactly that value
    (("REGION=eu",), "region=eu", True),
    (("region=EU",), "region=eu", False),    # values compare exactly, as Azure's do
    (("region=eu-west",), "region=eu", False),
    (("region",), "region=eu", False),
    (("canary=false",), "canary=false", True),
    (("canary",), "canary=", True),          # bare and empty are the same tag
    (("tier=gold", "canary=true"), "canary", True),
])
def test_has_tag(tags, pattern, matches):
    assert Tenant("t", "sqlite:///x", tags).has_tag(pattern) is matches


def test_tag_and_wave_select_azure_style_tags_alike():
    tenants = [Tenant("on", "sqlite:///x", ("canary=true",)), Tenant("off", "sqlite:///x", ("canary=false",)),
               Tenant("bare", "sqlite:///x", ("canary",)), Tenant("eu", "sqlite:///x", ("region=eu",)),
               Tenant("plain", "sqlite:///x")]
    assert [t.name for t in Selection(tags=("canary",)).apply(tenants)] == ["on", "bare"]
    assert [t.name for t in Selection(tags=("region=eu", "canary=false")).apply(tenants)] == ["off", "eu"]
    plan = assign(tenants, (Wave("canary", tag="canary"), Wave("eu", tag="region=eu"), Wave("rest", rest=True)))
    assert [(w.name, [t.name for t in ts]) for w, ts in plan] == [
        ("canary", ["on", "bare"]), ("eu", ["eu"]), ("rest", ["off", "plain"])]


@pytest.mark.parametrize("tag", ["", "=eu", " "])
def test_a_tag_without_a_name_is_refused(tmp_path, tag):
    with pytest.raises(UsageError, match=r"--tag .*: give a tag name"):
        Selection(tags=(tag,))
    config = waves_config(tmp_path, ["a"], {}, f'[{{tag = "{tag}"}}]', ROOT / "alembic.ini")
    with pytest.raises(ConfigError, match=r"waves\[1\]: tag needs a tag name"):
        load_settings(config, "w", environ={})


def test_cli_tag_and_canary_wave_match_key_value_tags(cli, tmp_path):
    names = ["c_on", "c_off", "c_eu", "t1", "t2"]
    config = str(waves_config(tmp_path, names, {"c_on": ["canary=true"], "c_off": ["canary=false"],
                                                 "c_eu": ["canary=eu", "region=eu"]},
                              '[{name = "canary", tag = "canary"}, {rest = true}]', ROOT / "alembic.ini"))
    listed = cli("--config", config, "-e", "w", "list", "--tag", "canary", "--json")
    assert listed.code == 0, listed.err
    assert [t["tenant"] for t in json.loads(listed.out)] == ["c_on", "c_eu"]
    exact = cli("--config", config, "-e", "w", "list", "--tag", "region=eu", "--json")
    assert [t["tenant"] for t in json.loads(exact.out)] == ["c_eu"]
    planned = cli("--config", config, "-e", "w", "plan", "--format", "json")
    assert [(w["name"], w["tenants"]) for w in json.loads(planned.out)["waves"]] == [
        ("canary", ["c_on", "c_eu"]), ("rest", ["c_off", "t1", "t2"])]
    run = cli("--config", config, "-e", "w", "upgrade", "--wave", "1")
    assert run.code == 0, run.err
    assert sorted(ln.split()[1] for ln in run.out.splitlines() if ln.startswith("upgraded ")) == ["c_eu", "c_on"]
    bad = cli("--config", config, "-e", "w", "list", "--tag", "=eu")
    assert (bad.code, bad.err) == (2, "tenants: error: --tag '=eu': give a tag name, e.g. --tag canary or "
                                      "--tag region=eu\n")


def test_cli_plan_and_upgrade_say_the_canary_wave_is_empty(cli, tmp_path):
    config = str(waves_config(tmp_path, ["a", "b"], {"a": ["canary=no"]},
                              '[{name = "canary", tag = "canary"}, {name = "fleet", rest = true}]',
                              ROOT / "alembic.ini"))
    note = "waves[1] (canary): no tenant matches tag canary — this rollout has no canary (wave 1 is fleet)"
    text = cli("--config", config, "-e", "w", "plan")
    assert text.code == 0 and f"  {note}; an empty wave gets no number" in text.out
    markdown = cli("--config", config, "-e", "w", "plan", "--format", "markdown")
    assert "- **Empty wave** `waves[1]` `canary`: no tenant matches tag canary" in markdown.out
    data = json.loads(cli("--config", config, "-e", "w", "plan", "--format", "json").out)
    assert (data["waves"], data["empty_waves"]) == (
        [{"wave": 1, "name": "fleet", "tenants": ["a", "b"]}],
        [{"position": 1, "name": "canary", "note": note.partition(": ")[2]}])
    run = cli("--config", config, "-e", "w", "upgrade", "--wave", "1")
    assert run.code == 0, run.err
    assert f"tenants: warning: {note}" in run.err.splitlines()
    assert sorted(ln.split()[1] for ln in run.out.splitlines() if ln.startswith("upgraded ")) == ["a", "b"]
