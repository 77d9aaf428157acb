"""`tenants plan` at the library level: cohorts on real SQLite files and PostgreSQL databases, and the renderers."""

from __future__ import annotations

import json
import re
import sqlite3

import pytest
from helpers import DEMO_REVISIONS, HEAD, ROOT, admin, make_project, settings_for

from tenants import api
from tenants.config import load_settings
from tenants.engine.revisions import Revisions
from tenants.errors import MultipleHeads, RevisionError, TenantNotFound
from tenants.model import Cohort, Plan
from tenants.output.plan import plan_json, plan_markdown, plan_text
from tenants.plan import plan
from tenants.selection import Selection
from tenants.sources.static import StaticSource

R1, R2, R3, R4 = DEMO_REVISIONS
MESSAGES = (
    (R1, "create users"),
    (R2, "create invoices, owned by users"),
    (R3, "add invoices.status with a default, backfilled from paid_at"),
    (R4, "index invoices by user and issue date"),
)


def mixed_fleet(sqlite_config, tmp_path):
    """acme, hooli at R1; globex at R2; initech at R3; umbrella at head; newco never created; weird by hand."""
    settings = settings_for(sqlite_config(
        ("acme", "globex", "newco", "initech", "umbrella", "weird", "hooli")))
    for revision, names in ((R1, ("acme", "hooli")), (R2, ("globex",)), (R3, ("initech",)),
                            (HEAD, ("umbrella", "weird"))):
        assert api.upgrade(settings, revision, Selection(tenants=names)).ok
    with sqlite3.connect(tmp_path / "db" / "weird.db") as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'hotfix_by_hand'")
    return settings


def test_plan_groups_tenants_by_current_revision(sqlite_config, tmp_path):
    settings = mixed_fleet(sqlite_config, tmp_path)
    result = plan(settings)
    assert result == Plan(
        environment="test",
        target=HEAD,
        head=HEAD,
        cohorts=(
            Cohort("base", ("newco",), (R1, R2, R3, R4)),
            Cohort(R1, ("acme", "hooli"), (R2, R3, R4)),
            Cohort(R2, ("globex",), (R3, R4)),
            Cohort(R3, ("initech",), (R4,)),
        ),
        new=("newco",),
        up_to_date=("umbrella",),
        unknown_revision=(("weird", "hotfix_by_hand"),),
        messages=MESSAGES,
    )
    assert (result.tenants, result.to_upgrade, result.ok) == (7, 5, False)
    # A static tenant not created yet is planned as new, and reading it did not create its file.
    assert not (tmp_path / "db" / "newco.db").exists()


def test_plan_to_an_intermediate_revision(sqlite_config, tmp_path):
    settings = mixed_fleet(sqlite_config, tmp_path)
    result = plan(settings, "0002", Selection(exclude=("weird",)))
    assert (result.target, result.head) == (R2, HEAD)
    assert result.cohorts == (Cohort("base", ("newco",), (R1, R2)), Cohort(R1, ("acme", "hooli"), (R2,)))
    # Past the target is up to date too: an upgrade never goes down.
    assert result.up_to_date == ("globex", "initech", "umbrella")
    assert result.messages == MESSAGES[:2] and result.ok


def test_plan_every_tenant_at_head_has_no_cohort(sqlite_config):
    settings = settings_for(sqlite_config())
    api.upgrade(settings)
    result = plan(settings, with_sql=True)
    assert (result.cohorts, result.up_to_date, result.messages) == ((), ("acme", "globex", "initech"), ())
    assert plan_text(result) == (
        f"upgrade test to {HEAD}: 3 tenants, 0 to upgrade in 0 cohorts\n\nup to date (3): acme, globex, initech\n")


def test_plan_with_sql_renders_once_per_cohort(sqlite_config, tmp_path, monkeypatch):
    settings = mixed_fleet(sqlite_config, tmp_path)
    rendered = []
    real = Revisions.offline_sql

    def spy(self, url, start, target, operation):
        rendered.append((start, target, operation))
        return real(self, url, start, target, operation)

    monkeypatch.setattr(Revisions, "offline_sql", spy)
    assert all(c.sql is None for c in plan(settings).cohorts) and rendered == []

    result = plan(settings, with_sql=True)
    assert rendered == [(None, HEAD, "upgrade"), (R1, HEAD, "upgrade"), (R2, HEAD, "upgrade"),
                        (R3, HEAD, "upgrade")]
    for cohort in result.cohorts:
        assert cohort.sql == api.sql(settings, f"{cohort.current}:head")
    sqls = [c.sql for c in result.cohorts]
    assert len(set(sqls)) == 4
    assert "CREATE TABLE users" in sqls[0] and "CREATE TABLE users" not in sqls[1]
    assert "CREATE INDEX ix_invoices_user_id_issued_at" in sqls[3]


