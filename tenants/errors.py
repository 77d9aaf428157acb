"""One root error for the tool, subclassed by condition.

The CLI catches only :class:`TenantsError` and prints its message as one line on stderr with exit code 2.
Every message names the file, flag, environment or tenant involved and, where there is one, the way out.
Lower-level errors are translated at the layer edge with ``raise ... from err``.

Errors that happen *inside* one tenant's unit of work are never raised to the caller: they become a
``TenantResult`` with status ``failed`` (see :mod:`tenants.engine.unit`).
"""

from __future__ import annotations


class TenantsError(Exception):
    """Root of every error the tool reports before (or instead of) touching tenants.

    Bad input or bad configuration exits 2; a subclass that is a runtime failure (a server that cannot be
    reached, nothing touched either) sets ``exit_code = 1``.
    """

    exit_code = 2


class ConfigError(TenantsError):
    """The configuration file or an environment in it is missing, malformed or incomplete."""


class UnknownEnvironment(ConfigError):
    """``--env`` / ``TENANTS_ENV`` names an environment the configuration does not declare."""


class MissingVariable(ConfigError):
    """A ``${VAR}`` placeholder names an environment variable that is not set."""


class TenantNotFound(TenantsError):
    """``--tenant`` names a tenant that discovery did not find."""


class RevisionError(TenantsError):
    """A revision argument does not resolve in the revision graph, or the graph is ambiguous."""


class MultipleHeads(RevisionError):
    """The revision graph has several heads, so ``head`` is ambiguous."""


class UsageError(TenantsError):
    """The command line asks for something the command refuses to do (e.g. downgrade several tenants)."""


class DiscoveryError(TenantsError):
    """The tenant source could not be listed (server unreachable after retries): a runtime failure."""

    exit_code = 1


class TenantUnreachable(TenantsError):
    """A single named tenant could not be read (a runtime failure, not bad input: exit code 1)."""

    exit_code = 1


class ReportError(UsageError):
    """A report file (``--from-report``, ``verify --report``, ``report merge``) is not a readable tenants report:
    unreadable, not JSON, or a field missing or of the wrong type. The message names the file and what is wrong."""


class ReportMismatch(ReportError):
    """``upgrade --from-report`` names a report of another run than this one would be (environment, operation,
    target or revision-graph head), or of a run that stopped before any tenant ran; ``--force`` takes it anyway
    where that is meaningful."""


class ExpectedSchemaError(TenantsError):
    """The expected schemas of the revisions could not be built on a scratch database (no right to create one,
    a revision that fails there, a reference database that is not empty): a runtime failure, nothing touched."""

    exit_code = 1
