"""The code location of a Celery deployment: the usual one plus ``celery_restore_job``, whose steps run on
Celery workers (:mod:`backup_assets.celery`), and the backup folder sensor requesting that job.

Point ``workspace.yaml`` (or ``dagster dev -m``) at ``backup_assets.celery_definitions``; workers import
the same module when they run a step. The environment of :mod:`backup_assets.definitions` applies,
read where the code is loaded: the launching process and every worker.
"""

from __future__ import annotations

import os

import dagster as dg

from backup_assets.celery import restore_celery_executor
from backup_assets.core.postgres import DSN_ENV
from backup_assets.definitions import build_definitions
from backup_assets.run import TARGET_TAG, target_tag
from backup_assets.sensors import build_backup_sensor
from backup_assets.verification import ROUND_TRIP_KEY

CELERY_JOB_NAME = "celery_restore_job"


def celery_restore_job(name: str = CELERY_JOB_NAME) -> dg.UnresolvedAssetJobDefinition:
    """Every asset but the round trip, one partition, each step a Celery task on its target's queue.

    With ``$BACKUP_ASSETS_DSN`` set, the job's runs carry that target's tag (hence its queue); a run
    whose config points ``target`` elsewhere (``dsn: {env: OTHER_DSN}``) is given that target's tag
    by whoever launches it."""
    tags = {TARGET_TAG: target_tag(os.environ[DSN_ENV])} if os.environ.get(DSN_ENV) else None
    return dg.define_asset_job(
        name,
        selection=dg.AssetSelection.all() - dg.AssetSelection.assets(ROUND_TRIP_KEY),
        executor_def=restore_celery_executor,
        tags=tags,
        description="Restore one backup (a partition), its steps on Celery workers.",
    )


def build_celery_definitions() -> dg.Definitions:
    """:func:`backup_assets.definitions.build_definitions` with the Celery job, which the sensor requests."""
    base = build_definitions(sensor=build_backup_sensor(CELERY_JOB_NAME))
    return dg.Definitions.merge(base, dg.Definitions(jobs=[celery_restore_job()]))


defs = build_celery_definitions()


def restore_job() -> dg.JobDefinition:
    """The Celery job, for ``dagster.reconstructable`` (launching a run from Python)."""
    return defs.resolve_job_def(CELERY_JOB_NAME)