def test_plan_validates_before_touching_tenants(sqlite_config, tmp_path):
    settings = settings_for(sqlite_config())
    with pytest.raises(RevisionError, match="unknown revision 'nope'"):
        plan(settings, "nope")
    with pytest.raises(TenantNotFound, match="unknown tenant 'zz'"):
        plan(settings, selection=Selection(tenants=("zz",)))
    assert not (tmp_path / "db").exists()


def test_plan_several_heads(sqlite_config, tmp_path):
    ini = make_project(tmp_path / "proj", {"a": "", "b": "", "c": ""},
                       env_py=(ROOT / "alembic" / "env.py").read_text())
    third = next((tmp_path / "proj" / "migrations" / "versions").glob("002_c.py"))
    third.write_text(third.read_text().replace("down_revision = 'b'", "down_revision = 'a'"))  # a -> b, a -> c
    settings = settings_for(sqlite_config(("acme",), alembic=ini))
    with pytest.raises(MultipleHeads, match="2 heads"):
        plan(settings)
    result = plan(settings, "c")
    assert (result.target, result.head, result.cohorts) == ("c", None, (Cohort("base", ("acme",), ("a", "c")),))
    assert plan_text(result).startswith("upgrade test to c (head ambiguous: several heads): 1 tenant,")


def test_plan_cohort_at_several_heads_gets_no_sql(sqlite_config, tmp_path):
    ini = make_project(tmp_path / "proj", {"a": "", "b": "", "c": "", "d": ""},
                       env_py=(ROOT / "alembic" / "env.py").read_text())
    versions = tmp_path / "proj" / "migrations" / "versions"
    for file, down in (("002_c.py", "'a'"), ("003_d.py", "('b', 'c')")):  # a -> b, a -> c, d merges b and c
        text = (versions / file).read_text()
        (versions / file).write_text(re.sub(r"down_revision = .*", f"down_revision = {down}", text))
    settings = settings_for(sqlite_config(("acme", "globex"), alembic=ini))
    api.upgrade(settings, "b")
    with sqlite3.connect(tmp_path / "db" / "acme.db") as conn:
        conn.execute("INSERT INTO alembic_version VALUES ('c')")
    result = plan(settings, with_sql=True)
    assert [(c.current, c.tenants, c.revisions, c.sql is None) for c in result.cohorts] == [
        ("b", ("globex",), ("c", "d"), False), ("b,c", ("acme",), ("d",), True)]
    note = "the cohort is at several heads (b,c); offline SQL starts from one revision"
    assert f"-- cohort 2: b,c -> d\n-- not rendered: {note}\n" in plan_text(result)
    assert f"SQL not rendered: {note}\n" in plan_markdown(result)


def test_plan_source_replaces_the_environments(sqlite_config, tmp_path):
    settings = settings_for(sqlite_config())
    api.upgrade(settings, R1, Selection(tenants=("acme",)))

    class Two:  # e.g. an AzureSource with a credential of the caller's
        def discover(self):
            return [t for t in StaticSource(settings.environment).discover() if t.name != "globex"]

    result = plan(settings, source=Two())
    assert result.cohorts == (Cohort("base", ("initech",), tuple(DEMO_REVISIONS)),
                              Cohort(R1, ("acme",), (R2, R3, R4)))


