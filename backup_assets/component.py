"""The restore as a Dagster Component, for projects laid out with ``dg`` (as dagster-sling is).

A ``defs.yaml`` in a project's defs folder::

    type: backup_assets.component.SentryRestoreComponent
    attributes:
      backups_folder: "{{ env.BACKUP_ASSETS_BACKUPS }}"
      manifest_path: "{{ env.BACKUP_ASSETS_MANIFEST }}"   # optional: the built-in manifest otherwise
      target_dsn_env: BACKUP_ASSETS_DSN                   # the *name* of the variable: the DSN stays a secret
      private_key_path: /run/secrets/sentry-backup.pem
      max_runs_per_tick: 2
      drill_cron: "0 4 * * *"
      standby_dsn_env: BACKUP_ASSETS_STANDBY_DSN

yields the same definitions as the classic code location (:mod:`backup_assets.definitions`): one
asset per relocatable model (one multi-asset, one step) plus the stage assets and the round trip, the restore, drill, verify and
rollback jobs, the backup folder sensor and the restore drill schedule (both off until started), and the resources they need.

Secrets are named, never inlined: ``target_dsn_env`` and ``private_key_env`` hold variable names that
Dagster reads when a run starts (``EnvVar``), so neither the DSN's password nor the key ends up in
the YAML, the UI's resource view or run storage. ``{{ env.X }}`` is for non-secret values.

This module is also the ``dg`` code location of this repository (``[tool.dg.project]`` in
pyproject.toml): :func:`defs` loads the defs folder ``backup_assets/defs``.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from backup_assets.core.manifest import Manifest
from backup_assets.resources.backup_source import DEFAULT_GLOB, BackupSourceResource
from backup_assets.resources.decryptor import DecryptorResource
from backup_assets.resources.postgres import PostgresTargetResource
from backup_assets.resources.settings import ImportSettingsResource
from backup_assets.resources.staging import StagingResource
from backup_assets.schedules import DEFAULT_CRON, STANDBY_DSN_ENV, build_restore_drill_schedule
from backup_assets.sensors import DEFAULT_INTERVAL_SECONDS, DEFAULT_MAX_RUNS_PER_TICK, build_backup_sensor


class SentryRestoreComponent(dg.Component, dg.Model, dg.Resolvable):
    """Restore Sentry backups from a folder into PostgreSQL: one asset per model, a sensor, a drill schedule."""

    backups_folder: str = Field(default="backups", description="Folder holding the backups.")
    glob: str = Field(default=DEFAULT_GLOB, description="Pattern(s) of backup files, comma-separated.")
    manifest_path: str | None = Field(
        default=None, description="A Sentry model_dependencies/detailed.json; empty: the built-in manifest."
    )
    target_dsn_env: str = Field(
        default="BACKUP_ASSETS_DSN",
        description="Name of the variable holding the target DSN (read at run time; unset: embedded server).",
    )
    private_key_path: str | None = Field(default=None, description="PEM private key file of encrypted backups.")
    private_key_env: str | None = Field(
        default=None, description="Name of a variable holding the PEM private key (instead of a file)."
    )
    create_schema: bool = Field(default=False, description="Create missing target tables (restore jobs).")
    max_runs_per_tick: int = Field(
        default=DEFAULT_MAX_RUNS_PER_TICK, ge=1, description="Most restores the sensor requests per tick."
    )
    sensor_interval_seconds: int = Field(
        default=DEFAULT_INTERVAL_SECONDS, ge=1, description="Seconds between two sensor ticks."
    )
    drill_cron: str | None = Field(default=None, description=f"Cron of the restore drill (default {DEFAULT_CRON}).")
    standby_dsn_env: str = Field(
        default=STANDBY_DSN_ENV, description="Name of the variable holding the drill's standby DSN."
    )
    workers: int = Field(
        default=0,
        ge=0,
        description="Models loaded at once by the models' step, each on its "
        "own connection (0: two, or one on a one-core machine).",
    )
    round_trip_check: bool = Field(
        default=False,
        description="Also prove every restore by its round trip (a check of restore_complete); the drill always does.",
    )

    def manifest(self) -> Manifest:
        return Manifest.load(self.manifest_path or None)

    def resources(self) -> dict[str, object]:
        """The resources, secrets through ``EnvVar`` (see the module doc)."""
        target = PostgresTargetResource.from_env(self.target_dsn_env)
        # the resource takes at most one of the two and says so when given both
        decryptor = DecryptorResource(
            private_key_path=self.private_key_path or None, private_key_env=self.private_key_env or None
        )
        return {
            "target": target,
            "backup_source": BackupSourceResource(folder=self.backups_folder, glob=self.glob),
            "decryptor": decryptor,
            "staging": StagingResource(),
            "import_settings": ImportSettingsResource(create_schema=self.create_schema),
        }

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        from backup_assets.definitions import JOB_NAME, build_definitions

        return build_definitions(
            self.manifest(),
            resources=self.resources(),
            sensor=build_backup_sensor(
                JOB_NAME,
                max_runs_per_tick=self.max_runs_per_tick,
                minimum_interval_seconds=self.sensor_interval_seconds,
            ),
            schedule=build_restore_drill_schedule(self.drill_cron, standby_dsn_env=self.standby_dsn_env),
            workers=self.workers or None,
            round_trip_check=self.round_trip_check,
        )


@dg.definitions
def defs() -> dg.Definitions:
    """The ``dg`` code location of this repository: the components of ``backup_assets/defs``."""
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
