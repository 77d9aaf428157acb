"""The three renderings of a :class:`~tenants.plan.Plan`: :func:`plan_text` (a terminal or a CI log),
:func:`plan_markdown` (a GitHub job summary, escaped by :mod:`tenants.output.markdown` like the run's) and
:func:`plan_json` (``--format json``). Pure functions; the CLI prints what they return."""

from __future__ import annotations

from collections.abc import Iterable

from tenants.model import Cohort, Drifted, Plan
from tenants.output import markdown as md
from tenants.output.format import fold, plural

__all__ = ["plan_text", "plan_markdown", "plan_json", "EMPTY_WAVE"]


def _headline(plan: Plan) -> str:
    head = "" if plan.head == plan.target else f" (head {plan.head or 'ambiguous: several heads'})"
    return (f"upgrade {plan.environment} to {plan.target}{head}: {plural(plan.tenants, 'tenant')}, "
            f"{plan.to_upgrade} to upgrade in {plural(len(plan.cohorts), 'cohort')}")


# After the cohorts: the tenants the upgrade leaves alone or cannot plan. Long name lists fold; the ones a
# reviewer must act on (unknown revision, unreachable) are listed in full, one per line with why.
_FOLDED = (
    ("up_to_date", "up to date", ""),  # at the target or past it: an upgrade never goes down
    ("new", "new", "no revision recorded: also in the base cohort"),
    ("pinned", "pinned", ""),
)
_ITEMIZED = (
    ("unknown_revision", "unknown revision", "not in the graph: the upgrade refuses them"),
    ("unreachable", "unreachable", "cannot be read: the upgrade will fail them"),
    ("unmanaged", "unmanaged", "tables but no version table: the upgrade leaves them alone until stamped"),
    ("skipped_databases", "not migrated", "seen by discovery, not tenants or not online"),
)


def _no_sql(cohort: Cohort) -> str:
    # Alembic's offline mode (and so `tenants sql`) starts from one revision; from either head alone the
    # script would also replay what the other head already applied.
    return f"the cohort is at several heads ({cohort.current}); offline SQL starts from one revision"


EMPTY_WAVE = "an empty wave gets no number (upgrade --wave N counts the waves with tenants)"

# --- the drift check (issue 12): first, because drifted tenants are what a reviewer must see before approving --

DRIFTED = "schema differs from its recorded revision"
SHOWN_DIFFERENCES = 10  # per tenant; `tenants plan --schema --format json` has them all


def _fate(plan: Plan, drifted: Drifted) -> str:
    """What the upgrade does with a drifted tenant."""
    if drifted.refused:
        return "the upgrade will not start it (check_schema = true)"
    if drifted.tenant in plan.up_to_date:
        return "at the target: the upgrade does not touch it"
    if drifted.tenant in plan.pinned:
        return "pinned: the upgrade leaves it alone"
    return "the upgrade runs on it anyway (check_schema is off)"


def _shown(drifted: Drifted) -> list[str]:
    more = len(drifted.differences) - SHOWN_DIFFERENCES
    return list(drifted.differences[:SHOWN_DIFFERENCES]) + ([f"... and {more} more"] if more > 0 else [])


def _drifted_text(plan: Plan) -> list[str]:
    if plan.schema_reference is None:
        return []
    lines = ["", f"Drifted ({len(plan.drifted)}): {DRIFTED} (expected schemas: {plan.schema_reference})"]
    for drifted in plan.drifted:
        lines.append(f"  {drifted.tenant} at {drifted.current}: {_fate(plan, drifted)}")
        lines += [f"    - {line}" for line in _shown(drifted)]
    return lines


def _drifted_markdown(plan: Plan) -> list[str]:
    if plan.schema_reference is None:
        return []
    out = [f"#### Drifted ({len(plan.drifted)}): {DRIFTED}", "",
           f"Expected schemas: {md.code(plan.schema_reference)}." + ("" if plan.drifted else
                                                                      " Every tenant read matches its revision."),
           ""]
    for drifted in plan.drifted:
        out.append(f"- {md.code(drifted.tenant)} at {md.code(drifted.current)}: {md.text(_fate(plan, drifted))}")
        out += [f"  - {md.text(line)}" for line in _shown(drifted)]
    return out + ([""] if plan.drifted else [])