def test_plan_json_round_trips(sqlite_config, tmp_path):
    settings = mixed_fleet(sqlite_config, tmp_path)
    data = plan_json(plan(settings, selection=Selection(tenants=("acme", "newco", "umbrella", "weird")),
                          with_sql=True))
    assert json.loads(json.dumps(data)) == data
    sql = {c["current"]: c.pop("sql") for c in data["cohorts"]}
    assert sql == {"base": api.sql(settings, "base:head"), R1: api.sql(settings, f"{R1}:head")}
    assert data == {
        "schema_version": 1,
        "environment": "test",
        "target": HEAD,
        "head": HEAD,
        "ok": False,
        "summary": {"tenants": 4, "cohorts": 2, "to_upgrade": 2, "up_to_date": 1, "new": 1,
                    "unknown_revision": 1, "unreachable": 0, "unmanaged": 0, "pinned": 0, "drifted": 0,
                    "locked": 0},
        "cohorts": [
            {"current": "base", "tenants": ["newco"], "revisions": DEMO_REVISIONS},
            {"current": R1, "tenants": ["acme"], "revisions": [R2, R3, R4]},
        ],
        "messages": dict(MESSAGES),
        "new": ["newco"],
        "up_to_date": ["umbrella"],
        "unknown_revision": [{"tenant": "weird", "revision": "hotfix_by_hand"}],
        "unreachable": [],
        "unmanaged": [],
        "pinned": [],
        "schema_reference": None,  # schemas not checked (no check_schema, no --schema)
        "drifted": [],
        "locked": [],
        "skipped_databases": [],
        "waves": [],
        "empty_waves": [],
    }


def test_plan_text(sqlite_config, tmp_path):
    settings = mixed_fleet(sqlite_config, tmp_path)
    text = plan_text(plan(settings, selection=Selection(exclude=("initech", "globex"))))
    assert text == f"""\
upgrade test to {HEAD}: 5 tenants, 3 to upgrade in 2 cohorts

cohort 1: from base, 1 tenant, 4 revisions to apply
  tenants: newco
  1. 0001_users               create users
  2. 0002_invoices            create invoices, owned by users
  3. 0003_invoice_status      add invoices.status with a default, backfilled from paid_at
  4. 0004_invoice_user_index  index invoices by user and issue date

cohort 2: from 0001_users, 2 tenants, 3 revisions to apply
  tenants: acme, hooli
  1. 0002_invoices            create invoices, owned by users
  2. 0003_invoice_status      add invoices.status with a default, backfilled from paid_at
  3. 0004_invoice_user_index  index invoices by user and issue date

up to date (1): umbrella
new (1, no revision recorded: also in the base cohort): newco
unknown revision (1, not in the graph: the upgrade refuses them):
  weird at hotfix_by_hand
"""


def test_plan_text_with_sql_follows_each_cohort(sqlite_config, tmp_path):
    settings = mixed_fleet(sqlite_config, tmp_path)
    text = plan_text(plan(settings, selection=Selection(tenants=("initech", "globex")), with_sql=True))
    assert f"-- cohort 1: {R2} -> {HEAD}\n{api.sql(settings, f'{R2}:head').rstrip()}\n\ncohort 2: " in text
    assert text.endswith(f"-- cohort 2: {R3} -> {HEAD}\n{api.sql(settings, f'{R3}:head').rstrip()}\n\n"
                         "up to date (0): -\n")


def test_plan_markdown(sqlite_config, tmp_path):
    settings = mixed_fleet(sqlite_config, tmp_path)
    result = plan(settings, selection=Selection(exclude=("initech", "globex")), with_sql=True)
    md = plan_markdown(result)
    assert md.startswith(f"""\
### Migration plan: `test` to `{HEAD}`

5 tenants: 3 to upgrade in 2 cohorts, 1 up to date, 1 new, 1 unknown revision.

| cohort | from | tenants | revisions to apply |
|---:|---|---|---|
| 1 | `base` | 1: `newco` | 4: `0001_users` → `0002_invoices` → `0003_invoice_status` → `0004_invoice_user_index` |
| 2 | `0001_users` | 2: `acme`, `hooli` | 3: `0002_invoices` → `0003_invoice_status` → `0004_invoice_user_index` |

<details><summary>Cohort 1: from <code>base</code>, 1 tenant, 4 revisions</summary>

Tenants: `newco`

1. `0001_users`: create users
2. `0002_invoices`: create invoices, owned by users
3. `0003_invoice_status`: add invoices.status with a default, backfilled from paid\\_at
4. `0004_invoice_user_index`: index invoices by user and issue date

```sql
CREATE TABLE alembic_version (""")
    for cohort in result.cohorts:  # each cohort's whole script, fenced, inside its <details>
        assert f"```sql\n{cohort.sql.rstrip()}\n```\n\n</details>\n" in md
    assert md.count("<details>") == md.count("</details>") == 2
    assert md.endswith("""
**Up to date** (1): `umbrella`

**New** (1, no revision recorded: also in the base cohort): `newco`

**Unknown revision** (1, not in the graph: the upgrade refuses them):

- `weird` at `hotfix_by_hand`
""")
    assert "```sql" not in plan_markdown(plan(settings))


