"""``tenants check`` for a selection of revisions: which revisions (:func:`select`), which dialects
(:func:`scratches`), and every check of each, into one :class:`~tenants.engine.check.report.CheckReport`
(:func:`run_checks`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from alembic import util
from tenants.config import Environment
from tenants.db import Connector, describe_error
from tenants.dialects import DIALECTS, dialect_for
from tenants.engine.check.changed import changed_files, repository_root
from tenants.engine.check.lint import lint
from tenants.engine.check.report import (
    ACKNOWLEDGED,
    IDEMPOTENCY,
    LINT,
    STAIRWAY,
    TSQL,
    CheckReport,
    Finding,
    RevisionChecked,
    column,
)
from tenants.engine.check.scratch import Scratch, Step, check_on
from tenants.engine.check.source import RevisionSource
from tenants.engine.check.tsql import check_tsql
from tenants.engine.revisions import EnvPy, Revisions
from tenants.errors import RevisionError

__all__ = ["DEFAULT_BASE", "run_checks", "scratches", "select"]

DEFAULT_BASE = "origin/main"
_EMBEDDED = "sqlite"  # always available: a file in a temporary folder


def select(revisions: Revisions, names: Sequence[str] = (), everything: bool = False,
           base: str = DEFAULT_BASE) -> tuple[list[str], str]:
    """The revisions to check, in graph order, and a line saying how they were chosen: the ones named, every
    one (``everything``), else the revision files added or changed since ``base`` (every one when git cannot
    tell, saying why)."""
    order = revisions.in_order()
    if names:
        wanted = set()
        for name in names:
            rev = revisions.resolve(name)
            if rev is None:
                raise RevisionError(f"{name!r} is not a revision to check (name revisions, or use --all)")
            wanted.add(rev)
        return [rev for rev in order if rev in wanted], "the revisions named"
    if everything:
        return order, "every revision (--all)"
    paths = {rev: Path(revisions.script.get_revision(rev).path).resolve() for rev in order}
    files, how = changed_files(sorted({p.parent for p in paths.values()}), base)
    if files is None:
        return order, f"every revision: {how}"
    return [rev for rev in order if paths[rev] in files], how


def scratches(env: Environment, postgres: str | None = None) -> tuple[list[Scratch], dict[str, str]]:
    """The dialects to run the stairway and the reruns on: SQLite always, the environment's dialect when it
    offers a scratch database, and the server of ``postgres`` (a URL; its database is where the scratch
    databases are created from). Also the dialects left out, with why."""
    found = {_EMBEDDED: Scratch(DIALECTS[_EMBEDDED], make_url(f"{_EMBEDDED}:///scratch.db"), Connector())}
    left_out: dict[str, str] = {}
    own = dialect_for(env.dialect)
    if own.name not in found:
        url = make_url(env.tenant_url(env.reference_database or "tenants_scratch"))
        scratch = Scratch(own, url, Connector(env.auth, env.cloud, sessions=env.sessions),
                          env.maintenance_database, env.reference_database)
        if scratch.database() is None:
            left_out[own.name] = "no scratch database (set reference_database in the environment)"
        else:
            found[own.name] = scratch
    if postgres:
        url = make_url(postgres)
        found[dialect_for(url).name] = Scratch(dialect_for(url), url, Connector(), maintenance=url.database)
        left_out.pop(dialect_for(url).name, None)
    return list(found.values()), left_out


def _shown(path: Path, root: Path | None) -> str:
    """A revision file as findings name it: relative to the repository (GitHub annotations need that), else to
    the current directory, else absolute."""
    for base in (root, Path.cwd().resolve()):
        if base is not None and path.is_relative_to(base):
            return path.relative_to(base).as_posix()
    return str(path)


def run_checks(revisions: Revisions, selected: list[str], targets: list[Scratch], *, env_py: EnvPy = "connection",
               own: tuple[str, ...] = (), left_out: dict[str, str] | None = None, notes: Sequence[str] = ()
               ) -> CheckReport:
    """Every check of ``selected`` (graph order): the lint and the T-SQL once, the stairway and the reruns on
    each dialect of ``targets``."""
    scripts = {rev: revisions.script.get_revision(rev) for rev in selected}
    root = repository_root(Path(revisions.path).resolve().parent)
    sources, checked, steps, findings = {}, [], [], []
    skipped: dict[tuple[str, str], str] = {}
    for rev in selected:
        path = Path(scripts[rev].path).resolve()
        source = sources[rev] = RevisionSource.read(path, _shown(path, root))
        checked.append(RevisionChecked(rev, source.shown, (scripts[rev].doc or "").strip().splitlines()[0]
                                       if (scripts[rev].doc or "").strip() else ""))
        found = lint(source, rev)
        downgrade = not any(f.rule == "no-downgrade" and f.severity == ACKNOWLEDGED for f in found)
        parents = util.to_tuple(scripts[rev].down_revision, default=())
        steps.append(Step(rev, parents, source, downgrade))
        findings += found
        if len(parents) > 1:
            skipped[rev, TSQL] = "a merge revision"
        else:
            findings += [_acknowledge(f, source) for f in check_tsql(revisions, rev, parents[0] if parents else None,
                                                                     source, downgrade=downgrade)]
    dialects = {name: f"not checked: {why}" for name, why in (left_out or {}).items()}
    columns: list[str] = []
    extra = list(notes)
    for target in targets:
        name = target.dialect.name
        columns += [column(STAIRWAY, name), column(IDEMPOTENCY, name)]
        try:
            found, cells, lines = check_on(target, steps, revisions, env_py, own)
        except Exception as err:  # noqa: BLE001 - no server, no right to create a database: say so, go on
            why = describe_error(err, _secrets(target.url))
            dialects[name] = f"not checked: {why}"
            skipped.update({(rev, col): f"no scratch {name} database" for rev in selected for col in columns[-2:]})
            continue
        finally:
            target.connector.dispose()
        dialects[name] = "checked"
        findings += found
        skipped.update(cells)
        extra += lines
    return CheckReport(tuple(checked), (*columns, TSQL, LINT), tuple(findings), skipped, dialects, tuple(extra))


def _acknowledge(finding: Finding, source: RevisionSource) -> Finding:
    reason, _ = source.acknowledgment(finding.rule, finding.line)
    return finding.acknowledged(reason) if reason else finding


def _secrets(url: URL) -> tuple[str, ...]:
    return tuple(s for s in (url.password,) if s)
