"""The Alembic project being driven: its revision graph, loaded once, and the one place that runs env.py.

Alembic's ``command.upgrade()`` builds a new ``ScriptDirectory`` (executing every revision file) and runs
env.py on every call. Serving many tenants from one process, we build the ``ScriptDirectory`` once per
process and, per tenant, run env.py through an ``EnvironmentContext`` the way ``command.upgrade`` does inside.
The private ``ScriptDirectory._upgrade_revs`` / ``_downgrade_revs`` / ``_stamp_revs`` are used here and nowhere
else, so an Alembic upgrade that renames them breaks one function.

env.py gets the tenant the ways Alembic documents, so any Alembic project works; the environment's
``env_py`` key says which goes in ``config.attributes["connection"]``:

* ``connection`` (default): the migration connection, a :class:`MigrationConnection`. The cookbook's env.py
  ("Sharing a Connection") passes it to ``context.configure(connection=...)``; the older recipe's env.py
  (jupyterhub's) calls ``connectable.connect()`` on it, which a SQLAlchemy 2 ``Connection`` no longer has,
  so this one answers ``connect()`` with itself, left open. One object serves both recipes: there is no
  need to guess which recipe an env.py follows (reading its source would be fragile). An env.py that takes
  ``connection.engine`` and connects anew (MLflow's) gets the tool's engine, as with ``engine``.
* ``engine``: the tool's engine for the tenant; env.py opens connections of its own with it (the tool's
  driver settings, sign-in and SQLite transactional DDL included). For an env.py that needs a real
  ``Engine`` (``isinstance`` checks, ``engine.begin()``).
* ``url``: nothing; env.py builds its own engine from the ``sqlalchemy.url`` main option, which is always
  set to the tenant's URL (Alembic's generic template does this whatever it is handed).

In every case the tenant's lock is held for the whole run of env.py, on the connection the tool opened (the
one handed in as ``connection``; see :func:`tenants.db.tenant_lock`): PostgreSQL advisory locks, SQL Server
applocks and the SQLite file lock are per database and exclude other ``tenants`` runs, whichever connection
env.py migrates with. The caller
then reads the tenant's own version table again (:mod:`tenants.engine.unit`): an env.py that migrated another
database, or another version table, fails the tenant instead of reporting it migrated.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path
from typing import Literal

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError as AlembicRevisionError
from alembic.util import CommandError
from sqlalchemy.engine import Connection, make_url

from alembic import util
from tenants.db import describe_error
from tenants.dialects import dialect_for
from tenants.errors import ConfigError, MultipleHeads, RevisionError
from tenants.secrets import scrub, url_secrets

Operation = Literal["upgrade", "downgrade", "stamp"]
EnvPy = Literal["connection", "engine", "url"]  # what env.py is handed: see the module docstring


class MigrationConnection(Connection):
    """The connection a tenant is migrated with: a SQLAlchemy ``Connection`` that also answers ``connect()``.

    SQLAlchemy 1.x let env.py call ``connect()`` on a Connection (it returned a "branch" sharing it, whose
    close left the connection open), so Alembic's older recipe, ``with connectable.connect() as connection``
    on whatever ``config.attributes["connection"]`` holds, worked with a Connection or an Engine. 2.0 removed
    it. Here it yields this same connection and leaves it open on exit: env.py migrates on the connection
    the tool opened (no second login), and the tool reads the version table on it afterwards.
    """

    def connect(self) -> contextlib.nullcontext[MigrationConnection]:
        return contextlib.nullcontext(self)


def _find_scripts_beside(config: Config, ini: Path) -> None:
    """A relative ``script_location`` is looked up beside alembic.ini first, then (Alembic's own rule) in the
    current directory. Another project's stock alembic.ini (optuna's says ``script_location = alembic``) then
    drives that project's scripts from wherever ``tenants`` runs, never the ``alembic/`` folder of the
    directory it runs in."""
    location = config.get_alembic_option("script_location")
    if not location or os.path.isabs(location) or ":" in location:
        return  # absolute (``%(here)s/...`` included) or a package resource (``pkg:dir``)
    beside = ini.resolve().parent / location
    if beside.is_dir():
        config.set_main_option("script_location", str(beside).replace("%", "%%"))


class _WrongDialect(Exception):
    """Internal: env.py configured Alembic for another dialect than the URL it was given (offline SQL)."""


class VersionTableMismatch(Exception):
    """Alembic (through env.py) reads a different version table than the environment's ``version_table``."""