def plan_text(plan: Plan) -> str:
    """Plain text for a terminal or a CI log; with SQL, each cohort's script follows it."""
    messages = dict(plan.messages)
    lines = [_headline(plan)] + _drifted_text(plan)
    if plan.schema_reference is not None and (plan.waves or plan.empty_waves):
        lines.append("")
    for i, (name, names) in enumerate(plan.waves, 1):
        lines.append(f"  wave {i} ({name}): {len(names)} to upgrade{': ' + fold(list(names)) if names else ''}")
    lines += [f"  waves[{position}] ({name}): {why}; {EMPTY_WAVE}" for position, name, why in plan.empty_waves]
    for i, cohort in enumerate(plan.cohorts, 1):
        lines += ["", f"cohort {i}: from {cohort.current}, {plural(len(cohort.tenants), 'tenant')}, "
                      f"{plural(len(cohort.revisions), 'revision')} to apply",
                  f"  tenants: {fold(list(cohort.tenants))}"]
        width = max(len(rev) for rev in cohort.revisions)
        lines += [f"  {n}. {rev:<{width}}  {messages.get(rev, '')}".rstrip()
                  for n, rev in enumerate(cohort.revisions, 1)]
        if plan.with_sql:
            lines += ["", f"-- cohort {i}: {cohort.current} -> {plan.target}",
                      (cohort.sql or f"-- not rendered: {_no_sql(cohort)}").rstrip()]
    lines.append("")
    for field, title, note in _FOLDED:
        names = list(getattr(plan, field))
        if names or field == "up_to_date":
            lines.append(f"{title} ({len(names)}{', ' + note if names and note else ''}): {fold(names) or '-'}")
    for field, title, note in _ITEMIZED:
        entries = getattr(plan, field)
        if entries:
            lines += [f"{title} ({len(entries)}, {note}):"] + [
                f"  {name} at {detail}" if field == "unknown_revision" else f"  {name}: {detail}"
                for name, detail in entries]
    return "\n".join(lines) + "\n"


def _names(names: Iterable[str]) -> str:
    return fold([md.code(n) for n in names])


def plan_markdown(plan: Plan) -> str:
    """For a GitHub job summary: the cohort table, then per cohort a ``<details>`` with every tenant, the
    revisions with their messages and, with SQL, the script; then the tenants the upgrade leaves out."""
    messages = dict(plan.messages)
    out = [f"### Migration plan: {md.code(plan.environment)} to {md.code(plan.target)}", ""]
    if plan.head != plan.target:
        out += [f"Head: {md.code(plan.head) if plan.head else 'ambiguous (several heads)'}.", ""]
    counts = [f"{plan.to_upgrade} to upgrade in {plural(len(plan.cohorts), 'cohort')}",
              f"{len(plan.up_to_date)} up to date"]
    counts += [f"{len(names)} {label}" for label, names in (
        ("new", plan.new), ("unknown revision", plan.unknown_revision), ("unreachable", plan.unreachable),
        ("unmanaged", plan.unmanaged), ("pinned", plan.pinned), ("drifted", plan.drifted)) if names]
    out += [f"{plural(plan.tenants, 'tenant')}: {', '.join(counts)}.", ""]
    out += _drifted_markdown(plan)
    if plan.waves:  # the order of the rollout: what a reviewer approves goes to these tenants first
        out += ["| wave | tenants to upgrade |", "|---:|---|"]
        out += [md.row(f"{i} {md.code(name)}", f"{len(names)}" + (f": {_names(names)}" if names else ""))
                for i, (name, names) in enumerate(plan.waves, 1)]
        out.append("")
    if plan.empty_waves:
        out += [f"- **Empty wave** {md.code(f'waves[{position}]')} {md.code(name)}: {md.text(why)}; "
                f"{md.text(EMPTY_WAVE)}" for position, name, why in plan.empty_waves] + [""]
    if plan.cohorts:
        out += ["| cohort | from | tenants | revisions to apply |", "|---:|---|---|---|"]
        for i, cohort in enumerate(plan.cohorts, 1):
            out.append(md.row(str(i), md.code(cohort.current), f"{len(cohort.tenants)}: {_names(cohort.tenants)}",
                            f"{len(cohort.revisions)}: {' → '.join(md.code(rev) for rev in cohort.revisions)}"))
        out.append("")
    for i, cohort in enumerate(plan.cohorts, 1):
        out += [f"<details><summary>Cohort {i}: from <code>{md.html(cohort.current)}</code>, "
                f"{plural(len(cohort.tenants), 'tenant')}, {plural(len(cohort.revisions), 'revision')}</summary>", "",
                f"Tenants: {', '.join(md.code(n) for n in cohort.tenants)}", ""]
        out += [f"{n}. {md.code(rev)}" + (f": {md.text(messages[rev])}" if messages.get(rev) else "")
                for n, rev in enumerate(cohort.revisions, 1)]
        if plan.with_sql:
            out.append("")
            if cohort.sql is None:
                out.append(f"SQL not rendered: {md.text(_no_sql(cohort))}")
            else:
                out += md.code_block(cohort.sql, "sql")
        out += ["", "</details>", ""]
    out += _left_out_markdown(plan)
    return "\n".join(out)


