"""Adopting a hand-managed fleet (issue 12): which revision is each unmanaged tenant's schema?

A tenant that has tables but no version table (``unmanaged``) holds a schema that someone built by hand, by
scripts, or with Alembic before the version table was lost. ``tenants adopt`` snapshots it
(:func:`tenants.db.schema_snapshot`) and looks for the revision whose expected schema (the graph run on a
scratch database of the same dialect, :mod:`tenants.engine.expected`) has the same fingerprint. This module is
the pure part: the matching (:func:`match`) and the row a tenant gets in the report (:class:`AdoptRow`).

Two revisions can expect the same schema (a revision that only moves data). A tenant matching both is
matched to the **earliest**: stamping it there makes the next upgrade run the later one again, which the
idempotent guards make harmless, while stamping it at the later one would skip a data migration that maybe
never ran. The others are listed (``same_schema``) so a reviewer sees the choice.

A tenant that matches nothing gets the closest revision (the fewest differences, :func:`tenants.snapshot.distance`;
the latest on a tie) and the differences, one line each, as ``tenants drift`` prints them: a tenant with
0002's schema plus a column of 0003 is "closest 0002, extra column", not "closest 0001, extra table".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from tenants.snapshot import Snapshot, diff


class AdoptState(str, Enum):
    """Where one tenant stands in ``tenants adopt``."""

    MATCHED = "matched"  # dry run: its schema is a revision's; --yes stamps it there
    NO_MATCH = "no match"  # no revision's schema: never touched (exit 1)
    SKIPPED = "skipped"  # not unmanaged (managed already, or new and empty): nothing to adopt
    UNREACHABLE = "unreachable"  # could not be read (exit 1)
    ADOPTED = "adopted"  # --yes: stamped at its revision, under its lock, history row `adopted`
    CHANGED = "changed"  # --yes: under the lock it was no longer what was matched; not touched (exit 1)
    FAILED = "failed"  # --yes: the stamp failed (exit 1)

    def __str__(self) -> str:
        return self.value


GOOD_STATES = frozenset({AdoptState.MATCHED, AdoptState.SKIPPED, AdoptState.ADOPTED})


@dataclass(frozen=True)
class Match:
    """What the snapshot of one unmanaged tenant matched."""

    fingerprint: str  # the tenant's schema
    revision: str | None  # the (earliest) revision whose expected schema it is; None: no match
    same_schema: tuple[str, ...] = ()  # later revisions expecting that same schema (see the module docstring)
    closest: str | None = None  # no match: the revision with the fewest differences (the latest on a tie)
    differences: tuple[str, ...] = ()  # no match: expected (closest) against found


def match(found: Snapshot, by_revision: Mapping[str, Snapshot], order: Iterable[str]) -> Match:
    """Match ``found`` against the expected schema of each revision in ``order`` (base first, as
    :meth:`tenants.engine.revisions.Revisions.in_order` lists them); ``by_revision`` maps a revision to its
    expected schema (:attr:`tenants.engine.expected.Expected.by_revision`). A revision it lacks is passed over."""
    candidates = [(rev, by_revision[rev]) for rev in order if rev in by_revision]
    fingerprint = found.fingerprint
    same = [rev for rev, expected in candidates if expected.fingerprint == fingerprint]
    if same:
        return Match(fingerprint, same[0], tuple(same[1:]))
    if not candidates:
        return Match(fingerprint, None)
    lines = [(rev, diff(expected, found)) for rev, expected in candidates]
    fewest = min(len(found_lines) for _, found_lines in lines)
    closest, differences = [pair for pair in lines if len(pair[1]) == fewest][-1]  # the latest on a tie
    return Match(fingerprint, None, closest=closest, differences=tuple(differences))


@dataclass(frozen=True)
class AdoptRow:
    """One tenant in the adopt report. ``revision`` is the revision matched (and, adopted, stamped); ``why``
    says why a tenant is skipped, unreachable, changed or failed."""

    tenant: str
    state: AdoptState
    fingerprint: str | None = None
    revision: str | None = None
    same_schema: tuple[str, ...] = ()
    closest: str | None = None
    differences: tuple[str, ...] = ()
    why: str | None = None

    @property
    def ok(self) -> bool:
        return self.state in GOOD_STATES

    def to_dict(self) -> dict:
        return {"tenant": self.tenant, "state": self.state.value, "fingerprint": self.fingerprint,
                "revision": self.revision, "same_schema": list(self.same_schema), "closest": self.closest,
                "differences": list(self.differences), "why": self.why}

    @classmethod
    def of(cls, tenant: str, found: Match) -> AdoptRow:
        state = AdoptState.MATCHED if found.revision is not None else AdoptState.NO_MATCH
        return cls(tenant, state, found.fingerprint, found.revision, found.same_schema, found.closest,
                   found.differences)


@dataclass(frozen=True)
class AdoptReport:
    """What ``tenants adopt`` found (dry run) or did (``--yes``): one row per selected tenant, in order.

    ``source`` says where the expected schemas came from (``scratch``, ``cache`` or ``consensus``, see
    :mod:`tenants.engine.expected`); ``run_id`` is the stamp run's (its history rows carry it), None for a
    dry run."""

    environment: str
    rows: tuple[AdoptRow, ...]
    source: str
    applied: bool = False
    run_id: str | None = None

    @property
    def ok(self) -> bool:
        """Every tenant matched (or adopted) or had nothing to adopt."""
        return all(row.ok for row in self.rows)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.rows:
            out[row.state.value] = out.get(row.state.value, 0) + 1
        return out

    def to_dict(self) -> dict:
        return {"environment": self.environment, "source": self.source, "applied": self.applied,
                "run_id": self.run_id, "ok": self.ok, "summary": self.counts(),
                "tenants": [row.to_dict() for row in self.rows]}