class Revisions:
    """An Alembic project (``alembic.ini`` + script directory) with its revision graph loaded once."""

    def __init__(self, alembic_ini: str | Path, version_table: str = "alembic_version") -> None:
        path = Path(alembic_ini)
        if not path.is_file():
            raise ConfigError(
                f"{path}: alembic.ini not found; set `alembic = \"path/to/alembic.ini\"` in the environment "
                "(relative to its configuration file)"
            )
        self.path = path
        # Alembic prints through Config.stdout; keep it out of the worker's stdout (results are our output).
        self.config = Config(str(path), stdout=io.StringIO())
        _find_scripts_beside(self.config, path)
        # Our env.py reads it; an env.py of another project configures its own (and the environment's
        # `version_table` must then match it).
        self.config.set_main_option("version_table", version_table)
        self.version_table = version_table
        try:
            self.script = ScriptDirectory.from_config(self.config)
            self._heads = tuple(self.script.get_heads())  # loads (executes) every revision file, once
        except CommandError as err:
            raise ConfigError(f"{path}: cannot load the Alembic project: {err}") from err
        except Exception as err:  # a revision file that does not import
            raise ConfigError(f"{path}: a revision file failed to load: {type(err).__name__}: {err}") from err
        self._ancestors: dict[str, frozenset[str]] = {}

    # --- the graph ---------------------------------------------------------------------------------------

    @property
    def heads(self) -> tuple[str, ...]:
        return self._heads

    def head(self) -> str:
        """The single head; several heads make ``head`` ambiguous and are bad input, and so does none."""
        if not self._heads:
            versions = self.script.version_locations or [Path(self.script.dir) / "versions"]
            raise RevisionError(
                f"{self.path}: no revisions found in {', '.join(map(str, versions))}; create the first one with "
                f"`alembic -c {self.path} revision -m \"...\"` (or check script_location)"
            )
        if len(self._heads) != 1:
            raise MultipleHeads(
                f"{self.path}: the revision graph has {len(self._heads)} heads "
                f"({', '.join(sorted(self._heads)) or 'none'}); merge them with `alembic merge heads`"
            )
        return self._heads[0]

    def resolve(self, revision: str) -> str | None:
        """A full revision id for ``revision`` (``head``, ``base``, an id or a unique prefix); None is base."""
        if revision == "base":
            return None
        if revision == "head":
            return self.head()
        try:
            found = self.script.get_revisions(revision)
        except CommandError as err:
            raise RevisionError(
                f"unknown revision {revision!r} in {self.path.parent / 'versions'}: {err}; "
                "see `alembic history`"
            ) from err
        if len(found) != 1 or found[0] is None:
            raise RevisionError(f"revision {revision!r} does not name exactly one revision; see `alembic history`")
        return found[0].revision

    def is_known(self, current: tuple[str, ...]) -> bool:
        return all(self._lookup(rev) for rev in current)

    def _lookup(self, rev: str) -> bool:
        try:
            return self.script.revision_map.get_revision(rev) is not None
        except Exception:  # alembic raises ResolutionError (not a CommandError) for unknown ids
            return False

    def ancestors(self, rev: str | None) -> frozenset[str]:
        """``rev`` and every revision below it."""
        if rev is None:
            return frozenset()
        if rev not in self._ancestors:
            self._ancestors[rev] = frozenset(s.revision for s in self.script.iterate_revisions(rev, "base"))
        return self._ancestors[rev]

    def pending_upgrade(self, current: tuple[str, ...], target: str | None) -> list[str]:
        """Revisions an upgrade from ``current`` to ``target`` applies, in order ([] when nothing to do)."""
        if target is None:
            return []
        done: set[str] = set()
        for rev in current:
            done |= self.ancestors(rev)
        return [rev for rev in reversed([s.revision for s in self.script.iterate_revisions(target, "base")])
                if rev not in done]

    def pending_downgrade(self, current: tuple[str, ...], target: str | None) -> list[str]:
        """Revisions a downgrade from ``current`` to ``target`` undoes, newest first.

        Raises :class:`RevisionError` when ``target`` is not below ``current``.
        """
        keep = self.ancestors(target)
        have: set[str] = set()
        for rev in current:
            have |= self.ancestors(rev)
        if target is not None and target not in have:
            raise RevisionError(
                f"revision {target} is not below the tenant's current revision "
                f"{','.join(current) or 'base'}: a downgrade only goes down"
            )
        ordered = []
        for rev in current:
            ordered += [s.revision for s in self.script.iterate_revisions(rev, "base")]
        seen: set[str] = set()
        return [r for r in ordered if r not in keep and not (r in seen or seen.add(r))]

    def steps_between(self, operation: Operation, before: tuple[str, ...],
                      after: tuple[str, ...]) -> list[tuple[str, str]]:
        """(from, to) of each step that took a tenant from ``before`` to ``after`` (two reads of its version
        table), as ``on_version_apply`` reports them (tenants.engine.history): one per revision applied or undone,
        one for a stamp; [] when nothing moved."""
        if before == after:
            return []
        if operation == "stamp":
            return [(",".join(before) or "base", ",".join(after) or "base")]
        if operation == "upgrade":
            revs = [rev for head in after for rev in self.pending_upgrade(before, head)]
        else:
            below = set().union(*(self.ancestors(head) for head in after))
            revs = [rev for rev in self.pending_downgrade(before, None) if rev not in below]
        steps = []
        for rev in dict.fromkeys(revs):  # several heads share ancestors: each revision once
            down = ",".join(sorted(util.to_tuple(self.script.get_revision(rev).down_revision, default=()))) or "base"
            steps.append((down, rev) if operation == "upgrade" else (rev, down))
        return steps

    # --- running env.py ------------------------------------------------------------------------------------

    def migrate(self, connection: Connection, url: str, operation: Operation, target: str | None,
                current: tuple[str, ...] | None = None, on_version_apply=None,
                env_py: EnvPy = "connection") -> list[str]:
        """Run env.py once for this tenant to take it to ``target`` (None is base); return the revisions
        Alembic planned to run (env.py may have run them on another database: the caller checks).

        ``connection`` must not be inside a transaction: env.py configures ``transaction_per_migration`` and
        Alembic then begins and commits one transaction per revision on it. ``current`` is the revision we
        read under the lock: Alembic reads the version table itself (through env.py's configuration), and if
        it sees something else the tenant is stopped before any step runs. ``env_py`` chooses what env.py is
        handed (module docstring); a :class:`MigrationConnection` serves both ``connection`` recipes.
        """
        script = self.script
        destination = target or "base"
        ran: list[str] = []

        def steps(rev, _context):
            seen = tuple(sorted(rev))
            if current is not None and seen != tuple(sorted(current)):
                raise VersionTableMismatch(
                    f"env.py's version table holds {','.join(seen) or 'base'} but {','.join(current) or 'base'} "
                    "was read: set the environment's version_table to the table this env.py uses"
                )
            if operation == "upgrade":
                planned = script._upgrade_revs(destination, rev)
            elif operation == "downgrade":
                planned = script._downgrade_revs(destination, rev)
            else:
                planned = script._stamp_revs(destination, rev)
            ran.extend(step.revision.revision for step in planned if hasattr(step, "revision"))
            return planned

        handed = {"connection": connection, "engine": connection.engine, "url": None}[env_py]
        self._run_env(url, steps, destination, as_sql=False, connection=handed,
                      on_version_apply=on_version_apply)
        return ran

    def offline_sql(self, url: str, start: str | None, target: str | None, operation: Operation) -> str:
        """The SQL that takes a database from ``start`` to ``target`` (Alembic's ``--sql`` mode).

        Raises :class:`ConfigError` when env.py renders another dialect than ``url``'s (it builds its URL from
        settings of its own), and :class:`RevisionError` naming the revision being rendered when anything
        raises (env.py, or a revision that reads the database: offline, nothing is connected).
        """
        script = self.script
        destination = target or "base"
        starting = start or "base"
        expected = make_url(url).get_backend_name()
        env_py = script.env_py_location
        rendering: dict = {}  # the MigrationContext env.py configured, and the step being rendered

        def steps(rev, context):
            # A generator: Alembic takes each step from it just before rendering that step, so the step last
            # handed out is the one in progress when something raises, whatever env.py forwards or not.
            rendering["context"] = context
            if context.dialect.name != expected:
                raise _WrongDialect(context.dialect.name)
            if operation == "downgrade":
                planned = script._downgrade_revs(destination, rev)
            else:
                planned = script._upgrade_revs(destination, rev)
            for step in planned:
                rendering["step"] = step
                yield step
            rendering["step"] = None

        buffer = io.StringIO()
        try:
            self._run_env(url, steps, destination, as_sql=True, starting_rev=starting, output_buffer=buffer)
        except _WrongDialect as wrong:
            # The SQL would be shown (and reviewed, and run) as this environment's while it is not.
            raise ConfigError(
                f"{env_py}: rendered {wrong} SQL, not {expected}: env.py must render with the URL Alembic gives "
                "it (`context.configure(url=config.get_main_option(\"sqlalchemy.url\"))`), not one of its own"
            ) from None
        except Exception as err:  # whatever env.py or a revision raised: one line, never a traceback
            secrets = url_secrets(url)
            why = describe_error(err, secrets)
            step = rendering.get("step")
            if step is not None:
                raise RevisionError(
                    f"{step.revision.path}: cannot render revision {step.revision.revision} ({step.short_log}) "
                    f"offline: {why}; if it reads the database: offline nothing is connected, so guard that "
                    "with `context.is_offline_mode()`"
                ) from err
            if isinstance(err, (CommandError, AlembicRevisionError)):  # Alembic's own words about the range
                raise RevisionError(f"cannot render {starting}:{destination} offline: {scrub(str(err), secrets)}"
                                    ) from err
            raise RevisionError(f"{env_py}: cannot render {starting}:{destination} offline: env.py raised {why}"
                                ) from err
        if "context" not in rendering:
            raise ConfigError(f"{env_py}: rendered nothing for {starting}:{destination}: in offline (--sql) mode "
                              "env.py must call `context.configure(url=...)` and `context.run_migrations()`")
        # SQL Server: Alembic's own bookkeeping made safe to run twice (tenants.dialects.mssql.idempotent_script).
        return dialect_for(expected).offline_script(buffer.getvalue(), self.version_table)

    def _run_env(self, url, fn, destination, *, as_sql, connection=None, starting_rev=None, output_buffer=None,
                 on_version_apply=None):
        config = self.config
        config.output_buffer = output_buffer
        # ConfigParser interpolation: a literal % (URL-encoded passwords) must be doubled.
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
        if connection is not None:
            config.attributes["connection"] = connection
        if on_version_apply is not None:
            config.attributes["on_version_apply"] = on_version_apply
        try:
            with EnvironmentContext(
                config, self.script, fn=fn, as_sql=as_sql, starting_rev=starting_rev,
                destination_rev=destination,
            ):
                self.script.run_env()
        finally:
            config.attributes.pop("connection", None)
            config.attributes.pop("on_version_apply", None)
            config.output_buffer = None
            # Never leave a tenant's password in a long-lived object.
            config.set_main_option("sqlalchemy.url", "")