def test_plan_folds_long_name_lists_and_escapes_markdown():
    names = tuple(f"t{i:02d}" for i in range(12))
    result = Plan("prod", HEAD, HEAD, cohorts=(Cohort(R3, names, (R4,)),), up_to_date=names,
                  unreachable=(("x|y", "OperationalError: <b>no</b> *such* `db`"),))
    text = plan_text(result)
    assert "  tenants: t00, t01, t02, t03, t04, t05, t06, t07, t08, t09 ... and 2 more\n" in text
    assert "up to date (12): t00, t01, t02, t03, t04, t05, t06, t07, t08, t09 ... and 2 more\n" in text
    assert text.endswith("unreachable (1, cannot be read: the upgrade will fail them):\n"
                         "  x|y: OperationalError: <b>no</b> *such* `db`\n")
    md = plan_markdown(result)
    assert "| 1 | `0003_invoice_status` | 12: `t00`, `t01`, `t02`, `t03`, `t04`, `t05`, `t06`, `t07`, `t08`, " \
           "`t09` ... and 2 more | 1: `0004_invoice_user_index` |" in md
    assert f"Tenants: {', '.join(f'`{n}`' for n in names)}\n" in md  # the <details> names them all
    assert "- `x|y`: OperationalError: &lt;b&gt;no&lt;/b&gt; \\*such\\* \\`db\\`\n" in md


# --- PostgreSQL ----------------------------------------------------------------------------------------------

@pytest.mark.postgres
def test_plan_postgres_mixed_fleet_and_an_unreachable_tenant(pg_fleet):
    fleet = pg_fleet(6, source="static")
    new, a, b, c, top, gone = fleet.names
    admin(f'DROP DATABASE "{gone}" WITH (FORCE)')  # still listed in the static config
    settings = load_settings(fleet.config, "pg", environ={})
    for revision, names in ((R1, (a, b)), (R3, (c,)), (HEAD, (top,))):
        assert api.upgrade(settings, revision, Selection(tenants=names)).ok

    result = plan(settings, with_sql=True)
    assert [(co.current, co.tenants, co.revisions) for co in result.cohorts] == [
        ("base", (new,), tuple(DEMO_REVISIONS)), (R1, (a, b), (R2, R3, R4)), (R3, (c,), (R4,))]
    assert (result.new, result.up_to_date) == ((new,), (top,))
    [(name, error)] = result.unreachable
    assert name == gone and f'database "{gone}" does not exist' in error
    assert not result.ok
    for cohort in result.cohorts:  # PostgreSQL's dialect, rendered once per cohort
        assert cohort.sql == api.sql(settings, f"{cohort.current}:head")
    assert "BEGIN;" in result.cohorts[0].sql and "id SERIAL NOT NULL" in result.cohorts[0].sql
    assert fleet.version(new) is None  # planning changed nothing
    assert f"unreachable (1, cannot be read: the upgrade will fail them):\n  {gone}: " in plan_text(result)


