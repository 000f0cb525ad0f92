"""The PostgreSQL database a restore writes into."""
from __future__ import annotations

import os

import dagster as dg
from pydantic import Field

from backup_assets.core.postgres import DSN_ENV, resolve_dsn


class PostgresTargetResource(dg.ConfigurableResource):
    """The target database of a restore.

    ``dsn`` is a libpq connection string or URI. Left unset, the DSN comes from ``$BACKUP_ASSETS_DSN``
    at run time, and failing that from the embedded PostgreSQL (started on demand, database
    ``sentry``), so ``dagster dev`` works with no set-up. Wire it with ``EnvVar("BACKUP_ASSETS_DSN")``
    in production so the password stays out of run config.
    """

    dsn: str | None = Field(default=None, description=f"Target DSN; unset: ${DSN_ENV}, else the embedded server.")

    def resolved_dsn(self) -> str:
        """The DSN to connect to (may start the embedded server)."""
        return resolve_dsn(self.dsn)

    @classmethod
    def from_env(cls, var: str = DSN_ENV) -> "PostgresTargetResource":
        """The resource as ``definitions.py`` (and the Component, with its own ``var``) wires it:
        ``EnvVar(var)`` when that variable is set where the code location loads, else unset (run-time
        ``$BACKUP_ASSETS_DSN``, then the embedded server)."""
        return cls(dsn=dg.EnvVar(var)) if os.environ.get(var) else cls()