def _left_out_markdown(plan: Plan) -> list[str]:
    """The tenants the upgrade leaves alone or cannot plan, after the cohorts."""
    out: list[str] = []
    for field, title, note in _FOLDED:
        names = getattr(plan, field)
        if names or field == "up_to_date":
            out += [f"**{title.capitalize()}** ({len(names)}{', ' + note if names and note else ''}): "
                    f"{_names(names) or '-'}", ""]
    for field, title, note in _ITEMIZED:
        entries = getattr(plan, field)
        if entries:
            out += [f"**{title.capitalize()}** ({len(entries)}, {note}):", ""]
            out += [f"- {md.code(name)} at {md.code(detail)}" if field == "unknown_revision"
                    else f"- {md.code(name)}: {md.text(detail)}" for name, detail in entries]
            out.append("")
    return out


def plan_json(plan: Plan) -> dict:
    """JSON-ready (lists, not tuples): ``json.loads(json.dumps(plan_json(p))) == plan_json(p)``."""
    return {
        "schema_version": 1,
        "environment": plan.environment,
        "target": plan.target,
        "head": plan.head,
        "ok": plan.ok,
        "summary": {
            "tenants": plan.tenants,
            "cohorts": len(plan.cohorts),
            "to_upgrade": plan.to_upgrade,
            "up_to_date": len(plan.up_to_date),
            "new": len(plan.new),
            "unknown_revision": len(plan.unknown_revision),
            "unreachable": len(plan.unreachable),
            "unmanaged": len(plan.unmanaged),
            "pinned": len(plan.pinned),
            "drifted": len(plan.drifted),
            "locked": 0,  # kept for readers of schema_version 1: locks are known only at run time
        },
        "cohorts": [
            {"current": c.current, "tenants": list(c.tenants), "revisions": list(c.revisions), "sql": c.sql}
            for c in plan.cohorts
        ],
        "messages": dict(plan.messages),
        "new": list(plan.new),
        "up_to_date": list(plan.up_to_date),
        "unknown_revision": [{"tenant": n, "revision": rev} for n, rev in plan.unknown_revision],
        "unreachable": [{"tenant": n, "error": error} for n, error in plan.unreachable],
        "unmanaged": [{"tenant": n, "reason": why} for n, why in plan.unmanaged],
        "pinned": list(plan.pinned),
        # The schema check (null: not checked): each drifted tenant with every difference, and whether the
        # upgrade refuses it (check_schema = true).
        "schema_reference": plan.schema_reference,
        "drifted": [{"tenant": d.tenant, "revision": d.current, "differences": list(d.differences),
                     "refused": d.refused} for d in plan.drifted],
        "locked": [],  # idem (tenants.plan's docstring says why a plan cannot know them)
        "skipped_databases": [{"database": n, "reason": why} for n, why in plan.skipped_databases],
        "waves": [{"wave": i, "name": name, "tenants": list(names)} for i, (name, names) in enumerate(plan.waves, 1)],
        "empty_waves": [{"position": position, "name": name, "note": why}
                        for position, name, why in plan.empty_waves],
    }