def test_plan_numbers_waves_as_upgrade_wave_does(sqlite_config):
    # The deploy's canary job runs `upgrade --wave 1`: the plan a reviewer approves must say which tenants
    # that is, counting the waves exactly as the run does (over the whole selection, empty waves dropped).
    path = sqlite_config(("acme", "globex", "initech", "hooli"), extra='waves = [{ name = "vip", tag = "vip" }, '
                         '{ name = "canary", count = 2 }, { name = "fleet", rest = true }]')
    settings = settings_for(path)
    assert api.upgrade(settings, HEAD, Selection(tenants=("globex",))).ok
    result = plan(settings)
    canary = api.prepare_upgrade(settings).waves()[0][1]
    assert len(canary) == 2  # the vip wave is empty (no tenant has the tag) and is not counted
    assert result.waves == (("canary", tuple(t.name for t in canary if t.name != "globex")),
                            ("fleet", tuple(n for n in ("acme", "globex", "initech", "hooli")
                                            if n not in {t.name for t in canary} and n != "globex")))
    assert plan_json(result)["waves"][0] == {"wave": 1, "name": "canary", "tenants": list(result.waves[0][1])}
    markdown = plan_markdown(result)
    assert "| wave | tenants to upgrade |" in markdown
    assert f"| 1 `canary` | {len(result.waves[0][1])}: " in markdown
    assert plan_text(result).splitlines()[1].startswith("  wave 1 (canary): ")
    # The empty vip wave is said, under the numbered ones, by its place in the configuration.
    assert result.empty_waves == ((1, "vip", "no tenant matches tag vip — this rollout has no canary (wave 1 is "
                                          "canary)"),)
    assert plan_text(result).splitlines()[3] == (
        "  waves[1] (vip): no tenant matches tag vip — this rollout has no canary (wave 1 is canary); an empty "
        "wave gets no number (upgrade --wave N counts the waves with tenants)")
    run = api.upgrade(settings, HEAD, Selection(), api.RunOptions(wave=1))
    assert sorted(r.tenant for r in run.results if r.applied) == sorted(result.waves[0][1])
    # No waves declared: the plan has none (the whole selection is one wave, which needs no table).
    assert plan(settings_for(sqlite_config(("acme",)))).waves == ()


def test_plan_says_when_a_wave_selects_no_tenant(sqlite_config):
    """A canary wave that matches nobody is a rollout without a canary: text, markdown and JSON say so."""
    path = sqlite_config(("acme", "globex", "initech"), extra='waves = [{ name = "canary", tag = "canary" }, '
                         '{ name = "eu", tag = "region=eu" }, { name = "fleet", rest = true }, { count = 1 }]')
    text = path.read_text().replace('tenants = ["acme", "globex", "initech"]',
                                    'tenants = [{ name = "acme", tags = ["canary=false", "region=eu"] }, '
                                    '"globex", "initech"]')
    path.write_text(text)
    result = plan(settings_for(path))
    assert result.waves == (("eu", ("acme",)), ("fleet", ("globex", "initech")))
    assert result.empty_waves == (
        (1, "canary", "no tenant matches tag canary — this rollout has no canary (wave 1 is eu)"),
        (4, "count 1", "no tenant is left for it"))
    lines = plan_text(result).splitlines()
    assert lines[1:5] == [
        "  wave 1 (eu): 1 to upgrade: acme",
        "  wave 2 (fleet): 2 to upgrade: globex, initech",
        "  waves[1] (canary): no tenant matches tag canary — this rollout has no canary (wave 1 is eu); an empty "
        "wave gets no number (upgrade --wave N counts the waves with tenants)",
        "  waves[4] (count 1): no tenant is left for it; an empty wave gets no number (upgrade --wave N counts "
        "the waves with tenants)",
    ]
    markdown = plan_markdown(result)
    assert ("- **Empty wave** `waves[1]` `canary`: no tenant matches tag canary — this rollout has no canary "
            "(wave 1 is eu); an empty wave gets no number (upgrade --wave N counts the waves with tenants)"
            ) in markdown.splitlines()
    data = plan_json(result)
    assert [w["name"] for w in data["waves"]] == ["eu", "fleet"]
    assert data["empty_waves"][0] == {"position": 1, "name": "canary", "note": "no tenant matches tag canary — "
                                      "this rollout has no canary (wave 1 is eu)"}
    # A narrowed selection says so: the canary may exist outside it.
    narrowed = plan(settings_for(path), selection=Selection(tenants=("globex",)))
    assert narrowed.empty_waves[0][2].startswith("no selected tenant matches tag canary")
    assert narrowed.empty_waves[1] == (2, "eu", "no selected tenant matches tag region=eu")
    # A tagged tenant an earlier wave took.
    path.write_text(text.replace('["canary=false", "region=eu"]', '["canary", "region=eu"]'))
    assert plan(settings_for(path)).empty_waves == (
        (2, "eu", "every tenant tagged region=eu is in an earlier wave"), (4, "count 1", "no tenant is left for it"))
