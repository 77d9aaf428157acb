"""The expected schema of each revision (issue 12): what a tenant recorded at a revision should look like.

:func:`expected_schemas` answers with an :class:`Expected`, from one of three places, reported as its
``source``:

* ``scratch``: the revision graph is run on a scratch database of the environment's dialect, through the
  tool's own migration path (:meth:`Revisions.migrate`, so env.py runs as in production), taking a snapshot
  (:func:`tenants.db.schema_snapshot`) before the first revision and after each one. Where the database comes
  from is the dialect's business (:meth:`tenants.dialects.Dialect.scratch_database`): SQLite a file in a
  temporary folder; PostgreSQL ``CREATE DATABASE tenants_scratch_<random>`` on the tenants' server, dropped
  after; SQL Server only the environment's ``reference_database``, emptied before and after.
  The revisions are walked base to heads in topological order, one ``upgrade`` per revision. In a branched
  graph the next revision may not be above everything applied so far (a sibling branch): the scratch database
  is then reset (a fresh one), and the upgrade to that revision applies only its own ancestors, so each
  snapshot is exactly the schema of the position ``(revision,)``. A graph with several heads also gets the
  position of all its heads built.
* ``cache``: the same, read back from a JSON file. Building costs a database and a run of env.py per revision;
  CI would pay it on every run. The file's name is a hash of everything the result depends on: every revision
  file's bytes, env.py's, the version and history tables, the dialect, and the code that reads a snapshot
  (so a change to a catalog query never compares tenants against a stale reference). The folder is the
  environment's ``schema_cache``, else ``$XDG_CACHE_HOME/tenants``, else ``~/.cache/tenants`` (cache it in
  CI with actions/cache). An unreadable or unwritable cache is rebuilt, or skipped, never an error.
* ``consensus``: where no scratch database is allowed (SQL Server without ``reference_database``, or
  ``expected_schema = "consensus"``), the tenants recorded at each revision vote: grouped by fingerprint,
  the largest group's schema is that revision's expected one. That only says which schema is *usual*; the
  report says so, with the size of the group. A tie has no winner: the revision gets no expected schema and
  :attr:`Expected.consensus` names the tied fingerprints, so nobody is told a coin toss is the truth.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import URL, make_url

from tenants.config import Environment, Settings
from tenants.db import Connector, describe_error, schema_snapshot
from tenants.dialects import Dialect, dialect_for
from tenants.engine.revisions import MigrationConnection, Revisions
from tenants.engine.unit import own_tables
from tenants.errors import ExpectedSchemaError, TenantsError
from tenants.snapshot import Snapshot

__all__ = ["Consensus", "Expected", "cache_folder", "consensus", "expected_schemas", "graph_key"]

SCRATCH, CACHE, CONSENSUS = "scratch", "cache", "consensus"
CACHE_FORMAT = 1
# The code that turns a catalog into a Snapshot: part of the cache key (tenants/snapshot.py and every
# tenants/dialects/catalog*.py).
_PACKAGE = Path(__file__).resolve().parent.parent
_SNAPSHOT_CODE = (_PACKAGE / "snapshot.py", *sorted((_PACKAGE / "dialects").glob("catalog*.py")))


@dataclass(frozen=True)
class Consensus:
    """How consensus chose one position's expected schema: of ``total`` tenants recorded there, ``agreeing``
    share the winning ``fingerprint``. On a tie ``fingerprint`` is None and ``tied`` lists the fingerprints
    of the groups tied for largest (each with ``agreeing`` tenants)."""

    fingerprint: str | None
    agreeing: int
    total: int
    tied: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        return {"fingerprint": self.fingerprint, "agreeing": self.agreeing, "total": self.total,
                "tied": list(self.tied)}


@dataclass(frozen=True)
class Expected:
    """The expected schema of every position of the graph the tool could establish.

    ``by_revision[rev]`` is the schema at position ``(rev,)``; ``base`` the empty schema (position ``()``);
    ``positions`` the positions of several heads that were built (sorted tuples). ``consensus`` says, for a
    ``consensus`` source, how each position was chosen (keyed ``"a"`` or ``"a,b"``)."""

    by_revision: Mapping[str, Snapshot]
    source: str  # "scratch" | "cache" | "consensus"
    base: Snapshot
    positions: Mapping[tuple[str, ...], Snapshot] = field(default_factory=dict)
    dialect: str = ""
    consensus: Mapping[str, Consensus] = field(default_factory=dict)

    def at(self, position: tuple[str, ...]) -> Snapshot | None:
        """The expected schema at ``position`` (a tenant's recorded heads): () is base; one head its
        revision's; several heads only when built; None when unknown (not in the graph, or a consensus tie)."""
        if not position:
            return self.base
        if len(position) == 1:
            return self.by_revision.get(position[0])
        return self.positions.get(tuple(sorted(position)))

    @property
    def ties(self) -> dict[str, Consensus]:
        """The positions consensus could not decide (keyed ``"a"`` or ``"a,b"``)."""
        return {where: c for where, c in self.consensus.items() if c.fingerprint is None}

    def to_dict(self) -> dict:
        """What a report says of its reference (not the schemas themselves: see :func:`to_cache`)."""
        return {"source": self.source, "dialect": self.dialect, "revisions": len(self.by_revision),
                "consensus": {where: c.to_dict() for where, c in self.consensus.items()}}


def expected_schemas(settings: Settings, revisions: Revisions, *,
                     consensus_from: Iterable[tuple[tuple[str, ...], Snapshot]] | None = None) -> Expected:
    """The expected schema of each revision of ``revisions`` for the environment of ``settings``: from the
    cache, else built on a scratch database (and cached), else by consensus of ``consensus_from`` (each
    tenant's recorded position and snapshot, read from the fleet). See the module docstring.

    Raises :class:`~tenants.errors.ExpectedSchemaError` when a scratch database is allowed but the graph
    cannot be run on it (no right to create a database, a revision that fails, a reference database that is
    not empty)."""
    env = settings.environment
    dialect = dialect_for(env.dialect)
    if env.expected_schema != CONSENSUS:
        key = graph_key(revisions, dialect.name, env)
        path = cache_folder(env) / f"expected-{dialect.name}-{key[:20]}.json"
        cached = _read_cache(path, key)
        if cached is not None:
            return cached
        built = _build(env, revisions, dialect)
        if built is not None:
            _write_cache(path, key, built)
            return built
    return consensus(consensus_from or (), dialect.name)


# --- consensus ---------------------------------------------------------------------------------------------

def consensus(readings: Iterable[tuple[tuple[str, ...], Snapshot]], dialect: str = "") -> Expected:
    """The expected schemas voted by the fleet: for each position, the schema of the largest group of tenants
    recorded there with one fingerprint; no schema for a tie (see :attr:`Expected.ties`)."""
    groups: dict[tuple[str, ...], dict[str, list[Snapshot]]] = {}
    for position, snapshot in readings:
        if position:  # base is the empty schema, whatever a tenant without a version table holds
            groups.setdefault(tuple(sorted(position)), {}).setdefault(snapshot.fingerprint, []).append(snapshot)
    by_revision: dict[str, Snapshot] = {}
    positions: dict[tuple[str, ...], Snapshot] = {}
    votes: dict[str, Consensus] = {}
    for position, by_fingerprint in groups.items():
        largest = max(len(found) for found in by_fingerprint.values())
        total = sum(len(found) for found in by_fingerprint.values())
        winners = sorted(fp for fp, found in by_fingerprint.items() if len(found) == largest)
        where = ",".join(position)
        if len(winners) > 1:
            votes[where] = Consensus(None, largest, total, tuple(winners))
            continue
        votes[where] = Consensus(winners[0], largest, total)
        chosen = by_fingerprint[winners[0]][0]
        if len(position) == 1:
            by_revision[position[0]] = chosen
        else:
            positions[position] = chosen
    return Expected(by_revision, CONSENSUS, Snapshot(dialect=dialect), positions, dialect, votes)


# --- building on a scratch database ------------------------------------------------------------------------

def _build(env: Environment, revisions: Revisions, dialect: Dialect) -> Expected | None:
    """Run the graph on scratch databases (module docstring); None when the dialect offers none."""
    connector = Connector(env.auth, env.cloud, sessions=env.sessions)
    url = make_url(env.tenant_url(env.reference_database or "tenants_scratch"))

    def scratch():
        return dialect.scratch_database(
            url, connect=lambda u: connector.engine(u.render_as_string(hide_password=False)),
            reference=env.reference_database, maintenance=env.maintenance_database)

    first = scratch()
    if first is None:
        return None
    own = own_tables(env.version_table, env.history_table)
    snapshots: dict[str, Snapshot] = {}
    positions: dict[tuple[str, ...], Snapshot] = {}
    base = Snapshot(dialect=dialect.name)
    try:
        for i, run in enumerate(_runs(revisions)):
            with (first if i == 0 else scratch()) as scratch_url:
                found, built = _walk(scratch_url, run, revisions, env, connector, own)
                base = found if i == 0 else base
                snapshots.update(built)
        if len(revisions.heads) > 1:
            with scratch() as scratch_url:
                _, built = _walk(scratch_url, ["heads"], revisions, env, connector, own)
                positions[tuple(sorted(revisions.heads))] = built["heads"]
    except TenantsError:
        raise
    except Exception as err:
        raise ExpectedSchemaError(
            f"cannot build the expected schemas on a scratch {dialect.name} database: "
            f"{describe_error(err, env.secrets)}; fix it, or set expected_schema = \"consensus\" in environment "
            f"{env.name!r}") from err
    finally:
        connector.dispose()
    return Expected(snapshots, SCRATCH, base, positions, dialect.name)


def _runs(revisions: Revisions) -> list[list[str]]:
    """The revisions base to heads, in runs that each go on one scratch database: a revision starts a new run
    when it is not above everything the run applied (a sibling branch)."""
    order = [script.revision for script in reversed(list(revisions.script.walk_revisions()))]
    runs: list[list[str]] = []
    applied: set[str] = set()
    for rev in order:
        below = revisions.ancestors(rev)
        if runs and applied <= below:
            runs[-1].append(rev)
        else:
            runs.append([rev])
            applied = set()
        applied |= below
    return runs or [[]]


def _walk(url: URL, run: list[str], revisions: Revisions, env: Environment, connector: Connector,
          own: tuple[str, ...]) -> tuple[Snapshot, dict[str, Snapshot]]:
    """On one scratch database: its snapshot before anything, then an upgrade to each revision of ``run`` in
    turn, one snapshot after each."""
    text_url = url.render_as_string(hide_password=False)
    built: dict[str, Snapshot] = {}
    with connector.engine(text_url) as engine, MigrationConnection(engine) as conn:
        before = schema_snapshot(conn, own)
        for rev in run:
            revisions.migrate(conn, text_url, "upgrade", rev, env_py=env.env_py)
            built[rev] = schema_snapshot(conn, own)
    return before, built


# --- the cache ---------------------------------------------------------------------------------------------

def cache_folder(env: Environment) -> Path:
    """The environment's ``schema_cache``, else ``$XDG_CACHE_HOME/tenants``, else ``~/.cache/tenants``."""
    if env.schema_cache is not None:
        return env.schema_cache
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "tenants"


def graph_key(revisions: Revisions, dialect: str, env: Environment) -> str:
    """SHA-256 of everything the built schemas depend on (module docstring)."""
    digest = hashlib.sha256(f"tenants expected schemas {CACHE_FORMAT}\0{dialect}\0{env.version_table}\0"
                            f"{env.history_table}\0".encode())
    files = [Path(script.path) for script in revisions.script.walk_revisions()]
    for path in [*sorted(files), Path(revisions.script.env_py_location), *_SNAPSHOT_CODE]:
        digest.update(path.name.encode() + b"\0")
        digest.update(path.read_bytes() if path.is_file() else b"")
    return digest.hexdigest()


def to_cache(expected: Expected, key: str) -> dict:
    return {
        "format": CACHE_FORMAT, "key": key, "dialect": expected.dialect, "base": expected.base.to_dict(),
        "revisions": {rev: snapshot.to_dict() for rev, snapshot in expected.by_revision.items()},
        "positions": [{"position": list(position), "schema": snapshot.to_dict()}
                      for position, snapshot in expected.positions.items()],
    }


def from_cache(data: Mapping, key: str) -> Expected | None:
    if data.get("format") != CACHE_FORMAT or data.get("key") != key:
        return None
    return Expected(
        by_revision={rev: Snapshot.from_dict(s) for rev, s in data["revisions"].items()},
        source=CACHE,
        base=Snapshot.from_dict(data["base"]),
        positions={tuple(p["position"]): Snapshot.from_dict(p["schema"]) for p in data.get("positions", ())},
        dialect=data.get("dialect", ""),
    )


def _read_cache(path: Path, key: str) -> Expected | None:
    try:
        return from_cache(json.loads(path.read_text(encoding="utf-8")), key)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # absent, unreadable or from another format: build again


def _write_cache(path: Path, key: str, expected: Expected) -> None:
    """Best effort, atomically (a concurrent reader sees the old file or the new one, never half of one)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary.write_text(json.dumps(to_cache(expected, key), sort_keys=True), encoding="utf-8")
        os.replace(temporary, path)
    with contextlib.suppress(OSError):
        temporary.unlink(missing_ok=True)
