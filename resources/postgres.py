"""The PostgreSQL database a restore writes into."""

from __future__ import annotations

import os

import dagster as dg
from pydantic import Field

from backup_assets.core.postgres import DSN_ENV, redacted_dsn, resolve_dsn


class PostgresTargetResource(dg.ConfigurableResource):
    """The target database of a restore.

    ``dsn`` is a libpq connection string or URI. Left unset, the DSN comes from ``$BACKUP_ASSETS_DSN``
    at run time, and failing that from the embedded PostgreSQL (started on demand, database
    ``sentry``), so ``dagster dev`` works with no set-up. Wire it with ``EnvVar("BACKUP_ASSETS_DSN")``
    in production so the password stays out of run config. A DSN given as a plain value is config:
    Dagster stores it in the job snapshot and shows it in the UI; in-process runs built from a DSN value
    use :func:`target_resource` instead.
    """

    dsn: str | None = Field(default=None, description=f"Target DSN; unset: ${DSN_ENV}, else the embedded server.")

    def resolved_dsn(self) -> str:
        """The DSN to connect to (may start the embedded server)."""
        return resolve_dsn(self.dsn)

    @classmethod
    def from_env(cls, var: str = DSN_ENV) -> PostgresTargetResource:
        """The resource as ``definitions.py`` (and the Component, with its own ``var``) wires it:
        ``EnvVar(var)`` when that variable is set where the code location loads, else unset (run-time
        ``$BACKUP_ASSETS_DSN``, then the embedded server)."""
        return cls(dsn=dg.EnvVar(var)) if os.environ.get(var) else cls()


def target_resource(dsn: str | None) -> PostgresTargetResource | dg.ResourceDefinition:
    """The ``target`` of a run built in-process from a DSN *value* (the CLI, ``materialize_restore``).

    A configured resource would make the DSN, password included, a config default that Dagster keeps
    (compressed) in the job snapshot and shows in the UI. This one is a hardcoded resource with no
    config schema: the DSN lives only in this process's memory, and the run records no more than
    ``user@host:port/dbname``, as the resource's description. No DSN: the unset resource
    (``$BACKUP_ASSETS_DSN`` at run time, else the embedded server).
    """
    if not dsn:
        return PostgresTargetResource()
    return dg.ResourceDefinition.hardcoded_resource(
        PostgresTargetResource(dsn=dsn), f"Target database {redacted_dsn(dsn)}"
    )
