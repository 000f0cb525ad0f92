"""The code location: ``dagster dev`` from the repository root (see ``workspace.yaml``) shows the whole graph.

Environment, read when the code location loads:

``BACKUP_ASSETS_MANIFEST``  path of a Sentry ``model_dependencies/detailed.json`` to build the model assets
                            from (one asset per relocatable model); unset: the built-in manifest
``BACKUP_ASSETS_DSN``       target database; unset: the embedded PostgreSQL (started on demand)
``BACKUP_ASSETS_BACKUPS``   folder of backups (default ``./backups``); ``BACKUP_ASSETS_GLOB`` its pattern(s)
``BACKUP_ASSETS_PRIVATE_KEY_PATH`` / ``BACKUP_ASSETS_PRIVATE_KEY``
                            the PEM private key of encrypted backups: a file, or the PEM itself in the variable
``BACKUP_ASSETS_STANDBY_DSN`` the standby database of the restore drill (read where the drill runs)
``BACKUP_ASSETS_DRILL_CRON`` cron of the restore drill schedule (default 04:00 daily; the schedule is off
                            until started)

Besides ``restore_backup_job`` (every asset but ``sentry_backup/round_trip``; with ``round_trip_check=True``
the round trip runs in it as a check of ``restore_complete``, off by default): ``restore_drill_job``
and its schedule (:mod:`backup_assets.schedules`, the round trip on), ``verify_restore_job`` (the round trip) and
``rollback_import_job`` (:mod:`backup_assets.verification`), and the backup folder sensor
(:mod:`backup_assets.sensors`, off until started).

Runs execute in-process by default: all models are one step (:func:`backup_assets.assets.build_models_asset`)
that loads independent models at once itself. Parallelism across backups comes from runs, one per
backup partition, capped in ``dagster.yaml``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import dagster as dg

from backup_assets.assets import build_restore_graph
from backup_assets.core.manifest import Manifest
from backup_assets.resources.backup_source import DEFAULT_GLOB, BackupSourceResource
from backup_assets.resources.decryptor import DecryptorResource
from backup_assets.resources.postgres import PostgresTargetResource
from backup_assets.resources.settings import ImportSettingsResource
from backup_assets.resources.staging import StagingResource
from backup_assets.schedules import build_restore_drill_schedule, drill_job
from backup_assets.sensors import RESTORE_JOB_NAME, build_backup_sensor
from backup_assets.verification import (
    ROUND_TRIP_KEY,
    build_rollback_job,
    build_round_trip_asset,
    build_round_trip_check,
    verify_job,
)

MANIFEST_ENV = "BACKUP_ASSETS_MANIFEST"
BACKUPS_ENV = "BACKUP_ASSETS_BACKUPS"
GLOB_ENV = "BACKUP_ASSETS_GLOB"
KEY_PATH_ENV = "BACKUP_ASSETS_PRIVATE_KEY_PATH"
KEY_PEM_ENV = "BACKUP_ASSETS_PRIVATE_KEY"
JOB_NAME = RESTORE_JOB_NAME


def load_manifest() -> Manifest:
    """The manifest named by ``$BACKUP_ASSETS_MANIFEST``, else the built-in one."""
    return Manifest.load(os.environ.get(MANIFEST_ENV) or None)


def default_resources() -> dict[str, object]:
    """The resources as a deployment wires them: secrets and locations through ``EnvVar``."""
    env = os.environ
    if env.get(KEY_PATH_ENV):
        decryptor = DecryptorResource(private_key_path=dg.EnvVar(KEY_PATH_ENV))
    elif env.get(KEY_PEM_ENV):
        decryptor = DecryptorResource(private_key_env=KEY_PEM_ENV)
    else:
        decryptor = DecryptorResource()  # plain JSON backups need no key; an encrypted one fails clearly
    return {
        "target": PostgresTargetResource.from_env(),
        "backup_source": BackupSourceResource(
            folder=dg.EnvVar(BACKUPS_ENV) if env.get(BACKUPS_ENV) else "backups",
            glob=dg.EnvVar(GLOB_ENV) if env.get(GLOB_ENV) else DEFAULT_GLOB,
        ),
        "decryptor": decryptor,
        "staging": StagingResource(),
        "import_settings": ImportSettingsResource(),
    }


def restore_job(name: str = JOB_NAME) -> dg.UnresolvedAssetJobDefinition:
    """Every asset of the graph (and the checks defined on them), for one backup partition, in-process."""
    return dg.define_asset_job(
        name,
        selection=dg.AssetSelection.all() - dg.AssetSelection.assets(ROUND_TRIP_KEY),
        executor_def=dg.in_process_executor,
        description="Restore one backup (a partition) into the target database.",
    )


def build_definitions(
    manifest: Manifest | None = None,
    *,
    resources: Mapping[str, object] | None = None,
    sensor: dg.SensorDefinition | None = None,
    schedule: dg.ScheduleDefinition | None = None,
    round_trip_check: bool = False,
    **graph_options: Any,
) -> dg.Definitions:
    """The Definitions of the code location for ``manifest`` (default: :func:`load_manifest`).

    ``resources`` (default: :func:`default_resources`), ``sensor`` (default: the backup folder sensor)
    and ``schedule`` (default: the restore drill) can be replaced; the Component passes its own.
    ``round_trip_check``: run the round trip in every restore, as the check ``round_trip`` of
    ``restore_complete`` (it re-reads the backup and re-exports the import: about the restore's time again).
    """
    manifest = manifest or load_manifest()
    return dg.Definitions(
        assets=[*build_restore_graph(manifest, **graph_options), build_round_trip_asset(manifest)],
        asset_checks=[build_round_trip_check(manifest)] if round_trip_check else [],
        jobs=[restore_job(), drill_job(round_trip_check=round_trip_check), verify_job(), build_rollback_job(manifest)],
        sensors=[sensor or build_backup_sensor(JOB_NAME)],
        schedules=[schedule or build_restore_drill_schedule()],
        resources=dict(resources) if resources is not None else default_resources(),
        executor=dg.in_process_executor,
    )


defs = build_definitions()
